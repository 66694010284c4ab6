"""Is a sample an acute leukemia at all? A check learnt from the training series' other diseases.

A model of ALL vs AML has never seen a CLL, a CML, an MDS or a healthy marrow, and calls each of
them ALL or AML with confidence. The unsupervised checks (novelty, low_blast: input_check.py)
catch part of them. When the training series itself holds such samples (MILE's 804 of 2,096:
label extraction excludes them from ALL/AML), the check can learn what they look like, as the
MILE classifier does with its 18 classes: a multinomial logistic regression over the acute
classes (ALL, AML) and each other disease class (CLL, CML, MDS, non-leukemia, ...), on each
sample's within-sample gene ranks (scale-free, like every scoring check), and
P(other) = the sum of the other classes' probabilities.

The threshold is not a hand margin: each training sample gets an out-of-fold P(other) from a
check fitted without its fold, and a new sample is flagged `other_disease` above the
ceil((n + 1)(1 - rate))-th smallest out-of-fold value of the n acute training samples, so an
acute leukemia of the training population is flagged with probability about `rate` (the
split-conformal rank, as for the novelty check; `rate` is this check's share of
predict.flag_rate, input_check.per_check_rate). The fitted check is plain arrays in each
model bundle's `training_inputs.other_disease` (JSON), so `predict` needs nothing else.
"""

from __future__ import annotations

import re

import numpy as np

from .conformal import conformal_threshold, rate_text

OTHER_LINEAGE = "other"
ACUTE_CLASSES = ("ALL", "AML")
FLAG = "other_disease"
# Genes the check reads: the most class-separating (ANOVA F over the acute and other classes)
# within each fit. 300 is enough to tell MILE's classes apart on the generator's programs and
# keeps the bundle's JSON small (a few hundred numbers per class).
N_GENES = 300
# L2 strength: moderate, the classes are separable on many genes and the rank features are
# standardised; strong shrinkage keeps P(other) from saturating on a handful of outliers.
REGULARISATION_C = 0.1
# Fewer other-disease training samples than this and the check is not fitted (the run says so).
MIN_OTHER_SAMPLES = 10


def rank_rows(matrix: np.ndarray, chunk: int = 256) -> np.ndarray:
    """Within-sample ranks scaled to 0..1 (float32: the driver holds every training row at once, 4
    bytes a value); unmeasured genes at the middle rank, where they move nothing."""
    from .models.base import SampleNormalizer

    normalizer = SampleNormalizer("rank")
    out = np.empty(np.shape(matrix), dtype=np.float32)
    for start in range(0, len(out), chunk):
        ranks = normalizer.transform(np.asarray(matrix[start:start + chunk], dtype=np.float64))
        out[start:start + chunk] = np.where(np.isnan(ranks), 0.5, ranks)
    return out


def summary(check: dict) -> str:
    """One line for the training console: what the check learnt from and what it flags out of fold."""
    caught = ", ".join(f"{name} {check['out_of_fold_other_flagged'][name]:.0%} of {n}"
                       for name, n in sorted(check["n_other"].items()))
    return (f"other-disease check: {check['n_acute']} ALL/AML and {sum(check['n_other'].values())} other training "
            f"samples; out of fold it flags {check['out_of_fold_acute_flagged']:.1%} of ALL/AML "
            f"(its share {check['flag_rate']:.3f} of predict.flag_rate) and {caught}")


def _fit(ranks: np.ndarray, classes: np.ndarray, seed: int) -> dict:
    """One multinomial check on rank rows: the chosen genes, their scaling and the coefficients."""
    from sklearn.feature_selection import f_classif
    from sklearn.linear_model import LogisticRegression

    with np.errstate(divide="ignore", invalid="ignore"):
        f_values, _ = f_classif(ranks, classes)
    f_values = np.nan_to_num(f_values, nan=0.0)
    genes = np.sort(np.argsort(-f_values, kind="stable")[:min(N_GENES, ranks.shape[1])])
    chosen = ranks[:, genes]
    mean, scale = chosen.mean(axis=0), chosen.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    model = LogisticRegression(C=REGULARISATION_C, max_iter=2000, random_state=seed)
    model.fit((chosen - mean) / scale, classes)
    return {"genes": genes, "mean": mean, "scale": scale, "coef": model.coef_, "intercept": model.intercept_,
            "classes": [str(c) for c in model.classes_]}


def class_probabilities(check: dict, ranks: np.ndarray) -> np.ndarray:
    """(n, classes) probabilities of the check's classes for rank rows."""
    from scipy.special import expit, softmax

    z = (ranks[:, np.asarray(check["genes"], dtype=np.int64)] - np.asarray(check["mean"])) / np.asarray(check["scale"])
    logits = z @ np.asarray(check["coef"], dtype=np.float64).T + np.asarray(check["intercept"], dtype=np.float64)
    if len(check["classes"]) == 2:   # scikit-learn keeps one coefficient row for two classes
        p = expit(logits[:, 0])
        return np.column_stack([1 - p, p])
    return softmax(logits, axis=1)


def other_probability(check: dict, matrix: np.ndarray) -> tuple[np.ndarray, list]:
    """(P(other), the most likely other class) of each row of a gene matrix in the bundle's gene order."""
    probabilities = class_probabilities(check, rank_rows(matrix))
    other = np.array([c not in ACUTE_CLASSES for c in check["classes"]])
    names = np.array(check["classes"])[other]
    closest = [str(names[i]) for i in np.argmax(probabilities[:, other], axis=1)] if len(probabilities) else []
    return probabilities[:, other].sum(axis=1), closest


def fit_other_disease_check(acute: np.ndarray, acute_labels, acute_folds, other: np.ndarray, other_classes_,
                            rate: float, seed: int = 0) -> tuple[dict, np.ndarray, np.ndarray]:
    """(the check as plain JSON values, out-of-fold P(other) of the acute rows, of the other rows).

    `acute_folds` are the run's CV folds of the acute training rows; the other rows are dealt
    over the same folds, stratified by class, so every out-of-fold value comes from a check that
    never saw its sample. Classes with fewer samples than folds are joined into one."""
    acute_labels = np.asarray(acute_labels, dtype=object)
    other_classes_ = _merge_small_classes(np.asarray(other_classes_, dtype=object), acute_folds)
    other_folds = _deal_folds(other_classes_, np.unique(acute_folds), seed)
    ranks = rank_rows(np.vstack([acute, other]))
    classes = np.concatenate([acute_labels, other_classes_])
    folds = np.concatenate([np.asarray(acute_folds), other_folds])
    out_of_fold = np.full(len(classes), np.nan)
    is_other = np.array([c not in ACUTE_CLASSES for c in classes])
    for fold in np.unique(folds):
        held = folds == fold
        fitted = _fit(ranks[~held], classes[~held], seed)
        probabilities = class_probabilities(fitted, ranks[held])
        out_of_fold[held] = probabilities[:, [c not in ACUTE_CLASSES for c in fitted["classes"]]].sum(axis=1)
    final = _fit(ranks, classes, seed)
    acute_scores, other_scores = out_of_fold[~is_other], out_of_fold[is_other]
    threshold = conformal_threshold(acute_scores, rate)
    counts = {str(c): int((other_classes_ == c).sum()) for c in np.unique(other_classes_)}
    caught = {str(c): float(np.mean(other_scores[other_classes_ == c] > threshold)) for c in np.unique(other_classes_)}
    check = {
        "genes": final["genes"].tolist(), "mean": final["mean"].tolist(), "scale": final["scale"].tolist(),
        "coef": final["coef"].tolist(), "intercept": final["intercept"].tolist(), "classes": final["classes"],
        "threshold": float(threshold) if np.isfinite(threshold) else None, "flag_rate": float(rate),
        "n_acute": int(len(acute_scores)), "n_other": counts,
        "out_of_fold_acute_flagged": float(np.mean(acute_scores > threshold)),
        "out_of_fold_other_flagged": caught,
    }
    return check, acute_scores, other_scores


def _merge_small_classes(classes: np.ndarray, folds) -> np.ndarray:
    """Classes with fewer samples than folds joined into one class named by its members
    ('CML / Non-leukemia ...'), so that every fold's fit sees it and a message can name it."""
    n_folds = len(np.unique(folds))
    values, counts = np.unique(classes, return_counts=True)
    small = sorted(values[counts < n_folds])
    merged = " / ".join(small)
    return np.array([merged if c in small else c for c in classes], dtype=object)


def _deal_folds(classes: np.ndarray, fold_ids: np.ndarray, seed: int) -> np.ndarray:
    """Each class's samples dealt round-robin over the fold ids in a seeded order (stratified folds)."""
    rng = np.random.default_rng(seed)
    folds = np.empty(len(classes), dtype=fold_ids.dtype)
    for c in np.unique(classes):
        members = np.flatnonzero(classes == c)
        rng.shuffle(members)
        folds[members] = fold_ids[np.arange(len(members)) % len(fold_ids)]
    return folds


MESSAGE_START = "looks like a disease the model does not call"
_MESSAGE_TAIL = "review the blast count, immunophenotype and clinical picture before reading the ALL/AML call"


def message(probability: float, threshold: float, closest: str | None, rate: float | None = None) -> str:
    nearest = f"; closest class: {closest}" if closest else ""
    return (f"{MESSAGE_START} (P(other disease) {probability:.2f}; at most {rate_text(rate)} of the training ALL/AML samples, "
            f"scored out of fold, exceed {threshold:.2f}{nearest}): {_MESSAGE_TAIL}")


def without_message(warning: str | None) -> str | None:
    """A warning text with this check's message taken out (None when nothing else is left)."""
    if not warning:
        return warning
    kept = re.sub(re.escape(MESSAGE_START) + r" \(.*?\): " + re.escape(_MESSAGE_TAIL), "", warning)
    kept = re.sub(r"(; )+", "; ", kept).strip("; ")
    return kept or None
