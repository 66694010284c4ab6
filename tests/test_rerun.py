"""Scheduled reruns: idempotent, resumable after a kill, retrain only on change, record the change."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from leukspark.config import load_config
from leukspark.lake import Lake

TABLES = ("samples", "expression", "labels", "genes", "gene_features", "splits", "results", "predictions", "runs")


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    from leukspark.synth import write_synthetic_series

    base = tmp_path_factory.mktemp("rerun_series")
    first = write_synthetic_series(base / "first", n_samples=70, n_probes=300, seed=21, accession="GSE13159",
                                   write_matrix=False)
    return first


def rerun_config(tmp_path: Path) -> Path:
    path = tmp_path / "rerun.yaml"
    path.write_text(yaml.safe_dump({
        "spark": {"shuffle_partitions": 4, "driver_memory": "2g"},
        "training": {"models": ["logistic_regression", "random_forest"],
                     "params": {"random_forest": {"n_estimators": 30}}},
    }))
    return path


def run_cli(args: list[str], **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable}
    return subprocess.Popen([sys.executable, "-m", "leukspark.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True, **kwargs)


def versions(lake: Lake) -> dict[str, int]:
    return {t: lake.version(t) for t in TABLES if lake.exists(t)}


def test_killed_after_ingest_the_next_rerun_finishes_and_a_third_changes_nothing(spark, tmp_path, series):
    lake_root = tmp_path / "lake"
    config_path = rerun_config(tmp_path)
    args = ["rerun", "--lake", str(lake_root), "--config", str(config_path), "--series", str(series.family_soft)]

    # 1. Kill the rerun as soon as ingest has committed `samples` (before training ends).
    process = run_cli(args)
    samples_log = lake_root / "samples" / "_delta_log"
    deadline = time.time() + 300
    while time.time() < deadline and not any(samples_log.glob("*.json")) and process.poll() is None:
        time.sleep(0.2)
    assert process.poll() is None, process.communicate()[0][-2000:]
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()

    config = load_config(config_path)
    lake = Lake.from_config(spark, lake_root, config)
    assert lake.read("samples").count() == 70
    assert not lake.exists("runs")

    # 2. The next rerun finishes the work: one run, each sample once, no duplicate values.
    finished = run_cli(args)
    output = finished.communicate(timeout=900)[0]
    assert finished.returncode == 0, output[-3000:]
    assert "new run" in output
    assert lake.read("samples").count() == 70
    assert lake.read("expression").count() == 70 * 300
    assert lake.read("expression").groupBy("sample", "probe_id").count().where("count > 1").count() == 0
    runs = lake.read("runs").collect()
    assert len(runs) == 1 and runs[0]["status"] == "succeeded"
    run_ids = {r["run"] for r in lake.read("predictions").select("run").distinct().collect()}
    assert run_ids == {runs[0]["run"]}

    # 3. Running it again changes nothing: no table gets a new version.
    before = versions(lake)
    again = run_cli(args)
    output = again.communicate(timeout=900)[0]
    assert again.returncode == 0, output[-3000:]
    assert "no retraining" in output
    assert versions(lake) == before


def test_new_data_retrains_and_records_the_change_against_the_previous_run(spark, config, tmp_path, series):
    from leukspark.pipeline import Pipeline
    from leukspark.rerun import rerun
    from leukspark.synth import write_synthetic_series

    fast = {**config, "training": {**config["training"], "models": ["logistic_regression"]}}
    lake = Lake.from_config(spark, tmp_path / "lake", fast)
    pipeline = Pipeline(spark, lake, fast, echo=lambda message: None)
    first = rerun(pipeline, [str(series.family_soft)])
    assert first.trained is not None and first.previous_run is None

    unchanged = rerun(pipeline, [str(series.family_soft)])
    assert unchanged.trained is None

    more = write_synthetic_series(tmp_path / "more", n_samples=120, n_probes=300, seed=21, accession="GSE99001",
                                  write_matrix=False)
    replace = {**fast, "ingest": {**fast["ingest"], "on_conflict": "replace"}}
    pipeline = Pipeline(spark, lake, replace, echo=lambda message: None)
    second = rerun(pipeline, [str(more.family_soft)])
    assert second.trained is not None and second.previous_run == first.trained.run_id
    results = lake.read("results").toPandas()
    change = results[(results["run"] == second.trained.run_id) & (results["fold"] == "change_vs_previous")]
    new_test = results[(results["run"] == second.trained.run_id) & (results["fold"] == "test")].set_index("metric")
    old_test = results[(results["run"] == first.trained.run_id) & (results["fold"] == "test")].set_index("metric")
    accuracy_change = change.set_index("metric").loc["accuracy", "value"]
    assert accuracy_change == pytest.approx(new_test.loc["accuracy", "value"] - old_test.loc["accuracy", "value"])
    # Earlier samples keep their split; new ones are added.
    splits = lake.read("splits").toPandas()
    assert len(splits) == lake.read("labels").count()
