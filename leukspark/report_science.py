"""Report sections for calibration, abstention, the OOD check, gene selection, ensembles and
lineage-marker enrichment (all read from the run's results and prediction rows)."""

from __future__ import annotations

import json

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from . import POSITIVE_CLASS
from .metrics import calibration_bins, risk_coverage_curve
from .reference import LINEAGE_MARKERS
from .report_base import FigureWriter, RunData, Section, _esc, _num, model_colours
from .stages.train import POOLED_FOLD, TEST_FOLD


def _value(results: pd.DataFrame, model: str, fold: str, metric: str):
    hit = results[(results["model"] == model) & (results["fold"] == fold) & (results["metric"] == metric)]
    return None if hit.empty else float(hit["value"].iloc[0])


def _table(anchor: str, header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table class='grid' id='{anchor}'><tr>{head}</tr>{body}</table>"


def reliability_section(data: RunData, figures: FigureWriter) -> Section:
    title = "Calibration (reliability diagram)"
    frame = data.predictions
    models = [m for m in data.models if (frame["model"] == m).any()]
    if not models:
        return Section("calibration", title, "<p>No predictions for this run.</p>")
    colours = model_colours(data.models)
    fig, ax = plt.subplots(figsize=(6.8, 6.2), layout="constrained")
    ax.plot([0, 1], [0, 1], linestyle="--", color="#777777", linewidth=1, label="perfect calibration")
    for model in models:
        part = frame[frame["model"] == model]
        bins = calibration_bins((part["truth"] == POSITIVE_CLASS).astype(int), part["probability_AML"], 10)
        bins = bins[bins["count"] > 0]
        ax.plot(bins["mean_probability"], bins["fraction_aml"], marker="o", color=colours[model], label=model)
    ax.set_xlabel("mean predicted P(AML) in the bin (10 equal-width bins)")
    ax.set_ylabel("observed share of AML in the bin")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", fontsize=9)
    ax.set_title(f"Reliability on the {data.evaluated_on}")
    img = figures.save(fig, "reliability.png", f"reliability diagram of each model on the {data.evaluated_on}")
    results = data.results if data.results is not None else pd.DataFrame(columns=["model", "fold", "metric"])
    rows = []
    for model in models:
        rows.append([model, _num(_value(results, model, "cv_mean", "brier")),
                     _num(_value(results, model, "cv_mean", "ece")),
                     _num(_value(results, model, POOLED_FOLD, "brier_uncalibrated")),
                     _num(_value(results, model, POOLED_FOLD, "ece_uncalibrated")),
                     _num(_value(results, model, TEST_FOLD, "brier")), _num(_value(results, model, TEST_FOLD, "ece"))])
    text = ("<p>Brier score and expected calibration error (ECE, 10 equal-width bins of P(AML)); lower is better. "
            "With training.calibration on, the probabilities are calibrated (CV folds by calibrators fitted on "
            "nested out-of-fold rows that exclude the fold), and the uncalibrated pooled values are shown too.</p>")
    table = _table("calibration-table", ["model", "CV Brier", "CV ECE", "CV Brier uncalibrated",
                                         "CV ECE uncalibrated", "test Brier", "test ECE"], rows)
    return Section("calibration", title, text + img + table)


def risk_coverage_section(data: RunData, figures: FigureWriter) -> Section:
    title = "Abstention (risk-coverage)"
    oof = data.oof if data.oof is not None else pd.DataFrame()
    models = [m for m in data.models if not oof.empty and (oof["model"] == m).any()]
    if not models:
        return Section("abstention", title, "<p>No out-of-fold predictions for this run.</p>")
    colours = model_colours(data.models)
    results = data.results if data.results is not None else pd.DataFrame(columns=["model", "fold", "metric"])
    fig, ax = plt.subplots(figsize=(7.2, 5.4), layout="constrained")
    rows = []
    for model in models:
        part = oof[oof["model"] == model]
        curve = risk_coverage_curve((part["truth"] == POSITIVE_CLASS).astype(int), part["probability_AML"])
        ax.step(curve["coverage"], curve["risk"], where="post", color=colours[model], label=model)
        coverage = _value(results, model, POOLED_FOLD, "coverage")
        if coverage is not None:
            ax.plot([coverage], [1 - (_value(results, model, POOLED_FOLD, "accuracy_on_calls") or np.nan)],
                    marker="D", color=colours[model], markersize=7)
        rows.append([model, _num(_value(results, model, POOLED_FOLD, "abstain_band_lo"), 3) + " – "
                     + _num(_value(results, model, POOLED_FOLD, "abstain_band_hi"), 3),
                     _num(coverage), _num(_value(results, model, POOLED_FOLD, "accuracy_on_calls")),
                     _num(_value(results, model, TEST_FOLD, "coverage")),
                     _num(_value(results, model, TEST_FOLD, "accuracy_on_calls")),
                     _num(_value(results, model, POOLED_FOLD, "abstain_max_error_rate"), 3),
                     _band_warning(results, model)])
    ax.set_xlabel("coverage (share of samples called, most confident first)")
    ax.set_ylabel("error rate on the calls")
    ax.set_title("Risk-coverage curves on the out-of-fold predictions")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", fontsize=9)
    img = figures.save(fig, "risk_coverage.png", "risk-coverage curve of each model on the out-of-fold predictions")
    text = ("<p>Withholding the least confident calls (P(AML) nearest 0.5) trades coverage for accuracy. "
            "Diamonds: each model's abstention band (predict.abstain_band), its out-of-fold coverage and error "
            "(each fold under a band chosen on the other folds).</p>")
    text += ("<p>Guarantee: with <code>predict.abstain_rule: conformal</code> the band is split-conformal at "
             "<code>predict.max_error_rate</code>: a new sample like the training samples gets a wrong call "
             "(not unclassified) with probability at most that rate, at any cohort size.</p>")
    table = _table("abstention-table", ["model", "band", "CV coverage", "CV accuracy on calls", "test coverage",
                                        "test accuracy on calls", "guaranteed P(wrong call) at most",
                                        "note"], rows)
    return Section("abstention", title, text + img + table)


def _band_warning(results: pd.DataFrame, model: str) -> str:
    notes = []
    if _value(results, model, POOLED_FOLD, "band_withholds_all") == 1.0:
        notes.append("WARNING: the band withholds every out-of-fold sample; this model calls nothing")
    if _value(results, model, POOLED_FOLD, "calibration_fallback") == 1.0:
        notes.append("isotonic calibration fell back to Platt (too few samples)")
    return "; ".join(notes)


def _kept_rows(data: RunData, keep) -> pd.DataFrame | None:
    """The run's results rows for which `keep(results)` is true; None when there are none."""
    if data.results is None:
        return None
    rows = data.results[keep(data.results)]
    return None if rows.empty else rows


def ood_section(data: RunData) -> Section | None:
    ood = _kept_rows(data, lambda r: r["fold"].str.startswith("ood:"))
    if ood is None:
        return None
    wide = ood.pivot_table(index=["model", "fold"], columns="metric", values="value", aggfunc="first").reset_index()
    rows = [[r["model"], r["fold"][4:], int(r["n"]), int(r["errors"]), int(r["abstained"]), int(r["flagged"]),
             int(r["called_ALL"]), int(r["called_AML"]), _num(r["mean_probability_AML"], 3),
             _num(r.get("flagged_or_unclassified_fraction"), 3)]
            for _, r in wide.sort_values(["model", "fold"]).iterrows()]
    text = ("<p>The samples label extraction excluded (other diseases of the study) scored by the final models: "
            "none is ALL or AML, so a call is over-confident. Abstained: inside the abstention band; flagged: "
            "novelty (unlike every training class as the model sees it) or an unseen lineage; errors: refused.</p>")
    return Section("ood", "Out-of-distribution check (excluded samples)",
                   text + _table("ood-table", ["model", "MILE class", "n", "errors", "abstained", "flagged",
                                               "called ALL", "called AML", "mean P(AML)",
                                               "flagged or unclassified"], rows))


def selection_section(data: RunData) -> Section | None:
    results = data.results
    if results is None:
        return None
    rows = results[(results["fold"] == POOLED_FOLD) & (results["metric"] == "selection_jaccard")]
    if rows.empty:
        return None
    table = _table("selection-table", ["model", "genes per fold", "mean pairwise Jaccard over CV folds"],
                   [[r.model, _num(_value(results, r.model, POOLED_FOLD, "selection_k"), 0), _num(r.value)]
                    for r in rows.itertuples()])
    text = ("<p>Genes selected inside each fold from its training rows only (table <code>selected_genes</code>); "
            "a Jaccard index of 1 means every fold chose the same genes.</p>")
    return Section("selection", "In-fold gene selection", text + table)


def ensembles_section(data: RunData) -> Section | None:
    results = data.results
    if results is None:
        return None
    rows = results[results["metric"] == "mcnemar_p"]
    if rows.empty:
        return None
    table_rows = []
    for r in rows.itertuples():
        versus = json.loads(r.params).get("versus") if r.params else ""
        table_rows.append([r.model, versus, "test set" if r.fold == TEST_FOLD else "pooled CV folds",
                           _num(_value(results, r.model, r.fold, "mcnemar_b"), 0),
                           _num(_value(results, r.model, r.fold, "mcnemar_c"), 0), _num(r.value)])
    text = ("<p>Exact McNemar tests of each ensemble against the best single model (by CV): b = samples the "
            "ensemble gets right and the single model wrong, c = the reverse; p from the binomial test of b "
            "out of b + c.</p>")
    return Section("ensembles", "Ensembles vs the best single model",
                   text + _table("mcnemar-table", ["ensemble", "versus", "on", "b", "c", "p"], table_rows))


def markers_section(data: RunData) -> Section | None:
    results = data.results
    if results is None:
        return None
    rows = results[(results["fold"] == "final") & (results["metric"] == "marker_enrichment_p")]
    if rows.empty:
        return None
    table = _table("markers-table", ["model", "top N", "markers in top N", "expected by chance",
                                     "markers among the model's genes", "hypergeometric p"],
                   [[r.model, _num(_value(results, r.model, "final", "top_n"), 0),
                     _num(_value(results, r.model, "final", "markers_in_top"), 0),
                     _num(_value(results, r.model, "final", "expected_markers"), 2),
                     _num(_value(results, r.model, "final", "markers_in_universe"), 0), _num(r.value, 6)]
                    for r in rows.itertuples()])
    markers = "; ".join(f"{g} ({lineage})" for g, lineage, _ in LINEAGE_MARKERS)
    text = ("<p>Known lineage markers among each final model's top genes (|coefficient| for linear models, "
            "share of splits for the random forest, total gain for XGBoost), against a hypergeometric null. "
            f"Markers (provenance in <code>leukspark/reference.py</code>): {_esc(markers)}.</p>")
    return Section("markers", "Lineage markers among the top genes", text + table)


def _tuned_values(params: str | None, searched: set[str]) -> str:
    """The searched parameters of one chosen candidate, as 'key=value' pairs."""
    chosen = json.loads(params) if params else {}
    return ", ".join(f"{key}={chosen[key]}" for key in sorted(searched) if key in chosen) or "—"


def tuning_section(data: RunData) -> Section | None:
    inner = _kept_rows(data, lambda r: r["metric"].str.startswith("tuning_inner_"))
    if inner is None:
        return None
    results = data.results
    metric = inner["metric"].iloc[0].removeprefix("tuning_inner_")
    rows = []
    for model, part in inner.groupby("model", sort=False):
        chosen = [json.loads(p) for p in part["params"] if p]
        # The searched parameters are the ones whose chosen value differs somewhere, or all of the grid.
        searched = {key for key in chosen[0] if len({json.dumps(c.get(key)) for c in chosen}) > 1} or set(chosen[0])
        for r in sorted(part.itertuples(), key=lambda r: (r.fold == TEST_FOLD, r.fold)):
            outer = _value(results, model, r.fold, f"tuning_outer_{metric}")
            rows.append([model, "final (whole training set)" if r.fold == TEST_FOLD else r.fold,
                         _tuned_values(r.params, searched), _num(r.value), _num(outer),
                         _num(_value(results, model, r.fold, "optimism_gap"))])
        rows.append([model, "mean over outer folds", "", "", "",
                     _num(_value(results, model, POOLED_FOLD, "optimism_gap"))])
    text = (f"<p>Nested tuning: each outer fold chose its parameters by an inner cross-validation of its own "
            f"training rows (mean inner {_esc(metric)}); the final model used the parameters chosen on the whole "
            "training set. The optimism gap is the chosen candidate's inner score minus its outer fold's score: "
            "how much the search flattered itself. Every candidate's scores are in the <code>tuning</code> "
            "table.</p>")
    header = ["model", "outer fold", "chosen parameters", f"inner {metric}", f"outer {metric}", "optimism gap"]
    return Section("tuning", "Nested hyperparameter tuning", text + _table("tuning-table", header, rows))


def groups_section(data: RunData) -> Section | None:
    """In-group (test set: samples of groups the fit saw) vs across-group (grouped CV) accuracy per model."""
    grouped = _kept_rows(data, lambda r: r["fold"].str.startswith("group:"))
    if grouped is None:
        return None
    names = sorted(grouped["fold"].str[6:].unique())
    rows = []
    for model in data.models:
        test = _value(data.results, model, TEST_FOLD, "accuracy")
        row = [model, _num(_value(data.results, model, "cv_mean", "accuracy"), 4),
               "-" if test is None else _num(test, 4)]
        for name in names:
            accuracy, n = (_value(grouped, model, f"group:{name}", m) for m in ("accuracy", "n"))
            row.append("-" if accuracy is None else f"{_num(accuracy, 3)} (n={int(n)})")
        rows.append(row)
    text = ("<p>Cross-validation folds grouped by <code>split.group_by</code>: every out-of-fold call on a "
            "group comes from a fit that never saw that group. In-group: the test set, drawn from the groups "
            "the final fit saw (none in a cross-validation-only run). A model whose across-group accuracy "
            "falls far below its in-group accuracy has learned the groups, not the classes.</p>")
    header = ["model", "across-group (grouped CV mean)", "in-group (test set)"] + [f"group {n}" for n in names]
    return Section("groups", "In-group vs across-group accuracy", text + _table("groups-table", header, rows))


def science_sections(data: RunData, figures: FigureWriter) -> list[Section]:
    sections = [reliability_section(data, figures), risk_coverage_section(data, figures)]
    for build in (groups_section, tuning_section, ood_section, selection_section, ensembles_section, markers_section):
        section = build(data)
        if section is not None:
            sections.append(section)
    return sections
