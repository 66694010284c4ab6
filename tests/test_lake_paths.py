"""Where a lake lives: paths that URL encoding changes, and lakes that are copied or moved."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
from deltalake import DeltaTable, write_deltalake

from leukspark.lake import Lake
from leukspark.pipeline import Pipeline
from leukspark.lake import LakeReader
from leukspark.predict import predict_file
from leukspark.runs import RunLog

N_PROBES = 300


@pytest.fixture(scope="module")
def two_series(tmp_path_factory):
    from leukspark.synth import write_synthetic_series

    base = tmp_path_factory.mktemp("paths_series")
    first = write_synthetic_series(base / "a", n_samples=40, n_probes=N_PROBES, seed=1, accession="GSE13159",
                                   write_matrix=False)
    # 80 samples of seed 2 share two GSM ids with the first series, with other values.
    second = write_synthetic_series(base / "b", n_samples=80, n_probes=N_PROBES, seed=2, accession="GSE99999",
                                    write_matrix=False)
    return first, second


@pytest.fixture(scope="module")
def fast(config):
    return {**config, "split": {**config["split"], "folds": 2},
            "training": {**config["training"], "models": ["logistic_regression"]},
            "ingest": {**config["ingest"], "on_conflict": "replace"}}


@pytest.mark.parametrize("name, escape", [("lake%20one", "%20"), ("lake%41", "%41"), ("data%2fmore", "%2f")])
def test_a_lake_path_that_delta_rs_would_decode_is_refused_naming_it(spark, fast, tmp_path, name, escape, capsys):
    from leukspark.cli import main
    from leukspark.errors import LakePathError

    root = tmp_path / name / "lake"
    with pytest.raises(LakePathError, match=f"holds '{escape}', which delta-rs"):
        Lake.from_config(spark, root, fast)
    with pytest.raises(LakePathError, match="percent escape"):
        LakeReader(root)
    assert main(["predict", "nothing.csv", "--lake", str(root)]) != 0
    assert "percent escape" in capsys.readouterr().err
    assert not (tmp_path / name).exists()   # refused before anything is written


@pytest.mark.parametrize("name", ["lake with spaces", "lake 100%", "lake#1", "lake-léukémie"])
def test_a_lake_path_that_url_encoding_changes_round_trips(spark, fast, tmp_path, two_series, name):
    first, second = two_series
    root = tmp_path / name / "lake"
    lake = Lake.from_config(spark, root, fast)
    pipeline = Pipeline(spark, lake, fast, echo=lambda message: None)
    pipeline.ingest([str(first.family_soft)])
    # delta-rs names the files percent-encoded: these are not paths Spark can open as they are.
    uri = DeltaTable(lake.path("expression")).file_uris()[0]
    assert str(root) not in uri

    labelled, _ = pipeline.labels()
    pipeline.features()
    assert lake.read("gene_features").count() == labelled
    assert len(LakeReader(root).read_small("samples")) == 40

    # A second ingest rewrites the files of the samples it replaces (copy-on-write through Spark).
    report = pipeline.ingest([str(second.family_soft)])
    assert report.replaced_samples
    samples = set(first.sample_ids) | set(second.sample_ids)
    per_sample = lake.read("expression").groupBy("sample").count().toPandas().set_index("sample")["count"]
    assert set(per_sample.index) == samples
    assert per_sample.eq(N_PROBES).all()
    assert lake.read("samples").count() == len(samples)


def test_a_copied_lake_predicts_with_its_own_bundles(spark, fast, tmp_path, two_series):
    first, _ = two_series
    original = tmp_path / "original" / "lake"
    lake = Lake.from_config(spark, original, fast)
    outcome = Pipeline(spark, lake, fast, echo=lambda m: None).run([str(first.family_soft)])["train"]
    run_row = LakeReader(original).read_small("runs").iloc[0]
    assert run_row["bundle_dir"] == f"models/{outcome.run_id}"  # relative to the lake root

    copy = tmp_path / "copy" / "lake"
    shutil.copytree(original, copy)
    assert RunLog(copy).bundle_dir(None, None).is_relative_to(copy.resolve())
    shutil.rmtree(original)
    scored = predict_file(first.family_soft, copy)
    assert len(scored) == 40 and all(s.error is None for s in scored)


def test_an_older_lake_with_absolute_bundle_paths_still_works_after_a_move(spark, fast, tmp_path, two_series):
    first, _ = two_series
    original = tmp_path / "original" / "lake"
    lake = Lake.from_config(spark, original, fast)
    outcome = Pipeline(spark, lake, fast, echo=lambda m: None).run([str(first.family_soft)])["train"]
    # What an older version wrote: an absolute bundle_dir and no owner columns.
    runs = LakeReader(original).read_small("runs").drop(columns=["owner_host", "owner_pid", "owner_token",
                                                            "heartbeat_at"])
    runs["bundle_dir"] = str(original.resolve() / "models" / outcome.run_id)
    write_deltalake(str(original / "runs"), runs, mode="overwrite", schema_mode="overwrite")

    moved = tmp_path / "moved" / "lake"
    shutil.copytree(original, moved)
    # Both lakes exist: the moved one must use its own bundles, not the old lake's.
    assert RunLog(moved).bundle_dir(None, None).is_relative_to(moved.resolve())
    shutil.rmtree(original)
    assert all(s.error is None for s in predict_file(first.family_soft, moved))

    # Training on it adds the owner columns to the old rows and records the new run relative.
    moved_lake = Lake.from_config(spark, moved, fast)
    second = Pipeline(spark, moved_lake, fast, echo=lambda m: None).train()
    rows = LakeReader(moved).read_small("runs").set_index("run")
    assert list(rows["status"]) == ["succeeded", "succeeded"]
    assert rows.loc[second.run_id, "bundle_dir"] == f"models/{second.run_id}"
    assert pd.isna(rows.loc[outcome.run_id, "owner_token"])
    assert RunLog(moved).bundle_dir(outcome.run_id, None).is_relative_to(moved.resolve())
