"""The pipeline on real public leukemia cohorts (tests/data/real, provenance in PROVENANCE.md).

* Golub et al. 1999 (Hu6800, MAS-style linear values with negatives): 38 training and 34
  independent samples, trained on the first and tested on the second, as in the paper. No
  Hu6800 annotation is reachable here, so an identity annotation lets its probes stand for
  genes (the model then scores Hu6800 arrays only).
* GSEA's Leukemia set (HG-U95Av2, linear): 24 ALL, 24 AML, cross-validation only.
* Chiaretti et al. 2004 (HG-U95Av2, RMA log2): 128 ALL from another lab, scored by the model
  trained on the GSEA set.

Expected counts and values come straight from the files (pandas), metrics from scikit-learn.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score

from leukspark.config import load_config
from leukspark.lake import Lake
from leukspark.pipeline import Pipeline

REAL = Path(__file__).resolve().parent / "data" / "real"
HGU95AV2_ANNOTATION = REAL / "GPL8300_hgu95av2_annotation.csv.gz"
MODELS = ["logistic_regression", "linear_svm"]


def read_gct(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", skiprows=2, index_col=0, dtype={"Name": str}).drop(columns="Description")


def _config(**overrides):
    return load_config(overrides={"spark.shuffle_partitions": 4, "training.models": MODELS,
                                  "features.normalize": "quantile", **overrides})


@pytest.fixture(scope="module")
def golub(spark, tmp_path_factory):
    base = tmp_path_factory.mktemp("golub")
    train = pd.read_csv(REAL / "golub_train_labels.csv", dtype=str)
    independent = pd.read_csv(REAL / "golub_independent_labels.csv", dtype=str)
    labels = pd.concat([train, independent])[["sample", "label"]]
    labels.to_csv(base / "labels.csv", index=False)
    split = pd.concat([train.assign(set="train"), independent.assign(set="test")])[["sample", "set"]]
    split.to_csv(base / "split.csv", index=False)
    probes = read_gct(REAL / "golub_train.gct.gz").index
    pd.DataFrame({"probe_id": probes, "gene": probes}).to_csv(base / "Hu6800_probe_ids.csv", index=False)
    config = _config()
    lake = Lake.from_config(spark, base / "lake", config)
    outcome = Pipeline(spark, lake, config, echo=lambda _: None).run(
        [str(REAL / "golub_train.gct.gz"), str(REAL / "golub_independent.gct.gz")],
        label_file=str(base / "labels.csv"), split_file=str(base / "split.csv"),
        annotation=str(base / "Hu6800_probe_ids.csv"))
    return {"base": base, "lake": lake, "outcome": outcome, "labels": labels, "independent": independent}


@pytest.fixture(scope="module")
def gsea(spark, tmp_path_factory):
    base = tmp_path_factory.mktemp("gsea")
    config = _config(**{"split.test_fraction": 0.0})
    lake = Lake.from_config(spark, base / "lake", config)
    outcome = Pipeline(spark, lake, config, echo=lambda _: None).run(
        [str(REAL / "gsea_leukemia_hgu95av2.gct.gz")], label_file=str(REAL / "gsea_leukemia_hgu95av2.cls"),
        annotation=str(HGU95AV2_ANNOTATION))
    return {"base": base, "lake": lake, "outcome": outcome}


@pytest.mark.parametrize("name, scale", [("golub_train", "linear"), ("golub_independent", "linear"),
                                         ("gsea_leukemia_hgu95av2", "linear"), ("chiaretti_all", "log2")])
def test_each_real_sample_gets_its_scale(name, scale):
    from leukspark.scale import detect_scale, value_quantiles

    values = read_gct(REAL / f"{name}.gct.gz")
    # What the provenance says of each file, checked on the values themselves.
    if scale == "linear":
        assert (values < 0).any().all() and values.max().max() > 10_000
    else:
        assert values.min().min() > 0 and values.max().max() < 16
    assert {detect_scale(value_quantiles(values[column].to_numpy())) for column in values} == {scale}


def test_golub_is_ingested_with_its_scale_and_classes(golub):
    lake = golub["lake"]
    samples = lake.read("samples").toPandas()
    assert len(samples) == 38 + 34 and set(samples["value_scale"]) == {"linear"}
    assert set(samples["platform"]) == {"Hu6800_probe_ids"}
    counts = lake.read("labels").toPandas()["label"].value_counts().to_dict()
    assert counts == golub["labels"]["label"].value_counts().to_dict() == {"ALL": 47, "AML": 25}
    splits = lake.read("splits").toPandas()
    assert set(splits.loc[splits["set"] == "test", "sample"]) == set(golub["independent"]["sample"])


def test_golub_independent_set_accuracy(golub):
    """Trained on the 38, tested once on the 34: the linear models make at most 4 errors
    (the paper's weighted vote: 5 of 34 uncertain or wrong; later methods 0-3)."""
    lake, train = golub["lake"], golub["outcome"]["train"]
    predictions = lake.read("predictions").toPandas()
    test = predictions[predictions["fold"] == "test"]
    results = lake.read("results").toPandas()
    for model in MODELS:
        part = test[test["model"] == model]
        assert len(part) == 34
        accuracy = accuracy_score(part["truth"], part["predicted"])
        recorded = results[(results["model"] == model) & (results["fold"] == "test") & (results["metric"] == "accuracy")]
        assert recorded["value"].iloc[0] == pytest.approx(accuracy, abs=1e-12)
        assert accuracy >= 30 / 34, f"{model}: {accuracy:.4f} on Golub's independent set"
    assert train.best_model in MODELS


def test_golub_scores_the_same_on_linear_and_log_values(golub, tmp_path):
    from leukspark.predict import predict_file

    linear = read_gct(REAL / "golub_independent.gct.gz")
    log_file = tmp_path / "golub_independent_log2.csv"
    np.log2(np.maximum(linear, 20.0)).to_csv(log_file, index_label="ID_REF")
    annotation = golub["base"] / "Hu6800_probe_ids.csv"
    run = golub["outcome"]["train"].run_id
    as_linear = {s.sample: s for s in predict_file(REAL / "golub_independent.gct.gz", golub["lake"].root,
                                                   run_id=run, annotation=annotation)}
    as_log = {s.sample: s for s in predict_file(log_file, golub["lake"].root, run_id=run, annotation=annotation)}
    assert set(as_linear) == set(as_log) == set(linear.columns)
    for sample in linear.columns:
        assert as_linear[sample].input_scale == "linear" and as_log[sample].input_scale == "log2"
        assert as_linear[sample].probability_AML == pytest.approx(as_log[sample].probability_AML, abs=1e-9)


def test_gsea_gene_universe_is_what_its_probes_measure(gsea):
    genes = set(gsea["lake"].read("genes").toPandas()["gene"])
    annotation = pd.read_csv(HGU95AV2_ANNOTATION, dtype=str, keep_default_na=False)
    single = annotation[(annotation["gene"] != "") & ~annotation["gene"].str.contains("///")]
    measured = read_gct(REAL / "gsea_leukemia_hgu95av2.gct.gz").dropna(how="all").index
    assert genes == set(single[single["probe_id"].isin(measured)]["gene"])
    platforms = {r["platform"] for r in gsea["lake"].read("samples").select("platform").collect()}
    assert platforms == {"GPL8300"}


def test_gsea_cross_validation_only(gsea):
    lake = gsea["lake"]
    assert set(lake.read("splits").toPandas()["set"]) == {"train"}
    results = lake.read("results").toPandas()
    assert "test" not in set(results["fold"])
    predictions = lake.read("predictions").toPandas()
    for model in MODELS:
        part = predictions[predictions["model"] == model]
        assert len(part) == 48  # every sample predicted once, out of fold
        recorded = results[(results["model"] == model) & (results["fold"] == "cv_mean") & (results["metric"] == "accuracy")]
        per_fold = pd.Series({fold: accuracy_score(f["truth"], f["predicted"]) for fold, f in part.groupby("fold")})
        assert recorded["value"].iloc[0] == pytest.approx(per_fold.mean(), abs=1e-12)


def test_a_model_of_one_lab_scores_another_labs_rma_cohort(gsea):
    """GSEA's linear HG-U95Av2 cohort -> Chiaretti's RMA log2 ALL cohort of another lab.

    Without scale handling and per-sample normalisation every one of the 128 was called AML;
    now each is scored on the log2 scale after quantile normalisation to the training reference.
    """
    from leukspark.predict import predict_file

    scored = predict_file(REAL / "chiaretti_all.gct.gz", gsea["lake"].root, annotation=HGU95AV2_ANNOTATION)
    assert len(scored) == 128 and all(s.error is None for s in scored)
    assert {s.input_scale for s in scored} == {"log2"} and {s.shared_gene_fraction for s in scored} == {1.0}
    called_all = np.mean([s.prediction == "ALL" for s in scored])
    assert called_all >= 0.7, f"only {called_all:.2%} of 128 ALL called ALL"
