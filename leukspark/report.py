"""The HTML report of one training run: data overview, model comparison and top genes.

`write_report` reads the run's tables from the lake and writes into one folder:

* ``report.html``: a single self-contained page (inline CSS, every figure embedded as a
  base64 PNG, no external resource), one ``<section id=...>`` per topic;
* the same figures as PNG files next to it (``class_counts.png``, ``pca.png``, ...).

Only small data reaches the driver: label and split tables, the run's metrics and
predictions, and the gene matrix of at most `EMBEDDING_SAMPLE_CAP` samples for PCA and
t-SNE. AML is the positive class throughout, as in the rest of leukspark.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on workers or servers; must precede the pyplot import

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from pyspark.sql import SparkSession  # noqa: E402

from . import NEGATIVE_CLASS, POSITIVE_CLASS  # noqa: E402
from .errors import LeukSparkError, TableError  # noqa: E402
from .lake import Lake  # noqa: E402
from .runs import RunLog  # noqa: E402
from .metrics import confusion_table, roc_auc  # noqa: E402
from .reference import ALL_MARKERS, AML_MARKERS  # noqa: E402
from .stages.train import TEST_FOLD, is_cv_fold, leaderboard  # noqa: E402
from .report_base import DPI, FigureWriter, RunData, Section, _esc, _num, model_colours  # noqa: E402,F401
from .report_science import science_sections  # noqa: E402
from .report_subtypes import subtype_sections  # noqa: E402

log = logging.getLogger(__name__)

REPORT_FILE = "report.html"
EMBEDDING_SAMPLE_CAP = 3000   # PCA / t-SNE beyond this many samples add time, not insight
PCA_COMPONENTS_FOR_TSNE = 50  # t-SNE on 50 PCA components: much faster, same picture
TSNE_EXACT_MAX_SAMPLES = 100
RANDOM_STATE = 0

# One colour per class everywhere, so a reader learns it once.
CLASS_COLOURS = {NEGATIVE_CLASS: "#1f77b4", POSITIVE_CLASS: "#d62728", "excluded": "#9e9e9e"}
CV_METRICS = (("accuracy", "Accuracy"), ("roc_auc", "ROC AUC"), ("f1", "F1"))



# ---------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------
def write_report(spark: SparkSession, lake: Lake, run_id: str, out_dir: Path, config: dict) -> Path:
    """Write `report.html` and its PNG figures for run `run_id` into `out_dir`; return the HTML path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report_cfg = config["report"]
    data = load_run_data(lake, run_id, config["training"]["best_by"])
    figures = FigureWriter(out_dir)

    embedding = gene_embedding_inputs(lake, data)
    sections = [
        summary_section(data, report_cfg),
        class_counts_section(data, figures),
        pca_section(embedding, figures),
        tsne_section(embedding, figures, report_cfg["tsne_perplexity"]),
        confusion_section(data, figures),
        roc_section(data, figures),
        cv_section(data, figures),
        leaderboard_section(data),
        top_genes_section(lake, data, figures, report_cfg["top_genes"]),
        *science_sections(data, figures),
        *subtype_sections(data, figures),
    ]
    path = out_dir / REPORT_FILE
    path.write_text(render_page(data.run_id, sections), encoding="utf-8")
    log.info("report for %s written to %s", run_id, path)
    return path


# ---------------------------------------------------------------------------------------
# reading the lake
# ---------------------------------------------------------------------------------------
def load_run_data(lake: Lake, run_id: str, best_by: str = "accuracy") -> RunData:
    """The run's record, metrics and test predictions plus the label and split tables.

    A cross-validation-only run has no test set: its figures use the out-of-fold predictions.
    """
    run = RunLog(lake).record(run_id)

    results = lake.read_small("results", filters=[("run", [run_id])])
    if results.empty:
        raise TableError(f"the results table has no rows for run {run_id}")
    metrics = wide_metrics(results)
    predictions = lake.read_small("predictions", ["model", "fold", "sample", "probability_AML", "predicted", "truth"],
                                  filters=[("run", [run_id])])
    tested = (predictions["fold"] == TEST_FOLD).any()
    cv_rows = predictions["fold"].map(is_cv_fold)
    oof = predictions[cv_rows].copy()
    predictions = predictions[(predictions["fold"] == TEST_FOLD) if tested else cv_rows].drop(columns="fold")
    board = leaderboard(metrics, best_by)
    return RunData(
        run_id=run_id,
        run=run,
        labels=_read_optional(lake, "labels", ["sample", "label", "subtype"]),
        excluded=_read_optional(lake, "excluded_samples", ["sample", "subtype", "reason"]),
        splits=_read_optional(lake, "splits", ["sample", "set", "fold", "label"]),
        n_genes_table=(len(lake.read_small("genes", ["position"])) if run.get("n_genes") is None and lake.exists("genes")
                       else None),
        metrics=metrics,
        cv_summary=cv_summary(results),
        predictions=predictions,
        models=[str(m) for m in board.index],
        evaluated_on="test set" if tested else "out-of-fold predictions (cross-validation only)",
        best_by=best_by,
        results=results,
        oof=oof,
    )


def _read_optional(lake: Lake, table: str, columns: list[str]) -> pd.DataFrame:
    if not lake.exists(table):
        return pd.DataFrame(columns=columns)
    return lake.read_small(table, columns)


def wide_metrics(results: pd.DataFrame) -> pd.DataFrame:
    """Per-fold and test metrics as one row per (model, fold), like `train.metric_rows` makes."""
    per_fold = results[results["fold"].map(is_cv_fold) | (results["fold"] == TEST_FOLD)]
    wide = per_fold.pivot_table(index=["model", "fold"], columns="metric", values="value", aggfunc="first")
    wide.columns.name = None
    return wide.reset_index()


def cv_summary(results: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over CV folds per model and metric.

    Taken from the stored ``cv_mean`` / ``cv_std`` rows when present (what the run itself
    reported), otherwise computed from the per-fold rows (sample std, as the run does).
    """
    stored = results[results["fold"].isin(["cv_mean", "cv_std"])]
    if not stored.empty:
        table = stored.assign(stat=stored["fold"].map({"cv_mean": "mean", "cv_std": "std"}))
        summary = table.pivot_table(index="model", columns=["metric", "stat"], values="value", aggfunc="first",
                                    dropna=False)
    else:
        folds = results[results["fold"].str.fullmatch(r"\d+")]
        summary = folds.groupby(["model", "metric"])["value"].agg(mean="mean", std=lambda v: v.std(ddof=1))
        summary = summary.unstack("metric").swaplevel(axis=1)
    summary.columns.names = [None, None]
    return summary


# ---------------------------------------------------------------------------------------
# figures
# ---------------------------------------------------------------------------------------



# ---------------------------------------------------------------------------------------
# 1. summary
# ---------------------------------------------------------------------------------------
def summary_section(data: RunData, report_cfg: dict) -> Section:
    run = data.run
    splits = data.splits
    n_train = run.get("n_train") if run.get("n_train") is not None else int((splits["set"] == "train").sum())
    n_test = run.get("n_test") if run.get("n_test") is not None else int((splits["set"] == "test").sum())
    n_genes = run.get("n_genes") if run.get("n_genes") is not None else data.n_genes_table
    label_counts = data.labels["label"].value_counts()
    rows = [
        ("Run", data.run_id),
        ("Status", run.get("status")),
        ("Started", _format_time(run.get("started_at"))),
        ("Finished", _format_time(run.get("finished_at"))),
        ("Config hash", run.get("config_hash")),
        ("Data fingerprint", run.get("data_fingerprint")),
        ("Code version", run.get("code_version")),
        ("Training samples", n_train),
        ("Test samples", n_test),
        ("Labelled samples (ALL / AML)",
         f"{len(data.labels)} ({label_counts.get(NEGATIVE_CLASS, 0)} / {label_counts.get(POSITIVE_CLASS, 0)})"),
        ("Excluded samples", len(data.excluded)),
        ("Genes", n_genes),
        ("Models", f"{len(data.models)}: {', '.join(data.models)}"),
        (f"Best model (mean CV {data.best_by})", run.get("best_model") or (data.models[0] if data.models else None)),
        ("Report settings", f"t-SNE perplexity {report_cfg['tsne_perplexity']}, "
                            f"top genes {report_cfg['top_genes']}"),
        ("Report generated", _format_time(datetime.now(timezone.utc))),
    ]
    body = "<table class='kv'>" + "".join(
        f"<tr><th>{_esc(k)}</th><td>{_esc('—' if v is None else v)}</td></tr>" for k, v in rows) + "</table>"
    return Section("summary", "Run summary", body)


# ---------------------------------------------------------------------------------------
# 2. class counts
# ---------------------------------------------------------------------------------------
def class_counts(labels: pd.DataFrame, excluded: pd.DataFrame) -> pd.DataFrame:
    """Samples per (group, subtype), group being ALL, AML or excluded; largest first in each group."""
    kept = labels.assign(group=labels["label"])[["group", "subtype"]]
    dropped = excluded.assign(group="excluded")[["group", "subtype"]]
    both = pd.concat([kept, dropped], ignore_index=True)
    both["subtype"] = both["subtype"].fillna("(no subtype)")
    counts = both.groupby(["group", "subtype"]).size().rename("count").reset_index()
    order = {NEGATIVE_CLASS: 0, POSITIVE_CLASS: 1, "excluded": 2}
    counts["group_order"] = counts["group"].map(order).fillna(3)
    return (counts.sort_values(["group_order", "count", "subtype"], ascending=[True, False, True])
            .drop(columns="group_order").reset_index(drop=True))


def class_counts_section(data: RunData, figures: FigureWriter) -> Section:
    counts = class_counts(data.labels, data.excluded)
    if counts.empty:
        return Section("class-counts", "Samples by class and subtype", "<p>No labels in the lake.</p>")
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(counts) + 1.4), layout="constrained")
    # barh draws bottom-up: reverse so the table's first row (largest ALL subtype) is on top.
    shown = counts.iloc[::-1]
    colours = [CLASS_COLOURS.get(g, "#555555") for g in shown["group"]]
    bars = ax.barh(shown["subtype"], shown["count"], color=colours)
    ax.bar_label(bars, padding=3, fontsize=8)
    ax.set_xlabel("samples")
    ax.set_title("Samples by leukemia subtype (coloured by class)")
    ax.margins(x=0.08)
    ax.tick_params(axis="y", labelsize=8)
    totals = counts.groupby("group")["count"].sum()
    ax.legend(handles=[Patch(color=CLASS_COLOURS[g], label=f"{g} (n = {totals.get(g, 0)})")
                       for g in (NEGATIVE_CLASS, POSITIVE_CLASS, "excluded") if g in totals],
              loc="best", title="class")
    img = figures.save(fig, "class_counts.png", "samples per subtype, coloured by ALL, AML or excluded")
    text = (f"<p>{totals.get(NEGATIVE_CLASS, 0)} ALL and {totals.get(POSITIVE_CLASS, 0)} AML samples are "
            f"labelled; {totals.get('excluded', 0)} samples are excluded (other diseases or no matching "
            f"label rule).</p>")
    return Section("class-counts", "Samples by class and subtype", text + img)


# ---------------------------------------------------------------------------------------
# 3-4. PCA and t-SNE of the gene matrix
# ---------------------------------------------------------------------------------------
@dataclass
class EmbeddingInputs:
    """PCA of the labelled samples' gene matrix, shared by the PCA and t-SNE sections."""

    samples: pd.DataFrame           # sample, label, set
    components: np.ndarray | None   # samples x up to 50 PCA scores
    explained: np.ndarray | None    # explained variance ratio per component
    n_total: int                    # labelled samples with features before the cap
    n_genes: int
    reason: str | None = None       # why there is no embedding


def gene_embedding_inputs(lake: Lake, data: RunData) -> EmbeddingInputs:
    """Read at most EMBEDDING_SAMPLE_CAP labelled samples' features and run PCA on them."""
    empty = pd.DataFrame(columns=["sample", "label", "set"])
    if not lake.exists("gene_features") or data.labels.empty:
        return EmbeddingInputs(empty, None, None, 0, 0, "the lake has no gene_features or labels table")
    # The ids first (small), then only the picked samples' vectors: no Spark job, no sort of the vectors.
    with_features = set(lake.read_small("gene_features", ["sample"])["sample"])
    labelled = data.labels[data.labels["sample"].isin(with_features)][["sample", "label"]]
    n_total = len(labelled)
    # A hash order is a deterministic pseudo-random pick that does not depend on the table's file order.
    order = labelled["sample"].map(lambda s: hashlib.blake2b(s.encode(), digest_size=8).hexdigest())
    chosen = labelled.assign(_order=order).sort_values(["_order", "sample"]).head(EMBEDDING_SAMPLE_CAP)
    if len(chosen) < 3:
        return EmbeddingInputs(empty, None, None, n_total, 0, f"only {len(chosen)} labelled samples have features")
    vectors = lake.read_small("gene_features", ["sample", "features"], filters=[("sample", chosen["sample"])])
    picked = chosen.drop(columns="_order").merge(vectors.drop_duplicates("sample"), on="sample")
    del vectors
    # float32 halves the driver memory of a 3,000 x 22,000 matrix; PCA needs no more precision.
    matrix = np.array([np.asarray(v, dtype=np.float32) for v in picked["features"]], dtype=np.float32)
    picked = picked.drop(columns="features")
    sets = dict(zip(data.splits["sample"], data.splits["set"]))
    samples = picked[["sample", "label"]].assign(set=picked["sample"].map(sets).fillna("unassigned"))
    try:
        components, explained = standardized_pca(matrix)
    except ValueError as exc:
        return EmbeddingInputs(empty, None, None, n_total, matrix.shape[1], str(exc))
    return EmbeddingInputs(samples.reset_index(drop=True), components, explained, n_total, matrix.shape[1])


def standardized_pca(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Impute NaN by column mean, standardize, PCA; returns (scores, explained variance ratios).

    Columns never measured, or constant, carry no information and are dropped rather than
    given an arbitrary value. ValueError when fewer than two genes vary.
    """
    from sklearn.decomposition import PCA

    observed = ~np.isnan(matrix).all(axis=0)
    work = matrix[:, observed]  # the one copy: imputed and scaled in place (the driver holds it twice at most)
    missing = np.isnan(work)
    if missing.any():
        work[missing] = np.take(np.nanmean(work, axis=0), np.nonzero(missing)[1])
    del missing
    std = work.std(axis=0)
    varying = std > 0
    if not varying.all():
        work, std = work[:, varying], std[varying]
    work -= work.mean(axis=0)
    work /= std
    scaled = work
    n_components = min(PCA_COMPONENTS_FOR_TSNE, scaled.shape[0], scaled.shape[1])
    if n_components < 2:
        raise ValueError("the gene matrix has fewer than two varying genes: nothing to project")
    pca = PCA(n_components=n_components, random_state=RANDOM_STATE)
    return pca.fit_transform(scaled), pca.explained_variance_ratio_


def _scatter_by_class(ax, coords: np.ndarray, samples: pd.DataFrame) -> None:
    """ALL / AML in class colours; test samples as hollow triangles so the split shows too."""
    for label in (NEGATIVE_CLASS, POSITIVE_CLASS):
        for set_name, marker, filled in (("train", "o", True), ("test", "^", False)):
            mask = ((samples["label"] == label) & ((samples["set"] == "test") == (set_name == "test"))).to_numpy()
            if not mask.any():
                continue
            colour = CLASS_COLOURS[label]
            ax.scatter(coords[mask, 0], coords[mask, 1], s=22, marker=marker, linewidths=0.9, alpha=0.8,
                       facecolors=colour if filled else "none", edgecolors=colour,
                       label=f"{label} {set_name} (n = {int(mask.sum())})")
    ax.legend(loc="best", fontsize=8, framealpha=0.85)
    ax.grid(True, alpha=0.3)


def _sample_note(embedding: EmbeddingInputs) -> str:
    shown = len(embedding.samples)
    capped = f" (a deterministic sample of {shown} of {embedding.n_total})" if shown < embedding.n_total else ""
    return f"{shown} labelled samples{capped} x {embedding.n_genes} genes"


def pca_section(embedding: EmbeddingInputs, figures: FigureWriter) -> Section:
    if embedding.components is None:
        return Section("pca", "PCA of the gene matrix", f"<p>No PCA: {_esc(embedding.reason)}.</p>")
    scores, ratio = embedding.components, embedding.explained
    fig, ax = plt.subplots(figsize=(7.5, 6), layout="constrained")
    _scatter_by_class(ax, scores[:, :2], embedding.samples)
    ax.set_xlabel(f"PC1 ({ratio[0] * 100:.1f} % of variance)")
    ax.set_ylabel(f"PC2 ({ratio[1] * 100:.1f} % of variance)")
    ax.set_title("PCA of standardized gene expression")
    img = figures.save(fig, "pca.png", "PCA of the gene matrix coloured by ALL and AML")
    text = (f"<p>{_esc(_sample_note(embedding))}; missing values imputed by the gene mean, genes "
            f"standardized. Filled circles are training samples, hollow triangles test samples.</p>")
    return Section("pca", "PCA of the gene matrix", text + img)


def tsne_perplexity(configured: float, n_samples: int) -> float:
    """The configured perplexity, capped at (n - 1) / 3: t-SNE needs perplexity < n samples,
    and each point's neighbourhood (about 3 x perplexity points) must fit in the data."""
    return float(max(1.0, min(float(configured), (n_samples - 1) / 3)))


def tsne_section(embedding: EmbeddingInputs, figures: FigureWriter, configured_perplexity: float) -> Section:
    from sklearn.manifold import TSNE

    if embedding.components is None:
        return Section("tsne", "t-SNE of the gene matrix", f"<p>No t-SNE: {_esc(embedding.reason)}.</p>")
    n_samples = embedding.components.shape[0]
    perplexity = tsne_perplexity(configured_perplexity, n_samples)
    # The exact O(n^2) method only for a few dozen samples: Barnes-Hut's per-iteration overhead wins
    # there (0.20 vs 0.29 s at 74), but it is 3-7x faster from 300 to 1,000 samples (scikit-learn 1.9,
    # 50 components; benchmarks/results/fixed_costs.md).
    method = "exact" if n_samples <= TSNE_EXACT_MAX_SAMPLES else "barnes_hut"
    coords = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto", method=method,
                  random_state=RANDOM_STATE).fit_transform(embedding.components)
    fig, ax = plt.subplots(figsize=(7.5, 6), layout="constrained")
    _scatter_by_class(ax, coords, embedding.samples)
    ax.set_xlabel("t-SNE 1")
    ax.set_ylabel("t-SNE 2")
    ax.set_title(f"t-SNE of the first {embedding.components.shape[1]} principal components "
                 f"(perplexity {perplexity:.3g})")
    img = figures.save(fig, "tsne.png", "t-SNE of the gene matrix coloured by ALL and AML")
    text = (f"<p>{_esc(_sample_note(embedding))}; t-SNE run on the first {embedding.components.shape[1]} "
            f"PCA components with perplexity {perplexity:.3g} (configured {configured_perplexity}). Distances "
            f"between clusters in a t-SNE map are not meaningful; the grouping is.</p>")
    return Section("tsne", "t-SNE of the gene matrix", text + img)


# ---------------------------------------------------------------------------------------
# 5. confusion matrices
# ---------------------------------------------------------------------------------------
def confusion_on_test_set(predictions: pd.DataFrame, model: str) -> pd.DataFrame:
    """2 x 2 test-set counts of `model` (rows actual AML/ALL, columns predicted AML/ALL)."""
    part = predictions[predictions["model"] == model]
    # From the probability, not `predicted`: with an abstention band that may say 'unclassified'.
    return confusion_table((part["truth"] == POSITIVE_CLASS).astype(int).to_numpy(),
                           (part["probability_AML"] >= 0.5).astype(int).to_numpy())


def confusion_section(data: RunData, figures: FigureWriter) -> Section:
    models = [m for m in data.models if (data.predictions["model"] == m).any()]
    if not models:
        return Section("confusion", f"Confusion matrices ({data.evaluated_on})", "<p>No predictions for this run.</p>")
    n_cols = min(3, len(models))
    n_rows = -(-len(models) // n_cols)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(3.6 * n_cols, 3.3 * n_rows), layout="constrained",
                             squeeze=False)
    for ax, model in zip(axes.flat, models):
        table = confusion_on_test_set(data.predictions, model)
        counts = table.to_numpy()
        ax.imshow(counts, cmap="Blues", vmin=0, vmax=max(1, counts.max()))
        for (i, j), value in np.ndenumerate(counts):
            dark = value > counts.max() / 2
            ax.text(j, i, str(value), ha="center", va="center", fontsize=14,
                    color="white" if dark else "black")
        ax.set_xticks([0, 1], [c.replace(" ", "\n") for c in table.columns], fontsize=9)
        ax.set_yticks([0, 1], [r.replace(" ", "\n") for r in table.index], fontsize=9)
        accuracy = np.trace(counts) / max(1, counts.sum())
        ax.set_title(f"{model}\naccuracy {accuracy:.3f} (n = {counts.sum()})", fontsize=10)
    for ax in list(axes.flat)[len(models):]:
        ax.axis("off")
    fig.suptitle(f"Confusion matrices on the {data.evaluated_on} (AML = positive class)")
    img = figures.save(fig, "confusion_matrices.png", f"confusion matrix of each model on the {data.evaluated_on}")
    return Section("confusion", f"Confusion matrices ({data.evaluated_on})", img)


# ---------------------------------------------------------------------------------------
# 6. ROC curves
# ---------------------------------------------------------------------------------------
ROC_ZOOM = (0.25, 0.75)  # the zoom panel shows false positive rate <= 0.25, true positive rate >= 0.75
ROC_ZOOM_MIN_AUC = 0.9   # ... drawn when every model's AUC reaches this


def roc_curves_on_test_set(predictions: pd.DataFrame,
                           models: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray, float]]:
    """(false positive rates, true positive rates, AUC) per model with both classes in its test set."""
    from sklearn.metrics import roc_curve

    curves = {}
    for model in models:
        part = predictions[predictions["model"] == model]
        truth = (part["truth"] == POSITIVE_CLASS).astype(int).to_numpy()
        if part.empty or truth.min() == truth.max():
            continue  # ROC is undefined with one class
        scores = part["probability_AML"].to_numpy()
        fpr, tpr, _ = roc_curve(truth, scores)
        curves[model] = (fpr, tpr, roc_auc(truth, scores))
    return curves


def roc_section(data: RunData, figures: FigureWriter) -> Section:
    curves = roc_curves_on_test_set(data.predictions, data.models)
    if not curves:
        return Section("roc", f"ROC curves ({data.evaluated_on})",
                       "<p>No ROC curve: the predictions lack one of the classes.</p>")
    colours = model_colours(data.models)
    # Good models share the same curve (up the left edge, along the top): drawing each
    # later one thinner on top of the earlier ones keeps every colour visible.
    widths = {model: 2 + 1.5 * (len(curves) - 1 - i) for i, model in enumerate(curves)}
    # When every model is good the curves crowd the top-left corner: enlarge it beside.
    zoomed = min(auc for _, _, auc in curves.values()) >= ROC_ZOOM_MIN_AUC
    fig, axes = plt.subplots(1, 2 if zoomed else 1, figsize=(12, 6) if zoomed else (6.8, 6.2),
                             layout="constrained", squeeze=False)
    full = axes[0, 0]
    for ax in axes.flat:
        for model, (fpr, tpr, auc) in curves.items():
            ax.plot(fpr, tpr, color=colours[model], linewidth=widths[model], solid_capstyle="butt",
                    label=f"{model} (AUC = {auc:.3f})")
        ax.plot([0, 1], [0, 1], linestyle="--", color="#777777", linewidth=1, label="chance (AUC = 0.5)")
        ax.set_aspect("equal")
        ax.set_xlabel("false positive rate (ALL called AML)")
        ax.set_ylabel("true positive rate (AML called AML)")
        ax.grid(True, alpha=0.3)
    full.set_xlim(-0.04, 1.04)  # room for the thick lines along the edges
    full.set_ylim(-0.04, 1.04)
    full.set_title(f"ROC curves on the {data.evaluated_on}")
    full.legend(loc="lower right", fontsize=9)
    if zoomed:
        zoom = axes[0, 1]
        zoom.set_xlim(-0.01, ROC_ZOOM[0])
        zoom.set_ylim(ROC_ZOOM[1], 1.01)
        zoom.set_title("zoom on the top-left corner")
    img = figures.save(fig, "roc_curves.png", f"ROC curve of each model on the {data.evaluated_on}")
    note = ("<p>" + ("Right: the top-left corner enlarged, where good models differ. " if zoomed else "")
            + "Overlapping curves are drawn thinner on top of thicker ones (best model widest), so each colour "
              "stays visible where models agree.</p>")
    return Section("roc", f"ROC curves ({data.evaluated_on})", note + img)


# ---------------------------------------------------------------------------------------
# 7. cross-validation metrics
# ---------------------------------------------------------------------------------------
def cv_section(data: RunData, figures: FigureWriter) -> Section:
    summary = data.cv_summary
    models = [m for m in data.models if m in summary.index]
    metrics = [(key, name) for key, name in CV_METRICS if (key, "mean") in summary.columns]
    if not models or not metrics:
        return Section("cv", "Cross-validation", "<p>No cross-validation results for this run.</p>")
    colours = model_colours(data.models)
    width = 0.8 / len(models)
    fig, ax = plt.subplots(figsize=(min(12.0, max(7.0, 0.5 * len(models) * len(metrics) + 2.5)), 5),
                           layout="constrained")
    for i, model in enumerate(models):
        means = np.array([summary.loc[model, (key, "mean")] for key, _ in metrics], dtype=float)
        stds = np.nan_to_num(np.array([summary.loc[model].get((key, "std"), np.nan) for key, _ in metrics],
                                      dtype=float))
        # A score lies in [0, 1]: clip the error bar there rather than draw impossible values.
        errors = np.vstack([np.minimum(stds, means), np.minimum(stds, 1 - means)])
        positions = np.arange(len(metrics)) + (i - (len(models) - 1) / 2) * width
        ax.bar(positions, means, width * 0.92, yerr=errors, capsize=3, color=colours[model],
               label=model, error_kw={"elinewidth": 1, "ecolor": "#333333"})
        # The value inside the bar, at its foot: never collides with the error bars.
        for x, mean in zip(positions, means):
            if not np.isfinite(mean):  # e.g. ROC AUC of a fold holding one class: say so, no bar
                ax.text(x, 0.02, "n/a", rotation=90, ha="center", va="bottom", fontsize=8, color="#555555")
            elif mean > 0.15:
                ax.text(x, 0.02, f"{mean:.3f}", rotation=90, ha="center", va="bottom", fontsize=8,
                        color="white", fontweight="bold")
    ax.set_xticks(np.arange(len(metrics)), [name for _, name in metrics])
    ax.set_ylim(0, 1.04)
    ax.set_ylabel("score: mean ± std over CV folds")
    ax.set_title("Cross-validation metrics on the training set")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=min(len(models), 5), fontsize=9,
              frameon=False)
    img = figures.save(fig, "cv_metrics.png", "cross-validation accuracy, ROC AUC and F1 per model")
    rows = "".join(
        f"<tr><td>{_esc(model)}</td>" + "".join(
            f"<td>{_mean_std(summary.loc[model, (key, 'mean')], summary.loc[model].get((key, 'std')))}</td>"
            for key, _ in metrics) + "</tr>"
        for model in models)
    table = ("<table class='grid' id='cv-table'><tr><th>model</th>"
             + "".join(f"<th>CV {_esc(name)}</th>" for _, name in metrics) + f"</tr>{rows}</table>")
    return Section("cv", "Cross-validation", img + table)


# ---------------------------------------------------------------------------------------
# 8. leaderboard
# ---------------------------------------------------------------------------------------
LEADERBOARD_COLUMNS = ("model", "test accuracy", "errors", "ROC AUC", "F1", "sensitivity", "specificity",
                       "CV accuracy", "fit seconds")


def leaderboard_frame(metrics: pd.DataFrame, best_by: str = "accuracy") -> pd.DataFrame:
    """`train.leaderboard` (best first) with the test sensitivity and specificity added."""
    board = leaderboard(metrics, best_by)
    test = metrics[metrics["fold"] == TEST_FOLD].set_index("model")
    return board.assign(test_sensitivity=test["sensitivity"], test_specificity=test["specificity"])


def leaderboard_section(data: RunData) -> Section:
    board = leaderboard_frame(data.metrics, data.best_by)
    header = "".join(f"<th>{_esc(c)}</th>" for c in LEADERBOARD_COLUMNS)
    rows = []
    for rank, (model, r) in enumerate(board.iterrows()):
        cells = [model, _num(r.test_accuracy), _num(r.test_errors, 0), _num(r.test_roc_auc), _num(r.test_f1),
                 _num(r.test_sensitivity), _num(r.test_specificity),
                 _mean_std(r.cv_accuracy_mean, r.cv_accuracy_std), _num(r.fit_seconds, 2)]
        css = " class='best'" if rank == 0 else ""
        rows.append(f"<tr{css}>" + "".join(f"<td>{_esc(c)}</td>" for c in cells) + "</tr>")
    body = (f"<p>Models ranked by their mean cross-validation {_esc(data.best_by)} (the test set does not "
            "choose the model); test-set metrics of the final fit of each model (trained on the whole training "
            "set; — in a cross-validation-only run); CV accuracy is the mean ± std over the folds.</p>"
            f"<table class='grid' id='leaderboard-table'><tr>{header}</tr>{''.join(rows)}</table>")
    return Section("leaderboard", "Leaderboard", body)


# ---------------------------------------------------------------------------------------
# 9. top genes of the linear models
# ---------------------------------------------------------------------------------------
def has_feature_weights(model: str) -> bool:
    """Whether the model kind can have per-gene weights, without loading its bundle.

    A spec that does not override `feature_weights` always returns None; skipping those
    avoids loading e.g. a DNN bundle (and importing torch) for nothing.
    """
    from .models import ModelSpec, get_model

    try:
        spec = get_model(model)
    except LeukSparkError:
        return False
    return type(spec).feature_weights is not ModelSpec.feature_weights


def top_weighted_genes(weights: np.ndarray, genes: list[str], n: int) -> pd.DataFrame:
    """The `n` genes with the largest |weight| (largest first), with direction and marker kind."""
    order = np.argsort(-np.abs(weights), kind="stable")[:n]
    top = pd.DataFrame({"gene": [genes[i] for i in order], "weight": weights[order]})
    top.insert(0, "rank", np.arange(1, len(top) + 1))
    top["toward"] = np.where(top["weight"] > 0, POSITIVE_CLASS, NEGATIVE_CLASS)
    top["marker"] = top["gene"].map(lineage_marker)
    return top


def lineage_marker(gene: str) -> str:
    """'ALL marker', 'AML marker' or '' for a gene symbol (reference.ALL_MARKERS / AML_MARKERS)."""
    if gene in ALL_MARKERS:
        return "ALL marker"
    if gene in AML_MARKERS:
        return "AML marker"
    return ""


def top_genes_figure(top: pd.DataFrame, model: str):
    fig, ax = plt.subplots(figsize=(8, 0.3 * len(top) + 1.6), layout="constrained")
    shown = top.iloc[::-1]  # largest |weight| on top
    colours = [CLASS_COLOURS[t] for t in shown["toward"]]
    ax.barh(np.arange(len(shown)), shown["weight"], color=colours)
    ax.set_yticks(np.arange(len(shown)),
                  [f"★ {g}" if m else g for g, m in zip(shown["gene"], shown["marker"])], fontsize=9)
    for tick, marker in zip(ax.get_yticklabels(), shown["marker"]):
        if marker:
            tick.set_fontweight("bold")
    ax.axvline(0, color="#333333", linewidth=0.8)
    ax.set_xlabel("weight on standardized expression (log-odds; > 0 favours AML)")
    ax.set_title(f"{model}: top {len(top)} genes by |weight|")
    ax.grid(True, axis="x", alpha=0.3)
    handles = [Patch(color=CLASS_COLOURS[POSITIVE_CLASS], label="toward AML"),
               Patch(color=CLASS_COLOURS[NEGATIVE_CLASS], label="toward ALL"),
               Line2D([], [], linestyle="none", marker="*", markersize=11, color="black",
                      label="known lineage marker (bold)")]
    ax.legend(handles=handles, loc="lower right", fontsize=8, framealpha=0.9)
    return fig


def top_genes_table(top: pd.DataFrame, model: str) -> str:
    rows = "".join(
        f"<tr><td>{r.rank}</td><td>{'<b>' + _esc(r.gene) + '</b> ★' if r.marker else _esc(r.gene)}</td>"
        f"<td>{r.weight:+.4f}</td><td>{_esc(r.toward)}</td><td>{_esc(r.marker)}</td></tr>"
        for r in top.itertuples(index=False))
    return (f"<table class='grid top-genes' id='top-genes-{_esc(model)}'><tr><th>rank</th><th>gene</th>"
            f"<th>weight</th><th>toward</th><th>known marker</th></tr>{rows}</table>")


def top_genes_section(lake: Lake, data: RunData, figures: FigureWriter, n_genes: int) -> Section:
    from .bundle import load_bundle

    title = "Top genes of the linear models"
    linear = [m for m in data.models if has_feature_weights(m)]
    if not linear:
        return Section("top-genes", title, "<p>No linear model (logistic_regression, linear_svm) in this run, "
                                           "so there are no per-gene weights to show.</p>")
    parts = [f"<p>Weights of the final fit on standardized genes: a positive weight pushes toward AML. "
             f"★ marks known lineage markers (ALL: {_esc(', '.join(ALL_MARKERS))}; "
             f"AML: {_esc(', '.join(AML_MARKERS))}).</p>"]
    for model in linear:
        directory = RunLog(lake).own_bundle(data.run, model)  # as predict does: a bundle outside the lake fails
        try:
            bundle = load_bundle(directory, as_stored=True)
        except LeukSparkError as exc:
            parts.append(f"<h3>{_esc(model)}</h3><p class='warn'>Bundle not readable: {_esc(exc)}</p>")
            continue
        weights = bundle.spec.feature_weights(bundle.model)
        if weights is None:
            continue
        top = top_weighted_genes(np.asarray(weights, dtype=np.float64), bundle.gene_order, n_genes)
        img = figures.save(top_genes_figure(top, model), f"top_genes_{model}.png",
                           f"top {len(top)} genes of {model} by absolute weight")
        n_markers = int((top["marker"] != "").sum())
        parts.append(f"<h3>{_esc(model)}</h3><p>{n_markers} of the top {len(top)} genes are known lineage "
                     f"markers.</p>{img}{top_genes_table(top, model)}")
    return Section("top-genes", title, "".join(parts))


# ---------------------------------------------------------------------------------------
# the page
# ---------------------------------------------------------------------------------------
CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 0 auto;
       max-width: 1100px; padding: 1.5em 2em 4em; color: #222; line-height: 1.45; background: #fff; }
h1 { margin-bottom: 0.2em; }
h2 { border-bottom: 2px solid #ddd; padding-bottom: 0.2em; margin-top: 2em; }
nav { background: #f5f5f5; padding: 0.6em 1em; border-radius: 6px; font-size: 0.95em; }
nav a { margin-right: 1.1em; color: #1f5fa8; text-decoration: none; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
th, td { padding: 0.3em 0.7em; border: 1px solid #ddd; text-align: left; }
table.grid th { background: #f0f0f0; }
table.grid td { font-variant-numeric: tabular-nums; }
table.kv th { background: #f7f7f7; width: 16em; }
tr.best td { background: #eaf6ea; font-weight: 600; }
figure { margin: 1em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.8em; color: #777; }
.warn { color: #a33; }
"""


def render_page(run_id: str, sections: list[Section]) -> str:
    """One HTML document: title, table of contents, then every section."""
    nav = "".join(f"<a href='#{s.anchor}'>{_esc(s.title)}</a>" for s in sections)
    body = "".join(f"<section id='{s.anchor}'><h2>{_esc(s.title)}</h2>{s.body}</section>" for s in sections)
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>leukspark report {_esc(run_id)}</title><style>{CSS}</style></head><body>"
            f"<h1>leukspark: ALL vs AML</h1><p>Report of run <code>{_esc(run_id)}</code></p>"
            f"<nav>{nav}</nav>{body}</body></html>\n")


def _mean_std(mean, std) -> str:
    if mean is None or pd.isna(mean):
        return "—"
    return f"{mean:.4f}" if std is None or pd.isna(std) else f"{mean:.4f} ± {std:.4f}"


def _format_time(value) -> str | None:
    if value is None or (not isinstance(value, datetime) and pd.isna(value)):
        return None
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if isinstance(value, datetime) else str(value)
