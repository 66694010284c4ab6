"""The HTML report, written from a small lake built directly from synthetic tables.

Running the pipeline would take minutes; instead the tables a run leaves behind (labels,
features, splits, results, predictions, runs, model bundles) are made here from 60
synthetic samples x 40 genes and two models fitted for real, and the report is written
once for the module.
"""

from __future__ import annotations

import base64
import re
from datetime import datetime
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from leukspark import schemas
from leukspark.lake import Lake
from leukspark.stages.train import TEST_FOLD, metric_rows, results_rows

RUN_ID = "run-test-report"
MODELS = ("logistic_regression", "random_forest")
N_FOLDS = 5
SECTION_IDS = ("summary", "class-counts", "pca", "tsne", "confusion", "roc", "cv", "leaderboard", "top-genes")
PNG_FILES = ("class_counts.png", "pca.png", "tsne.png", "confusion_matrices.png", "roc_curves.png",
             "cv_metrics.png", "top_genes_logistic_regression.png", "reliability.png", "risk_coverage.png")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Real lineage markers among the genes, so the top-genes marking has something to mark.
MARKER_GENES = ("MPO", "CD33", "LYZ", "CD19", "CD79A", "DNTT")


# ---------------------------------------------------------------------------------------
# the synthetic run
# ---------------------------------------------------------------------------------------
def synthetic_data(seed: int = 7, n_samples: int = 60, n_genes: int = 40):
    """Labels, gene names, a matrix whose first genes separate AML from ALL, and a split."""
    rng = np.random.default_rng(seed)
    genes = list(MARKER_GENES) + [f"GENE{i:03d}" for i in range(n_genes - len(MARKER_GENES))]
    samples = [f"GSM{900000 + i}" for i in range(n_samples)]
    labels = np.array(["AML" if i % 5 < 2 else "ALL" for i in range(n_samples)])
    aml = labels == "AML"
    matrix = rng.normal(8.0, 1.0, size=(n_samples, n_genes))
    direction = np.where(aml, 1.0, -1.0)
    direction[[3, 11]] *= -1  # two test samples that look like the other class: not every model is perfect
    matrix[:, :3] += 1.5 * direction[:, None] * rng.uniform(0.5, 1.0, size=3)   # AML markers up in AML
    matrix[:, 3:6] -= 1.2 * direction[:, None] * rng.uniform(0.5, 1.0, size=3)  # ALL markers up in ALL
    matrix[:, 10] += 0.8 * direction
    matrix[rng.random(matrix.shape) < 0.02] = np.nan  # a few unmeasured values
    subtypes = np.where(aml, np.where(np.arange(n_samples) % 2 == 0, "AML with t(8;21)", "AML with inv(16)"),
                        np.where(np.arange(n_samples) % 3 == 0, "T-ALL", "c-ALL/Pre-B-ALL without t(9;22)"))
    is_test = np.arange(n_samples) % 4 == 3
    # Stratified folds: each class's training samples dealt round-robin, so every fold has both.
    folds = np.full(n_samples, -1)
    for label in ("ALL", "AML"):
        members = np.flatnonzero((labels == label) & ~is_test)
        folds[members] = np.arange(members.size) % N_FOLDS
    return samples, genes, labels, subtypes, matrix, is_test, folds


def fit_models(samples, genes, labels, matrix, is_test, folds, bundle_root: Path):
    """CV folds and the final fit of each model; returns prediction rows and the final models."""
    from leukspark.bundle import save_bundle
    from leukspark.models import fit_and_predict, get_model

    y = (labels == "AML").astype(np.int64)
    rows, final = [], {}
    for model in MODELS:
        params = {"n_estimators": 50} if model == "random_forest" else {}
        for fold in [str(k) for k in range(N_FOLDS)] + [TEST_FOLD]:
            if fold == TEST_FOLD:
                train, evaluate = ~is_test, is_test
            else:
                train, evaluate = ~is_test & (folds != int(fold)), ~is_test & (folds == int(fold))
            result = fit_and_predict(model, params, matrix[train], y[train], matrix[evaluate], seed=42)
            if fold == TEST_FOLD:
                final[model] = result
                save_bundle(bundle_root / model, model_name=model, spec=get_model(model), model=result.model,
                            preprocessor=result.preprocessor, gene_order=genes, params=result.params,
                            run_id=RUN_ID)
            rows.append(pd.DataFrame({
                "run": RUN_ID, "model": model, "fold": fold, "sample": np.array(samples)[evaluate],
                "probability_AML": result.probabilities,
                "predicted": np.where(result.probabilities >= 0.5, "AML", "ALL"),
                "truth": labels[evaluate], "fit_seconds": result.fit_seconds,
            }))
    return pd.concat(rows, ignore_index=True), final


def write_tables(spark, lake: Lake, data, predictions: pd.DataFrame, bundle_root: Path) -> None:
    samples, genes, labels, subtypes, matrix, is_test, folds = data

    def append(table: str, frame: pd.DataFrame, schema) -> None:
        frame = frame.assign(**{c: None for c in schema.fieldNames() if c not in frame})  # nullable columns left out
        lake.append(table, spark.createDataFrame(frame[schema.fieldNames()], schema))

    append("labels", pd.DataFrame({"sample": samples, "label": labels, "subtype": subtypes, "rule": "test",
                                   "lineage": None}),
           schemas.LABELS)
    append("excluded_samples", pd.DataFrame({"sample": ["GSM1", "GSM2", "GSM3"], "subtype": ["CLL", "CLL", "MDS"],
                                             "reason": "no label rule matched"}), schemas.EXCLUDED_SAMPLES)
    append("genes", pd.DataFrame({"position": np.arange(len(genes), dtype=np.int32), "gene": genes,
                                  "n_probes": np.ones(len(genes), dtype=np.int32)}), schemas.GENES)
    append("gene_features", pd.DataFrame({"sample": samples, "features": [list(row) for row in matrix]}),
           schemas.GENE_FEATURES)
    append("splits", pd.DataFrame({"sample": samples, "set": np.where(is_test, "test", "train"),
                                   "fold": pd.array(np.where(is_test, None, folds), dtype="Int32"),
                                   "label": labels}), schemas.SPLITS)
    started = datetime(2026, 1, 2, 3, 4, 5)
    results = results_rows(metric_rows(predictions), run_id=RUN_ID, run_time=started, config_hash="cafe1234",
                           code_version="0.1.0-test", params={m: "{}" for m in MODELS})
    append("results", results, schemas.RESULTS)
    append("predictions", predictions, schemas.PREDICTIONS)
    run = {"run": RUN_ID, "started_at": started, "finished_at": started, "status": "succeeded",
           "config_hash": "cafe1234", "data_fingerprint": "f00d", "code_version": "0.1.0-test",
           "n_train": int((~is_test).sum()), "n_test": int(is_test.sum()), "n_genes": len(genes),
           "best_model": "logistic_regression", "bundle_dir": str(bundle_root), "trained": True,
           "owner_host": None, "owner_pid": None, "owner_token": None, "heartbeat_at": None}
    append("runs", pd.DataFrame([run]), schemas.RUNS)


@pytest.fixture(scope="module")
def built(spark, config, tmp_path_factory):
    """The report of the synthetic run, with what the test needs to check it independently."""
    from leukspark.report import write_report

    root = tmp_path_factory.mktemp("report")
    lake = Lake.from_config(spark, root / "lake", config)
    data = synthetic_data()
    bundle_root = Path(lake.path("models")) / RUN_ID
    predictions, final_fits = fit_models(*data[:3], data[4], data[5], data[6], bundle_root)
    write_tables(spark, lake, data, predictions, bundle_root)
    path = write_report(spark, lake, RUN_ID, root / "out", config)
    return {"path": path, "html": path.read_text(encoding="utf-8"), "predictions": predictions,
            "final_fits": final_fits, "genes": data[1], "lake": lake, "config": config}


# ---------------------------------------------------------------------------------------
# reading the page back
# ---------------------------------------------------------------------------------------
class PageParser(HTMLParser):
    """Element ids, and the rows (cell texts) of every table that has an id."""

    def __init__(self):
        super().__init__()
        self.ids: list[str] = []
        self.tables: dict[str, list[list[str]]] = {}
        self._table: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.append(attrs["id"])
        if tag == "table" and "id" in attrs:
            self._table = attrs["id"]
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._table and self._cell is not None:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def parse(html_text: str) -> PageParser:
    parser = PageParser()
    parser.feed(html_text)
    return parser


def table_records(rows: list[list[str]]) -> list[dict[str, str]]:
    header, *body = rows
    return [dict(zip(header, row)) for row in body]


# ---------------------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------------------
def test_report_has_every_section(built):
    assert built["path"].name == "report.html" and built["path"].is_file()
    ids = parse(built["html"]).ids
    for section in SECTION_IDS:
        assert section in ids, f"section {section!r} missing"
    assert RUN_ID in built["html"]
    assert "cafe1234" in built["html"]  # the config hash in the summary


def test_every_figure_is_a_real_png_file(built):
    from PIL import Image

    out_dir = built["path"].parent
    for name in PNG_FILES:
        png = out_dir / name
        assert png.is_file(), f"{name} not written"
        content = png.read_bytes()
        assert content.startswith(PNG_MAGIC), name
        assert len(content) > 5_000, f"{name} is suspiciously small ({len(content)} bytes)"
        with Image.open(png) as image:
            image.verify()
        with Image.open(png) as image:
            assert image.width > 300 and image.height > 200, name


def test_html_is_self_contained(built):
    text = built["html"]
    sources = re.findall(r'<img[^>]*src="([^"]*)"', text)
    assert len(sources) == len(PNG_FILES)
    for source in sources:
        assert source.startswith("data:image/png;base64,")
        assert base64.b64decode(source.split(",", 1)[1]).startswith(PNG_MAGIC)
    # The embedded images are the PNG files themselves.
    embedded = {base64.b64decode(s.split(",", 1)[1]) for s in sources}
    assert embedded == {(built["path"].parent / name).read_bytes() for name in PNG_FILES}
    assert 'src="http' not in text and "<link" not in text and "<script" not in text
    assert "<style>" in text


def test_leaderboard_accuracy_matches_the_predictions(built):
    from sklearn.metrics import accuracy_score

    records = table_records(parse(built["html"]).tables["leaderboard-table"])
    assert [r["model"] for r in records] and {r["model"] for r in records} == set(MODELS)
    test = built["predictions"][built["predictions"]["fold"] == TEST_FOLD]
    expected = {}
    for model, part in test.groupby("model"):
        expected[model] = accuracy_score(part["truth"], part["predicted"])
        errors = int((part["truth"] != part["predicted"]).sum())
        row = next(r for r in records if r["model"] == model)
        assert float(row["test accuracy"]) == pytest.approx(expected[model], abs=5e-5)
        assert int(row["errors"]) == errors
    # The best model is chosen by cross-validation, never by the test set (training.best_by: accuracy).
    shown = [float(r["CV accuracy"].split("±")[0]) for r in records]
    assert shown == sorted(shown, reverse=True), "leaderboard must list the best CV model first"


def test_top_genes_are_the_largest_logistic_regression_weights(built):
    n_top = built["config"]["report"]["top_genes"]
    coefficients = built["final_fits"]["logistic_regression"].model.weights[0]  # the fitted coef_
    expected = [built["genes"][i] for i in np.argsort(-np.abs(coefficients))[:n_top]]
    records = table_records(parse(built["html"]).tables["top-genes-logistic_regression"])
    shown = [r["gene"].replace("★", "").strip() for r in records]
    assert shown == expected
    for record, index in zip(records, np.argsort(-np.abs(coefficients))[:n_top]):
        assert float(record["weight"]) == pytest.approx(coefficients[index], abs=5e-5)
        assert record["toward"] == ("AML" if coefficients[index] > 0 else "ALL")
    # Markers that made the list are flagged; the planted signal puts them there.
    flagged = {r["gene"].replace("★", "").strip() for r in records if r["known marker"]}
    assert flagged == set(expected) & set(MARKER_GENES) and flagged
    # random_forest has no per-gene weights: no chart or table for it.
    assert not (built["path"].parent / "top_genes_random_forest.png").exists()
    assert "top-genes-random_forest" not in parse(built["html"]).tables


def test_top_genes_section_without_a_linear_model(built, tmp_path):
    from leukspark.report import FigureWriter, load_run_data, top_genes_section

    data = load_run_data(built["lake"], RUN_ID)
    data.models = ["random_forest"]
    section = top_genes_section(built["lake"], data, FigureWriter(tmp_path), 10)
    assert section.anchor == "top-genes"
    assert "No linear model" in section.body
    assert not list(tmp_path.glob("*.png"))


@pytest.mark.parametrize("stored", ["absolute", "relative"])
def test_a_runs_row_naming_bundles_outside_the_lake_fails_naming_the_folder(built, tmp_path, stored):
    """The report loads a bundle only from the lake's own models folder, as predict does: the
    bundles a runs row points at elsewhere (here intact copies) are refused, naming their folder."""
    import os
    import shutil

    from leukspark.errors import BundleError
    from leukspark.report import FigureWriter, load_run_data, top_genes_section

    lake = built["lake"]
    outside = tmp_path / "elsewhere" / "run-from-another-lake"
    shutil.copytree(Path(lake.path("models")) / RUN_ID, outside)
    data = load_run_data(lake, RUN_ID)
    data.run = {**data.run, "run": outside.name, "bundle_dir": str(outside) if stored == "absolute"
                else os.path.relpath(outside, Path(lake.root).resolve())}
    figures = tmp_path / "figures"
    with pytest.raises(BundleError) as error:
        top_genes_section(lake, data, FigureWriter(figures), 10)
    message = str(error.value)
    assert "run-from-another-lake/logistic_regression: the bundle of model logistic_regression" in message
    assert "not this lake's own" in message and message.count("\n") == 0
    if stored == "absolute":
        assert message.startswith(str(outside / "logistic_regression"))
    assert not list(figures.glob("*.png"))


def test_cv_summary_computed_from_folds_equals_the_stored_one(built):
    from leukspark.report import cv_summary

    results = built["lake"].read("results").toPandas()
    stored = cv_summary(results)
    computed = cv_summary(results[~results["fold"].isin(["cv_mean", "cv_std"])])
    for metric in ("accuracy", "roc_auc", "f1"):
        for stat in ("mean", "std"):
            pd.testing.assert_series_equal(stored[(metric, stat)].sort_index(), computed[(metric, stat)].sort_index(),
                                           check_names=False)


def test_tsne_perplexity_stays_below_the_sample_count():
    from leukspark.report import tsne_perplexity

    assert tsne_perplexity(30, 2000) == 30
    assert tsne_perplexity(30, 60) < 60 and tsne_perplexity(30, 60) == pytest.approx(59 / 3)
    assert 0 < tsne_perplexity(30, 4) < 4
