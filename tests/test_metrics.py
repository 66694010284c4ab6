"""leukspark.metrics against scikit-learn's implementations."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from leukspark.metrics import binary_metrics, confusion_table, roc_auc, summarize_folds


def sklearn_metrics(y_true, prob_aml, threshold=0.5):
    y_pred = (np.asarray(prob_aml) >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(y_true, y_pred, labels=[0, 1]).ravel()
    single_class = len(np.unique(y_true)) < 2
    return {
        "accuracy": accuracy_score(y_true, y_pred),
        "sensitivity": recall_score(y_true, y_pred, pos_label=1, zero_division=0),
        "specificity": recall_score(y_true, y_pred, pos_label=0, zero_division=0),
        "precision": precision_score(y_true, y_pred, zero_division=0),
        "f1": f1_score(y_true, y_pred, zero_division=0),
        "roc_auc": np.nan if single_class else roc_auc_score(y_true, prob_aml),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "n": len(y_true),
    }


def assert_metrics_equal(ours, reference):
    assert set(ours) == set(reference)
    for key, expected in reference.items():
        if np.isnan(expected):
            assert np.isnan(ours[key]), key
        else:
            assert ours[key] == pytest.approx(expected, rel=1e-12, abs=1e-12), key


@pytest.mark.parametrize("seed", range(25))
def test_binary_metrics_equal_sklearn_on_random_inputs(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 80))
    y_true = rng.integers(0, 2, n)
    prob_aml = rng.random(n)
    if seed % 3 == 0:
        prob_aml = np.round(prob_aml, 1)  # many ties, including exactly 0.5
    threshold = [0.5, 0.3, 0.8][seed % 3]
    assert_metrics_equal(binary_metrics(y_true, prob_aml, threshold), sklearn_metrics(y_true, prob_aml, threshold))


@pytest.mark.parametrize(
    "y_true, prob_aml",
    [
        ([0, 1, 1, 0], [0.1, 0.2, 0.3, 0.4]),  # nothing predicted AML: precision 0, no crash
        ([1, 1, 1], [0.9, 0.2, 0.7]),  # single class: ROC AUC NaN
        ([0, 0, 0], [0.9, 0.2, 0.7]),  # no AML at all: sensitivity 0
        ([0, 1], [0.5, 0.5]),  # threshold is inclusive, scores tie
        ([1, 0, 1, 0], [1.0, 0.0, 1.0, 0.0]),  # perfect
    ],
)
def test_edge_cases_equal_sklearn_without_warnings(y_true, prob_aml):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours = binary_metrics(y_true, prob_aml)
    assert_metrics_equal(ours, sklearn_metrics(np.array(y_true), prob_aml))


def test_no_predicted_aml_gives_precision_zero():
    metrics = binary_metrics([1, 0, 1], [0.1, 0.2, 0.3])
    assert metrics["precision"] == 0.0 and metrics["f1"] == 0.0 and metrics["tp"] == 0


def test_single_class_gives_nan_auc():
    assert np.isnan(binary_metrics([0, 0, 0, 0], [0.1, 0.6, 0.2, 0.9])["roc_auc"])
    assert np.isnan(roc_auc([1], [0.3]))


def test_counts_are_python_ints():
    metrics = binary_metrics(np.array([1, 0, 1]), np.array([0.9, 0.2, 0.3]))
    assert all(type(metrics[key]) is int for key in ("tp", "fp", "tn", "fn", "n"))
    assert (metrics["tp"], metrics["fp"], metrics["tn"], metrics["fn"], metrics["n"]) == (1, 0, 1, 1, 3)


@pytest.mark.parametrize(
    "y_true, prob_aml, message",
    [
        ([0, 2], [0.1, 0.2], "only 0"),
        ([0, 1], [0.1], "2 entries"),
        ([], [], "zero samples"),
        ([0, 1], [0.1, np.nan], "NaN"),
    ],
)
def test_invalid_inputs_raise(y_true, prob_aml, message):
    with pytest.raises(ValueError, match=message):
        binary_metrics(y_true, prob_aml)


@pytest.mark.parametrize("seed", range(5))
def test_confusion_table_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    y_true, y_pred = rng.integers(0, 2, 50), rng.integers(0, 2, 50)
    table = confusion_table(y_true, y_pred)
    assert list(table.index) == ["actual AML", "actual ALL"]
    assert list(table.columns) == ["predicted AML", "predicted ALL"]
    np.testing.assert_array_equal(table.to_numpy(), confusion_matrix(y_true, y_pred, labels=[1, 0]))


def test_summarize_folds_gives_mean_and_sample_std_per_model():
    rows = pd.DataFrame(
        {
            "model": ["svm", "svm", "svm", "rf", "rf", "rf"],
            "fold": [0, 1, 2, 0, 1, 2],
            "accuracy": [0.9, 0.95, 1.0, 0.8, 0.85, 0.9],
            "roc_auc": [0.99, 0.98, 0.97, 0.9, np.nan, 0.95],
        }
    )
    summary = summarize_folds(rows).set_index("model")
    assert list(summary.index) == ["svm", "rf"]  # order of first appearance
    assert summary.loc["svm", "n_folds"] == 3
    assert summary.loc["svm", "accuracy_mean"] == pytest.approx(0.95)
    assert summary.loc["svm", "accuracy_std"] == pytest.approx(np.std([0.9, 0.95, 1.0], ddof=1))
    assert summary.loc["svm", "roc_auc_mean"] == pytest.approx(0.98)
    assert np.isnan(summary.loc["rf", "roc_auc_mean"])  # an undefined fold is not averaged away
    assert "fold_mean" not in summary.columns


def test_summarize_folds_accepts_binary_metrics_rows():
    rng = np.random.default_rng(0)
    rows = []
    for model in ("a", "b"):
        for fold in range(3):
            y_true = rng.integers(0, 2, 30)
            rows.append({"model": model, "fold": fold, **binary_metrics(y_true, rng.random(30))})
    summary = summarize_folds(pd.DataFrame(rows))
    assert {"accuracy_mean", "f1_std", "tp_mean", "roc_auc_mean"} <= set(summary.columns)
    assert len(summary) == 2


def test_summarize_folds_rejects_bad_input():
    with pytest.raises(ValueError, match="fold"):
        summarize_folds(pd.DataFrame({"model": ["a"], "accuracy": [1.0]}))
    duplicated = pd.DataFrame({"model": ["a", "a"], "fold": [0, 0], "accuracy": [1.0, 0.9]})
    with pytest.raises(ValueError, match="more than once"):
        summarize_folds(duplicated)
