"""One small pipeline run with every model-science feature switched on: isotonic calibration,
automatic abstention, in-fold moderated-t gene selection, both ensembles, the OOD check with
the excluded samples. Each table is checked against an oracle computed here."""

from __future__ import annotations

import json
import re
from html import unescape

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import brier_score_loss

from leukspark.config import load_config
from leukspark.lake import Lake
from leukspark.pipeline import Pipeline

FAST_PARAMS = {"random_forest": {"n_estimators": 30}}
MODELS = ["logistic_regression", "random_forest"]
K = 50


@pytest.fixture(scope="module")
def run(spark, tmp_path_factory):
    from leukspark.synth import write_synthetic_series

    base = tmp_path_factory.mktemp("science")
    series = write_synthetic_series(base / "series", n_samples=80, n_probes=600, seed=21)
    config = load_config(overrides={
        "spark.shuffle_partitions": 4, "training.params": FAST_PARAMS, "training.models": MODELS,
        "split.folds": 3, "training.calibration": "isotonic", "training.isotonic_min_samples": 2,  # keep isotonic
        "training.selection": "moderated_t",
        "training.selection_k": K, "training.ensembles": ["soft_voting", "stacking"], "training.ood_check": True,
        "predict.abstain_band": "auto", "training.marker_top_n": 20,
    })
    lake = Lake.from_config(spark, base / "lake", config)
    pipeline = Pipeline(spark, lake, config, echo=lambda _: None)
    outcome = pipeline.run([str(series.family_soft)], report_dir=str(base / "report"))
    run_id = outcome["train"].run_id
    predictions = lake.read("predictions").toPandas()
    results = lake.read("results").toPandas()
    return {"lake": lake, "series": series, "outcome": outcome, "run_id": run_id, "base": base,
            "predictions": predictions[predictions["run"] == run_id],
            "results": results[results["run"] == run_id]}


def _value(results, model, fold, metric):
    return results[(results["model"] == model) & (results["fold"] == fold)
                   & (results["metric"] == metric)]["value"].iloc[0]


def test_brier_and_ece_rows_equal_recomputation(run):
    predictions, results = run["predictions"], run["results"]
    for (model, fold), part in predictions[predictions["fold"] != "ood"].groupby(["model", "fold"]):
        y = (part["truth"] == "AML").astype(int)
        assert _value(results, model, fold, "brier") == pytest.approx(brier_score_loss(y, part["probability_AML"]))
        assert 0 <= _value(results, model, fold, "ece") <= 1
    assert {"soft_voting", "stacking"} <= set(predictions["model"])
    assert not predictions["fold"].str.contains("/").any()  # nested rows are not stored


def test_final_bundle_is_calibrated_and_predict_reproduces_the_recorded_calls(run):
    from leukspark.bundle import load_bundle
    from leukspark.predict import predict_file
    from leukspark.runs import RunLog

    lake, run_id = run["lake"], run["run_id"]
    best = run["outcome"]["train"].best_model
    assert best in MODELS
    bundle = load_bundle(RunLog(lake.root).bundle_dir(run_id, None))
    assert bundle.calibrator is not None and bundle.calibrator.method == "isotonic"
    assert bundle.preprocessor.selected_genes.size == K
    recorded = run["predictions"]
    recorded = recorded[(recorded["fold"] == "test") & (recorded["model"] == best)].set_index("sample")
    scored = {s.sample: s for s in predict_file(run["series"].series_matrix, lake.root, run_id=run_id)}
    for sample, row in recorded.iterrows():
        assert scored[sample].probability_AML == pytest.approx(row["probability_AML"], abs=1e-9)
        assert scored[sample].prediction == row["predicted"]
    band = bundle.abstain_band
    lo, hi = band if band else (0.5, 0.5)
    assert _value(run["results"], best, "cv_pooled", "abstain_band_lo") == pytest.approx(lo)
    inside = recorded["probability_AML"].between(lo, hi) if band else recorded["probability_AML"] < -1
    assert ((recorded["predicted"] == "unclassified") == inside).all()
    assert _value(run["results"], best, "test", "coverage") == pytest.approx(1 - inside.mean())


def test_selected_genes_are_the_top_moderated_t_of_each_folds_training_rows(run):
    from leukspark.models.base import SampleNormalizer
    from leukspark.models.selection import select_genes

    lake, run_id = run["lake"], run["run_id"]
    selected = lake.read("selected_genes").toPandas()
    selected = selected[(selected["run"] == run_id) & (selected["model"] == "logistic_regression")]
    features = lake.read("gene_features").toPandas().set_index("sample")
    splits = lake.read("splits").toPandas().set_index("sample")
    train = splits[splits["set"] == "train"]
    for fold in ["0", "1", "2", "test"]:
        rows = train.index if fold == "test" else train.index[train["fold"] != int(fold)]
        X = np.vstack(features.loc[rows, "features"].to_numpy())
        # Selection sees the per-sample normalised rows (features.normalize: rank by default).
        X = SampleNormalizer(load_config()["features"]["normalize"]).transform(X)
        y = (splits.loc[rows, "label"] == "AML").astype(int).to_numpy()
        expected, _ = select_genes("moderated_t", K, X, y)
        assert sorted(selected.loc[selected["fold"] == fold, "position"]) == list(expected), fold
    sets = [set(selected.loc[selected["fold"] == f, "position"]) for f in "012"]
    jaccard = np.mean([len(a & b) / len(a | b) for i, a in enumerate(sets) for b in sets[i + 1:]])
    assert _value(run["results"], "logistic_regression", "cv_pooled", "selection_jaccard") == pytest.approx(jaccard)


def test_ensembles_mcnemar_and_marker_rows(run):
    predictions, results = run["predictions"], run["results"]
    best = run["outcome"]["train"].best_model
    for ensemble in ("soft_voting", "stacking"):
        for fold in ("test", "cv_pooled"):
            rows = predictions[(predictions["fold"] == "test") if fold == "test"
                               else predictions["fold"].str.isdigit()]
            wide = rows.pivot_table(index=["fold", "sample", "truth"], columns="model", values="probability_AML")
            y = wide.index.get_level_values("truth") == "AML"
            right_e, right_b = (wide[ensemble] >= 0.5) == y, (wide[best] >= 0.5) == y
            assert _value(results, ensemble, fold, "mcnemar_b") == (right_e & ~right_b).sum()
            assert _value(results, ensemble, fold, "mcnemar_c") == (~right_e & right_b).sum()
            params = results[(results["model"] == ensemble) & (results["metric"] == "mcnemar_p")]["params"].iloc[0]
            assert json.loads(params)["versus"] == best
    # The top N counts only genes the model uses (a 30-tree forest on 50 genes splits on fewer than 20).
    assert _value(results, "logistic_regression", "final", "top_n") == 20
    assert 1 <= _value(results, "random_forest", "final", "top_n") <= 20
    for model in MODELS:
        assert 0 <= _value(results, model, "final", "marker_enrichment_p") <= 1


def test_excluded_samples_are_scored_as_ood(run):
    lake, predictions, results = run["lake"], run["predictions"], run["results"]
    excluded = lake.read("excluded_samples").toPandas()
    assert len(excluded) > 0
    ood = predictions[predictions["fold"] == "ood"]
    for model in MODELS:
        part = ood[ood["model"] == model].set_index("sample")
        assert set(part.index) == set(excluded["sample"])
        assert (part.loc[excluded["sample"], "truth"].to_numpy() == excluded["subtype"].to_numpy()).all()
        for mile_class, group in excluded.groupby("subtype"):
            assert _value(results, model, f"ood:{mile_class}", "n") == len(group)
            calls = part.loc[group["sample"], "predicted"]
            assert _value(results, model, f"ood:{mile_class}", "abstained") == (calls == "unclassified").sum()
    # The blast check: every scored sample carries its blast index, and exactly those below the
    # bundle's threshold are flagged low_blast (other diseases and the test rows alike).
    from leukspark.bundle import load_bundle
    from leukspark.runs import RunLog

    threshold = load_bundle(RunLog(lake.root).bundle_dir(run["run_id"], MODELS[0])).training_inputs[
        "blast_check"]["threshold"]
    assert threshold is not None
    scored = predictions[predictions["fold"].isin(["ood", "test"]) & (predictions["model"] == MODELS[0])]
    assert scored["blast_index"].notna().all()
    flagged = scored["flags"].fillna("").str.contains("low_blast")
    assert (flagged == (scored["blast_index"] < threshold)).all()


def test_the_other_disease_check_flags_by_its_threshold_and_judges_its_own_samples_out_of_fold(run):
    """The series' own other diseases train the check: every bundle carries it, a test or ood row is
    flagged exactly above its threshold, `predict` gives a test sample the stored P(other), and the
    other-disease samples it learnt from get their out-of-fold value, not the fitted check's."""
    from leukspark.bundle import load_bundle
    from leukspark.predict import predict_file
    from leukspark.runs import RunLog

    lake, run_id, predictions = run["lake"], run["run_id"], run["predictions"]
    checks = [load_bundle(RunLog(lake.root).bundle_dir(run_id, model)).training_inputs["other_disease"]
              for model in MODELS]
    assert checks[0] == checks[1] and checks[0]["threshold"] is not None
    threshold = checks[0]["threshold"]
    scored = predictions[predictions["fold"].isin(["ood", "test"]) & predictions["model"].isin(MODELS)]
    assert scored["probability_other"].notna().all()   # (the ensembles have no bundle, so no checks)
    flagged = scored["flags"].fillna("").str.contains("other_disease")
    assert (flagged == (scored["probability_other"] > threshold)).all()
    excluded = lake.read("excluded_samples").toPandas()
    learnt = set(excluded.loc[excluded["subtype"].str.match("^(CLL|CML|MDS|Non-leukemia)"), "sample"])
    assert sum(checks[0]["n_other"].values()) == len(learnt) >= 10
    fresh = {s.sample: s for s in predict_file(run["series"].series_matrix, lake.root, run_id=run_id,
                                               model=MODELS[0])}
    stored = scored[scored["model"] == MODELS[0]].set_index("sample")
    test = stored[stored["fold"] == "test"]
    assert all(fresh[s].probability_other == pytest.approx(p, abs=1e-9) for s, p in test["probability_other"].items())
    own = stored.loc[sorted(learnt)]
    in_sample = np.array([fresh[s].probability_other for s in own.index])
    assert not np.allclose(own["probability_other"].to_numpy(), in_sample)
    # Out of fold the check still separates them from the ALL/AML test samples.
    assert own["probability_other"].median() > test["probability_other"].median()


def test_report_has_the_new_sections(run):
    html = (run["base"] / "report" / "report.html").read_text()
    for anchor in ("calibration", "abstention", "ood", "selection", "ensembles", "markers"):
        assert f"<section id='{anchor}'>" in html, anchor
    assert (run["base"] / "report" / "reliability.png").exists()
    assert (run["base"] / "report" / "risk_coverage.png").exists()


def test_the_report_renders_in_chromium_with_every_image_loaded(run, tmp_path):
    from browser import render
    from PIL import Image

    page = run["base"] / "report" / "report.html"
    html = page.read_text()
    shown = render(page, tmp_path / "browser")
    assert shown.broken == [] and shown.images == html.count("<img ") > 0, shown
    expected = re.findall(r"<section id='[^']+'><h2>(.*?)</h2>", html)
    assert [unescape(h) for h in expected] == shown.headings, shown.headings
    for title in ("Calibration", "risk-coverage", "Out-of-distribution", "gene selection", "Ensembles", "Lineage markers"):
        assert any(title.lower() in h.lower() for h in shown.headings), (title, shown.headings)
    with Image.open(shown.screenshot) as image:
        assert image.size == (1280, 4000)
        assert np.asarray(image.convert("L")).std() > 5  # the page drew something: text, tables, figures

    # The check itself can fail: a page with one unreadable image is caught.
    broken = tmp_path / "broken.html"
    broken.write_text(html.replace('src="data:image/png;base64,', 'src="data:image/png;base64,AAAA', 1))
    assert len(render(broken, tmp_path / "broken").broken) == 1
