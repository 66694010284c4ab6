"""The pieces every report section is built from: the run's data, a section, the figure writer,
colours and number formatting. Sections live in report.py and report_science.py; both build on
these, so neither has to import the other's module."""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on workers or servers; must precede the pyplot import

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402

DPI = 110


@dataclass(frozen=True)
class Section:
    """One part of the page: `anchor` is the HTML id tests and the table of contents use."""

    anchor: str
    title: str
    body: str


@dataclass
class RunData:
    """Everything the report draws on, collected once from the lake (all small)."""

    run_id: str
    run: dict
    labels: pd.DataFrame        # sample, label, subtype
    excluded: pd.DataFrame      # sample, subtype, reason
    splits: pd.DataFrame        # sample, set, fold, label
    n_genes_table: int | None   # rows of the genes table, counted only when the run lacks n_genes
    metrics: pd.DataFrame       # wide: model, fold, accuracy, ..., fit_seconds (CV folds and test)
    cv_summary: pd.DataFrame    # index model, columns (metric, "mean"|"std")
    predictions: pd.DataFrame   # the run's test-set predictions (out-of-fold ones in a CV-only run)
    models: list[str]           # best first (leaderboard order)
    evaluated_on: str = "test set"
    best_by: str = "accuracy"
    results: pd.DataFrame | None = None   # the run's long results rows
    oof: pd.DataFrame | None = None       # out-of-fold (CV) prediction rows: model, fold, sample, probability_AML, truth


class FigureWriter:
    """Saves a figure once as PNG bytes: written to `out_dir` and embedded in the page."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir

    def save(self, fig, file_name: str, alt: str) -> str:
        """Write `file_name`, close the figure, return an <img> tag with the same PNG inline."""
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=DPI, facecolor="white")
        plt.close(fig)
        png = buffer.getvalue()
        (self.out_dir / file_name).write_bytes(png)
        encoded = base64.b64encode(png).decode("ascii")
        return (f'<figure><img src="data:image/png;base64,{encoded}" alt="{_esc(alt)}">'
                f'<figcaption>{_esc(file_name)}</figcaption></figure>')


def model_colours(models: list[str]) -> dict[str, str]:
    """A stable colour per model name (sorted order), shared by the ROC and CV charts.

    tab10's blue and red are left out: they mean ALL and AML in the other figures.
    """
    palette = [c for i, c in enumerate(plt.get_cmap("tab10").colors) if i not in (0, 3)]
    return {model: to_hex(palette[i % len(palette)]) for i, model in enumerate(sorted(models))}


def _esc(value) -> str:
    return html.escape(str(value), quote=True)


def _num(value, digits: int = 4) -> str:
    return "—" if value is None or pd.isna(value) else f"{value:.{digits}f}"
