"""Report sections of a multi-class run (training.target lineage or subtype): the best model's
per-class sensitivity, specificity and precision, and its confusion matrix as a heat map that stays
readable at 18 classes (colour: share of the row, text: counts). Built from the run's `results`
rows (`confusion[actual|predicted]`, `sensitivity[class]`, ...; leukspark.subtypes.class_result_rows)."""

from __future__ import annotations

import re

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .report_base import FigureWriter, RunData, Section, _esc
from .stages.train import POOLED_FOLD, TEST_FOLD

_PER_CLASS = re.compile(r"^(support|sensitivity|specificity|precision)\[(.*)\]$")
_CONFUSION = re.compile(r"^confusion\[(.*)\|(.*)\]$")


def class_tables(results: pd.DataFrame, model: str, fold: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-class metrics, confusion counts) of `model` on `fold` from the long results rows."""
    rows = results[(results["model"] == model) & (results["fold"] == fold)]
    per_class, confusion = {}, {}
    for metric, value in zip(rows["metric"], rows["value"]):
        if (match := _PER_CLASS.match(metric)) is not None:
            per_class.setdefault(match.group(2), {})[match.group(1)] = value
        elif (match := _CONFUSION.match(metric)) is not None:
            confusion.setdefault(match.group(1), {})[match.group(2)] = value
    classes = sorted(per_class)
    table = pd.DataFrame.from_dict(per_class, orient="index").reindex(classes)
    counts = pd.DataFrame.from_dict(confusion, orient="index").reindex(index=classes).fillna(0)
    counts = counts[[c for c in classes if c in counts.columns] + [c for c in counts.columns if c not in classes]]
    return table, counts.astype(int)


def confusion_heatmap(counts: pd.DataFrame, title: str):
    n = max(len(counts.index), len(counts.columns))
    size = min(16.0, max(4.5, 0.55 * n + 2.5))
    fig, ax = plt.subplots(figsize=(size + 1.0, size), layout="constrained")
    values = counts.to_numpy(dtype=float)
    shares = values / np.maximum(values.sum(axis=1, keepdims=True), 1)
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    font = 11 if n <= 6 else 8 if n <= 12 else 6.5
    for (i, j), value in np.ndenumerate(values):
        if value:
            ax.text(j, i, str(int(value)), ha="center", va="center", fontsize=font,
                    color="white" if shares[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(counts.columns)), counts.columns, rotation=60, ha="right", fontsize=font + 1)
    ax.set_yticks(range(len(counts.index)), counts.index, fontsize=font + 1)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    fig.colorbar(image, ax=ax, shrink=0.7, label="share of the actual class")
    ax.set_title(title, fontsize=10)
    return fig


def subtype_sections(data: RunData, figures: FigureWriter) -> list[Section]:
    """The per-class section of a multi-class run; none for an ALL/AML run."""
    results = data.results
    if results is None or not results["metric"].str.startswith("confusion[").any() or not data.models:
        return []
    model = data.models[0]
    fold = TEST_FOLD if ((results["fold"] == TEST_FOLD) & results["metric"].str.startswith("confusion[")).any() \
        else POOLED_FOLD
    where = "test set" if fold == TEST_FOLD else "pooled cross-validation folds"
    table, counts = class_tables(results, model, fold)
    header = "".join(f"<th>{_esc(h)}</th>" for h in ("class", "n", "sensitivity", "specificity", "precision"))
    body = "".join(f"<tr><td>{_esc(name)}</td><td>{int(row.get('support', 0))}</td>"
                   + "".join(f"<td>{row.get(m, float('nan')):.3f}</td>" for m in ("sensitivity", "specificity",
                                                                                    "precision"))
                   + "</tr>" for name, row in table.iterrows())
    img = figures.save(confusion_heatmap(counts, f"{model}: confusion matrix on the {where}"),
                       "class_confusion.png", f"per-class confusion matrix of {model} on the {where}")
    text = (f"<p>{_esc(model)} (the best model), top-class calls on the {_esc(where)}. "
            "Calls below a class's threshold fall back to their parent in <code>predict</code>.</p>"
            f"<table id='class-metrics'><tr>{header}</tr>{body}</table>{img}")
    return [Section("classes", "Lineage and subtype classes", text)]
