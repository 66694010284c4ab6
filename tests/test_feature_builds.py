"""Which features build a run trains on: a run whose features another run rebuilt (between its
features and train steps) fails with FeaturesReplacedError and never records success."""

from __future__ import annotations

import pytest

from leukspark.config import load_config
from leukspark.lake import Lake, LakeReader
from leukspark.pipeline import Pipeline

FAST = {"spark.shuffle_partitions": 4, "training.models": ["logistic_regression"], "split.folds": 2,
        "training.ood_check": False}


@pytest.fixture
def labelled_lake(spark, tmp_path):
    from leukspark.synth import write_synthetic_series

    series = write_synthetic_series(tmp_path / "series", n_samples=30, n_probes=300, seed=11, write_matrix=False)
    config = load_config(overrides=FAST)
    lake = Lake.from_config(spark, tmp_path / "lake", config)
    first = Pipeline(spark, lake, config, echo=lambda _m: None)
    first.ingest([str(series.family_soft)])
    first.labels()
    return lake


def _pipeline(spark, lake, **features):
    overrides = dict(FAST, **{f"features.{k}": v for k, v in features.items()})
    return Pipeline(spark, lake, load_config(overrides=overrides), echo=lambda _m: None, feature_build_wait_s=1.0)


def test_a_run_whose_features_another_run_rebuilt_fails_and_records_no_success(spark, labelled_lake):
    from leukspark.errors import FeaturesReplacedError

    run_max, run_mean = _pipeline(spark, labelled_lake, aggregate="max"), _pipeline(spark, labelled_lake)
    run_max.features()
    run_mean.features()            # another run rebuilds the features with its own settings
    with pytest.raises(FeaturesReplacedError, match="another run rebuilt the features"):
        run_max.split()
    with pytest.raises(FeaturesReplacedError, match="another run rebuilt the features"):
        run_max.train()
    runs = LakeReader(labelled_lake.root).read_small("runs")
    assert list(runs["status"]) == ["failed"]

    run_mean.split()               # the run whose build is stored trains on it
    run_mean.train()
    runs = LakeReader(labelled_lake.root).read_small("runs")
    assert sorted(runs["status"]) == ["failed", "succeeded"]


def test_a_train_without_its_own_features_step_needs_features_of_its_settings(spark, labelled_lake):
    from leukspark.errors import FeaturesReplacedError

    _pipeline(spark, labelled_lake).features()
    _pipeline(spark, labelled_lake).split()
    with pytest.raises(FeaturesReplacedError, match="features.aggregate|built with other"):
        _pipeline(spark, labelled_lake, aggregate="max").train()
    skipped = _pipeline(spark, labelled_lake)
    assert skipped.features(only_if_changed=True) is None     # current: the step is skipped
    _pipeline(spark, labelled_lake, aggregate="max").features()
    with pytest.raises(FeaturesReplacedError, match="another run rebuilt the features"):
        skipped.train()


def test_genes_and_vectors_of_different_builds_are_refused(spark, labelled_lake, monkeypatch):
    from leukspark.errors import FeaturesReplacedError

    run = _pipeline(spark, labelled_lake)
    run.features()
    other = _pipeline(spark, labelled_lake, aggregate="max")
    # the other build stops after its vectors' commit (killed before `genes` and feature_builds)
    monkeypatch.setattr(Lake, "overwrite_small", lambda *a, **k: (_ for _ in ()).throw(OSError("killed")))
    with pytest.raises(OSError):
        other.features()
    monkeypatch.undo()
    with pytest.raises(FeaturesReplacedError, match="not recorded by a finished features build"):
        run.train()
    assert _pipeline(spark, labelled_lake).features(only_if_changed=True) is not None  # rebuilt, not skipped
