"""Values no array measures: a labelled sample without any measured value is excluded from
training (named, with a reason), and a finite value too large for any expression array is
refused at ingest, naming the sample."""

from __future__ import annotations

from pathlib import Path

import pytest

from leukspark.config import load_config
from leukspark.errors import GeoFormatError
from leukspark.lake import Lake
from leukspark.pipeline import Pipeline

GENES = [f"GENE{i}" for i in range(12)]


def _matrix(path: Path, columns: dict[str, list[str]]) -> Path:
    lines = ["gene," + ",".join(columns)]
    lines += [",".join([gene] + [values[i] for values in columns.values()]) for i, gene in enumerate(GENES)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_labelled_sample_without_any_measured_value_is_excluded_with_its_reason(spark, tmp_path):
    columns = {f"S{i}": [f"{5 + i + 0.1 * g:.2f}" for g in range(len(GENES))] for i in range(1, 6)}
    columns["S6"] = ["NA"] * len(GENES)
    matrix = _matrix(tmp_path / "cohort.csv", columns)
    labels = tmp_path / "labels.csv"
    labels.write_text("sample,label\n" + "".join(f"S{i},{'AML' if i % 2 else 'ALL'}\n" for i in range(1, 7)))
    config = load_config(overrides={"spark.shuffle_partitions": 4})
    printed: list[str] = []
    pipeline = Pipeline(spark, Lake.from_config(spark, tmp_path / "lake", config), config, echo=printed.append)
    pipeline.ingest([str(matrix)])
    kept, excluded = pipeline.labels(str(labels))
    assert (kept, excluded) == (5, 1)
    assert sorted(r["sample"] for r in pipeline.lake.read("labels").collect()) == [f"S{i}" for i in range(1, 6)]
    rows = {r["sample"]: r["reason"] for r in pipeline.lake.read("excluded_samples").collect()}
    assert list(rows) == ["S6"] and "no measured value" in rows["S6"]
    assert any("S6" in line and "no measured value" in line for line in printed), printed


@pytest.mark.parametrize("value", ["1.7e308", "-1e300", "3e20"])
def test_a_finite_value_beyond_any_array_is_refused_at_ingest_naming_the_sample(tmp_path, value):
    from leukspark.stages.ingest import parse_source

    columns = {f"S{i}": [f"{5 + i + 0.1 * g:.2f}" for g in range(len(GENES))] for i in range(1, 4)}
    columns["S2"][3] = value
    matrix = _matrix(tmp_path / "cohort.csv", columns)
    (tmp_path / "staging").mkdir()
    with pytest.raises(GeoFormatError,
                       match=r"cohort.csv, sample S2: probe GENE3: value .* is larger than any expression array"):
        parse_source(matrix, tmp_path / "staging", {}, file_tag="t")


def test_large_but_real_intensities_are_ingested(tmp_path):
    from leukspark.stages.ingest import parse_source

    columns = {f"S{i}": [f"{65535.0 * (g + 1):.1f}" for g in range(len(GENES))] for i in range(1, 3)}
    (tmp_path / "staging").mkdir()
    parsed = parse_source(_matrix(tmp_path / "cohort.csv", columns), tmp_path / "staging", {}, file_tag="t")
    assert [row["sample"] for row in parsed.sample_rows] == ["S1", "S2"]
