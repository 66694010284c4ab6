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
    ("split:\n  test_fraction: 1.0\n", "split.test_fraction"),
    ("split:\n  test_fraction: -0.1\n", "split.test_fraction"),
    ("split:\n  folds: 1\n", "split.folds"),
    ("features:\n  min_genes: 0\n", "features.min_genes"),
    ("labels:\n  rules: []\n", "labels.rules"),
    ("labels:\n  strict: yes please\n", "labels.strict"),
    ("training:\n  models: [logistic_regression, random_tree]\n", "training.models[1]"),
    ("training:\n  models: [dnn, xgboost, dnn]\n", "training.models[2]"),
    ("training:\n  params:\n    logistic_regression: {C: abc}\n", "training.params.logistic_regression.C"),
    ("training:\n  params:\n    linear_svm: {C: -1}\n", "training.params.linear_svm.C"),
    ("training:\n  params:\n    random_forest: {n_estimators: 0}\n", "training.params.random_forest.n_estimators"),
    ("training:\n  params:\n    random_forest: {n_trees: 10}\n", "training.params.random_forest.n_trees"),
    ("training:\n  params:\n    xgboost: {subsample: 1.5}\n", "training.params.xgboost.subsample"),
    ("training:\n  params:\n    dnn: {dropout: 1.5}\n", "training.params.dnn.dropout"),
    ("training:\n  params:\n    dnn: {hidden_layers: []}\n", "training.params.dnn.hidden_layers"),
    ("training:\n  params:\n    dnn: {batch_size: 6.5}\n", "training.params.dnn.batch_size"),
    ("training:\n  params:\n    random_tree: {depth: 3}\n", "training.params.random_tree"),
])
def test_bad_values_name_the_key(tmp_path, text, key):
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, text))
    assert key in str(error.value)
    assert "run.yaml" in str(error.value)


def test_a_test_fraction_of_zero_is_valid_cross_validation_only(tmp_path):
    assert load_config(write(tmp_path, "split:\n  test_fraction: 0\n"))["split"]["test_fraction"] == 0


def test_model_parameters_in_range_and_null_where_allowed_load(tmp_path):
    config = load_config(write(tmp_path, "training:\n  params:\n    random_forest: {max_features: 0.3, max_depth: 8}\n"
                                         "    logistic_regression: {class_weight: balanced, C: 2}\n"))
    assert config["training"]["params"]["random_forest"]["max_features"] == 0.3
    assert config["training"]["params"]["random_forest"]["n_estimators"] == 300  # default kept


@pytest.mark.parametrize("command", [["run", "--input", "x.soft"], ["predict", "x.soft"], ["ingest", "x.soft"]])
def test_the_cli_prints_a_bad_setting_as_one_line_before_starting_anything(tmp_path, capsys, command):
    from leukspark.cli import main

    bad = write(tmp_path, "training:\n  params:\n    dnn: {dropout: 1.5}\n")
    lake = tmp_path / "lake"
    assert main([*command, "--lake", str(lake), "--config", str(bad)]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "Traceback" not in error
    assert error.startswith(f"leukspark {command[0]}: error:") and "training.params.dnn.dropout" in error
    assert not lake.exists()


def test_missing_file_and_bad_yaml_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "features: [unclosed\n"))
    # A setting given twice is refused, naming it and its line (plain YAML keeps the last silently).
    with pytest.raises(ConfigError, match=r"found the key 'flag_rate' twice[\s\S]*line 3"):
        load_config(write(tmp_path, "predict:\n  flag_rate: 0.1\n  flag_rate: 0.2\n"))
    config = load_config(write(tmp_path, "training:\n  seed: 1\nsplit:\n  seed: 2\n"))  # one key in two mappings
    assert (config["training"]["seed"], config["split"]["seed"]) == (1, 2)


def test_merge_keys_and_aliases_still_load(tmp_path):
    # YAML's merge key `<<` is no duplicate: the keys after it override the merged ones on purpose.
    text = "predict:\n  <<: {flag_rate: 0.2, abstain_rule: conformal}\n  flag_rate: 0.1\ntraining:\n  seed: &s 7\nsplit:\n  seed: *s\n"
    config = load_config(write(tmp_path, text))
    assert (config["predict"]["flag_rate"], config["predict"]["abstain_rule"]) == (0.1, "conformal")
    assert config["split"]["seed"] == 7
    # A list or mapping as a key is a YAML error of its own, not a crash of the duplicate check.
    with pytest.raises(ConfigError, match="unhashable key"):
        load_config(write(tmp_path, "predict:\n  ? [a, b]\n  : 1\n"))


def test_unknown_model_parameter_fails_before_training():
    from leukspark.errors import ModelError
    from leukspark.stages.train import plan_tasks

    with pytest.raises(ModelError, match="n_trees"):
        plan_tasks(["random_forest"], 5, {"random_forest": {"n_trees": 10}})
    with pytest.raises(ModelError, match="'n_estimators' must be an integer >= 1; got 0"):
        plan_tasks(["random_forest"], 5, {"random_forest": {"n_estimators": 0}})


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


@pytest.mark.parametrize("text, key", [
    ("tracking:\n  mlflow:\n    enabled: yes please\n", "tracking.mlflow.enabled"),
    ("tracking:\n  mlflow:\n    enabled: true\n    tracking_uri: lake/mlruns\n", "tracking.mlflow.tracking_uri"),
    ("tracking:\n  mlflow:\n    enabled: true\n    experiment: ' '\n", "tracking.mlflow.experiment"),
    ("tracking:\n  mlflow:\n    enabled: true\n    register_as: team/aml\n", "tracking.mlflow.register_as"),
    ("tracking:\n  mlflow:\n    register_as: aml\n", "tracking.mlflow.register_as"),  # tracking is off
    ("tracking:\n  mlflow:\n    server: http://x\n", "tracking.mlflow.server"),
])
def test_bad_tracking_settings_name_the_key(tmp_path, text, key):
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, text))
    assert key in str(error.value) and "run.yaml" in str(error.value)


def test_tracking_is_off_by_default_and_does_not_change_the_config_hash(tmp_path):
    base = load_config()
    assert base["tracking"]["mlflow"] == {"enabled": False, "tracking_uri": "", "experiment": "leukspark",
                                          "register_as": ""}
    tracked = load_config(write(tmp_path, "tracking:\n  mlflow:\n    enabled: true\n    register_as: aml\n"
                                          "    tracking_uri: http://127.0.0.1:5000\n"))
    assert tracked["tracking"]["mlflow"]["register_as"] == "aml"
    assert config_hash(base) == config_hash(tracked)  # turning tracking on does not make rerun retrain
