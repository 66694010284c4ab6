"""Configuration: `conf/default.yaml` merged with a user file, validated at load.

The default file is also the schema: a key that is not in it is unknown, and a value must
have the type of its default. Enumerations and the label rules get their own checks, so a
mistake fails at load with the dotted key that is wrong, not deep inside a Spark job.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Hashable
from importlib.resources import files
from pathlib import Path
from typing import Any, Mapping

import yaml

from . import checks
from .errors import ConfigError, describe_os_error

# conf/ lives at the repository root; leukspark/conf links to it so installs carry it too.
# Read through importlib.resources: from a --py-files zip (spark-submit puts it first on the
# driver's path too) the package has no files on disk, only entries of the zip.
DEFAULT_CONFIG_PATH = files("leukspark").joinpath("conf/default.yaml")

# Keys whose values are free-form mappings (their inner keys are not checked here).
FREE_FORM_KEYS = {"spark.extra", "training.params", "training.tuning.grids"}
# Keys that take more than one type (checked by their own rules in validate_config).
MIXED_TYPE_KEYS = {"predict.abstain_band", "features.log_floor"}
ENSEMBLES = {"soft_voting", "stacking"}

CHOICES = {
    "lake.engine": {"auto", "delta-spark", "delta-rs"},
    "ingest.on_conflict": {"fail", "replace"},
    "features.aggregate": {"mean", "median", "max", "mean_signal"},
    "features.multi_gene": {"drop", "first", "each"},
    "training.scaler": {"standard", "minmax", "none"},
    "training.best_by": {"accuracy", "roc_auc", "f1", "sensitivity", "specificity", "precision"},
    "features.transform": {"auto", "log2", "none"},
    "features.normalize": {"none", "quantile", "rank"},
    "training.calibration": {"none", "platt", "isotonic"},
    "predict.abstain_rule": {"conformal", "target_accuracy"},
    "predict.other_disease_check": {"auto", "none"},
    "training.selection": {"none", "variance", "t_test", "moderated_t"},
    "training.tuning.method": {"none", "grid", "random"},
    "training.tuning.metric": {"roc_auc", "accuracy", "brier", "log_loss"},
    "training.target": {"label", "lineage", "subtype"},
}

# Ranges of numeric settings (their types come from the defaults). A test fraction of 0
# means cross-validation only, with no held-out set.
RANGES = {
    "spark.shuffle_partitions": checks.integer(1),
    "lake.commit_attempts": checks.integer(1),
    "lake.heartbeat_interval_s": checks.positive(),
    "lake.owner_timeout_s": checks.positive(),
    "ingest.split_file_mb": checks.number(0),
    "features.min_genes": checks.integer(1),
    "split.test_fraction": checks.number(0, 1, high_open=True),
    "split.folds": checks.integer(2),
    "predict.max_missing_gene_fraction": checks.number(0, 1),
    "predict.min_shared_gene_fraction": checks.number(0, 1),
    "predict.range_margin": checks.number(0, 1),
    "features.log_floor": checks.positive(special=("auto", "none")),
    "predict.target_accuracy": checks.number(0, 1, low_open=True),
    "predict.max_error_rate": checks.number(0, 1, low_open=True, high_open=True),
    "predict.flag_rate": checks.number(0, 1, low_open=True, high_open=True),
    "training.isotonic_min_samples": checks.integer(2),
    "training.selection_k": checks.integer(1),
    "training.best_within": checks.number(0, 1),
    "training.marker_top_n": checks.integer(1),
    "training.tuning.n_candidates": checks.integer(1),
    "training.tuning.inner_folds": checks.integer(2),
    "report.tsne_perplexity": checks.positive(),
    "report.top_genes": checks.integer(1),
}

# Folders of the lake that are not catalog tables: a table may not be one of them or lie in one.
LAKE_FOLDERS = ("models", "reports")

LABELS = {"ALL", "AML"}
RULE_KEYS = {"field", "pattern", "label"}


def load_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> dict:
    """Return the validated configuration: defaults, then `path`, then dotted `overrides`."""
    defaults = _read_yaml(DEFAULT_CONFIG_PATH)
    config = copy.deepcopy(defaults)
    source = str(DEFAULT_CONFIG_PATH)
    if path is not None:
        user = _read_yaml(Path(path))
        source = str(path)
        _check_keys(user, defaults, prefix="", source=source)
        config = _deep_merge(config, user)
    for dotted, value in (overrides or {}).items():
        _set_dotted(config, dotted, value)
    validate_config(config, source=source, defaults=defaults)
    config["training"]["params"] = resolved_model_params(config["training"]["params"])
    return config


def resolved_model_params(overrides: Mapping[str, Mapping]) -> dict[str, dict]:
    """Every registered model's parameters: its module's defaults, then the configuration's overrides.

    The defaults live on the model's spec only; `training.params` in the YAML holds overrides.
    """
    from .models import REGISTRY

    return {name: spec.resolve_params(overrides.get(name)) for name, spec in sorted(REGISTRY.items())}


def validate_config(config: dict, source: str = "configuration", defaults: dict | None = None) -> None:
    """Raise ConfigError naming the first bad key of `config`."""
    _check_keys(config, defaults if defaults is not None else _read_yaml(DEFAULT_CONFIG_PATH), prefix="",
                source=source)
    # NaN passes every comparison and infinity every open range: no setting may hold either.
    if (found := checks.non_finite_number(config)) is not None:
        raise ConfigError(f"{source}: {found[0]} must be a finite number; got {found[1]!r}")
    _check_catalog(config["tables"], source)
    if (problem := model_choice_problem(get(config, "predict.model"))) is not None:
        raise ConfigError(f"{source}: predict.model {problem}")
    for dotted, allowed in CHOICES.items():
        value = get(config, dotted)
        if value not in allowed:
            raise ConfigError(
                f"{source}: {dotted} must be one of {', '.join(sorted(allowed))}; got {value!r}"
            )
    for dotted, check in RANGES.items():
        if (problem := check.problem(get(config, dotted))) is not None:
            raise ConfigError(f"{source}: {dotted} {problem}")
    _check_models(config["training"], source)
    band = get(config, "predict.abstain_band")
    if isinstance(band, list):
        if not (len(band) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in band)
                and 0 <= band[0] <= 0.5 <= band[1] <= 1):
            raise ConfigError(f"{source}: predict.abstain_band as a list must be [lo, hi] with "
                              f"0 <= lo <= 0.5 <= hi <= 1; got {band!r}")
    elif band not in ("auto", "none"):
        raise ConfigError(f"{source}: predict.abstain_band must be auto, none or [lo, hi]; got {band!r}")
    unknown = [e for e in get(config, "training.ensembles") if e not in ENSEMBLES]
    if unknown:
        raise ConfigError(f"{source}: training.ensembles may hold {', '.join(sorted(ENSEMBLES))}; got {unknown[0]!r}")
    _check_label_rules(config["labels"]["rules"], source)
    _check_tracking(config["tracking"]["mlflow"], source)
    _check_lineage_rules(config["labels"]["lineage_rules"], source)


def model_choice_problem(name: Any) -> str | None:
    """Why `name` cannot name the model to score with (`best` or a registered model), or None.

    Only names: a path would load a bundle from anywhere on disk instead of the lake's own.
    """
    from .models import REGISTRY  # imported here: it loads scikit-learn

    if name == "best" or (isinstance(name, str) and name in REGISTRY):
        return None
    return f"must be best or a registered model ({', '.join(sorted(REGISTRY))}); got {name!r}"


def _check_catalog(tables: Mapping[str, Any], source: str) -> None:
    """Every table folder strictly inside the lake, and no two the same folder or one inside another."""
    from pathlib import PurePosixPath

    folders: dict[tuple[str, ...], str] = {(name,): f"the lake's own {name}/ folder" for name in LAKE_FOLDERS}
    for table, name in tables.items():
        if (problem := checks.relative_folder_problem(name)) is not None:
            raise ConfigError(f"{source}: tables.{table} {problem}")
        # Case folded: on a case-insensitive file system 'Labels' and 'labels' are one folder.
        parts = tuple(p.casefold() for p in PurePosixPath(name).parts if p != ".")
        for other, owner in folders.items():
            shorter = min(len(parts), len(other))
            if parts[:shorter] == other[:shorter]:
                relation = "the same folder as" if len(parts) == len(other) else "nested with"
                raise ConfigError(f"{source}: tables.{table} ({name!r}) is {relation} {owner}: every table needs "
                                  "a folder of its own inside the lake")
        folders[parts] = f"tables.{table} ({name!r})"


def get(config: Mapping, dotted: str) -> Any:
    """Value at a dotted key such as 'features.aggregate'."""
    node: Any = config
    for part in dotted.split("."):
        node = node[part]
    return node


def config_hash(config: Mapping) -> str:
    """A short stable hash of the settings that change results (not where Spark runs)."""
    import hashlib
    import json

    # Where a run is tracked (MLflow) does not change its results: turning tracking on does not retrain.
    relevant = {k: v for k, v in config.items() if k not in {"spark", "lake", "tables", "report", "tracking"}}
    text = json.dumps(relevant, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping: plain YAML keeps the last one
    silently, so a setting edited in one place would be undone by a forgotten copy further down."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":   # `<<: *defaults`: the base class merges it, and
                continue                                      # keys after it override the merged ones on purpose
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):   # the base class refuses it with its own clear error
                continue
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark, f"found the key {key!r} twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Path) -> dict:
    if not path.exists():
        raise ConfigError(f"configuration file not found: {path}")
    if path.is_dir():
        raise ConfigError(f"{path}: a folder, not a configuration file (give the YAML file itself)")
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
    except OSError as exc:
        raise ConfigError(f"configuration file {describe_os_error(exc)}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return data


def _check_keys(user: Mapping, defaults: Mapping, prefix: str, source: str) -> None:
    for key, value in user.items():
        dotted = f"{prefix}{key}"
        if key not in defaults:
            known = ", ".join(sorted(str(k) for k in defaults))
            raise ConfigError(f"{source}: unknown key '{dotted}' (known here: {known})")
        default = defaults[key]
        if dotted in MIXED_TYPE_KEYS:
            continue
        if dotted in FREE_FORM_KEYS:
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: {dotted} must be a mapping; got {type(value).__name__}")
            continue
        if isinstance(default, dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: {dotted} must be a mapping; got {value!r}")
            _check_keys(value, default, prefix=f"{dotted}.", source=source)
        elif not _same_kind(value, default):
            raise ConfigError(
                f"{source}: {dotted} must be {type(default).__name__}; got {value!r} ({type(value).__name__})"
            )


def _same_kind(value: Any, default: Any) -> bool:
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    if isinstance(default, int):
        return isinstance(value, int)
    if isinstance(default, list):
        return isinstance(value, list)
    return isinstance(value, type(default))


def _check_models(training: dict, source: str) -> None:
    """Model names and their parameters, checked by each model's own declaration."""
    from .models import REGISTRY  # imported here: it loads scikit-learn

    known = ", ".join(sorted(REGISTRY))
    models = training["models"]
    if not models:
        raise ConfigError(f"{source}: training.models must name at least one model")
    for index, name in enumerate(models):
        if not isinstance(name, str) or name not in REGISTRY:
            raise ConfigError(f"{source}: training.models[{index}]: unknown model {name!r}; known models: {known}")
        if name in models[:index]:
            raise ConfigError(f"{source}: training.models[{index}]: model {name} is listed twice")
    for index, name in enumerate(training["prefer"]):
        if not isinstance(name, str) or name not in REGISTRY:
            raise ConfigError(f"{source}: training.prefer[{index}]: unknown model {name!r}; known models: {known}")
    if training["target"] != "label":
        binary_only_settings = [(key, value) for key, value, off in (
            ("selection", training["selection"], "none"), ("calibration", training["calibration"], "none"),
            ("tuning.method", training["tuning"]["method"], "none"), ("ensembles", training["ensembles"], []))
            if value != off]
        if binary_only_settings:
            key, value = binary_only_settings[0]
            raise ConfigError(f"{source}: training.{key} {value!r} works on ALL/AML only; with training.target "
                              f"{training['target']} leave it off")
        binary_only = [name for name in models if not REGISTRY[name].multiclass]
        if binary_only:
            raise ConfigError(f"{source}: training.models: {', '.join(binary_only)} fit(s) two classes only; "
                              f"training.target {training['target']} needs multi-class models (remove them, "
                              f"or use target label)")
    for name, grid in training["tuning"]["grids"].items():
        if name not in REGISTRY:
            raise ConfigError(f"{source}: training.tuning.grids.{name}: unknown model; known models: {known}")
        if not isinstance(grid, dict):
            raise ConfigError(f"{source}: training.tuning.grids.{name} must be a mapping; got {grid!r}")
        for key, values in grid.items():
            if not isinstance(values, list) or not values:
                raise ConfigError(f"{source}: training.tuning.grids.{name}.{key} must be a non-empty list; "
                                  f"got {values!r}")
            for value in values:
                if (problem := REGISTRY[name].param_problem({key: value})) is not None:
                    raise ConfigError(f"{source}: training.tuning.grids.{name}.{problem[0]} {problem[1]}")
    for name, params in training["params"].items():
        if name not in REGISTRY:
            raise ConfigError(f"{source}: training.params.{name}: unknown model; known models: {known}")
        if not isinstance(params, dict):
            raise ConfigError(f"{source}: training.params.{name} must be a mapping; got {params!r}")
        if (problem := REGISTRY[name].param_problem(params)) is not None:
            raise ConfigError(f"{source}: training.params.{name}.{problem[0]} {problem[1]}")


# A tracking URI names its store by scheme: http(s)://, sqlite:///, databricks, postgresql://, ...
_URI_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def _check_tracking(mlflow: dict, source: str) -> None:
    """tracking.mlflow: a URI with a scheme (or "" for the lake's own store), a non-empty experiment,
    and a registered-model name that a models:/NAME/VERSION URI can carry."""
    uri, name = mlflow["tracking_uri"], mlflow["register_as"]
    if uri and not _URI_SCHEME.match(uri):
        raise ConfigError(f"{source}: tracking.mlflow.tracking_uri must be \"\" (a store inside the lake) or a URI "
                          f"such as http://host:5000 or sqlite:///path/mlflow.db; got {uri!r}")
    if not mlflow["experiment"].strip():
        raise ConfigError(f"{source}: tracking.mlflow.experiment must name an experiment; got {mlflow['experiment']!r}")
    if name and (name != name.strip() or "/" in name or ":" in name):
        raise ConfigError(f"{source}: tracking.mlflow.register_as must be a model name without '/', ':' or "
                          f"surrounding spaces (it goes into models:/NAME/VERSION); got {name!r}")
    if name and not mlflow["enabled"]:
        raise ConfigError(f"{source}: tracking.mlflow.register_as ({name!r}) needs tracking.mlflow.enabled: true")


def _check_label_rules(rules: list, source: str) -> None:
    if not rules:
        raise ConfigError(f"{source}: labels.rules must hold at least one rule (a --labels file replaces them)")
    for index, rule in enumerate(rules):
        where = f"{source}: labels.rules[{index}]"
        if not isinstance(rule, dict):
            raise ConfigError(f"{where} must be a mapping with keys field, pattern, label")
        unknown = set(rule) - RULE_KEYS
        missing = RULE_KEYS - set(rule)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        if missing:
            raise ConfigError(f"{where}: missing key(s) {', '.join(sorted(missing))}")
        if rule["label"] not in LABELS:
            raise ConfigError(f"{where}.label must be ALL or AML; got {rule['label']!r}")
        try:
            re.compile(rule["pattern"])
        except re.error as exc:
            raise ConfigError(f"{where}.pattern is not a valid regular expression: {exc}") from None


def _check_lineage_rules(rules: list, source: str) -> None:
    from .subtypes import LINEAGES

    for index, rule in enumerate(rules):
        where = f"{source}: labels.lineage_rules[{index}]"
        if not isinstance(rule, dict) or set(rule) != {"pattern", "lineage"}:
            raise ConfigError(f"{where} must be a mapping with exactly the keys pattern, lineage; got {rule!r}")
        if rule["lineage"] not in LINEAGES:
            raise ConfigError(f"{where}.lineage must be one of {', '.join(LINEAGES)}; got {rule['lineage']!r}")
        try:
            re.compile(rule["pattern"])
        except (re.error, TypeError) as exc:
            raise ConfigError(f"{where}.pattern is not a valid regular expression: {exc}") from None


def _deep_merge(base: dict, update: Mapping) -> dict:
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _set_dotted(config: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = config
    for part in parts[:-1]:
        if part not in node or not isinstance(node[part], dict):
            raise ConfigError(f"override: unknown key '{dotted}'")
        node = node[part]
    if parts[-1] not in node:
        raise ConfigError(f"override: unknown key '{dotted}'")
    node[parts[-1]] = value
