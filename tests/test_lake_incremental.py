"""A lake that grows by series: the features of new samples are appended in one commit and equal,
value for value, a full rebuild of the same lake; a changed setting rebuilds every vector and says
why; a failed append leaves the table as it was and the next build finishes without duplicates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from leukspark import schemas
from leukspark.config import load_config
from leukspark.lake import Lake, LakeReader
from leukspark.pipeline import Pipeline
from leukspark.stages import features as feature_stage

FAST = {"spark.shuffle_partitions": 4, "training.models": ["logistic_regression"], "split.folds": 2,
        "training.ood_check": False}
N_SAMPLES, N_PROBES = 40, 300


@pytest.fixture(scope="module")
def two_series(tmp_path_factory):
    from leukspark.synth import write_synthetic_series

    base = tmp_path_factory.mktemp("incremental_series")
    return [write_synthetic_series(base / f"s{k}", n_samples=N_SAMPLES, n_probes=N_PROBES, seed=11, series_index=k,
                                   write_matrix=False) for k in (0, 1)]


def _pipeline(spark, root: Path, messages: list | None = None, **features) -> Pipeline:
    config = load_config(overrides=dict(FAST, **{f"features.{k}": v for k, v in features.items()}))
    echo = messages.append if messages is not None else (lambda _m: None)
    return Pipeline(spark, Lake.from_config(spark, root, config), config, echo=echo, feature_build_wait_s=1.0)


def _add_series(pipeline: Pipeline, *series) -> None:
    pipeline.ingest([str(s.family_soft) for s in series])
    pipeline.labels()


def _vectors(root: Path) -> tuple[dict, list]:
    reader = LakeReader(root)
    frame = reader.read_small("gene_features")
    genes = reader.read_small("genes").sort_values("position")["gene"].tolist()
    assert frame["sample"].is_unique
    return {s: np.asarray(v, dtype=float) for s, v in zip(frame["sample"], frame["features"])}, genes


def _table_files(lake: Lake, table: str) -> dict[str, tuple[int, int]]:
    """Every data file of the table folder, with its size and modification time."""
    folder = Path(lake.path(table))
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*.parquet")}


@pytest.fixture(scope="module")
def grown_and_fresh(spark, two_series, tmp_path_factory):
    """Lake `grown`: series A built, then B added and built incrementally; lake `fresh`: A+B built at once."""
    root = tmp_path_factory.mktemp("incremental_lakes")
    grown = _pipeline(spark, root / "grown")
    _add_series(grown, two_series[0])
    grown.features()
    before = {"files": _table_files(grown.lake, "gene_features"), "active": set(grown.lake.active_files("gene_features")),
              "vectors": grown.lake.version("gene_features"), "genes": grown.lake.version("genes")}
    _add_series(grown, two_series[1])
    messages: list = []
    grown.echo = messages.append
    grown.features(only_if_changed=True)
    fresh = _pipeline(spark, root / "fresh")
    _add_series(fresh, *two_series)
    fresh.features()
    return grown, fresh, before, messages


def test_appended_vectors_equal_a_full_rebuild_value_for_value(grown_and_fresh, two_series):
    grown, fresh, _, messages = grown_and_fresh
    grown_vectors, grown_genes = _vectors(Path(grown.lake.root))
    fresh_vectors, fresh_genes = _vectors(Path(fresh.lake.root))
    assert grown_genes == fresh_genes
    assert set(grown_vectors) == set(fresh_vectors)
    assert set(two_series[1].sample_ids) & set(grown_vectors)     # the new series is in
    for sample, vector in fresh_vectors.items():
        assert np.array_equal(grown_vectors[sample], vector, equal_nan=True), sample
    assert any("appended the vectors of" in m for m in messages), messages
    builds = LakeReader(grown.lake.root).read_small("feature_builds")
    builds = builds.sort_values("built_at")
    last = builds.iloc[-1]
    labelled_b = set(LakeReader(grown.lake.root).read_small("labels")["sample"]) & set(two_series[1].sample_ids)
    assert (last["kind"], last["n_built"]) == ("incremental", len(labelled_b))
    assert list(builds["kind"]) == ["full", "incremental"]


def test_the_append_is_one_commit_that_leaves_stored_files_untouched(grown_and_fresh):
    grown, _, before, _ = grown_and_fresh
    assert grown.lake.version("gene_features") == before["vectors"] + 1
    assert grown.lake.version("genes") == before["genes"]                      # genes unchanged
    assert before["active"] < set(grown.lake.active_files("gene_features"))   # nothing removed
    after = _table_files(grown.lake, "gene_features")
    assert {k: after[k] for k in before["files"]} == before["files"]          # same files, same bytes, same times
    assert grown.lake.history("gene_features")[0]["operation"] != "overwrite"


def test_training_accepts_the_incremental_build(spark, grown_and_fresh):
    grown, _, _, _ = grown_and_fresh
    # a run that did not make the build itself reads it as a finished build of its samples and settings
    genes, files = _pipeline(spark, Path(grown.lake.root))._features_to_train_on()
    assert len(genes) == grown.lake.read("genes").count()
    assert set(files) == set(grown.lake.active_files("gene_features"))
    grown.split()           # the run that made it: its own build (check_feature_build)
    assert grown._features_to_train_on()[0] == genes


def test_refusals_name_removed_and_changed_samples():
    config = load_config(overrides=FAST)["features"]
    checksums = {"GSM1": "a", "GSM2": "b", "GSM3": "c"}
    stored = feature_stage.StoredBuild(feature_stage.settings_digest(config), "u",
                                       feature_stage.samples_digest({"GSM1": "a", "GSM2": "b"}), {"GSM1", "GSM2"})
    assert feature_stage.incremental_refusal(stored, config, checksums, True) is None
    assert "GSM2" in feature_stage.incremental_refusal(stored, config, {"GSM1": "a", "GSM3": "c"}, True)
    assert "values of stored samples changed" in feature_stage.incremental_refusal(
        stored, config, {**checksums, "GSM2": "other"}, True)
    assert "relational form" in feature_stage.incremental_refusal(stored, config, checksums, False)
    older = feature_stage.StoredBuild(None, None, None, {"GSM1"})
    assert "predates" in feature_stage.incremental_refusal(older, config, checksums, True)


def test_a_failed_append_leaves_the_table_then_appends_and_a_changed_setting_rebuilds_all(
        spark, two_series, tmp_path, monkeypatch):
    pipeline = _pipeline(spark, tmp_path / "lake")
    _add_series(pipeline, two_series[0])
    pipeline.features()
    _add_series(pipeline, two_series[1])
    version, files = pipeline.lake.version("gene_features"), _table_files(pipeline.lake, "gene_features")
    folders = sorted(p.name for p in Path(pipeline.lake.path("gene_features")).iterdir())
    real_commit = Lake.commit_staged

    def failing(self, staged, schema, **kwargs):
        if kwargs.get("based_on") is not None:
            raise OSError("disk full while committing the append")
        return real_commit(self, staged, schema, **kwargs)

    monkeypatch.setattr(Lake, "commit_staged", failing)
    with pytest.raises(OSError, match="disk full"):
        pipeline.features(only_if_changed=True)
    monkeypatch.undo()
    assert pipeline.lake.version("gene_features") == version
    assert _table_files(pipeline.lake, "gene_features") == files
    assert sorted(p.name for p in Path(pipeline.lake.path("gene_features")).iterdir()) == folders  # no staging left
    messages: list = []
    pipeline.echo = messages.append
    pipeline.features(only_if_changed=True)
    assert any("appended the vectors of" in m for m in messages), messages
    vectors, _ = _vectors(Path(pipeline.lake.root))     # asserts unique samples
    labelled = set(LakeReader(pipeline.lake.root).read_small("labels")["sample"])
    assert set(vectors) == labelled
    assert schemas.FEATURE_BUILDS.fieldNames() == list(LakeReader(pipeline.lake.root).read_small("feature_builds").columns)

    # a changed setting rebuilds every vector, and says why in one line
    messages.clear()
    assert _pipeline(spark, tmp_path / "lake", messages, aggregate="max").features() is not None
    reasons = [m for m in messages if m.startswith("features: rebuilding every sample's vector")]
    assert reasons == ["features: rebuilding every sample's vector: the features settings changed"]
    builds = LakeReader(tmp_path / "lake").read_small("feature_builds").sort_values("built_at")
    assert list(builds["kind"]) == ["full", "incremental", "full"]
    assert set(_vectors(Path(pipeline.lake.root))[0]) == labelled


def test_training_matrix_is_filled_in_sample_order_as_float32(tmp_path):
    """The worker's matrix, read row group by row group, equals the table read whole (an independent
    pyarrow read), rows sorted by sample, whatever the files' order and sizes."""
    import pyarrow.parquet as pq

    from leukspark.stages.collapse import write_vector_file
    from leukspark.stages.train import load_feature_matrix

    rng = np.random.default_rng(5)
    files, ids = [], iter(f"GSM{v}" for v in rng.choice(10 ** 6, size=203, replace=False))
    for index, n in enumerate([70, 3, 130]):       # row groups of 64: several per file
        samples = [next(ids) for _ in range(n)]
        vectors = [np.where(rng.random(40) < 0.1, np.nan, rng.normal(size=40)) for _ in range(n)]
        write_vector_file(tmp_path / f"v{index}.parquet", samples, vectors)
        files.append(str(tmp_path / f"v{index}.parquet"))
    whole = pq.ParquetDataset(files).read()
    expected = dict(zip(whole.column("sample").to_pylist(), whole.column("features").to_pylist()))
    samples, matrix = load_feature_matrix(tuple(files), 40)
    assert matrix.dtype == np.float32 and list(samples) == sorted(expected)
    assert np.array_equal(matrix, np.array([expected[s] for s in samples], dtype=np.float32), equal_nan=True)
