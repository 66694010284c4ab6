"""Model x fold training as one Spark fan-out (`groupBy(task).applyInPandas`).

A small task table holds one row per (model, fold): the CV folds and the final fit on the
whole training set (evaluated on the test set). Each task reads the feature matrix from
the `gene_features` table's Parquet files itself (once per Python worker, then cached), so
no task receives a shuffled copy of it. A task fits the preprocessor and the model on its
training rows only and returns long-format prediction rows; metrics are computed from
those on the driver. The final fit of each model also saves a model bundle.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import DoubleType, StringType, StructField, StructType

from .. import POSITIVE_CLASS, NEGATIVE_CLASS, schemas
from ..errors import ModelError
from ..folds import OOD_FOLD, POOLED_FOLD, TEST_FOLD, is_cv_fold, nested_fold, task_costs  # noqa: F401 (re-exported)
from ..tuning import fold_params, parse_tuning_fold, tuning_rows

log = logging.getLogger(__name__)

METRIC_NAMES = ("accuracy", "sensitivity", "specificity", "precision", "f1", "roc_auc",
                "tp", "fp", "tn", "fn", "n", "fit_seconds", "brier", "ece")
SELECTIVE_METRICS = ("coverage", "accuracy_on_calls")
# StructType.add works in place: this has always added fit_seconds to schemas.PREDICTIONS too (the
# predictions table carries it), so that stays; `info` goes into a copy, never into the table.
TASK_OUTPUT_SCHEMA = StructType([*schemas.PREDICTIONS.add(StructField("fit_seconds", DoubleType(), True)).fields,
                                 StructField("info", StringType(), True)])
INFO_SAMPLE = ""  # the one row per task that carries its `info` (JSON) instead of a prediction




@dataclass(frozen=True)
class TrainingContext:
    """Everything a task needs, small enough to ship with the task function."""

    run_id: str
    feature_files: tuple[str, ...]
    gene_order: tuple[str, ...]
    assignments: dict            # sample -> (set, fold, label)
    seed: int
    scaler: str
    bundle_root: str | None
    feature_settings: dict | None = None   # how probes became genes; saved in bundles for prediction
    training_inputs: dict | None = None    # platforms and value scales of the training samples
    selection: str = "none"                # in-fold gene selection (training.selection)
    selection_k: int = 0
    inner_folds: int = 3                   # training.tuning.inner_folds, for the tuning tasks
    flag_rate: float = 0.05                # each rate-controlled check's share of predict.flag_rate (input_check.per_check_rate)
    # training.target lineage/subtype: the classes learnt (empty: ALL/AML, the binary fit), each
    # sample's class, the classes summed into P(AML) and each class's lineage (saved in bundles).
    target_classes: tuple[str, ...] = ()
    target_of: dict | None = None
    aml_classes: tuple[str, ...] = ()
    lineage_of: dict | None = None


def plan_tasks(models: list[str], n_folds: int, param_overrides: dict, nested: bool = False,
               tuned: dict | None = None) -> pd.DataFrame:
    """One row per (model, fold): folds '0'..'k-1' and 'test' (the final fit); with `nested`, also
    every nested fold 'k/j' (j != k), k(k-1) more fits per model. `tuned` ({(model, outer fold):
    params JSON}, from nested tuning) replaces a fold's parameters with the ones chosen for it."""

    from ..models import get_model

    folds = [str(k) for k in range(n_folds)] + [TEST_FOLD]
    if nested:
        folds += [nested_fold(k, j) for k in range(n_folds) for j in range(n_folds) if j != k]
    rows = []
    for model in models:
        spec = get_model(model)
        params = spec.resolve_params(param_overrides.get(model, {}))  # bad keys fail here, not in a task
        for fold in folds:
            chosen = fold_params(tuned or {}, model, fold)
            rows.append({"model": model, "fold": fold,
                         "params": chosen or json.dumps(params, sort_keys=True, default=str)})
    tasks = pd.DataFrame(rows)
    order = np.argsort(-task_costs(tasks), kind="stable")
    return tasks.iloc[order].reset_index(drop=True)


def split_assignments(splits: pd.DataFrame) -> dict:
    """sample -> (set, fold or None, label), from the rows of the `splits` table."""
    return {r.sample: (r.set, None if pd.isna(r.fold) else int(r.fold), r.label) for r in splits.itertuples(index=False)}


def one_partition_per_task(spark: SparkSession, n_tasks: int) -> list[int]:
    """Task keys that Spark's hash partitioning sends to partitions 0..n-1, one each.

    groupBy shuffles by pmod(murmur3(key), n); picking keys that land on distinct partitions
    gives every bin of tasks its own Spark task, in the order of the list.
    """
    candidates = (spark.range(0, 50 * n_tasks + 100)
                  .select("id", F.expr(f"pmod(hash(id), {n_tasks})").alias("partition"))
                  .groupBy("partition").agg(F.min("id").alias("key")).collect())
    by_partition = {r["partition"]: r["key"] for r in candidates}
    if len(by_partition) < n_tasks:
        raise ModelError("could not find one shuffle partition per training task")
    return [by_partition[p] for p in range(n_tasks)]


def run_fanout(spark: SparkSession, tasks: pd.DataFrame, context: TrainingContext) -> DataFrame:
    """Run every task as a pandas UDF; returns prediction rows with each task's fit time."""
    rows = run_task_rows(spark, tasks, context)
    return rows.where(F.col("sample") != INFO_SAMPLE)


def split_task_rows(rows: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(prediction rows, per-task info: model, fold, info dict) of collected task output."""
    is_info = rows["sample"] == INFO_SAMPLE
    info = rows.loc[is_info, ["model", "fold", "info"]].copy()
    info["info"] = info["info"].map(lambda text: json.loads(text) if text else {})
    return rows[~is_info].drop(columns="info").reset_index(drop=True), info.reset_index(drop=True)


# Each Spark task that runs Python costs ~0.2 s before its first row (measured here: 30 one-row tasks
# 3.5 s, the same rows in few tasks 0.4 s). Up to MIN_BINS tasks each get their own Spark task, so
# Spark's dynamic scheduling balances fits of uneven length; beyond, they are packed into
# MIN_BINS bins (or BINS_PER_CORE per core on a larger cluster).
MIN_BINS = 32
BINS_PER_CORE = 4


def pack_tasks(costs: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin (0..n_bins-1) of each task: longest first, each to the least loaded bin, so the bins'
    estimated costs are close and bin 0 (scheduled first) carries the costliest task."""
    bins = np.zeros(len(costs), dtype=np.int64)
    loads = np.zeros(max(1, n_bins))
    for index in np.argsort(-np.asarray(costs, dtype=float), kind="stable"):
        bins[index] = int(np.argmin(loads))
        loads[bins[index]] += costs[index]
    return bins


def run_task_rows(spark: SparkSession, tasks: pd.DataFrame, context: TrainingContext) -> DataFrame:
    """Every task's prediction rows plus one info row per task (sample ''), checkpointed.

    Beyond MIN_BINS (and BINS_PER_CORE per core) tasks are packed into bins; each bin is one
    Spark task that fits its tasks one after another."""
    n_tasks = len(tasks)
    n_bins = max(1, min(n_tasks, max(MIN_BINS, BINS_PER_CORE * spark.sparkContext.defaultParallelism)))
    bin_keys = one_partition_per_task(spark, n_bins)
    bins = pack_tasks(task_costs(tasks), n_bins)
    keyed = tasks.assign(bin_key=[bin_keys[b] for b in bins], order=np.arange(n_tasks))
    task_frame = spark.createDataFrame(keyed[["bin_key", "order", "model", "fold", "params"]])

    def run_bin(group: pd.DataFrame) -> pd.DataFrame:
        from threadpoolctl import threadpool_limits

        # Spark already runs one task per core: BLAS/OpenMP threads inside a task would oversubscribe.
        with threadpool_limits(limits=1):
            return pd.concat([_train_one(task, context) for _, task in group.sort_values("order").iterrows()],
                             ignore_index=True)

    # Each bin needs its own partition: no coalescing of the (tiny) task shuffle.
    previous = {key: spark.conf.get(key, None) for key in
                ("spark.sql.shuffle.partitions", "spark.sql.adaptive.coalescePartitions.enabled")}
    spark.conf.set("spark.sql.shuffle.partitions", str(n_bins))
    spark.conf.set("spark.sql.adaptive.coalescePartitions.enabled", "false")
    try:
        result = task_frame.groupBy("bin_key").applyInPandas(run_bin, schema=TASK_OUTPUT_SCHEMA)
        return result.localCheckpoint(eager=True)
    finally:
        for key, value in previous.items():
            if value is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, value)


def run_tasks_sequentially(tasks: pd.DataFrame, context: TrainingContext) -> pd.DataFrame:
    """The same task rows as `run_task_rows`, fitted one after another in this process: the
    single-process baseline of the benchmarks, and a Spark-free way to test what a task sees."""
    frames = [_train_one(task, context) for _, task in tasks.iterrows()]
    return pd.concat(frames, ignore_index=True)


_FEATURE_CACHE: dict = {}


def load_feature_matrix(files: tuple[str, ...], n_genes: int, *, cache: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(sample ids, float32 matrix) from the gene_features Parquet files, cached per worker (`cache`)."""
    import pyarrow.parquet as pq

    from ..lake import local_path

    if files in _FEATURE_CACHE:
        return _FEATURE_CACHE[files]
    _FEATURE_CACHE.clear()  # one feature table at a time per worker: the old one goes before the new is read
    parquet_files = [pq.ParquetFile(local_path(f)) for f in files]
    names = np.array([s for f in parquet_files for s in f.read(columns=["sample"]).column("sample").to_pylist()])
    # Row order follows the files, which differ between writes; fits (bootstraps, mini-batches)
    # depend on row order, so rows are placed in sample order to get the same numbers from the same seed.
    order = np.argsort(names, kind="stable")
    row_of = np.empty(len(order), dtype=np.int64)
    row_of[order] = np.arange(len(order))
    # Filled row group by row group into one float32 matrix: a task holds 4 bytes a value plus one row
    # group (64 vectors) as float64, not the whole table as float64 beside its float32 copy.
    matrix = np.empty((len(names), n_genes), dtype=np.float32)
    at = 0
    for parquet in parquet_files:
        for group in range(parquet.num_row_groups):
            features = parquet.read_row_group(group, columns=["features"]).column("features")
            flat = features.combine_chunks().flatten().to_numpy(zero_copy_only=False)
            matrix[row_of[at:at + len(features)]] = flat.reshape(len(features), n_genes)
            at += len(features)
    samples = names[order]
    if cache:
        _FEATURE_CACHE[files] = (samples, matrix)
    return samples, matrix


def fold_rows(samples: np.ndarray, assignments: dict, fold: str, inner_folds: int = 3,
              seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks (train, eval) over `samples` for a CV fold, a nested fold 'k/j', a tuning task
    'tune:k:c:j' or the final 'test' fit."""
    sets = np.array([assignments.get(s, (None, None, None))[0] for s in samples])
    folds = np.array([assignments.get(s, (None, None, None))[1] for s in samples], dtype=object)
    if (search := parse_tuning_fold(fold)) is not None:
        labels = np.array([assignments.get(s, (None, None, None))[2] for s in samples], dtype=object)
        return tuning_rows(samples, sets, folds, labels, search, inner_folds, seed)
    if fold == TEST_FOLD:
        return sets == "train", sets == "test"
    if "/" in fold:
        outer, held_out = (int(part) for part in fold.split("/"))
        in_train = sets == "train"
        return in_train & (folds != outer) & (folds != held_out), in_train & (folds == held_out)
    k = int(fold)
    in_train = sets == "train"
    return in_train & (folds != k), in_train & (folds == k)


def _train_one(task: pd.Series, context: TrainingContext) -> pd.DataFrame:
    from ..models import get_model

    samples, matrix = load_feature_matrix(context.feature_files, len(context.gene_order))
    train_mask, eval_mask = fold_rows(samples, context.assignments, task["fold"], context.inner_folds, context.seed)
    truth = np.array([context.assignments[s][2] for s in samples], dtype=object)
    result, class_info = _fit_task(task, context, samples, matrix, train_mask, eval_mask, truth)
    novelty, inputs = None, None
    if task["fold"] == TEST_FOLD and context.bundle_root:
        from ..bundle import save_bundle
        from ..input_check import fit_reference

        reference, ranges = fit_reference(matrix[train_mask])
        y_binary = (truth[train_mask] == POSITIVE_CLASS).astype(np.int64)
        novelty, checks = _training_checks(matrix[train_mask], y_binary, samples[train_mask], result.preprocessor,
                                           context)
        reference = {**reference, **novelty}
        inputs = {**(context.training_inputs or {}), "input_check": ranges, **checks}
        spec = get_model(task["model"])
        if context.target_classes:
            from ..models.multiclass import view_for

            spec = view_for(spec, _class_extra(context))
        save_bundle(Path(context.bundle_root) / task["model"], model_name=task["model"],
                    spec=spec, model=result.model, preprocessor=result.preprocessor,
                    gene_order=list(context.gene_order), params=result.params, run_id=context.run_id,
                    extra={"features": context.feature_settings or {}, "training_inputs": inputs,
                           **(_class_extra(context) if context.target_classes else {})},
                    input_reference=reference)
    probabilities = (np.asarray(result.probabilities, dtype=np.float64) if class_info is None
                     else result.probabilities[:, [i for i, c in enumerate(context.target_classes)
                                                   if c in context.aml_classes]].sum(axis=1))
    info = {"n_train": int(train_mask.sum())}
    if result.preprocessor.selected_genes is not None:
        info["selected"] = [int(i) for i in result.preprocessor.selected_genes]
        info["selection_scores"] = [round(float(v), 6) for v in result.preprocessor.selection_scores]
    rows = pd.DataFrame({
        "run": context.run_id,
        "model": task["model"],
        "fold": task["fold"],
        "sample": samples[eval_mask],
        "probability_AML": probabilities,
        "predicted": np.where(probabilities >= 0.5, POSITIVE_CLASS, NEGATIVE_CLASS),
        "truth": truth[eval_mask],
        "fit_seconds": result.fit_seconds,
        "info": class_info,
        **_flag_columns(matrix[eval_mask], result.preprocessor, context.gene_order, novelty, inputs,
                        np.where(probabilities >= 0.5, POSITIVE_CLASS, NEGATIVE_CLASS)),
    })
    info_row = pd.DataFrame({"run": [context.run_id], "model": [task["model"]], "fold": [task["fold"]],
                             "sample": [INFO_SAMPLE], "probability_AML": [np.nan], "predicted": [None],
                             "truth": [None], "fit_seconds": [result.fit_seconds], "info": [json.dumps(info)]})
    out = pd.concat([rows, info_row], ignore_index=True)
    for column in ("flags", "dominant_lineage"):  # text or None: an all-NaN float column is no string for Arrow
        out[column] = out[column].astype(object).where(out[column].notna(), None)
    return out


def _training_checks(X_train: np.ndarray, y_train: np.ndarray, samples: np.ndarray, preprocessor,
                     context: TrainingContext) -> tuple[dict, dict]:
    """The final bundle's novelty model and threshold (out-of-fold over the CV folds) and lineage coverage."""
    from ..input_check import fit_training_checks

    folds = np.array([context.assignments[s][1] for s in samples], dtype=object)
    folds = np.where(pd.isna(folds), -1, folds).astype(np.int64)
    # Each fold's preprocessor has the final fit's settings (a model may declare its own preprocessing).
    return fit_training_checks(X_train, y_train, folds, preprocessor, preprocessor.unfitted_copy, context.gene_order,
                               context.flag_rate, context.seed)


def _flag_columns(rows: np.ndarray, preprocessor, gene_order, novelty: dict | None, inputs: dict | None,
                  calls: np.ndarray) -> dict:
    """The scoring-check columns of evaluated rows: lineage program scores and the blast index
    always; for the final fit's test rows also the novelty score and the flags its bundle would
    give them (input_check.check_rows, as `predict` does)."""
    from ..input_check import check_rows
    from ..reference import dominant_lineage

    found = check_rows(rows, gene_order, preprocessor, novelty, inputs or {}, calls=calls)
    n = len(rows)
    final = novelty is not None and n > 0
    return {"flags": [",".join(f) or None for f in found.flags] if final else [None] * n,
            "novelty": found.novelty if final else [None] * n,
            "lineage_b": found.programs[:, 0], "lineage_t": found.programs[:, 1],
            "lineage_myeloid": found.programs[:, 2],
            "dominant_lineage": [dominant_lineage(row) for row in found.programs],
            "blast_index": found.blast,
            "probability_other": found.other if final and found.other is not None else [None] * n}


def _fit_task(task: pd.Series, context: TrainingContext, samples, matrix, train_mask, eval_mask, truth):
    """(FitResult, None) of the ALL/AML fit; with a multi-class target, (FitResult with an (n, K)
    probability matrix, one JSON list of class probabilities per evaluated row)."""
    from ..models import fit_and_predict, fit_and_predict_multiclass

    params = json.loads(task["params"])
    normalize = (context.feature_settings or {}).get("normalize", "none")
    if not context.target_classes:
        y_train = (truth[train_mask] == POSITIVE_CLASS).astype(np.int64)
        return fit_and_predict(task["model"], params, matrix[train_mask], y_train, matrix[eval_mask],
                               seed=context.seed, scaler=context.scaler, normalize=normalize,
                               selection=context.selection, selection_k=context.selection_k), None
    code = {c: i for i, c in enumerate(context.target_classes)}
    y_train = np.array([code[context.target_of[s]] for s in samples[train_mask]], dtype=np.int64)
    result = fit_and_predict_multiclass(task["model"], params, matrix[train_mask], y_train, matrix[eval_mask],
                                        seed=context.seed, scaler=context.scaler, normalize=normalize)
    return result, [json.dumps([float(v) for v in row]) for row in result.probabilities]


def _class_extra(context: TrainingContext) -> dict:
    from ..models.multiclass import CLASSES_KEY

    return {CLASSES_KEY: list(context.target_classes), "aml_classes": list(context.aml_classes),
            "lineage_of": dict(context.lineage_of or {})}


def class_probability_rows(rows: pd.DataFrame, classes: tuple[str, ...], target_of: dict) -> pd.DataFrame:
    """Long (model, fold, sample, class, probability, truth_class) rows of a multi-class run's task
    output (before `split_task_rows` drops the per-row `info` that carries them)."""
    carried = rows[(rows["sample"] != INFO_SAMPLE) & rows["info"].notna()]
    if carried.empty:
        return pd.DataFrame(columns=["model", "fold", "sample", "class", "probability", "truth_class"])
    matrix = np.array([json.loads(text) for text in carried["info"]], dtype=np.float64)
    frame = pd.DataFrame(matrix, columns=list(classes))
    frame[["model", "fold", "sample"]] = carried[["model", "fold", "sample"]].to_numpy()
    long = frame.melt(id_vars=["model", "fold", "sample"], var_name="class", value_name="probability")
    long["truth_class"] = long["sample"].map(target_of)
    return long


def metric_rows(predictions: pd.DataFrame, bands: dict | None = None) -> pd.DataFrame:
    """Wide metrics (model, fold, accuracy, ..., brier, ece) per model and fold from prediction rows
    (CV folds and test only). With `bands` ({model: {fold: band or None}}), also coverage and
    accuracy on the calls made outside each fold's abstention band."""
    from ..metrics import binary_metrics, brier_score, expected_calibration_error, selective_metrics

    rows = []
    for (model, fold), part in predictions.groupby(["model", "fold"], sort=False):
        y = (part["truth"] == POSITIVE_CLASS).astype(int).to_numpy()
        p = part["probability_AML"].to_numpy()
        metrics = binary_metrics(y, p)
        metrics["fit_seconds"] = float(part["fit_seconds"].iloc[0])
        metrics["brier"] = brier_score(y, p)
        metrics["ece"] = expected_calibration_error(y, p, 10)
        if bands is not None:
            metrics.update(selective_metrics(y, p, bands.get(model, {}).get(fold)))
        rows.append({"model": model, "fold": fold, **metrics})
    return pd.DataFrame(rows)


def metric_names(metrics: pd.DataFrame) -> list[str]:
    return [name for name in (*METRIC_NAMES, *SELECTIVE_METRICS) if name in metrics.columns]


def results_rows(metrics: pd.DataFrame, *, run_id: str, run_time, config_hash: str, code_version: str,
                 params: dict[str, str]) -> pd.DataFrame:
    """Long-format results: per fold, on test, and the CV mean and std of each metric."""
    from ..metrics import summarize_folds

    names = metric_names(metrics)
    cv = metrics[metrics["fold"].map(is_cv_fold)]
    summary = summarize_folds(cv[["model", "fold", *names]])
    long_rows = []
    for record in metrics.to_dict("records"):
        for name in names:
            long_rows.append((record["model"], record["fold"], name, record[name]))
    for record in summary.to_dict("records"):
        for name in names:
            long_rows.append((record["model"], "cv_mean", name, record[f"{name}_mean"]))
            long_rows.append((record["model"], "cv_std", name, record[f"{name}_std"]))
    frame = pd.DataFrame(long_rows, columns=["model", "fold", "metric", "value"])
    frame["value"] = frame["value"].astype(float)
    frame.insert(0, "run", run_id)
    frame.insert(1, "run_time", run_time)
    frame.insert(2, "config_hash", config_hash)
    frame.insert(3, "code_version", code_version)
    frame.insert(5, "params", frame["model"].map(params))
    return frame[schemas.RESULTS.fieldNames()]


def leaderboard(metrics: pd.DataFrame, best_by: str = "accuracy") -> pd.DataFrame:
    """Per model: CV mean and std of the metrics, and the test metrics when the run has a test set.

    Ordered best first by the CV mean of `best_by` (ties: CV ROC AUC, then the smaller CV std):
    the test set never chooses the model, so its accuracy stays an unbiased estimate of the
    model that is deployed.
    """
    cv = metrics[metrics["fold"].map(is_cv_fold)].groupby("model")
    board = pd.DataFrame({
        "cv_rank_metric": cv[best_by].mean(),
        "cv_rank_metric_std": cv[best_by].std(ddof=1).fillna(0.0),
        "cv_accuracy_mean": cv["accuracy"].mean(),
        "cv_accuracy_std": cv["accuracy"].std(ddof=1),
        "cv_roc_auc_mean": cv["roc_auc"].mean(),
    })
    test = metrics[metrics["fold"] == TEST_FOLD].set_index("model")
    board = board.assign(
        test_accuracy=test["accuracy"], test_roc_auc=test["roc_auc"], test_f1=test["f1"],
        test_errors=(test["fp"] + test["fn"]), fit_seconds=test["fit_seconds"],
    )
    return board.sort_values(["cv_rank_metric", "cv_roc_auc_mean", "cv_rank_metric_std"],
                             ascending=[False, False, True], kind="stable")


def best_model(metrics: pd.DataFrame, training_cfg: dict) -> str:
    """The run's best model: among the models whose mean CV `best_by` lies within `best_within` of
    the top one, the first in `prefer`; models `prefer` does not name come after, in leaderboard order.

    Why not the top CV score alone: inside one cohort every model reaches its ceiling and the
    differences are a sample or two, while across labs they are tens of points and in a fixed
    direction (benchmarks/results/cross_cohort.md: the in-cohort leader was the least portable model
    there). The order in `prefer` is that cross-cohort measurement; with grouped folds
    (`split.group_by`) the CV score itself is an across-group score.
    """
    board = leaderboard(metrics, training_cfg.get("best_by", "accuracy"))
    top = board["cv_rank_metric"].iloc[0]
    near = [m for m in board.index if board.at[m, "cv_rank_metric"] >= top - training_cfg.get("best_within", 0.0)]
    prefer = [m for m in training_cfg.get("prefer", []) if m in near]
    return str((prefer + [m for m in near if m not in prefer])[0])


def has_test_set(metrics: pd.DataFrame) -> bool:
    return bool((metrics["fold"] == TEST_FOLD).any())


def format_leaderboard(metrics: pd.DataFrame, best_by: str = "accuracy", best: str | None = None) -> str:
    from ..metrics import confusion_table

    board = leaderboard(metrics, best_by)
    tested = has_test_set(metrics)
    lines = [f"models ranked by mean cross-validation {best_by}"
             + ("; test metrics of the final fits" if tested else " (cross-validation only: no test set)"),
             f"{'model':<28}{'CV acc':>16}{'CV AUC':>8}" + (f"{'test acc':>10}{'errors':>8}{'ROC AUC':>9}{'F1':>8}"
                                                          f"{'fit s':>8}" if tested else "")]
    for model, row in board.iterrows():
        name = f"{model} (best)" if model == best else model
        line = f"{name:<28}{row.cv_accuracy_mean:>9.4f} ± {row.cv_accuracy_std:.4f}{row.cv_roc_auc_mean:>8.4f}"
        if tested:
            line += (f"{row.test_accuracy:>10.4f}{int(row.test_errors):>8d}{row.test_roc_auc:>9.4f}"
                     f"{row.test_f1:>8.4f}{row.fit_seconds:>8.1f}")
        lines.append(line)
    evaluated = metrics[metrics["fold"] == TEST_FOLD] if tested else (
        metrics[metrics["fold"].map(is_cv_fold)].groupby("model")[["tp", "fp", "tn", "fn"]].sum().reset_index())
    where = "the test set" if tested else "all cross-validation folds"
    evaluated = evaluated.set_index("model")
    for model in board.index:
        r = evaluated.loc[model]
        # confusion_table labels rows "actual AML/ALL" and columns "predicted AML/ALL".
        y_true = [1] * int(r.tp + r.fn) + [0] * int(r.tn + r.fp)
        y_pred = [1] * int(r.tp) + [0] * int(r.fn) + [0] * int(r.tn) + [1] * int(r.fp)
        lines.append(f"\n{model}: confusion matrix on {where}\n{confusion_table(y_true, y_pred).to_string()}")
    return "\n".join(lines)
