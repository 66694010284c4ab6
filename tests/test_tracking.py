"""The parts of MLflow tracking that need no MLflow: what a run is logged as, the pyfunc's input
form, and a run with tracking on where MLflow is not installed (a warning, nothing else)."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd

from leukspark.config import load_config
from leukspark.mlflow_model import long_values, samples_frame
from leukspark.tracking import flat_params, log_training_run, metric_key, metric_rows


def test_a_fold_is_a_step_and_other_folds_are_in_the_name():
    assert metric_key("dnn", "accuracy", "3") == ("dnn/accuracy/fold", 3)
    assert metric_key("dnn", "accuracy", "cv_mean") == ("dnn/accuracy/cv_mean", 0)
    # MLflow refuses names with other characters than letters, digits, _ - . / : and space
    assert metric_key("linear_svm", "n", "ood:MDS (5q-), t(8;21)") == ("linear_svm/n/ood:MDS _5q-__ t_8_21_", 0)


def test_every_results_row_is_a_metric_and_the_best_models_summary_again():
    results = pd.DataFrame({"model": ["lr", "lr", "lr", "svm", "svm"], "fold": ["0", "1", "test", "test", "cv_mean"],
                            "metric": ["auc"] * 5, "value": [0.5, 0.75, 1.0, 0.25, float("inf")]})
    rows = metric_rows(results, best_model="lr")
    assert rows == [("lr/auc/fold", 0.5, 0), ("lr/auc/fold", 0.75, 1), ("lr/auc/test", 1.0, 0),
                    ("best/auc/test", 1.0, 0), ("svm/auc/test", 0.25, 0), ("svm/auc/cv_mean", 1.7976931348623157e308, 0)]


def test_the_configuration_flattens_to_dotted_params():
    params = flat_params(load_config(overrides={"training.models": ["logistic_regression", "dnn"]}))
    assert params["split.folds"] == "5" and params["tracking.mlflow.enabled"] == "False"
    assert params["training.models"] == '["logistic_regression", "dnn"]'
    assert params["training.params.dnn.hidden_layers"] == "[256, 64]"
    assert params["spark.extra"] == "{}" and all(len(v) <= 6000 for v in params.values())


def test_samples_frame_and_long_values_round_trip_and_keep_duplicate_samples_apart():
    values = pd.DataFrame({"sample": ["a", "a", "b", "b", "b"], "platform": ["P"] * 5,
                           "probe_id": ["p1", "p2", "p2", "p1", "p3"], "value": [1.0, 2.0, 3.0, 4.0, 5.0]})
    frame = samples_frame(values)
    assert list(frame.columns) == ["sample", "platform", "p1", "p2", "p3"]
    assert frame[["p1", "p2", "p3"]].to_numpy().tolist()[0][:2] == [1.0, 2.0] and np.isnan(frame.loc[0, "p3"])
    assert frame.loc[1, ["p1", "p2", "p3"]].tolist() == [4.0, 3.0, 5.0]
    twice = pd.concat([frame, frame.iloc[[0]]], ignore_index=True).drop(columns="platform")
    long, names = long_values(twice, default_platform="P")
    assert names == ["a", "b", "a"] and list(dict.fromkeys(long["sample"])) == ["0", "1", "2"]
    assert set(long["platform"]) == {"P"} and len(long) == 9
    assert long.loc[long["sample"] == "1", "value"].tolist() == [4.0, 3.0, 5.0]


def test_tracking_on_without_mlflow_installed_warns_and_logs_nothing(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` now fails as if it were not installed
    messages: list[str] = []
    config = load_config(overrides={"tracking.mlflow.enabled": True})
    assert log_training_run(config, lake=None, run_id="run-1", echo=messages.append) is None
    assert len(messages) == 1 and "MLflow is not installed" in messages[0] and "run run-1" in messages[0]
