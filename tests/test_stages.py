"""The pure stages on tiny inputs with exact expectations: labels, split, readers.

(The probe-to-gene collapse and `build_features` are in test_collapse.py; the whole chain on a
generated series is in test_pipeline.py.)
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from leukspark import schemas
from leukspark.errors import GeoFormatError, LabelError, SplitError
from leukspark.geo.soft import PlatformRecord, SampleTable, SeriesRecord, iter_geo_records
from leukspark.matrix import iter_matrix_records, read_matrix
from leukspark.stages.labels import assign_labels, read_label_rows
from leukspark.stages.split import TEST, TRAIN, extend_split, stratified_split

RULES = {
    "subtype_field": "characteristics.leukemia class",
    "rules": [
        {"field": "characteristics.leukemia class", "pattern": "\\bALL\\b", "label": "ALL"},
        {"field": "characteristics.leukemia class", "pattern": "^AML\\b", "label": "AML"},
    ],
}


def _samples(spark, classes: dict[str, str | None]):
    rows = [(gsm, "GSE1", "GPL1", gsm, "bone marrow", {"leukemia class": c} if c is not None else {}, [], [],
             0, 0, "x", "log2", [], "f", None) for gsm, c in classes.items()]
    return spark.createDataFrame(rows, schemas.SAMPLES)


# -- labels -------------------------------------------------------------------------------
def test_assign_labels_puts_every_sample_in_exactly_one_table(spark):
    samples = _samples(spark, {
        "GSM1": "T-ALL", "GSM2": "Pro-B-ALL with t(9;22)", "GSM3": "AML with inv(16)/t(16;16)",
        "GSM4": "CLL", "GSM5": None, "GSM6": "ALL transformed from AML",
        "GSM7": "mature B-ALL",  # "B-ALL" has ALL as a word
    })
    labels, excluded = assign_labels(samples, RULES)
    got = {r["sample"]: (r["label"], r["subtype"], r["rule"]) for r in labels.collect()}
    assert got == {
        "GSM1": ("ALL", "T-ALL", "rule 0: characteristics.leukemia class ~ \\bALL\\b"),
        "GSM2": ("ALL", "Pro-B-ALL with t(9;22)", "rule 0: characteristics.leukemia class ~ \\bALL\\b"),
        "GSM3": ("AML", "AML with inv(16)/t(16;16)", "rule 1: characteristics.leukemia class ~ ^AML\\b"),
        "GSM6": ("ALL", "ALL transformed from AML", "rule 0: characteristics.leukemia class ~ \\bALL\\b"),
        "GSM7": ("ALL", "mature B-ALL", "rule 0: characteristics.leukemia class ~ \\bALL\\b"),
    }
    reasons = {r["sample"]: (r["subtype"], r["reason"]) for r in excluded.collect()}
    assert reasons["GSM4"] == ("CLL", "no label rule matched")
    assert reasons["GSM5"] == (None, "no label rule matched")
    assert set(reasons) == {"GSM4", "GSM5"}  # GSM6 "ALL ... from AML" does not start with AML: ALL only


def test_a_sample_matched_by_rules_of_both_labels_is_excluded_with_both_rules(spark):
    rules = {**RULES, "rules": RULES["rules"] + [{"field": "title", "pattern": "^GSM9$", "label": "AML"}]}
    labels, excluded = assign_labels(_samples(spark, {"GSM9": "c-ALL"}), rules)
    assert labels.count() == 0
    reason = excluded.collect()[0]["reason"]
    assert reason == ("rules of both labels matched: rule 0: characteristics.leukemia class ~ \\bALL\\b; "
                      "rule 2: title ~ ^GSM9$")


def test_read_label_rows_reads_csv_tsv_and_cls_exactly(tmp_path):
    csv_file = tmp_path / "labels.csv"
    csv_file.write_text("Sample,Label,subtype\nGSM1, all ,T-ALL\nGSM2,AML,\n")
    assert read_label_rows(csv_file) == [("GSM1", "ALL", "T-ALL", "label file labels.csv", None),
                                         ("GSM2", "AML", "AML", "label file labels.csv", None)]
    tsv_file = tmp_path / "labels.tsv"
    tsv_file.write_text("sample\tlabel\nGSM3\tALL\n")
    assert read_label_rows(tsv_file) == [("GSM3", "ALL", "ALL", "label file labels.tsv", None)]
    cls_file = tmp_path / "golub.cls"
    cls_file.write_text("3 2 1\n# ALL AML\n0 1 0\n")
    assert read_label_rows(cls_file, sample_order=["S1", "S2", "S3"]) == [
        ("S1", "ALL", "ALL", "label file golub.cls", None), ("S2", "AML", "AML", "label file golub.cls", None),
        ("S3", "ALL", "ALL", "label file golub.cls", None)]
    with pytest.raises(LabelError, match="labelled twice"):
        (tmp_path / "twice.csv").write_text("sample,label\nGSM1,ALL\nGSM1,AML\n")
        read_label_rows(tmp_path / "twice.csv")


# -- split --------------------------------------------------------------------------------
def _labels(n_all: int, n_aml: int) -> pd.DataFrame:
    return pd.DataFrame({"sample": [f"GSM{i:03d}" for i in range(n_all + n_aml)],
                         "label": ["ALL"] * n_all + ["AML"] * n_aml})


def test_stratified_split_sizes_strata_and_folds_are_exact():
    split = stratified_split(_labels(30, 20), 0.2, 5, seed=7)
    assert len(split) == 50 and split["sample"].is_unique
    test, train = split[split["set"] == TEST], split[split["set"] == TRAIN]
    assert test["label"].value_counts().to_dict() == {"ALL": 6, "AML": 4}      # 20 % of each class
    assert test["fold"].isna().all()
    per_fold = train.groupby("fold")["label"].value_counts().unstack()
    assert sorted(per_fold.index) == [0, 1, 2, 3, 4]
    # 24 ALL and 16 AML train: each class spread over the folds as evenly as it divides
    assert sorted(per_fold["ALL"].tolist()) == [4, 5, 5, 5, 5] and sorted(per_fold["AML"].tolist()) == [3, 3, 3, 3, 4]


def test_stratified_split_ignores_row_order_and_depends_on_the_seed():
    labels = _labels(30, 20)
    first = stratified_split(labels, 0.2, 5, seed=7)
    shuffled = stratified_split(labels.sample(frac=1.0, random_state=3), 0.2, 5, seed=7)
    pd.testing.assert_frame_equal(first, shuffled)
    assert not first["set"].equals(stratified_split(labels, 0.2, 5, seed=8)["set"])


def test_cross_validation_only_and_too_small_classes():
    cv_only = stratified_split(_labels(6, 4), 0.0, 3, seed=1)
    assert (cv_only["set"] == TRAIN).all() and sorted(cv_only["fold"].unique()) == [0, 1, 2]
    with pytest.raises(SplitError, match="both ALL and AML"):
        stratified_split(_labels(5, 0), 0.2, 3, seed=1)
    with pytest.raises(SplitError, match="too few samples of class AML"):
        stratified_split(_labels(10, 2), 0.2, 3, seed=1)


def test_extend_split_keeps_earlier_assignments():
    stored = stratified_split(_labels(30, 20), 0.2, 5, seed=7)
    grown = pd.concat([_labels(30, 20), pd.DataFrame({"sample": ["GSM900", "GSM901"], "label": ["ALL", "AML"]})])
    extended = extend_split(stored, grown, 0.2, 5, seed=7)
    kept = extended.set_index("sample").loc[stored["sample"]]
    assert kept["set"].tolist() == stored["set"].tolist()
    assert [None if pd.isna(f) else int(f) for f in kept["fold"]] == [None if pd.isna(f) else int(f) for f in stored["fold"]]
    assert set(extended["sample"]) == set(grown["sample"])


# -- readers ------------------------------------------------------------------------------
def test_read_matrix_csv_and_gct_give_these_numbers(tmp_path):
    csv_file = tmp_path / "m.csv"
    csv_file.write_text("gene,S1,S2\nTP53,1.5,\nMPO,-2,3e2\n")
    frame = read_matrix(csv_file)
    assert list(frame.columns) == ["S1", "S2"] and list(frame.index) == ["TP53", "MPO"]
    assert frame.loc["TP53", "S1"] == 1.5 and np.isnan(frame.loc["TP53", "S2"])
    assert frame.loc["MPO", "S1"] == -2.0 and frame.loc["MPO", "S2"] == 300.0
    gct = tmp_path / "m.gct"
    gct.write_text("#1.2\n2\t2\nName\tDescription\tS1\tS2\nTP53\tna\t1.5\t\nMPO\tna\t-2\t3e2\n")
    pd.testing.assert_frame_equal(read_matrix(gct), frame, check_names=False)


def test_matrix_records_are_one_table_per_sample_and_refuse_probe_ids(tmp_path):
    path = tmp_path / "cohort.csv"
    path.write_text("gene,S1,S2\nTP53,1,2\nMPO,3,\n")
    records = list(iter_matrix_records(path))
    assert [type(r) for r in records] == [SeriesRecord, PlatformRecord, SampleTable, SampleTable]
    s2 = records[3]
    assert s2.sample.accession == "S2" and s2.probe_id.to_pylist() == ["TP53", "MPO"]
    assert s2.value.to_pylist() == [2.0, None] and s2.n_missing == 1
    probes = tmp_path / "probes.csv"
    probes.write_text("probe,S1\n1007_s_at,1\n1053_at,2\n")
    with pytest.raises(GeoFormatError, match="probe ids"):
        list(iter_matrix_records(probes))


def test_a_tiny_family_soft_gives_its_series_platform_and_sample_values(tmp_path):
    path = tmp_path / "GSE9_family.soft"
    path.write_text("\n".join([
        "^SERIES = GSE9", "!Series_title = tiny", "!Series_sample_id = GSM91", "!Series_platform_id = GPL9",
        "^PLATFORM = GPL9", "!Platform_title = chip", "!platform_table_begin", "ID\tGene Symbol",
        "p1\tTP53", "p2\tMPO /// CD33", "!platform_table_end",
        "^SAMPLE = GSM91", "!Sample_title = patient 1", "!Sample_platform_id = GPL9",
        "!Sample_characteristics_ch1 = leukemia class: T-ALL", "!Sample_data_row_count = 2",
        "!sample_table_begin", "ID_REF\tVALUE", "p1\t7.25", "p2\tnull", "!sample_table_end", ""]))
    records = list(iter_geo_records(path))
    series = next(r for r in records if isinstance(r, SeriesRecord))
    platform = next(r for r in records if isinstance(r, PlatformRecord))
    sample = next(r for r in records if isinstance(r, SampleTable))
    assert series.accession == "GSE9" and series.sample_ids == ["GSM91"]
    assert platform.accession == "GPL9" and platform.table.num_rows == 2
    assert sample.sample.accession == "GSM91" and sample.sample.platform == "GPL9"
    assert sample.sample.characteristics == {"leukemia class": "T-ALL"}
    assert sample.probe_id.to_pylist() == ["p1", "p2"] and sample.value.to_pylist() == [7.25, None]
    assert sample.n_missing == 1
