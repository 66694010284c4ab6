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
