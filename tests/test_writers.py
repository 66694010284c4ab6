"""Several writers on one lake: each a real process, rows counted with delta-rs afterwards.

Concurrent writers are held just before their first commit to a chosen table until both are
there, then released together: both have planned on the same version, so one commits on a
stale one (tests/writer_process.py). A writer can also be paused after a chosen write to let
another run in between, or to be killed there.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import TEST_JVM_SETTINGS
from deltalake import DeltaTable

from leukspark.config import load_config
from leukspark.lake import Lake

REPO = Path(__file__).resolve().parents[1]
HELPER = Path(__file__).with_name("writer_process.py")
N_SAMPLES, N_PROBES = 40, 300
RETRY_LINE = "planning the write again"


# -- processes ------------------------------------------------------------------------------
@dataclass
class Writer:
    process: subprocess.Popen
    log: Path

    def finish(self, timeout: float = 600) -> tuple[int, str]:
        code = self.process.wait(timeout=timeout)
        return code, self.log.read_text(errors="replace")

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


def start_writer(args: list[str], log: Path, *, sync_commit: str | None = None,
                 pause_after: str | None = None, pause: Path | None = None) -> Writer:
    command = [sys.executable, str(HELPER)]
    if sync_commit is not None:
        command += ["--sync-commit", sync_commit, "--pause", str(pause)]
    if pause_after is not None:
        command += ["--pause-after", pause_after, "--pause", str(pause)]
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable,
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    handle = log.open("w")
    process = subprocess.Popen([*command, "--", *args], stdout=handle, stderr=subprocess.STDOUT, env=env,
                               start_new_session=True, cwd=REPO)
    return Writer(process, log)


def wait_for(path: Path, writers: list[Writer], timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        for writer in writers:
            if writer.process.poll() is not None:
                raise AssertionError(f"writer exited early:\n{writer.log.read_text()[-3000:]}")
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def commit_together(commands: list[list[str]], table: str, work: Path) -> list[Writer]:
    """Start the writers; release them together once each is about to commit to `table`."""
    pauses = [work / f"pause-{i}" for i in range(len(commands))]
    writers = [start_writer(args, work / f"writer-{i}.log", sync_commit=table, pause=pause)
               for i, (args, pause) in enumerate(zip(commands, pauses))]
    for pause in pauses:
        wait_for(Path(f"{pause}.reached"), writers)
    for pause in pauses:
        Path(f"{pause}.go").write_text("go")
    return writers


def finish_all(writers: list[Writer]) -> list[str]:
    outputs = []
    for writer in writers:
        code, output = writer.finish()
        assert code == 0, output[-4000:]
        outputs.append(output)
    return outputs


def rows(lake_root: Path, table: str) -> pd.DataFrame:
    return DeltaTable(str(lake_root / table)).to_pandas()


def retries(outputs: list[str]) -> int:
    return sum(output.count(RETRY_LINE) for output in outputs)


# -- inputs ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def series(tmp_path_factory):
    from leukspark.synth import write_synthetic_series

    return write_synthetic_series(tmp_path_factory.mktemp("writers_series"), n_samples=N_SAMPLES,
                                  n_probes=N_PROBES, seed=1, accession="GSE13159", write_matrix=False)


@pytest.fixture(scope="module")
def fast_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("writers_conf") / "fast.yaml"
    path.write_text(yaml.safe_dump({
        "spark": {"shuffle_partitions": 2, "driver_memory": "1g", "extra": dict(TEST_JVM_SETTINGS)},
        "split": {"folds": 2},
        "training": {"models": ["logistic_regression"]},
    }))
    return path


@pytest.fixture(scope="module")
def prepared(spark, series, fast_config, tmp_path_factory) -> Path:
    """A lake ingested, labelled, with features and a split, by one writer (the reference counts)."""
    from leukspark.pipeline import Pipeline

    root = tmp_path_factory.mktemp("writers_prepared") / "lake"
    config = load_config(fast_config)
    Pipeline(spark, Lake.from_config(spark, root, config), config, echo=lambda m: None).run(
        [str(series.family_soft)], until="split")
    return root


def copy_lake(prepared: Path, tmp_path: Path) -> Path:
    root = tmp_path / "lake"
    shutil.copytree(prepared, root)
    return root


# -- 1. optimistic concurrency ------------------------------------------------------------
def test_a_stale_commit_is_planned_again_on_the_new_version(spark, lake):
    """Deterministic interleaving: another writer commits between this write's read and commit."""
    lake.append("t", spark.createDataFrame([(1, "a"), (2, "b")], "id long, tag string"))
    calls = []

    def change(current):
        calls.append(sorted(r["id"] for r in current.collect()))
        if len(calls) == 1:  # "another process" commits after this plan read its version
            lake.append("t", spark.createDataFrame([(3, "c")], "id long, tag string"))
        return spark.createDataFrame([(2, "B")], "id long, tag string")

    before = lake.commit_retries
    lake.update("t", ["id"], change, lake.schema("t"))
    assert calls == [[1, 2], [1, 2, 3]]  # planned again on the version holding the other commit
    assert lake.commit_retries == before + 1
    assert sorted(map(tuple, rows(Path(lake.path("t")).parent, "t")[["id", "tag"]].values.tolist())) == [
        (1, "a"), (2, "B"), (3, "c")]


def test_two_ingests_of_one_series_at_once_store_each_row_once(spark, config, tmp_path, series, fast_config):
    from leukspark.stages.ingest import ingest_sources
    from leukspark.synth import write_synthetic_series

    # The lake already has every table, from another series (no GSM id in common with `series`).
    other = write_synthetic_series(tmp_path / "other", n_samples=N_SAMPLES, n_probes=N_PROBES, seed=2,
                                   accession="GSE99999", write_matrix=False)
    root = tmp_path / "lake"
    ingest_sources(spark, Lake.from_config(spark, root, config), [str(other.family_soft)], config)
    before = {t: len(rows(root, t)) for t in ("expression", "platform_probes", "samples", "series")}
    args = ["ingest", str(series.family_soft), "--lake", str(root), "--config", str(fast_config)]
    outputs = finish_all(commit_together([args, args], "expression", tmp_path))

    expression = rows(root, "expression")
    new = expression[expression["series"] == "GSE13159"]
    assert len(new) == N_SAMPLES * N_PROBES
    assert not new.duplicated(["sample", "probe_id"]).any()
    assert len(expression) == before["expression"] + N_SAMPLES * N_PROBES
    probes = rows(root, "platform_probes")
    assert not probes.duplicated(["platform", "probe_id"]).any()
    assert len(probes) == len(set(series.probe_ids) | set(other.probe_ids))
    assert len(rows(root, "samples")) == before["samples"] + N_SAMPLES
    assert sorted(rows(root, "series")["series"]) == ["GSE13159", "GSE99999"]
    assert retries(outputs) >= 1  # one of them committed on a stale version and planned again
    print(f"two ingests: expression {len(expression)} rows, platform_probes {len(probes)}, "
          f"retries {retries(outputs)}")


def test_two_runs_at_once_on_one_lake_give_single_writer_counts(tmp_path, series, fast_config, prepared):
    root = tmp_path / "lake"
    args = ["run", "--input", str(series.family_soft), "--lake", str(root), "--config", str(fast_config),
            "--no-report"]
    outputs = finish_all(commit_together([args, args], "expression", tmp_path))

    for table in ("expression", "platform_probes", "samples", "series", "labels", "excluded_samples", "genes",
                  "gene_features", "splits"):
        assert len(rows(root, table)) == len(rows(prepared, table)), table
    runs = rows(root, "runs")
    assert sorted(runs["status"]) == ["succeeded", "succeeded"]
    n_splits = len(rows(prepared, "splits"))  # each labelled sample is evaluated once per run
    predictions = rows(root, "predictions").groupby("run").size()
    results = rows(root, "results").groupby("run").size()
    assert sorted(predictions.index) == sorted(runs["run"]) == sorted(results.index)
    assert list(predictions) == [n_splits, n_splits]
    assert results.nunique() == 1
    assert retries(outputs) >= 1  # one of them committed on a stale version and planned again
    print(f"two runs: predictions per run {list(predictions)}, retries {retries(outputs)}")


def test_two_predict_writes_at_once_both_land_once(spark, tmp_path, series, fast_config, prepared):
    from leukspark.pipeline import Pipeline

    root = copy_lake(prepared, tmp_path)
    config = load_config(fast_config)
    Pipeline(spark, Lake.from_config(spark, root, config), config, echo=lambda m: None).train()
    args = ["predict", str(series.family_soft), "--lake", str(root), "--config", str(fast_config), "--write"]
    outputs = finish_all(commit_together([args, args], "scored_samples", tmp_path))

    scored = rows(root, "scored_samples")
    assert len(scored) == 2 * N_SAMPLES
    assert scored.groupby("sample").size().eq(2).all()
    assert scored["scored_at"].nunique() == 2  # one batch per process, each stored once
    assert retries(outputs) >= 1  # one of them committed on a stale version and planned again
    print(f"two predict --write: scored_samples {len(scored)} rows, retries {retries(outputs)}")


# -- 2. live runs are not incomplete runs -------------------------------------------------
def rerun_args(root: Path, config: Path) -> list[str]:
    return ["rerun", "--lake", str(root), "--config", str(config)]


def test_a_run_that_overlaps_a_live_run_keeps_its_predictions(tmp_path, fast_config, prepared):
    root = copy_lake(prepared, tmp_path)
    pause = tmp_path / "pause"
    first = start_writer(rerun_args(root, fast_config), tmp_path / "first.log", pause_after="results:train",
                         pause=pause)
    wait_for(Path(f"{pause}.reached"), [first])
    # The first run has appended its predictions and results but not recorded success yet.
    second = start_writer(rerun_args(root, fast_config), tmp_path / "second.log")
    code, output = second.finish()
    assert code == 0, output[-4000:]
    assert "discarded rows" not in output
    Path(f"{pause}.go").write_text("go")
    finish_all([first])

    runs = rows(root, "runs")
    assert sorted(runs["status"]) == ["succeeded", "succeeded"]
    predictions = rows(root, "predictions").groupby("run").size()
    assert sorted(predictions.index) == sorted(runs["run"])
    assert list(predictions) == [len(rows(prepared, "splits"))] * 2


def test_a_run_whose_rows_were_discarded_fails_instead_of_recording_success(tmp_path, fast_config, prepared):
    root = copy_lake(prepared, tmp_path)
    impatient = tmp_path / "impatient.yaml"
    impatient.write_text(yaml.safe_dump({**yaml.safe_load(fast_config.read_text()),
                                         "lake": {"owner_timeout_s": 0.5}}))
    pause = tmp_path / "pause"
    first = start_writer(rerun_args(root, fast_config), tmp_path / "first.log", pause_after="results:train",
                         pause=pause)
    wait_for(Path(f"{pause}.reached"), [first])
    first_run = rows(root, "runs")["run"].item()
    time.sleep(1.0)  # the first run's heartbeat (every 60 s) is now older than 0.5 s
    second = start_writer(rerun_args(root, impatient), tmp_path / "second.log")
    code, output = second.finish()
    assert code == 0, output[-4000:]
    assert f"run {first_run} was left running" in output and "discarded rows of 1 incomplete run" in output
    Path(f"{pause}.go").write_text("go")
    code, output = first.finish()
    assert code == 2, output[-4000:]
    assert "error: run " + first_run in output and "not recording success" in output

    runs = rows(root, "runs").set_index("run")
    assert runs.loc[first_run, "status"] == "abandoned"
    assert (runs["status"] == "succeeded").sum() == 1
    assert first_run not in set(rows(root, "predictions")["run"])


def test_a_run_checks_its_own_rows_before_recording_success(spark, tmp_path, fast_config, prepared):
    from leukspark.errors import RunDiscardedError
    from leukspark.pipeline import Pipeline

    root = copy_lake(prepared, tmp_path)
    config = load_config(fast_config)
    lake = Lake.from_config(spark, root, config)
    original = lake.append

    def append_then_lose_predictions(table, df, *, operation="append"):
        info = original(table, df, operation=operation)
        if table == "results":  # a writer of an older version discards this run's predictions
            run_id = df.first()["run"]
            lake.delete_keys("predictions", spark.createDataFrame([(run_id,)], "run string"))
        return info

    lake.append = append_then_lose_predictions
    with pytest.raises(RunDiscardedError, match="table 'predictions' at .* holds 0 of its"):
        Pipeline(spark, lake, config, echo=lambda m: None).train()
    assert list(rows(root, "runs")["status"]) == ["failed"]


def test_a_live_run_refreshes_its_heartbeat_until_it_finishes(spark, tmp_path):
    from leukspark.runs import RunLedger

    lake = Lake(spark, tmp_path / "lake", heartbeat_interval_s=0.5)
    ledger = RunLedger(lake, echo=lambda m: None)
    live = ledger.begin("run-beating", datetime.now(timezone.utc), {"bundle_dir": "models/run-beating"})
    first = rows(tmp_path / "lake", "runs")["heartbeat_at"].item()
    deadline = time.time() + 120
    while rows(tmp_path / "lake", "runs")["heartbeat_at"].item() <= first:
        assert time.time() < deadline, "the heartbeat was never refreshed"
        time.sleep(0.2)
    ledger.succeed(live, {"best_model": "logistic_regression"}, {})
    version = lake.version("runs")
    time.sleep(1.5)
    assert lake.version("runs") == version  # no heartbeat after the end
    row = rows(tmp_path / "lake", "runs").iloc[0]
    assert (row["status"], row["owner_pid"], row["best_model"]) == ("succeeded", os.getpid(), "logistic_regression")


def test_an_owner_is_gone_only_when_provably_so(tmp_path):
    from leukspark.owner import Owner, _start_ticks, owner_is_gone

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        host = socket.gethostname()
        alive = Owner(host, sleeper.pid, f"{_start_ticks(sleeper.pid)}.t")
        now = time.time()
        assert not owner_is_gone(alive, now, timeout_s=60)
        assert owner_is_gone(alive, now - 120, timeout_s=60)  # a heartbeat too old settles it
        reused = Owner(host, sleeper.pid, "1.t")  # same pid, another start time: another process
        assert owner_is_gone(reused, now, timeout_s=60)
        elsewhere = Owner("another-host", sleeper.pid, "1.t")
        assert not owner_is_gone(elsewhere, now, timeout_s=60)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert owner_is_gone(alive, time.time(), timeout_s=60)


# -- 11. leftovers of killed writers ----------------------------------------------------------
def test_a_killed_ingest_leaves_staging_that_the_next_ingest_removes(tmp_path, series, fast_config):
    from leukspark.owner import MARKER_NAME, Owner, _start_ticks, write_marker

    root = tmp_path / "lake"
    args = ["ingest", str(series.family_soft), "--lake", str(root), "--config", str(fast_config)]
    pause = tmp_path / "pause"
    killed = start_writer(args, tmp_path / "killed.log", pause_after="staged", pause=pause)
    wait_for(Path(f"{pause}.reached"), [killed])
    killed.kill()
    left = [p for p in (root / "expression").glob("part-*") if p.is_dir()]
    assert len(left) == 1 and any(left[0].glob("*.parquet")) and (left[0] / MARKER_NAME).exists()

    # A staging folder of a live writer (another process, still running) must survive.
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    live = root / "expression" / "part-live-writer"
    live.mkdir()
    write_marker(live, Owner(socket.gethostname(), sleeper.pid, f"{_start_ticks(sleeper.pid)}.t"))
    try:
        code, output = start_writer(args, tmp_path / "next.log").finish()
        assert code == 0, output[-4000:]
        assert f"removed 1 staging folder(s) left by killed writers: expression/{left[0].name}" in output
        assert not left[0].exists()
        assert live.is_dir()
    finally:
        sleeper.kill()
        sleeper.wait()
    expression = rows(root, "expression")
    assert len(expression) == N_SAMPLES * N_PROBES


def test_a_killed_run_leaves_bundles_and_rows_that_the_next_run_removes(tmp_path, fast_config, prepared):
    root = copy_lake(prepared, tmp_path)
    pause = tmp_path / "pause"
    killed = start_writer(rerun_args(root, fast_config), tmp_path / "killed.log",
                          pause_after="predictions:train", pause=pause)
    wait_for(Path(f"{pause}.reached"), [killed])
    killed.kill()
    killed_run = rows(root, "runs")["run"].item()
    assert (root / "models" / killed_run).is_dir()
    assert killed_run in set(rows(root, "predictions")["run"])

    code, output = start_writer(rerun_args(root, fast_config), tmp_path / "next.log").finish()
    assert code == 0, output[-4000:]
    assert f"run {killed_run} was left running" in output
    assert f"discarded rows of 1 incomplete run(s): {killed_run}" in output
    assert f"removed 1 bundle folder(s) of runs that never finished: models/{killed_run}" in output
    assert not (root / "models" / killed_run).exists()
    runs = rows(root, "runs").set_index("run")
    assert runs.loc[killed_run, "status"] == "abandoned"
    (new_run,) = runs.index[runs["status"] == "succeeded"]
    assert set(rows(root, "predictions")["run"]) == {new_run}
    assert sorted(p.name for p in (root / "models").iterdir()) == [new_run]
