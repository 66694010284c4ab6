"""Knowing when not to call: conformal abstention bands, the isotonic fallback, lineage programs
and the novelty check on what the model sees (no Spark; real cohorts read with pandas)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from leukspark import metrics as M

REAL = Path(__file__).parent / "data" / "real"


# -- abstention -------------------------------------------------------------------------------
def _conformal_q_oracle(y, p, alpha):
    """q by definition: the smallest s among the calibration nonconformities such that at least
    ceil((n + 1)(1 - alpha)) of them are <= s."""
    s = np.where(np.asarray(y) == 1, 1 - np.asarray(p), np.asarray(p))
    need = int(np.ceil((len(s) + 1) * (1 - alpha)))
    candidates = [v for v in sorted(s) if (s <= v).sum() >= need]
    return candidates[0] if candidates else np.inf


def test_conformal_band_matches_its_definition():
    rng = np.random.default_rng(3)
    for n in (20, 48, 200):
        y = rng.integers(0, 2, n)
        p = np.clip(0.5 + (y - 0.5) * rng.uniform(0.2, 1.0, n) + rng.normal(0, 0.2, n), 0, 1)
        q = _conformal_q_oracle(y, p, 0.05)
        band = M.conformal_abstain_band(y, p, 0.05)
        if q < 0.5:
            assert band is None
        else:
            assert band == pytest.approx((1 - q, q))


def test_conformal_band_bounds_wrong_calls_at_small_n():
    """Exchangeable draws: over many 48-sample calibration sets, a new sample gets a wrong call
    (outside the band, on the wrong side) at most max_error_rate of the time."""
    rng = np.random.default_rng(11)

    def draw(n):
        y = rng.integers(0, 2, n)
        p = 1 / (1 + np.exp(-(2.5 * (2 * y - 1) + rng.normal(0, 2.0, n))))  # ~10 % misclassified
        return y, p

    wrong, covered = 0, 0
    trials = 4000
    for _ in range(trials):
        y, p = draw(49)
        band = M.conformal_abstain_band(y[:48], p[:48], 0.05)
        called = not M.abstains(p[48:], band)[0]
        covered += called
        wrong += called and ((p[48] >= 0.5) != y[48])
    assert wrong / trials <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / trials)
    assert covered / trials > 0.5  # and it still calls: the bound is not bought by withholding everything


def test_conformal_band_withholds_everything_below_its_minimum_size_and_training_says_so():
    from leukspark.evaluation import evaluate

    assert M.conformal_abstain_band([0, 1] * 9, [0.1, 0.9] * 9, 0.05) == (0.0, 1.0)  # n = 18 < 1/0.05 - 1
    rows = []
    for i in range(18):
        truth = "AML" if i % 2 else "ALL"
        rows.append({"run": "r", "model": "a", "fold": str(i % 3), "sample": f"S{i}",
                     "probability_AML": 0.9 if i % 2 else 0.1, "predicted": truth, "truth": truth,
                     "fit_seconds": 1.0})
    outcome = evaluate(pd.DataFrame(rows), pd.DataFrame({"model": [], "fold": [], "info": []}),
                       {"calibration": "none", "ensembles": [], "best_by": "accuracy"},
                       {"abstain_band": "auto", "abstain_rule": "conformal", "max_error_rate": 0.05}, [], "r")
    assert outcome.bands["a"] == (0.0, 1.0)
    assert any("withholds every one" in note for note in outcome.notes)
    pooled = outcome.extra_results.set_index(["model", "fold", "metric"])["value"]
    assert pooled[("a", "cv_pooled", "band_withholds_all")] == 1.0
    assert pooled[("a", "cv_pooled", "abstain_max_error_rate")] == 0.05


def test_isotonic_falls_back_to_platt_on_a_small_cohort():
    from leukspark.calibration import effective_method
    from leukspark.evaluation import evaluate

    assert effective_method("isotonic", 48, 100) == "platt"
    assert effective_method("isotonic", 100, 100) == "isotonic"
    assert effective_method("none", 10, 100) == "none"
    rng = np.random.default_rng(2)
    rows = []
    for fold in ("0", "1", "2", "0/1", "0/2", "1/0", "1/2", "2/0", "2/1"):
        for i in range(16):
            truth = "AML" if i % 2 else "ALL"
            p = float(np.clip((0.8 if i % 2 else 0.2) + rng.normal(0, 0.15), 0.01, 0.99))
            rows.append({"run": "r", "model": "a", "fold": fold, "sample": f"S{fold[-1]}_{i}",
                         "probability_AML": p, "predicted": "AML" if p >= 0.5 else "ALL", "truth": truth,
                         "fit_seconds": 1.0})
    def run(min_samples):
        return evaluate(pd.DataFrame(rows), pd.DataFrame({"model": [], "fold": [], "info": []}),
                        {"calibration": "isotonic", "isotonic_min_samples": min_samples, "ensembles": [],
                         "best_by": "accuracy"}, {"abstain_band": "none"}, [], "r")

    def distinct(outcome):
        cv = outcome.predictions[outcome.predictions["fold"].isin(["0", "1", "2"])]
        return cv["probability_AML"].round(12).nunique(), len(cv)

    outcome = run(100)
    assert outcome.calibrators["a"].method == "platt"
    assert any("Platt scaling used instead" in note for note in outcome.notes)
    # Platt keeps every sample's own probability (strictly monotone); isotonic, allowed by a lower
    # minimum, pools them into a few steps.
    n_distinct, n = distinct(outcome)
    assert n_distinct >= 0.9 * n  # probabilities that saturate at 0 or 1 aside
    isotonic = run(2)
    assert isotonic.calibrators["a"].method == "isotonic" and not isotonic.notes
    assert distinct(isotonic)[0] < n / 3


# -- lineage programs -------------------------------------------------------------------------
def _gct(name):
    return pd.read_csv(REAL / name, sep="\t", skiprows=2, index_col=0).drop(columns="Description")


@pytest.fixture(scope="module")
def cohorts():
    """GSEA Leukemia (linear) and Chiaretti (RMA log2) as gene x sample frames (probe mean per symbol)."""
    annotation = pd.read_csv(REAL / "GPL8300_hgu95av2_annotation.csv.gz").dropna()
    annotation = annotation[~annotation["gene"].str.contains("///")].set_index("probe_id")["gene"]

    def genes(frame, log):
        frame = frame.loc[frame.index.intersection(annotation.index)]
        if log:
            frame = np.log2(np.maximum(frame, 20.0))
        return frame.groupby(annotation.loc[frame.index].to_numpy()).mean()

    gsea, chiaretti = genes(_gct("gsea_leukemia_hgu95av2.gct.gz"), True), genes(_gct("chiaretti_all.gct.gz"), False)
    shared = gsea.index.intersection(chiaretti.index)
    labels = pd.read_csv(REAL / "chiaretti_all_labels.csv", dtype=str).set_index("sample")
    lineage = labels.loc[chiaretti.columns, "subtype"].str[0].to_numpy()
    y = np.array([c.split("_")[0] == "AML" for c in gsea.columns]).astype(int)
    return gsea.loc[shared].T, y, chiaretti.loc[shared].T, lineage, list(shared)


def test_lineage_scores_are_scale_free_and_know_the_lineages(cohorts):
    from leukspark.reference import LINEAGE_PROGRAMS, dominant_lineage, lineage_scores

    gsea, y, _, _, genes = cohorts
    scores = lineage_scores(gsea.to_numpy(), genes)
    # The same on linear values (ranks survive any monotone map); NaN genes are left out.
    np.testing.assert_allclose(lineage_scores(2 ** gsea.to_numpy(), genes), scores)
    with_gap = gsea.to_numpy().copy()
    with_gap[:, genes.index("CD19")] = np.nan
    assert np.isfinite(lineage_scores(with_gap, genes)).all()
    dominant = [dominant_lineage(row) for row in scores]
    assert all(d == "B-lymphoid" for d, label in zip(dominant, y) if label == 0)
    assert sum(d == "myeloid" for d, label in zip(dominant, y) if label == 1) >= 18
    assert list(LINEAGE_PROGRAMS) == ["B-lymphoid", "T-lymphoid", "myeloid"]
    assert np.isnan(lineage_scores(gsea.to_numpy()[:2], [f"probe{i}" for i in range(len(genes))])).all()


def test_t_all_is_an_unseen_lineage_for_a_b_all_vs_aml_model(cohorts):
    from leukspark.reference import lineage_coverage, lineage_scores, unseen_lineages

    gsea, y, chiaretti, lineage, genes = cohorts
    coverage = lineage_coverage(lineage_scores(gsea.to_numpy(), genes), np.where(y == 1, "AML", "ALL"))
    assert coverage["ALL"]["B-lymphoid"] == 1.0 and coverage["AML"]["T-lymphoid"] < 0.1
    unseen = [unseen_lineages(row, coverage) for row in lineage_scores(chiaretti.to_numpy(), genes)]
    t_flagged = sum("T-lymphoid" in u for u, lin in zip(unseen, lineage) if lin == "T")
    b_flagged = sum(bool(u) for u, lin in zip(unseen, lineage) if lin == "B")
    assert t_flagged >= 30 and (lineage == "T").sum() == 33
    assert b_flagged <= 0.1 * (lineage == "B").sum()


# -- blast program: other diseases ------------------------------------------------------------
def test_blast_index_equals_a_plain_pandas_recomputation_and_is_scale_free(cohorts):
    from leukspark.reference import BLAST_MARKER_SETS, MATURE_GRANULOCYTE_MARKERS, blast_index

    gsea, _, _, _, genes = cohorts
    index = blast_index(gsea.to_numpy(), genes)
    # Oracle: pandas percent ranks per sample, set means, the stronger blast set minus the mature set.
    percentile = gsea.rank(axis=1, pct=True) - 0.5 / gsea.shape[1]
    blast = pd.concat([percentile[[g for g in markers if g in genes]].mean(axis=1) - 0.5
                       for markers in BLAST_MARKER_SETS.values()], axis=1).max(axis=1)
    mature = percentile[[g for g in MATURE_GRANULOCYTE_MARKERS if g in genes]].mean(axis=1) - 0.5
    np.testing.assert_allclose(index, (blast - mature).to_numpy(), atol=1e-12)
    np.testing.assert_allclose(blast_index(2 ** gsea.to_numpy(), genes), index)
    # No mature marker measured: the blast part alone; no blast marker: NaN.
    no_mature = [g if g not in MATURE_GRANULOCYTE_MARKERS else g + "_x" for g in genes]
    np.testing.assert_allclose(blast_index(gsea.to_numpy(), no_mature), blast.to_numpy(), atol=1e-12)
    assert np.isnan(blast_index(gsea.to_numpy()[:2], [f"probe{i}" for i in range(len(genes))])).all()
    # The one-ranking form the checks use gives both scores exactly.
    from leukspark.reference import lineage_and_blast_scores, lineage_scores

    programs, together = lineage_and_blast_scores(gsea.to_numpy(), genes)
    np.testing.assert_array_equal(together, index)
    np.testing.assert_array_equal(programs, lineage_scores(gsea.to_numpy(), genes))


def test_blast_check_from_gsea_flags_no_chiaretti_all_and_a_mature_sample(cohorts):
    from leukspark.input_check import check_rows, fit_blast_check, lower_conformal_threshold

    gsea, y, chiaretti, lineage, genes = cohorts
    check = fit_blast_check(gsea.to_numpy(), genes, flag_rate=0.05)
    assert check["n"] == 48 and check["threshold"] is not None
    assert check["training_flagged"] <= 0.05
    # Real acute leukemias of another lab (RMA, both lineages): measured 0 of 128 flagged.
    found = check_rows(chiaretti.to_numpy(), genes, None, None, {"blast_check": check})
    flagged = np.array(["low_blast" in f for f in found.flags])
    assert flagged.sum() <= 0.05 * len(flagged)
    # A marrow that is mostly maturing granulocytes (a chronic-phase CML picture): the mature markers
    # moved to the top of an ALL sample's ranks, its blast markers to the bottom.
    sample = gsea.iloc[int(np.argmax(y == 0))].to_numpy().copy()
    order = np.sort(sample)
    for g in ("LTF", "CAMP", "MMP8", "CEACAM8", "LCN2"):
        if g in genes:
            sample[genes.index(g)] = order[-1] + 1
    for g in ("DNTT", "VPREB1", "IGLL1", "CD34", "MPO", "ELANE", "AZU1", "PRTN3", "CTSG", "KIT"):
        if g in genes:
            sample[genes.index(g)] = order[0] - 1
    mature = check_rows(sample[None, :], genes, None, None, {"blast_check": check})
    assert mature.flags[0] == ["low_blast"] and "chronic leukemia" in mature.messages[0][0]
    # The threshold is the floor((n+1) rate)-th smallest score; too few samples for the rate: none.
    scores = np.arange(10.0)
    assert lower_conformal_threshold(scores, 0.2) == 1.0 and lower_conformal_threshold(scores, 0.05) is None


def test_a_call_against_the_samples_own_lineage_program_is_flagged(cohorts):
    """Real arrays: every Chiaretti B-ALL is B-lymphoid dominant, so an AML call on one is a conflict
    and an ALL call is not; GSEA's AML called AML are flagged exactly where their own dominant program
    (recomputed here from the marker ranks with pandas) is lymphoid."""
    from leukspark.input_check import check_rows
    from leukspark.reference import LINEAGE_EXPRESSED, LINEAGE_MARKERS

    gsea, y, chiaretti, lineage, genes = cohorts
    b_all = chiaretti.to_numpy()[lineage == "B"]
    as_aml = check_rows(b_all, genes, None, None, {}, calls=np.array(["AML"] * len(b_all)))
    assert all(f == ["lineage_conflict:B-lymphoid"] for f in as_aml.flags)
    assert "confirm by immunophenotype" in as_aml.messages[0][0]
    as_all = check_rows(b_all, genes, None, None, {}, calls=np.array(["ALL"] * len(b_all)))
    assert not any(as_all.flags)
    aml = gsea[y == 1]
    found = check_rows(aml.to_numpy(), genes, None, None, {}, calls=np.array(["AML"] * len(aml)))
    percentile = (aml.rank(axis=1) - 0.5).div(aml.notna().sum(axis=1), axis=0)
    programs = pd.DataFrame({program: percentile[[g for g, p, _ in LINEAGE_MARKERS if p == program and g in genes]]
                             .mean(axis=1) - 0.5 for program in ("B-lymphoid", "T-lymphoid", "myeloid")})
    dominant = programs.idxmax(axis=1).where(programs.max(axis=1) >= LINEAGE_EXPRESSED, "none")
    expected = [[f"lineage_conflict:{d}"] if d in ("B-lymphoid", "T-lymphoid") else [] for d in dominant]
    assert found.flags == expected and 0 < sum(map(len, expected)) <= 3


def test_flag_rate_is_split_over_the_checks_down_to_what_the_cohort_can_resolve():
    from leukspark.conformal import conformal_threshold, lower_conformal_threshold
    from leukspark.input_check import per_check_rate

    assert per_check_rate(0.05, False, 1000) == pytest.approx(0.025)
    assert per_check_rate(0.05, True, 1000) == pytest.approx(0.05 / 3)
    # 38 training samples (GSEA Leukemia, Golub): 1/39 a check, the most extreme training score.
    assert per_check_rate(0.05, True, 38) == pytest.approx(1 / 39)
    scores = np.arange(38.0)
    assert conformal_threshold(scores, 1 / 39) == 37.0 and lower_conformal_threshold(scores, 1 / 39) == 0.0
    # Fewer than 1 / flag_rate - 1: no threshold at any share, the checks are off.
    assert per_check_rate(0.05, False, 10) == 0.05
    assert conformal_threshold(np.arange(10.0), 0.05) == np.inf



def test_too_few_training_samples_warning_names_every_check_it_turns_off():
    from types import SimpleNamespace

    import pandas as pd

    from leukspark.pipeline import Pipeline

    said = []
    run = SimpleNamespace(config={"predict": {"flag_rate": 0.05}}, echo=said.append)
    splits = pd.DataFrame({"set": ["train"] * 10 + ["test"] * 3})
    Pipeline._per_check_flag_rate(run, splits, True)
    assert said and said[-1].startswith("WARNING novelty, low_blast and other_disease checks off: 10 training")
    Pipeline._per_check_flag_rate(run, splits, False)
    assert said[-1].startswith("WARNING novelty and low_blast checks off")


# -- novelty on what the model sees -------------------------------------------------------------
def test_novelty_threshold_flags_its_rate_out_of_fold_and_moves_with_it():
    from leukspark.input_check import conformal_threshold, fit_training_checks, novelty_scores
    from leukspark.models.base import Preprocessor

    rng = np.random.default_rng(4)
    n, p = 120, 60
    y = np.repeat([0, 1], n // 2)
    X = rng.normal(size=(n, p)) + 2.0 * y[:, None] * (np.arange(p) < 10)
    folds = np.arange(n) % 5
    final = Preprocessor("standard").fit(X, y)
    model, entries = fit_training_checks(X, y, folds, final, lambda: Preprocessor("standard"),
                                         [f"G{i}" for i in range(p)], 0.1)
    threshold = entries["novelty"]["threshold"]
    assert 0.05 <= entries["novelty"]["out_of_fold_flagged"] <= 0.1
    # New draws of the training population: about flag_rate flagged; a sample from elsewhere: flagged.
    fresh_y = np.repeat([0, 1], 200)
    fresh = rng.normal(size=(400, p)) + 2.0 * fresh_y[:, None] * (np.arange(p) < 10)
    rate = np.mean(novelty_scores(model, final.transform(fresh)) > threshold)
    assert 0.03 <= rate <= 0.2
    # Far out along the axis the classes vary on (an AML program at three times its strength): flagged.
    beyond = rng.normal(size=(50, p)) + 6.0 * (np.arange(p) < 10)
    assert np.mean(novelty_scores(model, final.transform(beyond)) > threshold) > 0.9
    _, looser = fit_training_checks(X, y, folds, final, lambda: Preprocessor("standard"),
                                    [f"G{i}" for i in range(p)], 0.2)
    assert looser["novelty"]["threshold"] < threshold
    assert conformal_threshold(np.arange(10.0), 0.05) == np.inf  # 10 scores cannot set a 5 % threshold


def test_old_bundles_without_the_new_checks_still_load_and_flag_by_range(tmp_path):
    from leukspark.bundle import load_bundle, save_bundle
    from leukspark.input_check import fit_reference
    from leukspark.models import fit_and_predict, get_model
    from leukspark.predict import score_matrix

    rng = np.random.default_rng(8)
    X = rng.normal(size=(40, 20))
    y = (X[:, 0] > 0).astype(int)
    result = fit_and_predict("logistic_regression", {}, X, y, X, seed=1)
    reference, ranges = fit_reference(X)
    directory = save_bundle(tmp_path / "lr", model_name="logistic_regression", spec=get_model("logistic_regression"),
                            model=result.model, preprocessor=result.preprocessor,
                            gene_order=[f"G{i}" for i in range(20)], params=result.params, run_id="r",
                            extra={"training_inputs": {"input_check": ranges}}, input_reference=reference)
    bundle = load_bundle(directory)
    scored = score_matrix(bundle, ["in", "shifted"], np.vstack([X[0], X[1] + 50.0]))
    assert scored[0].flags == [] and scored[1].flags == ["input_range"]
    assert scored[1].novelty is None and scored[1].lineage_scores is None and "flags" in scored[1].record()


def _lineage_bundle(tmp_path, seed=6):
    """A bundle trained on B-ALL-like (B markers high) and AML-like (myeloid markers high) samples, with
    the training checks saved as the training stage saves them."""
    from leukspark.bundle import load_bundle, save_bundle
    from leukspark.input_check import fit_reference, fit_training_checks
    from leukspark.models import fit_and_predict, get_model
    from leukspark.models.base import Preprocessor
    from leukspark.reference import LINEAGE_MARKERS

    rng = np.random.default_rng(seed)
    markers = {lineage: [g for g, lin, _ in LINEAGE_MARKERS if lin == lineage]
               for lineage in ("B-lymphoid", "T-lymphoid", "myeloid")}
    genes = [g for lin in markers.values() for g in lin] + [f"G{i}" for i in range(120)]
    column = {g: i for i, g in enumerate(genes)}

    def samples(n, high):
        X = rng.normal(6.0, 1.0, size=(n, len(genes)))
        for gene in markers[high]:
            X[:, column[gene]] += 5.0
        return X

    X = np.vstack([samples(30, "B-lymphoid"), samples(30, "myeloid")])
    y = np.repeat([0, 1], 30)
    result = fit_and_predict("logistic_regression", {}, X, y, X, seed=1)
    reference, ranges = fit_reference(X)
    novelty, checks = fit_training_checks(X, y, np.arange(60) % 5, result.preprocessor, lambda: Preprocessor(),
                                          genes, 0.05)
    directory = save_bundle(tmp_path / "lr", model_name="logistic_regression", spec=get_model("logistic_regression"),
                            model=result.model, preprocessor=result.preprocessor, gene_order=genes,
                            params=result.params, run_id="r",
                            extra={"training_inputs": {"input_check": ranges, **checks}},
                            input_reference={**reference, **novelty})
    return load_bundle(directory), samples


def test_a_t_lineage_sample_is_flagged_and_withheld_on_request(tmp_path):
    from leukspark.predict import ScoringPolicy, score_matrix

    bundle, samples = _lineage_bundle(tmp_path)
    coverage = bundle.training_inputs["lineage_coverage"]
    assert coverage["ALL"]["B-lymphoid"] == 1.0 and coverage["AML"]["myeloid"] == 1.0
    assert coverage["ALL"]["T-lymphoid"] < 0.1 and coverage["AML"]["T-lymphoid"] < 0.1
    rows = np.vstack([samples(1, "B-lymphoid"), samples(1, "T-lymphoid")])
    scored = score_matrix(bundle, ["b", "t"], rows)
    assert scored[0].flags == [] and scored[0].dominant_lineage == "B-lymphoid" and scored[0].prediction == "ALL"
    assert "unseen_lineage:T-lymphoid" in scored[1].flags and scored[1].dominant_lineage == "T-lymphoid"
    assert scored[1].prediction in ("ALL", "AML") and "never learned this lineage" in scored[1].warning
    record = scored[1].record()
    assert record["lineage_scores"]["T-lymphoid"] > 0.15 and "unseen_lineage:T-lymphoid" in record["flags"]
    assert record["novelty"] == pytest.approx(scored[1].novelty, abs=1e-4)
    withheld = score_matrix(bundle, ["b", "t"], rows, ScoringPolicy(abstain_on_unseen_lineage=True))
    assert [s.prediction for s in withheld] == [scored[0].prediction, "unclassified"]
    columns = scored[1].flag_columns()
    assert columns["lineage_t"] == pytest.approx(scored[1].lineage_scores["T-lymphoid"])
    assert columns["flags"].split(",") == scored[1].flags


def test_older_prediction_tables_get_the_new_columns(spark, lake):
    from pyspark.sql.types import StructType

    from leukspark import schemas

    new = [name for name, _, _ in schemas.SCORING_FLAGS] + ["lineage", "lineage_probability", "subtype",
                                                             "subtype_probability"]
    old_schema = StructType([f for f in schemas.SCORED_SAMPLES.fields if f.name not in new])
    lake.append("scored_samples", spark.createDataFrame(
        [(None, "r", "m", "S1", "file", 0.9, "AML", 0, None, "log2", None)], old_schema))
    schemas.ensure_columns(lake, "scored_samples", schemas.SCORED_SAMPLES)
    assert lake.schema("scored_samples").fieldNames() == schemas.SCORED_SAMPLES.fieldNames()
    row = lake.read("scored_samples").collect()[0]
    assert row["sample"] == "S1" and row["probability_AML"] == 0.9 and row["flags"] is None
    version = lake.version("scored_samples")
    schemas.ensure_columns(lake, "scored_samples", schemas.SCORED_SAMPLES)  # already there: no commit
    assert lake.version("scored_samples") == version
    lake.append("scored_samples", spark.createDataFrame(
        [(None, "r", "m", "S2", "file", 0.1, "ALL", 0, None, "log2", None, "novelty", 3.2, 0.3, -0.1, -0.1,
          "B-lymphoid", 0.25, 0.02, "B-ALL", 0.97, "unclassified", 0.41)], schemas.SCORED_SAMPLES))
    assert lake.read("scored_samples").count() == 2
