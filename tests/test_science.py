"""Calibration, abstention, gene selection, ensembles, McNemar, marker enrichment and --explain,
each against an independent computation (scikit-learn, scipy, a direct formula), with leakage
checks that perturb exactly what a fold must not see. No Spark here (tests/test_science_run.py
runs the pipeline with all of it switched on)."""

from __future__ import annotations

import json
from math import comb

import numpy as np
import pandas as pd
import pytest
from scipy import optimize, special, stats
from sklearn.isotonic import IsotonicRegression
from sklearn.metrics import brier_score_loss

from leukspark import metrics as M
from leukspark.calibration import Calibrator, fit_calibrator
from leukspark.config import load_config
from leukspark.errors import ConfigError
from leukspark.models import fit_and_predict
from leukspark.models.selection import gene_scores, select_genes


def test_brier_equals_scikit_learn_and_ece_equals_a_direct_sum():
    rng = np.random.default_rng(0)
    for _ in range(5):
        y = rng.integers(0, 2, 200)
        p = np.clip(rng.beta(2, 2, 200) * 0.5 + 0.5 * y * rng.random(200), 0, 1)
        assert M.brier_score(y, p) == pytest.approx(brier_score_loss(y, p))
        edges = np.linspace(0, 1, 11)
        index = np.minimum(np.digitize(p, edges[1:-1]), 9)
        direct = sum((index == b).sum() / len(p) * abs(p[index == b].mean() - y[index == b].mean())
                     for b in range(10) if (index == b).any())
        assert M.expected_calibration_error(y, p, 10) == pytest.approx(direct)
    assert M.expected_calibration_error([1, 0], [1.0, 0.0]) == 0.0
    assert M.expected_calibration_error([0, 0], [1.0, 1.0]) == 1.0


def test_isotonic_calibrator_equals_scikit_learn_and_platt_fixes_overconfidence():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 400)
    true_p = np.where(y == 1, rng.beta(5, 2, 400), rng.beta(2, 5, 400))
    calibrator = fit_calibrator("isotonic", y, true_p)
    reference = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(true_p, y)
    grid = np.linspace(-0.1, 1.1, 101)
    np.testing.assert_allclose(calibrator.apply(grid), reference.predict(grid), atol=1e-12)
    # Over-confident scores (logit x 4): Platt must shrink them back and lower the ECE.
    sharp = special.expit(4 * special.logit(np.clip(true_p, 1e-6, 1 - 1e-6)))
    outcome = (rng.random(400) < true_p).astype(int)
    platt = fit_calibrator("platt", outcome, sharp)
    assert 0.1 < platt.x[0] < 0.5  # slope ~ 1/4
    assert M.expected_calibration_error(outcome, platt.apply(sharp)) < M.expected_calibration_error(outcome, sharp)
    again = Calibrator.from_arrays(platt.to_arrays())
    np.testing.assert_array_equal(again.apply(grid), platt.apply(grid))


def test_abstain_band_is_the_narrowest_reaching_the_target():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 500)
    p = np.clip(np.where(y == 1, 0.7, 0.3) + rng.normal(0, 0.2, 500), 0, 1)
    band = M.choose_abstain_band(y, p, 0.995)
    lo, hi = band
    assert lo == pytest.approx(1 - hi)
    calls = ~M.abstains(p, band)
    assert ((p[calls] >= 0.5) == y[calls]).mean() >= 0.995
    # Any narrower candidate misses the target.
    distance = np.abs(p - 0.5)
    for w in np.unique(distance[distance < hi - 0.5]):
        kept = distance > w
        assert ((p[kept] >= 0.5) == y[kept]).mean() < 0.995
    assert M.choose_abstain_band([1, 0], [0.9, 0.1], 0.995) is None
    assert M.selective_metrics([1, 0, 1], [0.9, 0.45, 0.55], (0.4, 0.6)) == {"coverage": 1 / 3,
                                                                          "accuracy_on_calls": 1.0}


def test_moderated_t_equals_a_direct_limma_computation():
    rng = np.random.default_rng(3)
    n1, n0, genes = 7, 9, 400
    sd = np.sqrt(1 / rng.gamma(4, 1 / 3, genes))  # genes with different variances: finite d0
    X = rng.normal(0, sd, (n1 + n0, genes))
    y = np.r_[np.ones(n1, int), np.zeros(n0, int)]
    X[y == 1, :20] += 1.5
    # Direct: pooled variances, Smyth's moment equations solved with scipy's root finder.
    d = n1 + n0 - 2
    s2 = (X[y == 1].var(axis=0, ddof=1) * (n1 - 1) + X[y == 0].var(axis=0, ddof=1) * (n0 - 1)) / d
    z = np.log(s2)
    e = z - special.digamma(d / 2) + np.log(d / 2)
    target = e.var(ddof=1) - special.polygamma(1, d / 2)
    assert target > 0
    half_d0 = optimize.brentq(lambda x: special.polygamma(1, x) - target, 1e-6, 1e6)
    d0 = 2 * half_d0
    s0 = np.exp(e.mean() + special.digamma(d0 / 2) - np.log(d0 / 2))
    moderated = (d0 * s0 + d * s2) / (d0 + d)
    t = (X[y == 1].mean(0) - X[y == 0].mean(0)) / np.sqrt(moderated * (1 / n1 + 1 / n0))
    np.testing.assert_allclose(gene_scores("moderated_t", X, y), np.abs(t), rtol=1e-8)
    # The ordinary t equals scipy's pooled two-sample t.
    ordinary = stats.ttest_ind(X[y == 1], X[y == 0], equal_var=True).statistic
    np.testing.assert_allclose(gene_scores("t_test", X, y), np.abs(ordinary), rtol=1e-10)
    np.testing.assert_allclose(gene_scores("variance", X, None), X.var(axis=0, ddof=1))
    top, _ = select_genes("moderated_t", 20, X, y)
    assert len(set(top) & set(range(20))) >= 10  # the shifted genes dominate the top 20


def test_gene_selection_sees_only_the_training_rows():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(80, 300))
    y = rng.integers(0, 2, 80)
    X[y == 1, :15] += 1.0
    train, evaluate = np.arange(60), np.arange(60, 80)
    X_eval_altered = X[evaluate].copy()
    X_eval_altered[:, 200:260] = rng.normal(0, 50, (20, 60)) + 100 * y[evaluate, None]  # loud in eval rows only
    for method in ("variance", "t_test", "moderated_t"):
        a = fit_and_predict("logistic_regression", {}, X[train], y[train], X[evaluate], seed=1,
                            selection=method, selection_k=30)
        b = fit_and_predict("logistic_regression", {}, X[train], y[train], X_eval_altered, seed=1,
                            selection=method, selection_k=30)
        np.testing.assert_array_equal(a.preprocessor.selected_genes, b.preprocessor.selected_genes)
        assert a.preprocessor.n_features == 300 and a.preprocessor.n_outputs == 30
        # The same alteration in the training rows does change the selection: the check can fail.
        X_train_altered = X[train].copy()
        X_train_altered[:, 200:260] = rng.normal(0, 50, (60, 60)) + 100 * y[train, None]
        c = fit_and_predict("logistic_regression", {}, X_train_altered, y[train], X[evaluate], seed=1,
                            selection=method, selection_k=30)
        assert not np.array_equal(a.preprocessor.selected_genes, c.preprocessor.selected_genes)


def _fake_rows(seed=5, n_per_fold=12, folds=3, models=("a", "b")):
    """Prediction rows of two base models on 3 folds, the test set and the nested folds."""
    rng = np.random.default_rng(seed)
    samples = [f"S{i}" for i in range(n_per_fold * folds)]
    fold_of = {s: i % folds for i, s in enumerate(samples)}
    truth = {s: ("AML" if rng.random() < 0.5 else "ALL") for s in samples}
    test = [f"T{i}" for i in range(10)]
    truth.update({s: ("AML" if i % 2 else "ALL") for i, s in enumerate(test)})
    rows = []

    def add(model, fold, sample):
        signal = 0.7 if truth[sample] == "AML" else 0.3
        p = float(np.clip(signal + rng.normal(0, 0.2), 0.01, 0.99))
        rows.append({"run": "r", "model": model, "fold": fold, "sample": sample, "probability_AML": p,
                     "predicted": "AML" if p >= 0.5 else "ALL", "truth": truth[sample], "fit_seconds": 1.0})

    for model in models:
        for s in samples:
            add(model, str(fold_of[s]), s)
            for k in range(folds):
                if k != fold_of[s]:
                    add(model, f"{k}/{fold_of[s]}", s)
        for s in test:
            add(model, "test", s)
    return pd.DataFrame(rows), fold_of


def _evaluate(rows, **training):
    from leukspark.evaluation import evaluate

    cfg = {"calibration": "none", "ensembles": [], "best_by": "accuracy", **training}
    info = pd.DataFrame({"model": [], "fold": [], "info": []})
    return evaluate(rows, info, cfg, {"abstain_band": training.get("band", "none"), "target_accuracy": 0.9},
                    [], "r")


def _perturb(rows, where):
    out = rows.copy()
    rng = np.random.default_rng(99)
    out.loc[where, "probability_AML"] = rng.random(int(where.sum()))
    return out


def test_stacking_and_calibration_of_a_fold_use_only_rows_that_never_saw_it():
    """Fold 0's stacked and calibrated probabilities depend on fold 0's own out-of-fold rows and the
    nested rows '0/j' only: changing what models trained on fold 0 produced elsewhere (the other folds'
    out-of-fold rows, nested rows 'k/j' with k != 0) changes nothing; changing '0/j' does."""
    rows, _ = _fake_rows()
    base = _evaluate(rows, ensembles=["stacking", "soft_voting"], calibration="platt").predictions
    seen_fold_0 = rows["fold"].isin(["1", "2", "1/2", "2/1", "1/0", "2/0"])
    other = _evaluate(_perturb(rows, seen_fold_0), ensembles=["stacking"], calibration="platt").predictions
    inner = _evaluate(_perturb(rows, rows["fold"].isin(["0/1", "0/2"])), ensembles=["stacking"],
                      calibration="platt").predictions

    def fold0(frame, model):
        part = frame[(frame["model"] == model) & (frame["fold"] == "0")].sort_values("sample")
        return part["probability_AML"].to_numpy()

    for model in ("stacking", "a", "b"):
        np.testing.assert_allclose(fold0(base, model), fold0(other, model), atol=1e-12)
        assert not np.allclose(fold0(base, model), fold0(inner, model))
    # Soft voting is the plain mean of the (calibrated) base probabilities.
    wide = base.pivot_table(index=["fold", "sample"], columns="model", values="probability_AML")
    np.testing.assert_allclose(wide["soft_voting"], wide[["a", "b"]].mean(axis=1))


def test_a_folds_abstention_band_is_chosen_without_its_rows():
    rows, _ = _fake_rows(seed=6)
    outcome = _evaluate(rows, band="auto")
    flipped = rows.copy()
    fold0 = flipped["fold"] == "0"
    flipped.loc[fold0, "probability_AML"] = 1 - flipped.loc[fold0, "probability_AML"]
    again = _evaluate(flipped, band="auto")

    def calls(frame):
        part = frame[(frame["model"] == "a") & (frame["fold"] == "0")].sort_values("sample")
        inside = part["predicted"] == "unclassified"
        return inside.to_numpy(), part["probability_AML"].to_numpy()

    (inside_a, p_a), (inside_b, p_b) = calls(outcome.predictions), calls(again.predictions)
    # Same band for fold 0 (chosen on folds 1, 2): a mirrored probability is withheld iff the original was.
    np.testing.assert_array_equal(inside_a, inside_b)
    np.testing.assert_allclose(p_a, 1 - p_b)
    assert outcome.bands["a"] is not None and outcome.bands["a"] != again.bands["a"]
    assert {"coverage", "accuracy_on_calls"} <= set(outcome.metrics.columns)


def test_mcnemar_equals_the_binomial_formula():
    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, 120)
    a = np.where(rng.random(120) < 0.9, y, 1 - y)
    b = np.where(rng.random(120) < 0.8, y, 1 - y)
    result = M.mcnemar_exact(y, a, b)
    n01 = int(((a == y) & (b != y)).sum())
    n10 = int(((a != y) & (b == y)).sum())
    n = n01 + n10
    expected = min(1.0, 2 * sum(comb(n, i) for i in range(min(n01, n10) + 1)) / 2 ** n)
    assert (result["mcnemar_b"], result["mcnemar_c"]) == (n01, n10)
    assert result["mcnemar_p"] == pytest.approx(expected)
    assert M.mcnemar_exact([1, 0], [1, 0], [1, 0])["mcnemar_p"] == 1.0


def test_jaccard_and_marker_enrichment_against_direct_formulas():
    assert M.mean_pairwise_jaccard([{1, 2, 3}, {2, 3, 4}, {1, 2, 3}]) == pytest.approx((0.5 + 1 + 0.5) / 3)
    universe = [f"G{i}" for i in range(200)] + ["CD19", "MPO", "CD33", "LYZ"]
    ranked = ["CD19", "G1", "MPO", "G2", "CD33"] + [f"G{i}" for i in range(3, 200)] + ["LYZ"]
    result = M.marker_enrichment(ranked, universe, ["CD19", "MPO", "CD33", "LYZ", "NOT_MEASURED"], 10)
    M_, n, N, k = 204, 4, 10, 3
    direct = sum(comb(n, i) * comb(M_ - n, N - i) for i in range(k, n + 1)) / comb(M_, N)
    assert result["markers_in_top"] == 3 and result["markers_in_universe"] == 4
    assert result["marker_enrichment_p"] == pytest.approx(direct)


def test_bundle_keeps_calibrator_and_band_and_explain_sums_to_the_log_odds(tmp_path):
    from leukspark.bundle import attach_postprocessing, load_bundle, save_bundle
    from leukspark.errors import BundleError
    from leukspark.models import get_model
    from leukspark.predict import score_matrix

    rng = np.random.default_rng(8)
    X = rng.normal(size=(60, 40))
    y = (X[:, 0] + 0.5 * rng.normal(size=60) > 0).astype(int)
    X[:3, 5] = np.nan
    result = fit_and_predict("logistic_regression", {}, X, y, X, seed=1, selection="t_test", selection_k=10)
    genes = [f"G{i}" for i in range(40)]
    directory = save_bundle(tmp_path / "lr", model_name="logistic_regression", spec=get_model("logistic_regression"),
                            model=result.model, preprocessor=result.preprocessor, gene_order=genes,
                            params=result.params, run_id="r")
    bundle = load_bundle(directory)
    np.testing.assert_allclose(bundle.predict_proba(X), result.probabilities)
    assert bundle.used_genes.sum() == 10 and bundle.used_genes[0]
    explained = bundle.explain(X, top=10)
    log_odds = special.logit(result.probabilities)
    intercept = float(result.model.intercepts[0])
    sums = np.array([sum(g["contribution"] for g in row) for row in explained]) + intercept
    np.testing.assert_allclose(sums, log_odds, atol=1e-4)

    calibrator = fit_calibrator("platt", y, result.probabilities)
    attach_postprocessing(directory, calibrator=calibrator, abstain_band=(0.3, 0.7))
    bundle = load_bundle(directory)
    calibrated = bundle.predict_proba(X)
    np.testing.assert_allclose(calibrated, calibrator.apply(result.probabilities))
    scored = score_matrix(bundle, [f"S{i}" for i in range(60)], X)
    for s, p in zip(scored, calibrated):
        expected = "unclassified" if 0.3 <= p <= 0.7 else ("AML" if p >= 0.5 else "ALL")
        assert s.prediction == expected
    assert bundle.manifest["extra"]["calibration"] == "platt"
    (directory / "calibration.npz").write_bytes(b"tampered")
    with pytest.raises(BundleError, match="calibration.npz"):
        load_bundle(directory)


def test_new_configuration_keys_are_validated():
    assert load_config(overrides={"predict.abstain_band": [0.2, 0.8]})["predict"]["abstain_band"] == [0.2, 0.8]
    for key, value in (("predict.abstain_band", [0.6, 0.9]), ("predict.abstain_band", "sometimes"),
                       ("training.calibration", "beta"), ("training.selection", "lasso"),
                       ("training.ensembles", ["bagging"]), ("training.selection_k", 0)):
        with pytest.raises(ConfigError, match=key):
            load_config(overrides={key: value})
