"""Real-cohort behaviour on synthetic variants of one series: value scale, gene universe, probe
matrices with an annotation, batch-independent scores, cross-platform scoring, input checks,
cross-validation-only runs and model choice without the test set.

One GSE13159-shaped series is written as a probe x sample matrix twice: on its log2 scale and
as linear values (2 ** x). Two small pipeline runs train on it:

* `linear_run`: the linear matrix with the GPL570 annotation, `features.transform: auto`,
  quantile normalisation, a 25 % test set;
* `log_run`: the log2 matrix, `features.transform: none`, cross-validation only.

Expectations come from the matrix and annotation files themselves (pandas), never from the
code under test.
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from leukspark.config import load_config
from leukspark.errors import GeoFormatError
from leukspark.lake import Lake
from leukspark.pipeline import Pipeline

FAST_PARAMS = {"random_forest": {"n_estimators": 30}}
MODELS = ["logistic_regression", "random_forest"]
GPL96_SOFT = Path(__file__).resolve().parent / "data" / "geo" / "GPL96.txt.gz"
UNMEASURED = {"999990_at": "NOTMEASURED1", "999991_at": "NOTMEASURED2"}


def read_series_matrix(path: Path) -> pd.DataFrame:
    """Probe x sample values of a series matrix, read with a parser of the test's own."""
    lines = gzip.open(path, "rt").read().splitlines()
    begin = lines.index("!series_matrix_table_begin")
    end = lines.index("!series_matrix_table_end")
    rows = [line.split("\t") for line in lines[begin + 1:end]]
    header = [c.strip('"') for c in rows[0]]
    frame = pd.DataFrame([[c.strip('"') for c in r] for r in rows[1:]], columns=header).set_index(header[0])
    return frame.replace({"null": np.nan, "": np.nan}).astype(float)


def mile_labels(sample_ids: list[str]) -> pd.DataFrame:
    info = Path(__file__).resolve().parents[1] / "leukspark" / "data" / "GSE13159.info"
    rows = [re.split(r"\s{2,}", r.strip()) for r in info.read_text().splitlines()[1:] if r.strip()]
    classes = {r[0]: r[-1] for r in rows}
    labels = {s: ("AML" if classes[s].startswith("AML") else "ALL" if re.search(r"\bALL\b", classes[s]) else None)
              for s in sample_ids}
    return pd.DataFrame([(s, l) for s, l in labels.items() if l], columns=["sample", "label"])


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from leukspark.synth import write_synthetic_series

    base = tmp_path_factory.mktemp("cohort")
    series = write_synthetic_series(base / "series", n_samples=80, n_probes=600, seed=11)
    log_values = read_series_matrix(series.series_matrix)
    # One probe unmeasured in every sample: its gene must not enter the gene universe.
    annotation = pd.read_csv(series.annotation_csv, dtype=str)
    single = annotation[~annotation["gene"].str.contains("///", na=True)]
    counts = single["gene"].value_counts()
    lonely_probe = single[single["gene"].map(counts) == 1]["probe_id"].iloc[0]
    log_values.loc[lonely_probe] = np.nan
    files = {"log": base / "log_probes.csv", "linear": base / "linear_probes.csv"}
    log_values.to_csv(files["log"], index_label="ID_REF")
    (2.0 ** log_values).to_csv(files["linear"], index_label="ID_REF")
    # The annotation also names probes the matrix does not have.
    extra = pd.DataFrame({"probe_id": list(UNMEASURED), "gene": list(UNMEASURED.values())})
    annotation_file = base / "GPL570_annotation.csv"
    pd.concat([annotation, extra]).to_csv(annotation_file, index=False)
    labels = mile_labels(list(log_values.columns))
    labels_file = base / "labels.csv"
    labels.to_csv(labels_file, index=False)
    return {"base": base, "files": files, "annotation": annotation_file, "labels": labels_file,
            "log_values": log_values, "annotation_frame": annotation, "lonely_probe": lonely_probe,
            "label_frame": labels}


def _run(spark, cohort, name: str, source: str, overrides: dict, **run_args):
    config = load_config(overrides={"spark.shuffle_partitions": 4, "training.params": FAST_PARAMS,
                                    "training.models": MODELS, **overrides})
    lake = Lake.from_config(spark, cohort["base"] / name, config)
    messages: list[str] = []
    outcome = Pipeline(spark, lake, config, echo=messages.append).run(
        [str(cohort["files"][source])], label_file=str(cohort["labels"]), annotation=str(cohort["annotation"]),
        **run_args)
    return {"lake": lake, "outcome": outcome, "config": config, "messages": messages}


@pytest.fixture(scope="module")
def linear_run(spark, cohort):
    return _run(spark, cohort, "linear-lake", "linear",
                {"features.transform": "auto", "features.log_floor": 1.0, "features.normalize": "quantile",
                 "split.test_fraction": 0.25})


@pytest.fixture(scope="module")
def log_run(spark, cohort, tmp_path_factory):
    return _run(spark, cohort, "log-lake", "log", {"features.transform": "none", "split.test_fraction": 0.0},
                report_dir=str(tmp_path_factory.mktemp("cv-report")))


def _predict(run, path, **kwargs):
    from leukspark.predict import predict_file

    return {s.sample: s for s in predict_file(Path(path), run["lake"].root,
                                              run_id=run["outcome"]["train"].run_id, **kwargs)}


# -- scale -----------------------------------------------------------------------------------
def test_scale_is_detected_per_sample_and_per_series(linear_run, log_run):
    linear = linear_run["lake"].read("samples").select("value_scale").distinct().collect()
    logged = log_run["lake"].read("samples").select("value_scale").distinct().collect()
    assert [r["value_scale"] for r in linear] == ["linear"]
    assert [r["value_scale"] for r in logged] == ["log2"]
    assert [r["value_scale"] for r in linear_run["lake"].read("series").collect()] == ["linear"]


def test_real_mas5_sample_is_linear_and_its_log_is_not(geo_data_dir):
    from leukspark.geo.soft import SampleTable, iter_geo_records
    from leukspark.scale import detect_scale, to_log2, value_quantiles

    table = next(r for r in iter_geo_records(geo_data_dir / "GSM11805.txt.gz") if isinstance(r, SampleTable))
    values = table.value.to_numpy(zero_copy_only=False)
    assert detect_scale(value_quantiles(values)) == "linear"
    assert detect_scale(value_quantiles(to_log2(values, 20.0))) == "log2"
    assert detect_scale(value_quantiles(np.array([np.nan]))) == "unknown"


def test_the_floor_free_log_keeps_every_order_the_floor_ties(geo_data_dir):
    """Rank features (log_floor auto) take linear values through asinh(x/2)/ln 2: strictly increasing,
    so within-sample ranks equal the ranks of the raw values; the floored log ties them."""
    from scipy.stats import rankdata

    from leukspark.geo.soft import SampleTable, iter_geo_records
    from leukspark.scale import log_floor_of, to_log2

    table = next(r for r in iter_geo_records(geo_data_dir / "GSM11805.txt.gz") if isinstance(r, SampleTable))
    values = table.value.to_numpy(zero_copy_only=False).astype(float)
    values = values[np.isfinite(values)]
    assert log_floor_of({"log_floor": "auto", "normalize": "rank"}) is None
    assert log_floor_of({"log_floor": "auto", "normalize": "quantile"}) == 20.0
    assert log_floor_of({"log_floor": 5, "normalize": "rank"}) == 5.0 and log_floor_of({}) == 20.0
    free = to_log2(values, None)
    assert np.array_equal(rankdata(free), rankdata(values))        # every order kept, negatives included
    floored = to_log2(values, 20.0)
    assert len(np.unique(floored)) < len(np.unique(free))           # the floor ties what lies under it
    big = values > 8
    assert np.abs(free[big] - np.log2(values[big])).max() < 0.03    # log2 where the floor did not bite


def test_features_are_log2_of_the_linear_values(linear_run, cohort):
    """The trained gene values equal, from the files, the log2 of the mean over probes of the linear
    values floored as the transform floors them (features.aggregate: mean_signal, the default)."""
    lake = linear_run["lake"]
    genes = lake.read("genes").toPandas().sort_values("position")
    vectors = {r["sample"]: np.array(r["features"]) for r in lake.read("gene_features").collect()}
    linear = pd.read_csv(cohort["files"]["linear"], index_col=0)
    single = cohort["annotation_frame"][~cohort["annotation_frame"]["gene"].str.contains("///", na=True)]
    probe_gene = single.dropna().set_index("probe_id")["gene"]
    assert linear_run["config"]["features"]["aggregate"] == "mean_signal"
    logged = np.log2(np.maximum(linear, 1.0).join(probe_gene, how="inner").groupby("gene").mean())
    sample = sorted(vectors)[0]
    expected = logged.loc[genes["gene"], sample].to_numpy()
    np.testing.assert_allclose(vectors[sample], expected, rtol=0, atol=1e-9)


def test_a_model_trained_on_linear_values_scores_log_values_the_same(linear_run, cohort):
    as_linear = _predict(linear_run, cohort["files"]["linear"], annotation=str(cohort["annotation"]))
    as_log = _predict(linear_run, cohort["files"]["log"], annotation=str(cohort["annotation"]))
    assert set(as_linear) == set(as_log) == set(cohort["log_values"].columns)
    for sample, scored in as_linear.items():
        assert scored.error is None and as_log[sample].error is None
        assert scored.input_scale == "linear" and as_log[sample].input_scale == "log2"
        assert scored.probability_AML == pytest.approx(as_log[sample].probability_AML, abs=1e-9)
    recorded = linear_run["lake"].read("predictions").toPandas()
    train = linear_run["outcome"]["train"]
    recorded = recorded[(recorded["fold"] == "test") & (recorded["model"] == train.best_model)]
    for row in recorded.itertuples():
        assert as_log[row.sample].probability_AML == pytest.approx(row.probability_AML, abs=1e-9)


def test_a_model_trained_without_transform_refuses_the_other_scale(log_run, cohort):
    scored = _predict(log_run, cohort["files"]["linear"], annotation=str(cohort["annotation"]))
    assert all(s.prediction is None and "linear scale" in s.error and "log2" in s.error for s in scored.values())
    same_scale = _predict(log_run, cohort["files"]["log"], annotation=str(cohort["annotation"]))
    assert all(s.error is None for s in same_scale.values())


# -- gene universe and probe matrices ------------------------------------------------------------
def test_gene_universe_is_what_was_measured(linear_run, cohort):
    genes = set(linear_run["lake"].read("genes").toPandas()["gene"])
    annotation = cohort["annotation_frame"]
    single = annotation[~annotation["gene"].str.contains("///", na=True)].dropna()
    measured_probes = cohort["log_values"].dropna(how="all").index
    expected = set(single[single["probe_id"].isin(measured_probes)]["gene"])
    lonely_gene = single.set_index("probe_id").loc[cohort["lonely_probe"], "gene"]
    assert genes == expected
    assert lonely_gene not in genes and not genes & set(UNMEASURED.values())
    vectors = np.vstack([r["features"] for r in linear_run["lake"].read("gene_features").collect()])
    assert np.isfinite(vectors).any(axis=0).all()


def test_probe_matrix_takes_its_platform_from_the_annotation(linear_run):
    platforms = {r["platform"] for r in linear_run["lake"].read("samples").select("platform").collect()}
    assert platforms == {"GPL570"}
    probes = linear_run["lake"].read("platform_probes").select("probe_id").toPandas()["probe_id"]
    assert not probes.str.match(r"^[A-Z0-9-]+$").all(), "platform_probes must hold probe ids, not symbols"


def test_probe_matrix_without_annotation_is_refused(cohort):
    from leukspark.matrix import iter_matrix_records

    with pytest.raises(GeoFormatError, match=r"probe ids.*--annotation"):
        list(iter_matrix_records(cohort["files"]["log"]))


# -- batch independence, cross-platform, input check ---------------------------------------------
def test_a_sample_scored_alone_equals_the_sample_in_its_batch(linear_run, cohort, tmp_path):
    batch = _predict(linear_run, cohort["files"]["log"], annotation=str(cohort["annotation"]))
    sample = sorted(batch)[3]
    alone_file = tmp_path / "one_sample.csv"
    cohort["log_values"][[sample]].to_csv(alone_file, index_label="ID_REF")
    alone = _predict(linear_run, alone_file, annotation=str(cohort["annotation"]))
    assert abs(alone[sample].probability_AML - batch[sample].probability_AML) <= 1e-9


@pytest.mark.parametrize("method", ["quantile", "rank"])
def test_per_sample_normalisation_does_not_depend_on_the_batch(method):
    from leukspark.models.base import Preprocessor

    rng = np.random.default_rng(0)
    train = rng.normal(8, 2, size=(30, 50))
    batch = rng.normal(9, 3, size=(10, 50))
    batch[2, :5] = np.nan
    prep = Preprocessor("standard", method).fit(train)
    together = prep.transform(batch)
    for i in range(len(batch)):
        np.testing.assert_array_equal(prep.transform(batch[i:i + 1])[0], together[i])
    if method == "quantile":  # a sample shifted and stretched as a whole normalises to the same values
        np.testing.assert_allclose(prep.transform(batch[:1] * 3 + 5), together[:1], atol=1e-6)


def test_another_platform_is_scored_on_the_shared_genes(linear_run, cohort, tmp_path):
    from leukspark.geo.annotation import read_platform_annotation
    from leukspark.predict import ScoringPolicy

    gpl96 = set(read_platform_annotation(GPL96_SOFT).column("probe_id").to_pylist())
    subset = cohort["log_values"][cohort["log_values"].index.isin(gpl96)]
    assert 0 < len(subset) < len(cohort["log_values"])
    path = tmp_path / "gpl96_samples.csv"
    subset.to_csv(path, index_label="ID_REF")
    scored = _predict(linear_run, path, annotation=str(GPL96_SOFT), policy=ScoringPolicy(min_shared_fraction=0.05))
    full = _predict(linear_run, cohort["files"]["log"], annotation=str(cohort["annotation"]))
    fractions = {s.shared_gene_fraction for s in scored.values()}
    assert all(s.error is None for s in scored.values()) and max(fractions) < 1
    agreement = np.mean([scored[s].prediction == full[s].prediction for s in scored])
    assert agreement >= 0.8
    refused = _predict(linear_run, path, annotation=str(GPL96_SOFT), policy=ScoringPolicy(min_shared_fraction=0.99))
    assert all(s.prediction is None and "platform GPL96 shares" in s.error for s in refused.values())


def test_samples_unlike_the_training_data_are_flagged(linear_run, cohort, tmp_path):
    """The check reads what the model sees: another scanner gain (every value x 2.8, log2 + 1.5), which
    quantile normalisation undoes, changes neither the score nor the flags; an array whose genes are
    scrambled is flagged. (A gain commutes with the default aggregate, the log of the mean probe signal;
    a compressed log range would not.)"""
    values = cohort["log_values"].copy()
    odd = list(values.columns[:3])
    scrambled = list(values.columns[3:6])
    values[odd] = values[odd] + 1.5  # another gain: gene ranks, hence the model's input, unchanged
    rng = np.random.default_rng(0)
    for sample in scrambled:
        values[sample] = rng.permutation(values[sample].to_numpy())
    path = tmp_path / "odd.csv"
    values.to_csv(path, index_label="ID_REF")
    scored = _predict(linear_run, path, annotation=str(cohort["annotation"]))
    plain = _predict(linear_run, cohort["files"]["log"], annotation=str(cohort["annotation"]))
    for s in odd:
        assert scored[s].probability_AML == pytest.approx(plain[s].probability_AML, abs=1e-6)
        assert scored[s].flags == plain[s].flags and scored[s].novelty == pytest.approx(plain[s].novelty, abs=1e-6)
    assert all("novelty" in scored[s].flags and "unlike the training samples" in scored[s].warning
               for s in scrambled)
    assert all(scored[s].probability_AML is not None for s in scrambled)
    # New samples like the training ones (the held-out set) are flagged at about predict.flag_rate (5 %).
    # Training samples are not: their in-sample principal-component scores are inflated (p >> n), which
    # is why the threshold comes from out-of-fold scores.
    splits = linear_run["lake"].read("splits").toPandas()
    held_out = set(splits.loc[splits["set"] == "test", "sample"]) - set(odd) - set(scrambled)
    flagged = [s for s in held_out if "novelty" in scored[s].flags]
    assert len(held_out) >= 5 and len(flagged) <= 0.15 * len(held_out), [scored[s].warning for s in flagged]


# -- cross-validation only, and the best model without the test set ------------------------------
def test_cross_validation_only_run(log_run, cohort):
    lake, train = log_run["lake"], log_run["outcome"]["train"]
    splits = lake.read("splits").toPandas()
    assert set(splits["set"]) == {"train"} and len(splits) == len(cohort["label_frame"])
    results = lake.read("results").toPandas()
    assert "test" not in set(results["fold"]) and {"cv_mean", "cv_std"} <= set(results["fold"])
    predictions = lake.read("predictions").toPandas()
    assert set(predictions["fold"]) == {str(k) for k in range(5)}
    assert (predictions.groupby("model")["sample"].nunique() == len(splits)).all()
    runs = lake.read("runs").toPandas()
    assert int(runs["n_test"].iloc[0]) == 0
    for model in MODELS:
        assert (Path(train.bundle_dir) / model / "manifest.json").is_file()
    html = (Path(log_run["outcome"]["report"])).read_text()
    assert "out-of-fold predictions" in html
    assert "cross-validation only" in train.leaderboard_text


@pytest.mark.parametrize("fixture", ["linear_run", "log_run"])
def test_best_model_is_chosen_by_cross_validation(fixture, request):
    run = request.getfixturevalue(fixture)
    results = run["lake"].read("results").toPandas()
    cv = results[(results["fold"] == "cv_mean")]
    accuracy = cv[cv["metric"] == "accuracy"].set_index("model")["value"]
    auc = cv[cv["metric"] == "roc_auc"].set_index("model")["value"]
    spread = results[(results["fold"] == "cv_std") & (results["metric"] == "accuracy")].set_index("model")["value"]
    # The documented rule: the first model of training.prefer within best_within of the top CV accuracy;
    # models prefer does not name follow by CV accuracy, then CV ROC AUC, then the smaller CV std.
    training = run["config"]["training"]
    ranked = sorted(accuracy.index, key=lambda m: (-accuracy[m], -auc[m], spread[m], m))
    near = [m for m in ranked if accuracy[m] >= accuracy.max() - training["best_within"]]
    expected = ([m for m in training["prefer"] if m in near] + near)[0]
    assert run["outcome"]["train"].best_model == expected
    assert run["lake"].read("runs").toPandas()["best_model"].iloc[0] == expected


def test_folds_adapt_to_a_small_class():
    from leukspark.errors import SplitError
    from leukspark.stages.split import n_folds, stratified_split

    labels = pd.DataFrame({"sample": [f"S{i:02d}" for i in range(23)], "label": ["ALL"] * 20 + ["AML"] * 3})
    split = stratified_split(labels, 0.0, 5, seed=1)
    assert n_folds(split) == 3 and (split["set"] == "train").all()
    assert split.groupby("fold")["label"].apply(lambda s: (s == "AML").sum()).tolist() == [1, 1, 1]
    with pytest.raises(SplitError, match="at least 2"):
        stratified_split(labels.iloc[:21], 0.0, 5, seed=1)
