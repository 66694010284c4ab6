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


def roc_auc(y_true: Any, scores: Any) -> float:
    """Area under the ROC curve: the probability that a random AML sample scores above a
    random ALL sample, ties counting one half (Mann-Whitney U). NaN with a single class.

    Kept by hand rather than sklearn's roc_auc_score: that one integrates the ROC curve with
    the trapezoid rule and differs from this exact rank form in the last bits on about a third
    of random inputs, which would change stored `results` values of existing runs."""
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
    metrics and ints for ``tp, fp, tn, fn, n``. The counts and ratios are scikit-learn's
    (``zero_division=0``); ROC AUC is :func:`roc_auc` (see there why not sklearn's).
    """
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    actual = _as_labels(y_true, "y_true")
    scores = np.asarray(prob_aml, dtype=np.float64).reshape(-1)
    if scores.shape != actual.shape:
        raise ValueError(f"y_true has {actual.size} entries but prob_aml has {scores.size}")
    if actual.size == 0:
        raise ValueError("cannot compute metrics on zero samples")
    if np.isnan(scores).any():
        raise ValueError("prob_aml contains NaN")
    predicted = scores >= threshold
    tn, fp, fn, tp = (int(c) for c in confusion_matrix(actual, predicted, labels=[False, True]).ravel())
    # Per class [ALL, AML]: recall of ALL is the specificity, recall of AML the sensitivity.
    precision, recall, f1, _ = precision_recall_fscore_support(actual, predicted, labels=[False, True],
                                                               average=None, zero_division=0)
    return {
        "accuracy": float(accuracy_score(actual, predicted)),
        "sensitivity": float(recall[1]),
        "specificity": float(recall[0]),
        "precision": float(precision[1]),
        "f1": float(f1[1]),
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
    from sklearn.metrics import confusion_matrix

    actual = _as_labels(y_true, "y_true")
    predicted = _as_labels(y_pred, "y_pred")
    if actual.shape != predicted.shape:
        raise ValueError(f"y_true has {actual.size} entries but y_pred has {predicted.size}")
    counts = confusion_matrix(actual, predicted, labels=[True, False]).astype(int).tolist()
    return pd.DataFrame(counts, index=["actual AML", "actual ALL"], columns=["predicted AML", "predicted ALL"])


# --------------------------------------------------------------------------- multi-class


def multiclass_metrics(y_true: Any, y_pred: Any, classes: Any) -> tuple[dict[str, float], pd.DataFrame,
                                                                          pd.DataFrame]:
    """Scikit-learn's multi-class metrics of calls ``y_pred`` (class names) against ``y_true``.

    Returns (overall, per_class, confusion): overall accuracy, balanced accuracy (mean recall
    over the classes present) and macro-F1 over ``classes``; per class (rows in ``classes``
    order) its support, sensitivity (recall), specificity (recall of "not this class") and
    precision, ``zero_division=0``; the confusion matrix with rows ``actual`` and columns
    ``predicted`` in ``classes`` order. A call outside ``classes`` (e.g. ``unclassified``) is
    wrong for every class and gets a column of its own in the confusion matrix.
    """
    from sklearn.metrics import (accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score,
                                 multilabel_confusion_matrix, precision_recall_fscore_support)

    actual = np.asarray(y_true, dtype=object).reshape(-1)
    called = np.asarray(y_pred, dtype=object).reshape(-1)
    if actual.shape != called.shape or actual.size == 0:
        raise ValueError("multiclass_metrics needs one call per truth, and at least one sample")
    classes = list(classes)
    extra = sorted(set(called.tolist()) - set(classes))
    labels = classes + extra
    precision, recall, _, support = precision_recall_fscore_support(actual, called, labels=classes,
                                                                    average=None, zero_division=0)
    per_label = multilabel_confusion_matrix(actual, called, labels=classes)   # [[tn, fp], [fn, tp]] per class
    tn, fp = per_label[:, 0, 0], per_label[:, 0, 1]
    specificity = np.divide(tn, tn + fp, out=np.zeros(len(classes)), where=(tn + fp) > 0)
    present = [c for c in classes if c in set(actual.tolist())]
    overall = {
        "accuracy": float(accuracy_score(actual, called)),
        "balanced_accuracy": float(np.mean(recall[[classes.index(c) for c in present]])) if present else float("nan"),
        "macro_f1": float(f1_score(actual, called, labels=classes, average="macro", zero_division=0)),
        "n": int(actual.size),
    }
    if set(called.tolist()) <= set(classes):   # sklearn's own balanced accuracy where it applies
        overall["balanced_accuracy"] = float(balanced_accuracy_score(actual, called))
    per_class = pd.DataFrame({"class": classes, "support": support.astype(int), "sensitivity": recall,
                              "specificity": specificity, "precision": precision})
    confusion = pd.DataFrame(confusion_matrix(actual, called, labels=labels)[:len(classes)],
                             index=pd.Index(classes, name="actual"), columns=pd.Index(labels, name="predicted"))
    return overall, per_class, confusion


# --------------------------------------------------------------------------- calibration


def brier_score(y_true: Any, prob_aml: Any) -> float:
    """Mean squared difference between P(AML) and the outcome (1 = AML); lower is better."""
    actual = _as_labels(y_true, "y_true").astype(np.float64)
    scores = np.asarray(prob_aml, dtype=np.float64).reshape(-1)
    if scores.shape != actual.shape or actual.size == 0:
        raise ValueError("brier_score needs one probability per label, and at least one sample")
    return float(np.mean((scores - actual) ** 2))


def calibration_bins(y_true: Any, prob_aml: Any, n_bins: int = 10) -> pd.DataFrame:
    """Equal-width bins of P(AML) over [0, 1]: per bin its count, mean probability and AML share.

    A probability of exactly 1 falls in the last bin; empty bins are kept with count 0.
    """
    actual = _as_labels(y_true, "y_true").astype(np.float64)
    scores = np.asarray(prob_aml, dtype=np.float64).reshape(-1)
    index = np.clip((scores * n_bins).astype(int), 0, n_bins - 1)
    count = np.bincount(index, minlength=n_bins)
    sum_p = np.bincount(index, weights=scores, minlength=n_bins)
    sum_y = np.bincount(index, weights=actual, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return pd.DataFrame({"lower": np.arange(n_bins) / n_bins, "upper": np.arange(1, n_bins + 1) / n_bins,
                             "count": count, "mean_probability": sum_p / count, "fraction_aml": sum_y / count})


def expected_calibration_error(y_true: Any, prob_aml: Any, n_bins: int = 10) -> float:
    """ECE: sum over equal-width bins of (bin share of samples) x |mean P(AML) - AML share|.

    The usual binary form (Naeini et al. 2015; Guo et al. 2017 use the top-label variant):
    calibration of P(AML) itself, not of the confidence of the predicted class.
    """
    bins = calibration_bins(y_true, prob_aml, n_bins)
    filled = bins[bins["count"] > 0]
    total = filled["count"].sum()
    if total == 0:
        raise ValueError("cannot compute ECE on zero samples")
    return float((filled["count"] / total * (filled["mean_probability"] - filled["fraction_aml"]).abs()).sum())


# --------------------------------------------------------------------------- abstention


def abstains(prob_aml: Any, band: Any) -> np.ndarray:
    """True where P(AML) lies inside the closed band [lo, hi] (no band: never)."""
    scores = np.asarray(prob_aml, dtype=np.float64).reshape(-1)
    if band is None:
        return np.zeros(scores.shape, dtype=bool)
    lo, hi = band
    return (scores >= lo) & (scores <= hi)


def selective_metrics(y_true: Any, prob_aml: Any, band: Any) -> dict[str, float]:
    """Coverage (share of samples called) and accuracy on the calls made (NaN with no call)."""
    actual = _as_labels(y_true, "y_true")
    scores = np.asarray(prob_aml, dtype=np.float64).reshape(-1)
    called = ~abstains(scores, band)
    correct = (scores >= 0.5) == actual
    n_called = int(called.sum())
    return {"coverage": n_called / max(1, actual.size),
            "accuracy_on_calls": float(correct[called].mean()) if n_called else float("nan")}


def choose_abstain_band(y_true: Any, prob_aml: Any, target_accuracy: float) -> tuple[float, float] | None:
    """The narrowest symmetric band [0.5 - w, 0.5 + w] whose calls reach ``target_accuracy``.

    Candidates for w are 0 (no abstention needed: returns None) and each sample's |P - 0.5|; the
    band of half-width w withholds every sample with |P - 0.5| <= w. When no band that still
    calls a sample reaches the target, the widest band (withholding every sample seen) is
    returned: on these data the model never reaches the target, so it should not call.
    """
    actual = _as_labels(y_true, "y_true")
    scores = np.asarray(prob_aml, dtype=np.float64).reshape(-1)
    if actual.size == 0:
        return None
    correct = (scores >= 0.5) == actual
    if correct.mean() >= target_accuracy:
        return None
    distance = np.abs(scores - 0.5)
    for w in np.unique(distance):  # ascending: the narrowest band first
        called = distance > w
        if called.any() and correct[called].mean() >= target_accuracy:
            return (float(0.5 - w), float(0.5 + w))
    w = float(distance.max())
    return (0.5 - w, 0.5 + w)


def conformal_abstain_band(y_true: Any, prob_aml: Any, max_error_rate: float) -> tuple[float, float] | None:
    """The band of split-conformal prediction sets at level ``max_error_rate`` (Vovk et al. 2005;
    Angelopoulos & Bates 2021, section 1).

    The nonconformity of a calibration row is 1 - P(its true class); q is the
    ceil((n + 1)(1 - max_error_rate))-th smallest of the n values. A new sample's set holds every
    class whose nonconformity is at most q: both classes (abstain) exactly when
    1 - q <= P(AML) <= q. For a sample exchangeable with the n rows, P(true class outside its set)
    <= max_error_rate at any n, so a wrong call (not `unclassified`) happens with probability at
    most max_error_rate. With n < 1 / max_error_rate - 1 rows q is infinite: [0, 1], every
    sample withheld (the caller must say so). q < 0.5: None, no abstention needed.
    """
    actual = _as_labels(y_true, "y_true")
    scores = np.asarray(prob_aml, dtype=np.float64).reshape(-1)
    if actual.size == 0:
        return None
    nonconformity = np.sort(np.where(actual, 1.0 - scores, scores))
    k = int(np.ceil((actual.size + 1) * (1 - max_error_rate)))
    if k > actual.size:
        return (0.0, 1.0)
    q = float(nonconformity[k - 1])
    return None if q < 0.5 else (1.0 - q, q)


def withholds_everything(prob_aml: Any, band: Any) -> bool:
    """True when the band leaves none of these probabilities called."""
    scores = np.asarray(prob_aml, dtype=np.float64).reshape(-1)
    return band is not None and scores.size > 0 and bool(abstains(scores, band).all())


def risk_coverage_curve(y_true: Any, prob_aml: Any) -> pd.DataFrame:
    """Coverage and error rate on the calls as the band widens: one row per number of samples called,
    most confident first (ties in confidence enter together)."""
    actual = _as_labels(y_true, "y_true")
    scores = np.asarray(prob_aml, dtype=np.float64).reshape(-1)
    distance = np.abs(scores - 0.5)
    order = np.argsort(-distance, kind="stable")
    wrong = ((scores >= 0.5) != actual)[order].astype(np.float64)
    n = np.arange(1, actual.size + 1)
    last_of_tie = np.r_[distance[order][1:] != distance[order][:-1], True]
    frame = pd.DataFrame({"coverage": n / actual.size, "risk": np.cumsum(wrong) / n,
                          "half_width": distance[order]})
    return frame[last_of_tie].reset_index(drop=True)


# --------------------------------------------------------------------------- comparisons


def mcnemar_exact(y_true: Any, pred_a: Any, pred_b: Any) -> dict[str, float]:
    """Exact (binomial) McNemar test of two classifiers' calls on the same samples.

    b: samples A gets right and B wrong; c: the reverse. Under equal error rates b ~ Bin(b + c, 1/2);
    the two-sided p-value is scipy's binomtest (1 when b + c = 0).
    """
    from scipy.stats import binomtest

    actual = _as_labels(y_true, "y_true")
    a_right = _as_labels(pred_a, "pred_a") == actual
    b_right = _as_labels(pred_b, "pred_b") == actual
    b = int(np.sum(a_right & ~b_right))
    c = int(np.sum(~a_right & b_right))
    p = 1.0 if b + c == 0 else float(binomtest(b, b + c, 0.5, alternative="two-sided").pvalue)
    return {"mcnemar_b": b, "mcnemar_c": c, "mcnemar_p": p}


def mean_pairwise_jaccard(sets: list) -> float:
    """Mean Jaccard index |A & B| / |A | B| over all pairs of sets (NaN with fewer than two)."""
    sets = [set(s) for s in sets]
    values = [len(a & b) / len(a | b) if a | b else 1.0
              for i, a in enumerate(sets) for b in sets[i + 1:]]
    return float(np.mean(values)) if values else float("nan")


def marker_enrichment(ranked_genes: list[str], universe: list[str], markers: Any, top_n: int) -> dict[str, float]:
    """Hypergeometric test: are known markers over-represented among the top ``top_n`` genes?

    Population: the ``universe`` genes (those the model could use); successes: the markers in it;
    draws: the top ``top_n``. p = P(X >= observed) = hypergeom.sf(k - 1, M, n, N).
    """
    from scipy.stats import hypergeom

    universe_set = set(universe)
    marker_set = set(markers) & universe_set
    top = [g for g in ranked_genes[:top_n]]
    k = len(set(top) & marker_set)
    M, n, N = len(universe_set), len(marker_set), len(top)
    p = float(hypergeom.sf(k - 1, M, n, N)) if M and N else float("nan")
    return {"markers_in_top": k, "markers_in_universe": n, "top_n": N,
            "expected_markers": (N * n / M) if M else float("nan"), "marker_enrichment_p": p}
