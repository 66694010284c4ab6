"""Configuration is validated at load, and errors name the bad key."""

from __future__ import annotations

import pytest

from leukspark.config import config_hash, load_config
from leukspark.errors import ConfigError


def write(tmp_path, text):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_defaults_load_and_user_file_merges_over_them(tmp_path):
    config = load_config(write(tmp_path, "features:\n  aggregate: median\nsplit:\n  seed: 7\n"))
    assert config["features"]["aggregate"] == "median"
    assert config["features"]["multi_gene"] == "drop"  # untouched default
    assert config["split"]["seed"] == 7 and config["split"]["folds"] == 5


@pytest.mark.parametrize("text, key", [
    ("features:\n  agregate: mean\n", "features.agregate"),
    ("featurs: {}\n", "featurs"),
    ("features:\n  aggregate: average\n", "features.aggregate"),
    ("split:\n  folds: five\n", "split.folds"),
    ("split:\n  test_fraction: 1.5\n", "split.test_fraction"),
    ("features:\n  scale_per_sample: 1\n", "features.scale_per_sample"),
    ("lake:\n  engine: hive\n", "lake.engine"),
    ("labels:\n  rules:\n    - {field: title, pattern: 'x', label: CLL}\n", "labels.rules[0].label"),
    ("labels:\n  rules:\n    - {field: title, pattern: '(', label: ALL}\n", "labels.rules[0].pattern"),
    ("labels:\n  rules:\n    - {field: title, label: ALL}\n", "labels.rules[0]"),
    ("training:\n  models: []\n", "training.models"),
])
def test_bad_values_name_the_key(tmp_path, text, key):
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, text))
    assert key in str(error.value)
    assert "run.yaml" in str(error.value)


def test_missing_file_and_bad_yaml_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "features: [unclosed\n"))


def test_unknown_model_parameter_fails_before_training():
    from leukspark.errors import ModelError
    from leukspark.stages.train import plan_tasks

    with pytest.raises(ModelError, match="n_trees"):
        plan_tasks(["random_forest"], 5, {"random_forest": {"n_trees": 10}})


def test_config_hash_ignores_where_spark_runs_but_not_what_is_trained(tmp_path):
    base = load_config()
    moved = load_config(overrides={"spark.master": "local[1]"})
    retrained = load_config(overrides={"split.seed": 1})
    assert config_hash(base) == config_hash(moved)
    assert config_hash(base) != config_hash(retrained)


def test_model_defaults_in_conf_match_the_registry():
    from leukspark.models import REGISTRY

    params = load_config()["training"]["params"]
    assert set(params) == set(REGISTRY)
    for name, spec in REGISTRY.items():
        assert spec.resolve_params(params[name]) == spec.default_params, name
