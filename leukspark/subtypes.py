"""The label hierarchy (ALL/AML -> lineage -> subtype) and calls with a parent fallback.

A multi-class model gives one probability per class of its target (`training.target`:
lineage or subtype). The calls are made top-down, as ALLSorts and ALLCatchR make them:

* ``subtype``: the most probable class when its probability reaches that class's threshold,
  else ``unclassified`` (the lineage is still called);
* ``lineage``: the lineage of the subtype classes summed (or the lineage class itself), called
  when it reaches its threshold, else ``unclassified`` (ALL/AML is still called);
* ``prediction``: ALL or AML from ``probability_AML``, the summed probability of the classes
  whose label is AML, at 0.5, as for a binary model.

Per-class thresholds are chosen on out-of-fold probabilities (never on the samples they are
then applied to): for each class, the lowest threshold whose one-vs-rest calls of that class
reach the best F1 over a fixed grid, as ALLSorts picks its per-subtype cut-offs from
cross-validated probabilities.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

LINEAGES = ("AML", "B-ALL", "T-ALL", "other")
UNCLASSIFIED = "unclassified"
TARGETS = ("label", "lineage", "subtype")
#: The ALL/AML label of each lineage (`other` has none: CLL, CML, MDS, non-leukemia).
LABEL_OF_LINEAGE = {"AML": "AML", "B-ALL": "ALL", "T-ALL": "ALL", "other": None}
#: Candidate thresholds: below 0.2 a call among up to 18 classes says little; above 0.9 few calls remain.
THRESHOLD_GRID = tuple(np.round(np.arange(0.2, 0.91, 0.05), 2))


def label_of(lineage: str | None) -> str | None:
    """ALL or AML for a lineage (None for `other` and unknown lineages)."""
    return LABEL_OF_LINEAGE.get(lineage)


def class_lineages(labels: pd.DataFrame, target: str) -> dict[str, str]:
    """{class of `target`: its lineage} from labelled rows (columns label, lineage, subtype).

    A subtype seen under two lineages is ambiguous and its most frequent lineage wins; the
    lineage of a lineage class is itself; an ALL/AML label maps to itself."""
    if target == "lineage":
        return {c: c for c in labels["lineage"].dropna().unique()}
    if target == "label":
        return {c: c for c in labels["label"].dropna().unique()}
    counts = labels.dropna(subset=["subtype", "lineage"]).groupby(["subtype", "lineage"]).size()
    return {subtype: group.idxmax()[1] for subtype, group in counts.groupby(level=0)}


def aml_share(probabilities: np.ndarray, classes: Sequence[str], label_of_class: Mapping[str, str | None]) -> np.ndarray:
    """P(AML): the summed probability of the classes whose ALL/AML label is AML."""
    columns = [i for i, c in enumerate(classes) if label_of_class.get(c) == "AML"]
    return np.asarray(probabilities, dtype=np.float64)[:, columns].sum(axis=1)


def choose_thresholds(truth: Sequence[str], probabilities: np.ndarray, classes: Sequence[str],
                      grid: Sequence[float] = THRESHOLD_GRID) -> dict[str, float]:
    """Per class, the lowest grid threshold with the best one-vs-rest F1 of "top class and p >= t".

    `probabilities` are out-of-fold (rows: samples, columns: `classes`). A class without a
    sample gets the lowest threshold of the grid."""
    from sklearn.metrics import f1_score

    truth = np.asarray(truth, dtype=object)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    top = probabilities.argmax(axis=1)
    thresholds = {}
    for index, name in enumerate(classes):
        actual = truth == name
        if not actual.any():
            thresholds[name] = float(grid[0])
            continue
        scores = [f1_score(actual, (top == index) & (probabilities[:, index] >= t), zero_division=0) for t in grid]
        thresholds[name] = float(grid[int(np.argmax(scores))])   # argmax: the first (lowest) best
    return thresholds


def hierarchical_calls(probabilities: np.ndarray, classes: Sequence[str], lineage_of_class: Mapping[str, str],
                       thresholds: Mapping[str, float] | None = None,
                       lineage_thresholds: Mapping[str, float] | None = None) -> pd.DataFrame:
    """Calls per row: prediction, probability_AML, lineage, lineage_probability, subtype,
    subtype_probability (see the module docstring). `classes` are subtype classes when their
    lineage differs from themselves, else lineage classes (subtype then stays null)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    classes = list(classes)
    thresholds, lineage_thresholds = dict(thresholds or {}), dict(lineage_thresholds or {})
    lineages = sorted({lineage_of_class[c] for c in classes})
    by_lineage = np.column_stack([probabilities[:, [i for i, c in enumerate(classes) if lineage_of_class[c] == name]]
                                  .sum(axis=1) for name in lineages])
    top_lineage = by_lineage.argmax(axis=1)
    lineage_probability = by_lineage[np.arange(len(by_lineage)), top_lineage]
    lineage = np.array([lineages[i] for i in top_lineage], dtype=object)
    lineage_cut = np.array([lineage_thresholds.get(name, 0.0) for name in lineage], dtype=np.float64)
    lineage = np.where(lineage_probability >= lineage_cut, lineage, UNCLASSIFIED)
    label_of_class = {c: label_of(lineage_of_class[c]) or (c if c in ("ALL", "AML") else None) for c in classes}
    probability_aml = aml_share(probabilities, classes, label_of_class)
    frame = pd.DataFrame({
        "prediction": np.where(probability_aml >= 0.5, "AML", "ALL"),
        "probability_AML": probability_aml,
        "lineage": lineage,
        "lineage_probability": lineage_probability,
    })
    if any(lineage_of_class[c] != c for c in classes):
        top = probabilities.argmax(axis=1)
        subtype_probability = probabilities[np.arange(len(probabilities)), top]
        subtype = np.array([classes[i] for i in top], dtype=object)
        cut = np.array([thresholds.get(name, 0.0) for name in subtype], dtype=np.float64)
        # A subtype is only called inside the called lineage: below its threshold, or under a
        # lineage that fell back itself, it falls back to its parent.
        parent_ok = np.array([lineage_of_class[s] == called for s, called in zip(subtype, lineage)])
        frame["subtype"] = np.where((subtype_probability >= cut) & parent_ok, subtype, UNCLASSIFIED)
        frame["subtype_probability"] = subtype_probability
    else:
        frame["subtype"] = None
        frame["subtype_probability"] = np.nan
    return frame


def merge_rare_classes(target: pd.Series, parents: pd.Series, min_count: int) -> tuple[pd.Series, dict[str, str]]:
    """Classes with fewer than `min_count` samples merged into their parent (lineage, then label):
    the split needs at least one sample of each class per fold. Returns (merged target, {merged
    class: what it became})."""
    counts = target.value_counts()
    rare = {c for c, n in counts.items() if n < min_count}
    merged = {c: str(parents[target == c].mode().iloc[0]) for c in sorted(rare)}
    return target.map(lambda c: merged.get(c, c)), merged


def min_class_size(folds: int, test_fraction: float) -> int:
    """The fewest samples a class may have: one per CV fold once the test set has taken its share,
    plus one for the rounding of the stratified test split."""
    import math

    return math.ceil(folds / (1.0 - test_fraction)) + 1


def target_classes(labels: pd.DataFrame, target: str, min_count: int) -> dict:
    """What a multi-class run learns, from the labels table (sample, label, lineage, subtype):
    {"target_of": sample -> class, "classes", "aml_classes", "lineage_of": class -> lineage,
    "merged": {rare subtype: its lineage}}.

    The stated rule for small classes: a subtype with fewer than `min_count` samples
    (:func:`min_class_size`: each CV fold must hold one) is merged into its lineage; a lineage that
    small is refused, as is a sample without a lineage (a `lineage` target) or without subtype and
    lineage."""
    from .errors import SplitError

    frame = labels[["sample", "label", "lineage", "subtype"]].drop_duplicates("sample").sort_values("sample")
    if target == "lineage":
        missing = frame.loc[frame["lineage"].isna(), "sample"].tolist()
        if missing:
            raise SplitError(f"training.target lineage: {len(missing)} labelled sample(s) have no lineage, e.g. "
                             f"{', '.join(missing[:5])}: give a `lineage` column in the label file or a matching "
                             "labels.lineage_rules pattern")
        classes_of = frame["lineage"]
        counts = classes_of.value_counts()
        if (counts < min_count).any():
            raise SplitError(f"training.target lineage: lineage {counts.idxmin()} has {counts.min()} sample(s); "
                             f"split.folds and split.test_fraction need at least {min_count}")
        merged: dict[str, str] = {}
    else:
        missing = frame.loc[frame["subtype"].isna() & frame["lineage"].isna(), "sample"].tolist()
        if missing:
            raise SplitError(f"training.target subtype: {len(missing)} labelled sample(s) have neither subtype nor "
                             f"lineage, e.g. {', '.join(missing[:5])}")
        parents = frame["lineage"].fillna(frame["label"])
        classes_of, merged = merge_rare_classes(frame["subtype"].fillna(parents), parents, min_count)
    frame = frame.assign(target=classes_of.to_numpy())
    aml_share_of = frame.groupby("target")["label"].agg(lambda v: (v == "AML").mean())
    lineage_share = frame.assign(parent=frame["lineage"].fillna(frame["label"])).groupby("target")["parent"]
    return {"target_of": dict(zip(frame["sample"], frame["target"])), "classes": tuple(sorted(frame["target"].unique())),
            "aml_classes": tuple(sorted(aml_share_of[aml_share_of > 0.5].index)),
            "lineage_of": {c: str(v.mode().iloc[0]) for c, v in lineage_share},
            "merged": merged}


def _wide(class_rows: pd.DataFrame, classes: Sequence[str]) -> tuple[pd.DataFrame, np.ndarray]:
    """One row per sample (sample, truth_class) and its probability matrix in `classes` order."""
    wide = class_rows.pivot_table(index=["sample", "truth_class"], columns="class", values="probability")
    return wide.index.to_frame(index=False), wide[list(classes)].to_numpy(dtype=np.float64)


def fallback_thresholds(cv_rows: pd.DataFrame, classes: Sequence[str], lineage_of: Mapping[str, str]) -> dict:
    """Per-class and per-lineage thresholds of one model, chosen on its out-of-fold class rows."""
    samples, probabilities = _wide(cv_rows, classes)
    truth = samples["truth_class"].to_numpy(dtype=object)
    lineages = sorted({lineage_of[c] for c in classes})
    by_lineage = np.column_stack([probabilities[:, [i for i, c in enumerate(classes) if lineage_of[c] == name]]
                                  .sum(axis=1) for name in lineages])
    return {"class_thresholds": choose_thresholds(truth, probabilities, classes),
            "lineage_thresholds": choose_thresholds(np.array([lineage_of[t] for t in truth], dtype=object),
                                                    by_lineage, lineages)}


def class_result_rows(class_rows: pd.DataFrame, classes: Sequence[str]) -> pd.DataFrame:
    """Long (model, fold, metric, value) results of the top-class calls: class_accuracy,
    balanced_accuracy and macro_f1 per CV fold, pooled over the CV folds (cv_pooled) and on test;
    per class `sensitivity[c]`, `specificity[c]`, `precision[c]`, `support[c]` and the confusion
    counts `confusion[actual|predicted]` pooled and on test (scikit-learn's metrics)."""
    from .folds import POOLED_FOLD, TEST_FOLD, is_cv_fold
    from .metrics import multiclass_metrics

    rows = []
    for model, by_model in class_rows.groupby("model", sort=False):
        cv = by_model[by_model["fold"].map(is_cv_fold)]
        parts = [(fold, part) for fold, part in by_model.groupby("fold") if is_cv_fold(fold) or fold == TEST_FOLD]
        for fold, part in parts + ([(POOLED_FOLD, cv)] if len(cv) else []):
            samples, probabilities = _wide(part, classes)
            calls = np.asarray(classes, dtype=object)[probabilities.argmax(axis=1)]
            overall, per_class, confusion = multiclass_metrics(samples["truth_class"], calls, classes)
            rows += [(model, fold, "class_accuracy", overall["accuracy"]),
                     (model, fold, "balanced_accuracy", overall["balanced_accuracy"]),
                     (model, fold, "macro_f1", overall["macro_f1"])]
            if not is_cv_fold(fold):
                for record in per_class.to_dict("records"):
                    rows += [(model, fold, f"{name}[{record['class']}]", float(record[name]))
                             for name in ("support", "sensitivity", "specificity", "precision")]
                rows += [(model, fold, f"confusion[{actual}|{predicted}]", float(count))
                         for actual, counts in confusion.iterrows() for predicted, count in counts.items()]
    return pd.DataFrame(rows, columns=["model", "fold", "metric", "value"])
