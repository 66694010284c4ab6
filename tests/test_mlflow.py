"""MLflow tracking, the pyfunc model and the registry (the optional `mlflow` extra; skipped without it).

One small synthetic series (60 samples x 400 probes, logistic regression only) is trained once for
the module with tracking into a store inside its temporary lake. Each test reads what MLflow holds
back through MLflow's own API and compares it with an independent source: the lake's Delta tables,
`leukspark predict` and `leukspark score` on the same samples, the tracking server's REST API.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

mlflow = pytest.importorskip("mlflow")

from leukspark import __version__  # noqa: E402
from leukspark.config import load_config  # noqa: E402
from leukspark.lake import Lake  # noqa: E402
from leukspark.pipeline import Pipeline  # noqa: E402

REGISTERED = "leukspark-test"
SETTINGS = {"spark.shuffle_partitions": 4, "training.models": ["logistic_regression"], "split.folds": 3,
            "tracking.mlflow.enabled": True}


@pytest.fixture(scope="module")
def tracked(spark, tmp_path_factory):
    from leukspark.synth import write_synthetic_series

    base = tmp_path_factory.mktemp("mlflow")
    series = write_synthetic_series(base / "series", n_samples=60, n_probes=400, seed=5)
    config = load_config(overrides={**SETTINGS, "tracking.mlflow.register_as": REGISTERED})
    lake = Lake.from_config(spark, base / "lake", config)
    messages: list[str] = []
    pipeline = Pipeline(spark, lake, config, echo=messages.append)
    outcome = pipeline.run([str(series.family_soft)])["train"]
    store = f"sqlite:///{(base / 'lake' / 'mlflow' / 'mlflow.db').resolve()}"
    client = mlflow.MlflowClient(store)
    experiment = client.get_experiment_by_name("leukspark")
    mlflow.set_tracking_uri(store)  # for the runs:/ and models:/ URIs the tests load
    yield {"base": base, "series": series, "config": config, "lake": lake, "pipeline": pipeline,
            "outcome": outcome, "messages": messages, "store": store, "client": client, "experiment": experiment}
    mlflow.set_tracking_uri(None)


def _mlflow_run(tracked, run_id: str):
    runs = tracked["client"].search_runs([tracked["experiment"].experiment_id],
                                         filter_string=f"tags.`leukspark.run_id` = '{run_id}'")
    assert len(runs) == 1, f"expected one MLflow run for {run_id}, found {len(runs)}"
    return runs[0]


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-12)


def test_search_runs_gives_the_results_table_params_and_tags(tracked):
    run_id = tracked["outcome"].run_id
    found = mlflow.search_runs(experiment_ids=[tracked["experiment"].experiment_id],
                               filter_string=f"tags.`leukspark.run_id` = '{run_id}'")
    assert len(found) == 1
    row = found.iloc[0]
    results = tracked["lake"].read("results").where(f"run = '{run_id}'").toPandas()
    assert len(results) > 50
    history = {}
    for model, fold, metric, value in results[["model", "fold", "metric", "value"]].itertuples(index=False):
        if fold.isdigit():  # a CV fold is a step of <model>/<metric>/fold
            key = f"{model}/{metric}/fold"
            if key not in history:
                history[key] = {m.step: m.value for m in tracked["client"].get_metric_history(row["run_id"], key)}
            assert _same(history[key][int(fold)], value), (key, fold)
        else:
            assert _same(row[f"metrics.{model}/{metric}/{fold}"], value), (model, metric, fold)
    logged = {c for c in found.columns if c.startswith("metrics.") and not c.startswith("metrics.best/")}
    expected = {f"metrics.{m}/{k}/{'fold' if f.isdigit() else f}" for m, f, k in results[["model", "fold", "metric"]]
                .itertuples(index=False)}
    assert logged == expected  # nothing more, nothing less than the results rows
    assert row["params.split.folds"] == "3" and row["params.training.models"] == '["logistic_regression"]'
    assert row["params.training.params.logistic_regression.C"] == str(tracked["config"]["training"]["params"]
                                                                       ["logistic_regression"]["C"])
    ledger = tracked["lake"].read("runs").where(f"run = '{run_id}'").toPandas().iloc[0]
    assert row["tags.leukspark.data_fingerprint"] == ledger["data_fingerprint"]
    assert row["tags.leukspark.code_version"] == __version__
    assert row["tags.leukspark.best_model"] == tracked["outcome"].best_model == "logistic_regression"
    assert row["tags.mlflow.runName"] == run_id and row["status"] == "FINISHED"


def test_results_table_and_report_are_artifacts(tracked, monkeypatch, tmp_path):
    run_id = tracked["outcome"].run_id
    mlflow_run = _mlflow_run(tracked, run_id).info.run_id
    client = tracked["client"]
    stored = pd.read_csv(client.download_artifacts(mlflow_run, "tables/results.csv", str(tmp_path)))
    lake_rows = tracked["lake"].read("results").where(f"run = '{run_id}'").toPandas()
    key = ["model", "fold", "metric"]
    merged = lake_rows.merge(stored.astype({"fold": str}), on=key, suffixes=("", "_logged"))
    assert len(merged) == len(lake_rows) == len(stored)
    assert np.allclose(merged["value"], merged["value_logged"], equal_nan=True, rtol=0, atol=1e-12)
    # The report step adds its folder to the same MLflow run (the report itself is written by a stub).
    import leukspark.report

    def stub_report(spark, lake, run, out_dir, config):
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "report.html").write_text(f"<html><body>{run}</body></html>")
        return out_dir / "report.html"

    monkeypatch.setattr(leukspark.report, "write_report", stub_report)
    tracked["pipeline"].report(str(tmp_path / "report"), run_id)
    page = Path(client.download_artifacts(mlflow_run, "report/report.html", str(tmp_path / "back")))
    assert run_id in page.read_text()
    assert {a.path for a in client.list_artifacts(mlflow_run)} >= {"config.yaml", "report", "tables"}


def _probe_frame(tracked) -> pd.DataFrame:
    from leukspark.mlflow_model import samples_frame
    from leukspark.predict import sample_tables_from_file

    values, _ = sample_tables_from_file(tracked["series"].series_matrix)
    return samples_frame(values)


def _write_matrix(frame: pd.DataFrame, path: Path) -> Path:
    """The pyfunc input frame as a probe x sample CSV matrix, the form `leukspark predict` reads."""
    frame.drop(columns="platform").set_index("sample").T.rename_axis("probe_id").to_csv(path, na_rep="")
    return path


def test_pyfunc_predictions_equal_leukspark_predict(tracked, tmp_path):
    from leukspark.predict import predict_file

    frame = _probe_frame(tracked)
    probes = [c for c in frame.columns if c not in ("sample", "platform")]
    frame.loc[1, probes[: len(probes) // 2]] = np.nan  # one damaged sample: too many genes missing
    scored = predict_file(_write_matrix(frame, tmp_path / "matrix.csv"), tracked["lake"].root,
                          run_id=tracked["outcome"].run_id, platform="GPL570")
    assert scored[1].error and "missing" in scored[1].error and sum(s.error is None for s in scored) > 40
    model = mlflow.pyfunc.load_model(_model_uri(tracked, "logistic_regression"))
    out = model.predict(frame)
    assert list(out["sample"]) == [s.sample for s in scored]
    for (_, row), expected in zip(out.iterrows(), scored):
        if expected.error:
            assert row["error"] == expected.error and math.isnan(row["probability_AML"])
            continue
        assert row["probability_AML"] == pytest.approx(expected.probability_AML, abs=1e-12)
        assert (row["prediction"], row["missing_genes"], row["input_scale"], row["warning"], row["error"]) == (
            expected.prediction, expected.missing_genes, expected.input_scale, expected.warning, None)
    # A sample named twice stays two rows (a Spark UDF needs one output row per input row).
    assert len(model.predict(pd.concat([frame.iloc[:2], frame.iloc[:1]], ignore_index=True))) == 3


def _model_uri(tracked, model: str) -> str:
    """runs:/<MLflow run>/<model>: the pyfunc logged with the leukspark run for that bundle."""
    return f"runs:/{_mlflow_run(tracked, tracked['outcome'].run_id).info.run_id}/{model}"


def test_spark_udf_equals_leukspark_score(tracked, spark):
    from pyspark.sql import functions as F

    from leukspark.mlflow_model import SPARK_RESULT_TYPE, samples_frame

    run_id = tracked["outcome"].run_id
    tracked["pipeline"].score(None, run_id=run_id)
    expected = (tracked["lake"].read("scored_samples").where(f"run = '{run_id}'").toPandas()
                .drop_duplicates("sample", keep="last").set_index("sample"))
    # The lake's probe values as the pyfunc's input, one row per sample, scored by MLflow's Spark UDF.
    frame = samples_frame(tracked["lake"].read_small("expression", columns=["sample", "platform", "probe_id", "value"]))
    udf = mlflow.pyfunc.spark_udf(spark, _model_uri(tracked, "logistic_regression"), result_type=SPARK_RESULT_TYPE,
                                  env_manager="local")
    inputs = spark.createDataFrame(frame).coalesce(1)  # one Python worker loads MLflow and the model
    scored = (inputs.select(udf(F.struct(*[F.col(f"`{c}`") for c in frame.columns])).alias("r"))
              .select("r.*").toPandas().set_index("sample"))
    assert sorted(scored.index) == sorted(expected.index) and len(scored) == 60
    both = scored.join(expected, rsuffix="_score")
    assert np.allclose(both["probability_AML"], both["probability_AML_score"], rtol=0, atol=1e-12, equal_nan=True)
    assert (both["prediction"].fillna("-") == both["prediction_score"].fillna("-")).all()
    assert (both["missing_genes"] == both["missing_genes_score"]).all()
    assert (both["input_scale"] == both["input_scale_score"]).all()


def test_registered_model_scores_through_model_uri(tracked, tmp_path, capsys):
    from leukspark.cli import main

    version = tracked["client"].get_model_version(REGISTERED, "1")
    assert version.run_id == _mlflow_run(tracked, tracked["outcome"].run_id).info.run_id
    config = tmp_path / "tracking.yaml"
    config.write_text(f"tracking:\n  mlflow:\n    enabled: true\n    tracking_uri: '{tracked['store']}'\n")
    matrix = str(tracked["series"].series_matrix)
    lake = str(tracked["lake"].root)
    assert main(["predict", matrix, "--lake", lake, "--run", tracked["outcome"].run_id]) == 0
    direct = capsys.readouterr().out.strip().splitlines()
    assert main(["predict", matrix, "--lake", lake, "--config", str(config),
                 "--model-uri", f"models:/{REGISTERED}/1"]) == 0
    through_registry = capsys.readouterr().out.strip().splitlines()
    assert len(direct) == 60 and [json.loads(x) for x in through_registry] == [json.loads(x) for x in direct]
    assert main(["predict", matrix, "--lake", lake, "--config", str(config), "--model-uri",
                 f"models:/{REGISTERED}/7"]) == 2
    assert "--model-uri models:/leukspark-test/7" in capsys.readouterr().err


@pytest.fixture(scope="module")
def retrained(tracked, spark):
    """A rerun after a settings change: it retrains, and its MLflow run names the previous one."""
    from leukspark.rerun import rerun

    config = load_config(overrides={**SETTINGS, "training.params": {"logistic_regression": {"C": 0.5}}})
    messages: list[str] = []
    outcome = rerun(Pipeline(spark, tracked["lake"], config, echo=messages.append), [])
    return {"outcome": outcome, "messages": messages}


def test_rerun_that_retrains_logs_a_run_linked_to_the_previous_one(tracked, retrained):
    outcome = retrained["outcome"]
    assert outcome.trained is not None and outcome.previous_run == tracked["outcome"].run_id
    run = _mlflow_run(tracked, outcome.trained.run_id)
    previous = _mlflow_run(tracked, tracked["outcome"].run_id)
    assert run.info.run_id != previous.info.run_id
    assert run.data.tags["leukspark.previous_run"] == tracked["outcome"].run_id
    assert run.data.tags["leukspark.previous_mlflow_run"] == previous.info.run_id
    assert run.data.params["training.params.logistic_regression.C"] == "0.5"
    change = run.data.metrics["logistic_regression/accuracy/change_vs_previous"]
    assert change == pytest.approx(run.data.metrics["logistic_regression/accuracy/test"]
                                   - previous.data.metrics["logistic_regression/accuracy/test"], abs=1e-12)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_unreachable_tracking_server_warns_and_the_run_succeeds(tracked, retrained, spark):
    config = load_config(overrides={**SETTINGS, "tracking.mlflow.tracking_uri": f"http://127.0.0.1:{_free_port()}"})
    messages: list[str] = []
    pipeline = Pipeline(spark, tracked["lake"], config, echo=messages.append)
    began = time.monotonic()
    outcome = pipeline.train()
    warnings = [m for m in messages if m.startswith("warning: MLflow")]
    assert len(warnings) == 1 and "did not answer" in warnings[0] and outcome.run_id in warnings[0]
    ledger = tracked["lake"].read("runs").where(f"run = '{outcome.run_id}'").toPandas()
    assert list(ledger["status"]) == ["succeeded"] and time.monotonic() - began < 120
    assert tracked["client"].search_runs([tracked["experiment"].experiment_id],
                                         filter_string=f"tags.`leukspark.run_id` = '{outcome.run_id}'") == []


def _wait_for(url: str, seconds: float, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert server.poll() is None, f"the MLflow server exited with status {server.returncode}"
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"the MLflow server did not answer {url} within {seconds:.0f} s")


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())


def test_mlflow_ui_on_loopback_shows_the_run(tracked, tmp_path):
    from browser import FLAGS, chromium

    run_id = tracked["outcome"].run_id
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracked["store"],
                               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                              stdout=subprocess.DEVNULL, stderr=open(tmp_path / "server.log", "w"),
                              start_new_session=True)
    try:
        _wait_for(f"{base}/health", 180, server)
        found = _post(f"{base}/api/2.0/mlflow/runs/search", {
            "experiment_ids": [tracked["experiment"].experiment_id],
            "filter": f"tags.`leukspark.run_id` = '{run_id}'"})["runs"]
        assert len(found) == 1
        run = found[0]
        metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
        results = tracked["lake"].read("results").where(f"run = '{run_id}' and fold = 'test'").toPandas()
        for model, metric, value in results[["model", "metric", "value"]].itertuples(index=False):
            assert _same(metrics[f"{model}/{metric}/test"], value)
        page = f"{base}/#/experiments/{tracked['experiment'].experiment_id}/runs/{run['info']['run_id']}"
        shot = tmp_path / "run_page.png"  # one browser start: the rendered DOM and a screenshot of it
        dom = subprocess.run([chromium(), *FLAGS, "--virtual-time-budget=20000", "--window-size=1280,900",
                              "--dump-dom", f"--screenshot={shot}", page],
                             capture_output=True, text=True, timeout=300).stdout  # ~10 s idle; bounded for a busy host
        assert run_id in dom, f"the run page does not show {run_id}; DOM starts: {dom[:300]!r}"
        assert "leukspark.data_fingerprint" in dom  # the run's tags are on the page
        assert shot.stat().st_size > 20_000  # a rendered page, not a blank one
    finally:
        _stop(server)


def _stop(server: subprocess.Popen) -> None:
    """SIGTERM to the server's own process group (it starts workers), then SIGKILL after 10 s."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        if server.poll() is not None:
            return
        try:
            os.killpg(server.pid, sig)
        except ProcessLookupError:
            return
        try:
            server.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
