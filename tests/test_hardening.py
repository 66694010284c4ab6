"""Issue 24, second round: what a hostile probe found, each refused with a typed one-line error."""

from __future__ import annotations

import errno
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from leukspark import checks
from leukspark.config import load_config
from leukspark.errors import ConfigError, SplitError

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path, text, name="run.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def one_line_error(capsys, command: str) -> str:
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "Traceback" not in error, error
    assert error.startswith(f"leukspark {command}: error:"), error
    return error


# -- 2: the tables catalog stays inside the lake --------------------------------------------
@pytest.mark.parametrize("text, words", [
    ("tables:\n  series: /tmp/elsewhere\n", "absolute"),
    ("tables:\n  labels: ../../outside\n", ".."),
    ("tables:\n  splits: 'a/../../b'\n", ".."),
    ("tables:\n  runs: ''\n", "non-empty"),
    ("tables:\n  runs: '.'\n", "lake root"),
    ("tables:\n  runs: './.'\n", "lake root"),
    ("tables:\n  labels: samples\n", "same folder as tables.samples"),
    ("tables:\n  labels: Samples\n", "same folder as tables.samples"),
    ("tables:\n  labels: samples/labels\n", "nested with tables.samples"),
    ("tables:\n  series: runs/x\n  runs: runs\n", "nested with tables.series"),
    ("tables:\n  runs: models\n", "models/ folder"),
    ("tables:\n  results: reports/results\n", "reports/ folder"),
    ("tables:\n  genes: 's3://bucket/genes'\n", "URI"),
    ("tables:\n  genes: 'my%20genes'\n", "hex digits"),
])
def test_table_folders_must_be_distinct_and_inside_the_lake(tmp_path, text, words):
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, text))
    message = str(error.value)
    assert "run.yaml: tables." in message and words in message, message


def test_table_folders_may_be_renamed_and_grouped_in_subfolders(tmp_path):
    config = load_config(write(tmp_path, "tables:\n  series: bronze/series\n  samples: bronze/samples\n"
                                         "  runs: ./gold/runs\n"))
    assert config["tables"]["series"] == "bronze/series"


def test_a_lake_refuses_a_catalog_that_escapes_it_even_without_config_load(tmp_path):
    from leukspark.errors import LakePathError
    from leukspark.lake import LakeReader

    reader = LakeReader(tmp_path / "lake", {"runs": "../outside"})
    with pytest.raises(LakePathError, match="table runs"):
        reader.path("runs")


# -- 3: a model is a registered name, and its bundle the lake's own --------------------------
@pytest.mark.parametrize("value", ["/tmp/some/bundle", "../other/logistic_regression", "no_such_model", ""])
def test_predict_model_must_be_best_or_a_registered_name(tmp_path, value):
    with pytest.raises(ConfigError, match="predict.model must be best or a registered model"):
        load_config(write(tmp_path, f"predict:\n  model: '{value}'\n"))


def test_predict_model_accepts_best_and_registered_names(tmp_path):
    assert load_config(write(tmp_path, "predict:\n  model: linear_svm\n"))["predict"]["model"] == "linear_svm"


@pytest.mark.parametrize("command", [["predict", "x.soft"], ["score"]])
def test_model_argument_must_be_a_registered_name(tmp_path, capsys, command):
    from leukspark.cli import main

    outside = tmp_path / "elsewhere" / "run-x" / "logistic_regression"
    outside.mkdir(parents=True)
    lake = tmp_path / "lake"
    assert main([*command, "--lake", str(lake), "--model", str(outside)]) == 2
    error = one_line_error(capsys, command[0])
    assert "--model" in error and "registered model" in error
    assert not lake.exists()


# -- 4: no NaN or infinity passes a numeric check ---------------------------------------------
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_every_numeric_check_refuses_nan_and_infinity(value):
    for check in (checks.number(), checks.number(0, 1), checks.number(0, 1, high_open=True),
                  checks.positive(), checks.Check((float,), 0, 1, low_open=True)):
        assert not check.accepts(value), check
        assert check.problem(value) is not None


@pytest.mark.parametrize("text, key", [
    ("predict:\n  max_missing_gene_fraction: .nan\n", "predict.max_missing_gene_fraction"),
    ("predict:\n  min_shared_gene_fraction: .nan\n", "predict.min_shared_gene_fraction"),
    ("split:\n  test_fraction: .nan\n", "split.test_fraction"),
    ("features:\n  log_floor: .inf\n", "features.log_floor"),
    ("training:\n  params:\n    logistic_regression: {C: .nan}\n", "training.params.logistic_regression.C"),
    ("training:\n  params:\n    linear_svm: {C: .inf}\n", "training.params.linear_svm.C"),
    ("training:\n  params:\n    random_forest: {class_weight: {0: 1.0, 1: .nan}}\n",
     "training.params.random_forest.class_weight.1"),
    ("training:\n  tuning:\n    grids:\n      logistic_regression: {C: [0.1, .nan]}\n",
     "training.tuning.grids.logistic_regression.C[1]"),
    ("lake:\n  heartbeat_interval_s: .nan\n", "lake.heartbeat_interval_s"),
    ("lake:\n  owner_timeout_s: -1.0\n", "lake.owner_timeout_s"),
    ("lake:\n  commit_attempts: 0\n", "lake.commit_attempts"),
    ("predict:\n  abstain_band: [.nan, 0.7]\n", "predict.abstain_band"),
])
def test_non_finite_or_out_of_range_settings_name_the_key(tmp_path, text, key):
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, text))
    assert key in str(error.value) and "run.yaml" in str(error.value)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1.0", "-0.5"])
def test_run_refuses_an_impossible_test_fraction_before_anything_starts(tmp_path, capsys, value):
    from leukspark.cli import main

    lake = tmp_path / "lake"
    assert main(["run", "--input", "x.soft", "--lake", str(lake), f"--test-fraction={value}"]) == 2
    assert "--test-fraction" in one_line_error(capsys, "run")
    assert not lake.exists()


def labels_frame(n_all: int, n_aml: int) -> pd.DataFrame:
    return pd.DataFrame({"sample": [f"S{i:03d}" for i in range(n_all + n_aml)],
                         "label": ["ALL"] * n_all + ["AML"] * n_aml})


@pytest.mark.parametrize("n_all, n_aml, fraction, words", [
    (10, 10, 0.99, "training set"),       # train set empty: sklearn's ValueError before
    (10, 10, 0.9, "training set"),        # one sample of a class left to train on
    (20, 3, 0.05, "test set"),            # AML gets no test sample
])
def test_a_split_that_leaves_a_set_or_class_empty_names_the_counts(n_all, n_aml, fraction, words):
    from leukspark.stages.split import stratified_split

    with pytest.raises(SplitError) as error:
        stratified_split(labels_frame(n_all, n_aml), fraction, 5, 42)
    message = str(error.value)
    assert words in message and f"ALL {n_all}" in message and f"AML {n_aml}" in message, message


def test_a_feasible_split_still_splits_every_class_into_both_sets():
    from leukspark.stages.split import stratified_split

    split = stratified_split(labels_frame(12, 8), 0.25, 3, 42)
    counts = split.groupby(["set", "label"]).size()
    assert (counts > 0).all() and len(counts) == 4
    assert len(split) == 20


def test_a_bundle_outside_the_lake_is_not_used_even_when_the_runs_table_names_it(tmp_path):
    from deltalake import write_deltalake

    from leukspark.errors import BundleError
    from leukspark.runs import RunLog

    lake = tmp_path / "lake"
    elsewhere = tmp_path / "elsewhere" / "run-2" / "logistic_regression"
    elsewhere.mkdir(parents=True)
    (lake / "models" / "run-1").mkdir(parents=True)
    (lake / "models" / "run-1" / "logistic_regression").symlink_to(elsewhere)   # a link out of the lake
    (lake / "models" / "run-3" / "linear_svm").mkdir(parents=True)              # the lake's own
    finished = pd.Timestamp("2026-01-01", tz="UTC")
    write_deltalake(str(lake / "runs"), pd.DataFrame({
        "run": ["run-1", "run-2", "run-3"], "status": ["succeeded"] * 3,
        "finished_at": [finished, finished + pd.Timedelta(1, "h"), finished + pd.Timedelta(2, "h")],
        "best_model": ["logistic_regression", "logistic_regression", "linear_svm"],
        # run-2 recorded an absolute folder outside this lake (and the lake has no copy of it)
        "bundle_dir": ["models/run-1", str(elsewhere.parent), "models/run-3"]}))
    log = RunLog(lake)
    for run in ("run-1", "run-2"):
        with pytest.raises(BundleError, match=f"in run {run} is not this lake's own"):
            log.bundle_dir(run, None)
    with pytest.raises(BundleError, match="not a registered model"):
        log.bundle_dir("run-3", "../../elsewhere/run-2/logistic_regression")
    assert log.bundle_dir("run-3", None) == (lake / "models" / "run-3" / "linear_svm").resolve()


# -- 11a: matrix sample ids are stripped like label ids -------------------------------------
@pytest.mark.parametrize("name, text", [
    ("m.csv", "gene, S1 ,S2  \nTP53,1.0,2.0\nMPO,3.0,4.0\n"),
    ("m.tsv", "gene\t S1\tS2 \nTP53\t1.0\t2.0\nMPO\t3.0\t4.0\n"),
    ("m.gct", "#1.2\n2\t2\nName\tDescription\t S1 \t S2\nTP53\tna\t1.0\t2.0\nMPO\tna\t3.0\t4.0\n"),
])
def test_matrix_sample_ids_lose_surrounding_spaces_as_label_ids_do(tmp_path, name, text):
    from leukspark.matrix import iter_matrix_records, matrix_sample_ids
    from leukspark.stages.labels import read_label_rows

    path = write(tmp_path, text, name)
    labels = write(tmp_path, "sample,label\n S1 ,ALL\nS2,AML\n", "labels.csv")
    assert matrix_sample_ids(path) == ["S1", "S2"]
    assert {row[0] for row in read_label_rows(labels)} == {"S1", "S2"}
    tables = [r for r in iter_matrix_records(path) if hasattr(r, "sample") and hasattr(r, "value")]
    assert [t.sample.accession for t in tables] == ["S1", "S2"]


def test_two_matrix_columns_equal_once_stripped_are_refused(tmp_path):
    from leukspark.errors import GeoFormatError
    from leukspark.matrix import read_matrix

    path = write(tmp_path, "gene,S1, S1 \nTP53,1.0,2.0\n", "m.csv")
    with pytest.raises(GeoFormatError, match=r"m\.csv: line 1: sample column 'S1' appears twice \(columns 2 and 3"):
        read_matrix(path)


# -- 10: ordinary faults are one line that says what happened --------------------------------
def test_a_folder_given_as_config_is_one_line(tmp_path, capsys):
    from leukspark.cli import main

    assert main(["predict", "x.soft", "--lake", str(tmp_path / "lake"), "--config", str(tmp_path)]) == 2
    assert "a folder, not a configuration file" in one_line_error(capsys, "predict")


def test_ctrl_c_exits_130_with_one_line(tmp_path, capsys, monkeypatch):
    from leukspark import cli

    def interrupted(_args):
        raise KeyboardInterrupt

    monkeypatch.setitem(cli.COMMANDS, "synth", interrupted)
    assert cli.main(["synth", "--out", str(tmp_path / "out")]) == 130
    assert capsys.readouterr().err == "leukspark synth: interrupted\n"


def test_an_os_error_a_command_meets_is_one_line_naming_the_path(tmp_path, capsys, monkeypatch):
    from leukspark import cli

    def disk_full(_args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "out" / "x.soft.gz"))

    monkeypatch.setitem(cli.COMMANDS, "synth", disk_full)
    assert cli.main(["synth", "--out", str(tmp_path / "out")]) == 2
    error = one_line_error(capsys, "synth")
    assert error.endswith(f"{tmp_path / 'out' / 'x.soft.gz'}: no space left on the device")


def test_a_spark_task_failing_on_a_full_disk_is_reported_as_such():
    from leukspark.errors import task_os_error

    report = ("An error occurred while calling o123.collect.\n  File \"worker.py\", line 9, in process\n"
              "OSError: [Errno 28] No space left on device: '/lake/gene_features/part-x/v.parquet'\n\tat org.apache")
    assert task_os_error(RuntimeError(report)) == ("a Spark task failed: /lake/gene_features/part-x/v.parquet: "
                                                   "no space left on the device")
    assert task_os_error(RuntimeError("ValueError: bad")) is None


def test_a_full_disk_while_ingest_writes_is_not_blamed_on_the_source_file(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    from leukspark.stages.ingest import _parse_task
    from leukspark.synth import write_synthetic_series

    series = write_synthetic_series(tmp_path / "series", n_samples=6, n_probes=50, seed=1, write_matrix=False)
    staging = tmp_path / "staging"
    staging.mkdir()

    def disk_full(self, *_args, **_kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(pq.ParquetWriter, "write_table", disk_full)
    result = _parse_task((0, str(series.family_soft), 0, 1), staging_dir=str(staging), stored_checksums={},
                         platform=None)
    kind, message = result.error
    assert kind == "StorageError", result.error
    assert str(staging) in message and "no space left on the device" in message
    assert "could not be read" not in message


def test_a_full_disk_during_features_is_one_line_naming_the_step(spark, tmp_path, capsys, monkeypatch):
    from leukspark.cli import main
    from leukspark.lake import Lake
    from leukspark.synth import write_synthetic_series

    series = write_synthetic_series(tmp_path / "series", n_samples=24, n_probes=200, seed=5, write_matrix=False)
    settings = write(tmp_path, "spark: {shuffle_partitions: 4, driver_memory: 4g}\n")

    commit_staged, overwrite = Lake.commit_staged, Lake.overwrite

    def full_for_features(write, table_of):
        def attempt(self, first, *args, **kwargs):  # the features step's writes only: ingest must pass
            if table_of(first) != "gene_features":
                return write(self, first, *args, **kwargs)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), f"{self.path('gene_features')}/part-0.parquet")
        return attempt

    monkeypatch.setattr(Lake, "commit_staged", full_for_features(commit_staged, lambda staged: staged.table))
    monkeypatch.setattr(Lake, "overwrite", full_for_features(overwrite, lambda table: table))
    code = main(["run", "--input", str(series.family_soft), "--lake", str(tmp_path / "lake"), "--config",
                 str(settings), "--until", "features"])
    assert code == 2
    error = one_line_error(capsys, "run")
    assert "features step" in error and "no space left on the device" in error and "gene_features" in error


UNPRIVILEGED = (["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
                if os.geteuid() == 0 and shutil.which("setpriv") else [])


def run_unprivileged(args: list[str], home: Path) -> subprocess.CompletedProcess:
    """The CLI in a subprocess as an unprivileged user (root would ignore the mode bits)."""
    if os.geteuid() == 0 and not UNPRIVILEGED:
        pytest.fail("running as root without setpriv: cannot drop root's permission override")
    env = {**os.environ, "PYTHONPATH": str(REPO), "HOME": str(home)}
    return subprocess.run([*UNPRIVILEGED, sys.executable, "-m", "leukspark.cli", *args], capture_output=True,
                          text=True, env=env, timeout=600)


@pytest.fixture
def shared_dir():
    """A folder the unprivileged user can reach (pytest's tmp_path is private to root)."""
    import tempfile

    directory = Path(tempfile.mkdtemp(prefix="leukspark-perm-"))
    directory.chmod(0o755)
    yield directory
    for path in directory.rglob("*"):
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() else 0o644)
    shutil.rmtree(directory)


def write_runs_table(lake: Path) -> None:
    from deltalake import write_deltalake

    write_deltalake(str(lake / "runs"), pd.DataFrame({
        "run": ["run-1"], "status": ["succeeded"], "finished_at": [pd.Timestamp("2026-01-01", tz="UTC")],
        "best_model": ["linear_svm"], "bundle_dir": ["models/run-1"]}))


@pytest.mark.parametrize("unreadable", ["runs", "runs/_delta_log", "log file"])
def test_an_unreadable_runs_table_is_reported_not_taken_for_no_run(shared_dir, unreadable):
    matrix = shared_dir / "m.csv"
    matrix.write_text("gene,S1\nTP53,1.0\n")
    matrix.chmod(0o644)
    lake = shared_dir / "lake"
    write_runs_table(lake)
    for path in lake.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    target = next((lake / "runs" / "_delta_log").glob("*.json")) if unreadable == "log file" else lake / unreadable
    target.chmod(0)
    result = run_unprivileged(["predict", str(matrix), "--lake", str(lake)], shared_dir)
    error = result.stderr.strip()
    assert result.returncode == 2 and "\n" not in error and "Traceback" not in error, result.stderr
    assert "no successful run" not in error
    assert f"{lake / 'runs'}" in error and ("permission denied" in error.lower()), error


def test_a_table_folder_without_write_permission_is_one_line(shared_dir):
    from leukspark.synth import write_synthetic_series

    series = write_synthetic_series(shared_dir / "series", n_samples=6, n_probes=50, seed=1, write_matrix=False)
    lake = shared_dir / "lake"
    (lake / "expression").mkdir(parents=True)
    lake.chmod(0o777)                      # the lake may be written, its expression table may not
    for path in [series.family_soft.parent, *series.family_soft.parent.iterdir()]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    settings = write(shared_dir, "spark: {master: 'local[1]', driver_memory: 1g, shuffle_partitions: 1}\n")
    settings.chmod(0o644)
    result = run_unprivileged(["ingest", str(series.family_soft), "--lake", str(lake), "--config", str(settings)],
                              shared_dir)
    error = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert error.startswith("leukspark ingest: error: cannot write table expression:"), error
    assert f"{lake / 'expression'}" in error and error.endswith("permission denied")


def test_a_split_the_labels_cannot_make_fails_before_features_or_split_write(spark, tmp_path, capsys):
    from leukspark.cli import main
    from leukspark.lake import LakeReader
    from leukspark.synth import write_synthetic_series

    series = write_synthetic_series(tmp_path / "series", n_samples=30, n_probes=200, seed=4, write_matrix=False)
    settings = write(tmp_path, "spark: {shuffle_partitions: 4, driver_memory: 4g}\n")
    lake = tmp_path / "lake"
    code = main(["run", "--input", str(series.family_soft), "--lake", str(lake), "--config", str(settings),
                 "--test-fraction", "0.99", "--no-report"])
    assert code == 2
    error = one_line_error(capsys, "run")
    labels = LakeReader(lake).read_small("labels")["label"].value_counts()
    assert f"ALL {labels['ALL']}, AML {labels['AML']}" in error and "training set" in error, error
    reader = LakeReader(lake)
    assert reader.exists("labels")
    assert not any(reader.exists(t) for t in ("genes", "gene_features", "feature_builds", "splits", "runs"))
