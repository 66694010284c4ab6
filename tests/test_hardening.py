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
