"""MLflow tracking of training runs (`tracking.mlflow` in the configuration; the `mlflow` extra).

The pipeline calls `log_training_run` after a run's tables are written and `log_report` after its
report is; this module is imported only when tracking is enabled. The Delta tables stay the record:
anything that goes wrong here (MLflow not installed, a server that does not answer, a store that
refuses a value) is a warning, and the run has succeeded all the same.

One leukspark run is one MLflow run (named after the leukspark run id) in `experiment`:
params: the resolved configuration, flattened to dotted keys;
metrics: every `results` row of the run as `<model>/<metric>/<fold>` (a CV fold k as step k of
    `<model>/<metric>/fold`), and the best model's again as `best/<metric>/<fold>`;
tags: leukspark.run_id, data_fingerprint, code_version, config_hash, best_model, and for a
    retraining rerun leukspark.previous_run and the previous MLflow run (leukspark.previous_mlflow_run);
artifacts: tables/results.csv, tables/run.json, config.yaml, report/ (when a report is written);
models: one pyfunc model per bundle (`mlflow_model`), the best registered as `register_as`.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import re
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import pandas as pd

from . import __version__
from .errors import ConfigError, PredictionError

STORE_FOLDER = "mlflow"            # under the lake root: mlflow.db and artifacts/
RUN_TAG = "leukspark.run_id"
REACH_TIMEOUT_S = 5.0
MAX_PARAM_LENGTH = 6000           # MLflow's limit on a param value
_BAD_KEY_CHARACTERS = re.compile(r"[^\w./\- :]")  # what MLflow accepts in param and metric names
EXAMPLE_SAMPLES = 2
_PROGRESS_BAR = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


class TrackingUnavailable(Exception):
    """The tracking store cannot be used (no local store for the lake, server unreachable)."""


def enabled(config: dict) -> bool:
    return bool(config["tracking"]["mlflow"]["enabled"])


def store_uris(settings: dict, lake_root: str) -> tuple[str, str | None]:
    """(tracking URI, artifact location for a new experiment): the configured URI, else a sqlite
    store inside the lake with the artifacts beside it (nothing needs a server)."""
    if settings["tracking_uri"]:
        return settings["tracking_uri"], None
    if "://" in str(lake_root):
        raise TrackingUnavailable(f"the lake at {lake_root} is not a local folder, so it has no local MLflow store: "
                                  "set tracking.mlflow.tracking_uri")
    folder = Path(lake_root).resolve() / STORE_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}", (folder / "artifacts").as_uri()


def log_training_run(config: dict, lake, run_id: str, *, previous_run: str | None = None,
                     echo: Callable[[str], None] = print) -> str | None:
    """Log a finished run (its tables already written) to MLflow; the MLflow run id, or None with a
    warning when it could not be logged."""
    return _guarded(echo, f"run {run_id}", lambda mlflow: _log_run(mlflow, config, lake, run_id, previous_run, echo))


def log_report(config: dict, lake_root: str, run_id: str, report_dir: Path,
               echo: Callable[[str], None] = print) -> str | None:
    """Add a written report to the MLflow run of `run_id` (under report/), when that run was logged."""
    def add(mlflow) -> str | None:
        tracking_uri, _ = store_uris(config["tracking"]["mlflow"], lake_root)
        _check_reachable(tracking_uri)
        client = mlflow.MlflowClient(tracking_uri)
        found = find_run(client, config["tracking"]["mlflow"]["experiment"], run_id)
        if found is None:
            return None
        client.log_artifacts(found, str(report_dir), "report")
        return found

    return _guarded(echo, f"the report of run {run_id}", add)


def _guarded(echo: Callable[[str], None], what: str, action) -> str | None:
    try:
        import mlflow
    except ImportError:
        echo(f"warning: tracking.mlflow.enabled is true but MLflow is not installed (pip install -e '.[mlflow]'): "
             f"{what} not logged to MLflow")
        return None
    try:
        return action(mlflow)
    except Exception as error:  # noqa: BLE001 - the lake holds the run; MLflow is a copy for browsing
        text = " ".join(str(error).split())
        echo(f"warning: MLflow: {what} not logged ({type(error).__name__}: {text[:300]}); "
             "the lake's tables hold it as usual")
        return None


def _check_reachable(tracking_uri: str) -> None:
    """One bounded request before logging: MLflow's own client retries for minutes."""
    if not tracking_uri.startswith(("http://", "https://")):
        return
    import requests

    try:
        requests.get(tracking_uri.rstrip("/") + "/health", timeout=REACH_TIMEOUT_S)
    except requests.RequestException as error:
        raise TrackingUnavailable(f"tracking server {tracking_uri} did not answer: {type(error).__name__}") from None


@contextmanager
def _using(mlflow, tracking_uri: str):
    """MLflow's process-wide tracking URI set to ours, and put back afterwards (the registry URI
    follows the tracking URI unless the user set one)."""
    before = (mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None, os.environ.get(_PROGRESS_BAR))
    mlflow.set_tracking_uri(tracking_uri)
    os.environ[_PROGRESS_BAR] = "false"  # a progress bar per artifact copy would flood the run's output
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before[0])  # None unsets it again
        if before[1] is None:
            os.environ.pop(_PROGRESS_BAR, None)
        else:
            os.environ[_PROGRESS_BAR] = before[1]


def experiment_id(client, name: str, artifact_location: str | None) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(name, artifact_location=artifact_location)


def find_run(client, experiment: str, run_id: str) -> str | None:
    """The MLflow run id of leukspark run `run_id` in `experiment` (the latest, if logged twice)."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    runs = client.search_runs([found.experiment_id], filter_string=f"tags.`{RUN_TAG}` = '{run_id}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else None


def _log_run(mlflow, config: dict, lake, run_id: str, previous_run: str | None, echo) -> str:
    began = time.perf_counter()
    settings = config["tracking"]["mlflow"]
    tracking_uri, artifact_location = store_uris(settings, lake.root)
    _check_reachable(tracking_uri)
    run_row = lake.read_small("runs", filters=[("run", [run_id])]).iloc[-1]
    results = lake.read_small("results", filters=[("run", [run_id])])
    with _using(mlflow, tracking_uri):
        client = mlflow.MlflowClient(tracking_uri, registry_uri=tracking_uri)
        experiment = experiment_id(client, settings["experiment"], artifact_location)
        previous_mlflow = find_run(client, settings["experiment"], previous_run) if previous_run else None
        tags = run_tags(run_row, previous_run, previous_mlflow)
        created = client.create_run(experiment, run_name=run_id, tags=tags)
        mlflow_run = created.info.run_id
        with mlflow.start_run(run_id=mlflow_run, nested=mlflow.active_run() is not None):
            client.log_batch(mlflow_run, params=[mlflow.entities.Param(k, v) for k, v in flat_params(config).items()])
            now_ms = int(time.time() * 1000)
            client.log_batch(mlflow_run, metrics=[mlflow.entities.Metric(k, v, now_ms, step) for k, v, step
                                                  in metric_rows(results, run_row["best_model"])])
            mlflow.log_text(results.to_csv(index=False), "tables/results.csv")
            mlflow.log_text(run_row.to_json(date_format="iso", indent=2), "tables/run.json")
            mlflow.log_text(_yaml(config), "config.yaml")
            registered = _log_models(mlflow, config, lake, run_row, settings["register_as"])
    where = f"{tracking_uri} (experiment {settings['experiment']})"
    echo(f"MLflow: logged run {run_id} as {mlflow_run} to {where} in {time.perf_counter() - began:.1f} s"
         + (f"; linked to the previous run {previous_run}" if previous_run else "")
         + (f"; registered {registered}" if registered else ""))
    return mlflow_run


def run_tags(run_row: pd.Series, previous_run: str | None, previous_mlflow: str | None) -> dict[str, str]:
    tags = {RUN_TAG: run_row["run"], "leukspark.data_fingerprint": str(run_row["data_fingerprint"]),
            "leukspark.code_version": str(run_row["code_version"] or __version__),
            "leukspark.config_hash": str(run_row["config_hash"]), "leukspark.best_model": str(run_row["best_model"]),
            "leukspark.n_train": str(run_row["n_train"]), "leukspark.n_test": str(run_row["n_test"]),
            "leukspark.n_genes": str(run_row["n_genes"])}
    note = f"leukspark run {run_row['run']}: best model {run_row['best_model']}"
    if previous_run:
        tags["leukspark.previous_run"] = previous_run
        note += f"; retrained after run {previous_run}"
        if previous_mlflow:
            tags["leukspark.previous_mlflow_run"] = previous_mlflow
    tags["mlflow.note.content"] = note
    tags["mlflow.source.name"], tags["mlflow.source.type"] = "leukspark", "JOB"
    return tags


def flat_params(config: dict, prefix: str = "") -> dict[str, str]:
    """The configuration as dotted keys; lists and empty mappings as JSON (MLflow's length limit)."""
    params: dict[str, str] = {}
    for key, value in config.items():
        name = _BAD_KEY_CHARACTERS.sub("_", f"{prefix}{key}")
        if isinstance(value, dict) and value:
            params.update(flat_params(value, f"{name}."))
            continue
        text = json.dumps(value, sort_keys=True, default=str) if isinstance(value, (list, dict)) else str(value)
        params[name] = text if len(text) <= MAX_PARAM_LENGTH else text[: MAX_PARAM_LENGTH - 3] + "..."
    return params


def metric_key(model: str, metric: str, fold: str) -> tuple[str, int]:
    """(MLflow metric name, step) of one results row: a CV fold k is step k of '<model>/<metric>/fold'."""
    if str(fold).isdigit():
        return _BAD_KEY_CHARACTERS.sub("_", f"{model}/{metric}/fold"), int(fold)
    return _BAD_KEY_CHARACTERS.sub("_", f"{model}/{metric}/{fold}"), 0


def metric_rows(results: pd.DataFrame, best_model: str) -> list[tuple[str, float, int]]:
    """(name, value, step) for every results row, then the best model's cv_mean and test rows as best/..."""
    rows = []
    for model, metric, fold, value in results[["model", "metric", "fold", "value"]].itertuples(index=False):
        if value is None:
            continue
        key, step = metric_key(model, metric, fold)
        rows.append((key, float(value), step))
        if model == best_model and fold in ("cv_mean", "test"):
            rows.append((metric_key("best", metric, fold)[0], float(value), 0))
    return [(key, value if not math.isinf(value) else math.copysign(1.7976931348623157e308, value), step)
            for key, value, step in rows]


def _yaml(config: dict) -> str:
    import yaml

    return yaml.safe_dump(json.loads(json.dumps(config, default=str)), sort_keys=False)


def _log_models(mlflow, config: dict, lake, run_row: pd.Series, register_as: str) -> str | None:
    """One pyfunc model per bundle of the run; the best one registered as `register_as`. Returns
    'NAME version N' when one was registered."""
    from .lake import resolve_stored_path
    from .mlflow_model import ANNOTATION_FILE, ENTRY_FILE

    bundle_root = resolve_stored_path(lake.root, run_row["bundle_dir"], in_lake=f"models/{run_row['run']}")
    bundles = [m for m in config["training"]["models"] if (bundle_root / m / "manifest.json").is_file()]
    registered = None
    with tempfile.TemporaryDirectory(prefix="leukspark-mlflow-") as work:
        annotation, example = _model_inputs(lake, bundle_root / bundles[0], Path(work) / ANNOTATION_FILE)
        signature = model_signature(mlflow, list(example.columns))
        for model in bundles:
            register = register_as if (register_as and model == run_row["best_model"]) else None
            info = mlflow.pyfunc.log_model(
                name=model, python_model=str(ENTRY_FILE),
                artifacts={"bundle": str(bundle_root / model), "annotation": str(annotation)},
                model_config=_policy(config), signature=signature, input_example=example,
                pip_requirements=[f"mlflow=={mlflow.__version__}", f"leukspark=={__version__}"],
                registered_model_name=register)
            if register:
                version = info.registered_model_version
                mlflow.set_tag("leukspark.registered_model", f"models:/{register_as}/{version}")
                registered = f"{register_as} version {version} (models:/{register_as}/{version})"
    return registered


def _policy(config: dict) -> dict:
    cfg = config["predict"]
    return {key: float(cfg[key]) for key in ("max_missing_gene_fraction", "min_shared_gene_fraction", "range_margin")}


def _model_inputs(lake, bundle_dir: Path, annotation_path: Path) -> tuple[Path, pd.DataFrame]:
    """The training platforms' annotation written to `annotation_path`, and an input example: the
    first training samples' probe values in the pyfunc's input form (the probe columns of the
    annotation, in its order)."""
    from .bundle import load_bundle
    from .mlflow_model import PLATFORM, SAMPLE, samples_frame

    platforms = load_bundle(bundle_dir).training_inputs.get("platforms") or []
    probes = lake.read_small("platform_probes", filters=[("platform", platforms)])
    probes.to_parquet(annotation_path, index=False)
    splits = lake.read_small("splits", columns=["sample", "set"])
    chosen = sorted(splits.loc[splits["set"] == "train", "sample"])[:EXAMPLE_SAMPLES]
    values = lake.read_small("expression", columns=["sample", "platform", "probe_id", "value"],
                             filters=[("sample", chosen)])
    columns = [SAMPLE, PLATFORM] + list(dict.fromkeys(probes["probe_id"]))
    return annotation_path, samples_frame(values).reindex(columns=columns)


def model_signature(mlflow, columns: list[str]):
    """sample and platform (optional strings), one optional double per probe; the output record."""
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    from .mlflow_model import OUTPUT_COLUMNS, PLATFORM, SAMPLE

    inputs = [ColSpec("string", c, required=False) if c in (SAMPLE, PLATFORM) else ColSpec("double", c, required=False)
              for c in columns]
    kinds = {"probability_AML": "double", "shared_gene_fraction": "double", "missing_genes": "long"}
    outputs = [ColSpec(kinds.get(c, "string"), c, required=False) for c in OUTPUT_COLUMNS]
    return ModelSignature(inputs=Schema(inputs), outputs=Schema(outputs))


def bundle_from_model_uri(model_uri: str, config: dict, lake_root: str) -> Path:
    """The bundle of a logged leukspark model (`models:/NAME/VERSION`, `runs:/ID/MODEL`, ...), downloaded
    from the configured store (else the lake's own) into a temporary `<run>/<model>` folder, the
    names `predict --write` records; the folder is removed when the process ends."""
    try:
        import mlflow
    except ImportError:
        raise ConfigError("--model-uri needs MLflow: pip install -e '.[mlflow]'") from None
    from .bundle import load_bundle

    tracking_uri, _ = store_uris(config["tracking"]["mlflow"], str(lake_root))
    work = Path(tempfile.mkdtemp(prefix="leukspark-model-"))
    atexit.register(shutil.rmtree, work, True)
    try:
        with _using(mlflow, tracking_uri):
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(work / "download")))
    except Exception as error:  # noqa: BLE001 - MLflow's errors name the URI problem; one line of it
        raise PredictionError(f"--model-uri {model_uri}: {' '.join(str(error).split())[:300]}") from None
    manifests = sorted(local.glob("artifacts/*/manifest.json"))
    if len(manifests) != 1:
        raise PredictionError(f"--model-uri {model_uri}: not a leukspark model (no model bundle among its artifacts)")
    bundle = load_bundle(manifests[0].parent)  # verified, as any bundle predict reads
    target = work / bundle.run_id / bundle.model_name
    target.parent.mkdir(parents=True)
    os.replace(manifests[0].parent, target)
    return target
