"""Label files: malformed ones are refused with one line; samples they name that the data lacks are counted."""

from __future__ import annotations

import pytest

from leukspark.errors import LabelError
from leukspark.stages.labels import read_label_rows

N_SAMPLES = 12


def write(tmp_path, name, text, encoding="utf-8"):
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


@pytest.mark.parametrize("name, text, complaint", [
    ("labels.csv", "", "the label file is empty"),
    ("labels.csv", "\n  \n", "the label file is empty"),
    ("labels.csv", "sample,label\n", "no labels below the header"),
    ("labels.cls", "three 2 1\n# ALL AML\n0 1 0\n", "line 1: a .cls file starts with three integers"),
    ("labels.cls", "3 2\n# ALL AML\n0 1 0\n", "line 1: a .cls file starts with three integers"),
])
def test_malformed_label_files_are_label_errors_naming_the_file(tmp_path, name, text, complaint):
    path = write(tmp_path, name, text)
    with pytest.raises(LabelError) as caught:
        read_label_rows(path, sample_order=["S1", "S2", "S3"])
    message = str(caught.value)
    assert str(path) in message and complaint in message and "\n" not in message


def test_a_utf16_label_file_with_a_byte_order_mark_is_read(tmp_path):
    path = write(tmp_path, "labels.csv", "sample,label\nS1,ALL\nS2,aml\n", "utf-16")
    assert [row[:2] for row in read_label_rows(path)] == [("S1", "ALL"), ("S2", "AML")]


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    from leukspark.synth import write_synthetic_series

    return write_synthetic_series(tmp_path_factory.mktemp("labels") / "series", n_samples=N_SAMPLES,
                                  n_probes=60, seed=5, write_matrix=False)


@pytest.fixture(scope="module")
def ingested(spark, config, series, tmp_path_factory):
    from leukspark.lake import Lake
    from leukspark.pipeline import Pipeline

    lake = Lake.from_config(spark, tmp_path_factory.mktemp("lake") / "lake", config)
    Pipeline(spark, lake, config, echo=lambda _: None).ingest([str(series.family_soft)])
    return lake


def label_file_with_strangers(tmp_path, series, n_strangers):
    known = [f"{s},{'AML' if i % 2 else 'ALL'}" for i, s in enumerate(series.sample_ids)]
    strangers = [f"GSM9{i:05d},ALL" for i in range(n_strangers)]
    return write(tmp_path, "labels.csv", "\n".join(["sample,label", *known, *strangers]) + "\n")


def test_labelled_samples_missing_from_the_data_are_counted_and_named(spark, config, ingested, series, tmp_path):
    from leukspark.pipeline import Pipeline

    messages: list[str] = []
    path = label_file_with_strangers(tmp_path, series, 7)
    kept, excluded = Pipeline(spark, ingested, config, echo=messages.append).labels(str(path))
    assert (kept, excluded) == (N_SAMPLES, 0)
    note = next(m for m in messages if "not in the data" in m)
    assert "7 labelled sample(s)" in note and "GSM900000, GSM900001" in note and "and 2 more" in note


def test_strict_labels_fail_on_a_sample_missing_from_the_data_and_write_nothing(spark, config, ingested,
                                                                               series, tmp_path):
    from leukspark.config import load_config
    from leukspark.pipeline import Pipeline

    strict = load_config(overrides={"spark.shuffle_partitions": 4, "spark.driver_memory": "4g", "labels.strict": True})
    versions = {t: ingested.version(t) if ingested.exists(t) else None for t in ("labels", "excluded_samples")}
    with pytest.raises(LabelError, match="1 labelled sample.*GSM900000.*labels.strict"):
        Pipeline(spark, ingested, strict, echo=lambda _: None).labels(str(label_file_with_strangers(tmp_path, series, 1)))
    assert {t: ingested.version(t) if ingested.exists(t) else None for t in versions} == versions
    # Every sample known: strict mode has nothing to object to.
    kept, _ = Pipeline(spark, ingested, strict, echo=lambda _: None).labels(
        str(label_file_with_strangers(tmp_path, series, 0)))
    assert kept == N_SAMPLES


def test_the_cli_refuses_an_empty_label_file_before_ingesting(tmp_path, series, capsys):
    from leukspark.cli import main

    lake = tmp_path / "lake"
    empty = write(tmp_path, "labels.csv", "")
    settings = write(tmp_path, "small.yaml", "spark: {shuffle_partitions: 4, driver_memory: 4g}\n")
    code = main(["run", "--input", str(series.family_soft), "--labels", str(empty), "--lake", str(lake),
                 "--until", "labels", "--config", str(settings)])
    error = capsys.readouterr().err.strip()
    assert code == 2 and error == f"leukspark run: error: {empty}: the label file is empty"
    assert not (lake / "samples").exists()
