"""On a GSE13159-shaped series with all 2,096 samples: the reference study's label and split counts.

Few probes per sample keep this fast; the counts depend only on the samples and their classes.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from leukspark.lake import Lake
from leukspark.pipeline import Pipeline

MILE_INFO = Path(__file__).resolve().parents[1] / "leukspark" / "data" / "GSE13159.info"


@pytest.fixture(scope="module")
def full_sample_lake(spark, config, tmp_path_factory):
    from leukspark.synth import write_synthetic_series

    base = tmp_path_factory.mktemp("reference_shape")
    series = write_synthetic_series(base / "series", n_samples=2096, n_probes=60, seed=11, write_matrix=False)
    lake = Lake.from_config(spark, base / "lake", config)
    pipeline = Pipeline(spark, lake, config, echo=lambda message: None)
    pipeline.ingest([str(series.family_soft)])
    pipeline.labels()
    pipeline.split()
    return lake


def test_labels_keep_750_all_and_542_aml_and_exclude_804(full_sample_lake):
    # Expected counts come from the reference table, read here with the test's own parser.
    classes = [re.split(r"\s{2,}", line.strip())[-1] for line in MILE_INFO.read_text().splitlines()[1:] if line.strip()]
    expected_aml = sum(c.startswith("AML") for c in classes)
    expected_all = sum(bool(re.search(r"\bALL\b", c)) for c in classes)
    labels = full_sample_lake.read("labels").groupBy("label").count().collect()
    counts = {r["label"]: r["count"] for r in labels}
    assert counts == {"ALL": expected_all, "AML": expected_aml} == {"ALL": 750, "AML": 542}
    assert full_sample_lake.read("excluded_samples").count() == len(classes) - 750 - 542 == 804
    subtypes = {r["subtype"] for r in full_sample_lake.read("labels").select("subtype").distinct().collect()}
    assert len(subtypes) == 14  # 8 ALL + 6 AML classes kept as subtypes


def test_split_gives_1033_train_and_259_test_with_balanced_folds(full_sample_lake):
    split = full_sample_lake.read("splits").toPandas()
    assert (split["set"] == "train").sum() == 1033
    assert (split["set"] == "test").sum() == 259
    train = split[split["set"] == "train"]
    ratio = (train["label"] == "AML").mean()
    for fold, part in train.groupby("fold"):
        assert abs((part["label"] == "AML").sum() - ratio * len(part)) <= 1.0, fold
    test = split[split["set"] == "test"]
    assert abs((test["label"] == "AML").sum() - 542 / 1292 * 259) <= 1.0
