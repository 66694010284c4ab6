"""Binary classification metrics with AML as the positive class, computed in numpy.

Conventions (the same as scikit-learn's with ``zero_division=0``): a ratio whose
denominator is zero (e.g. precision when no sample is predicted AML) is 0, not an
error; ROC AUC is NaN when only one class is present, since it is undefined then.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

METRIC_NAMES = ("accuracy", "sensitivity", "specificity", "precision", "f1", "roc_auc")
COUNT_NAMES = ("tp", "fp", "tn", "fn", "n")


def _as_labels(values: Any, what: str) -> np.ndarray:
    labels = np.asarray(values).reshape(-1)
    if labels.size and not np.isin(labels, (0, 1)).all():
        raise ValueError(f"{what} must contain only 0 (ALL) and 1 (AML)")
    return labels.astype(bool)


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 0.0


def roc_auc(y_true: Any, scores: Any) -> float:
    """Area under the ROC curve: the probability that a random AML sample scores above a
    random ALL sample, ties counting one half (Mann-Whitney U). NaN with a single class."""
    positive = _as_labels(y_true, "y_true")
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    n_positive = int(positive.sum())
    n_negative = positive.size - n_positive
    if n_positive == 0 or n_negative == 0:
        return float("nan")
    ranks = _average_ranks(scores)
    rank_sum = ranks[positive].sum()
    return float((rank_sum - n_positive * (n_positive + 1) / 2) / (n_positive * n_negative))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing the mean of their ranks."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    # Start index of each run of equal values, and the run each sorted position belongs to.
    run_starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    run_ends = np.r_[run_starts[1:], values.size]
    run_of_position = np.repeat(np.arange(run_starts.size), run_ends - run_starts)
    mean_rank_of_run = (run_starts + 1 + run_ends) / 2  # mean of ranks start+1 .. end
    ranks = np.empty(values.size)
    ranks[order] = mean_rank_of_run[run_of_position]
    return ranks


def binary_metrics(y_true: Any, prob_aml: Any, threshold: float = 0.5) -> dict[str, float | int]:
    """Accuracy, sensitivity (AML recall), specificity, precision, F1, ROC AUC and counts.

    A sample is predicted AML when ``prob_aml >= threshold``. Returns floats for the
    metrics and ints for ``tp, fp, tn, fn, n``.
    """
    actual = _as_labels(y_true, "y_true")
    scores = np.asarray(prob_aml, dtype=np.float64).reshape(-1)
    if scores.shape != actual.shape:
        raise ValueError(f"y_true has {actual.size} entries but prob_aml has {scores.size}")
    if actual.size == 0:
        raise ValueError("cannot compute metrics on zero samples")
    if np.isnan(scores).any():
        raise ValueError("prob_aml contains NaN")
    predicted = scores >= threshold
    tp = int(np.sum(actual & predicted))
    fp = int(np.sum(~actual & predicted))
    tn = int(np.sum(~actual & ~predicted))
    fn = int(np.sum(actual & ~predicted))
    return {
        "accuracy": (tp + tn) / actual.size,
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "precision": _ratio(tp, tp + fp),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "roc_auc": roc_auc(actual, scores),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "n": int(actual.size),
    }


def summarize_folds(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation over CV folds, one row per model.

    ``rows`` is wide: columns ``model``, ``fold`` and one column per metric (any other
    numeric column, e.g. ``fit_seconds``, is summarized too). The result has columns
    ``model``, ``n_folds`` and ``<metric>_mean``, ``<metric>_std`` for each metric, models
    in order of first appearance. The std is the sample std (ddof=1; NaN for one fold).
    NaN propagates: a fold with an undefined ROC AUC makes that model's mean NaN rather
    than silently averaging the other folds.
    """
    missing = [column for column in ("model", "fold") if column not in rows.columns]
    if missing:
        raise ValueError(f"fold rows lack column(s) {', '.join(missing)}")
    duplicated = rows.duplicated(["model", "fold"])
    if duplicated.any():
        first = rows.loc[duplicated, ["model", "fold"]].iloc[0]
        raise ValueError(f"fold {first['fold']!r} of model {first['model']!r} appears more than once")
    metric_columns = [
        column
        for column in rows.columns
        if column not in ("model", "fold") and pd.api.types.is_numeric_dtype(rows[column])
    ]
    grouped = rows.groupby("model", sort=False)
    summary = pd.DataFrame({"n_folds": grouped["fold"].count()})
    for column in metric_columns:
        values = grouped[column]
        has_nan = values.agg(lambda fold_values: fold_values.isna().any()).astype(bool)
        summary[f"{column}_mean"] = values.mean().mask(has_nan)
        summary[f"{column}_std"] = values.std(ddof=1).mask(has_nan)
    return summary.reset_index()


def confusion_table(y_true: Any, y_pred: Any) -> pd.DataFrame:
    """2 x 2 counts: rows ``actual AML``/``actual ALL``, columns ``predicted AML``/``predicted ALL``."""
    actual = _as_labels(y_true, "y_true")
    predicted = _as_labels(y_pred, "y_pred")
    if actual.shape != predicted.shape:
        raise ValueError(f"y_true has {actual.size} entries but y_pred has {predicted.size}")
    counts = [
        [int(np.sum(actual & predicted)), int(np.sum(actual & ~predicted))],
        [int(np.sum(~actual & predicted)), int(np.sum(~actual & ~predicted))],
    ]
    return pd.DataFrame(counts, index=["actual AML", "actual ALL"], columns=["predicted AML", "predicted ALL"])
