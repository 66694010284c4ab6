"""Portability: grouped cross-validation, the best-model rule, and rank features without the log floor.

The rules are checked on small frames whose answer follows from the rule's text; the pipeline
tests run the real Golub files (tests/data/real) grouped by the centre each sample came from.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from leukspark.errors import LabelError, SplitError
from leukspark.stages import split as split_stage
from leukspark.stages.labels import label_file_column
from leukspark.stages.train import best_model

REAL = Path(__file__).resolve().parent / "data" / "real"


def _labels(n: int) -> pd.DataFrame:
    return pd.DataFrame({"sample": [f"S{i:03d}" for i in range(n)], "label": ["ALL", "AML"] * (n // 2)})


@pytest.mark.parametrize("n_groups, folds", [(3, 5), (5, 5), (9, 4)])
def test_no_group_is_split_over_two_folds(n_groups, folds):
    labels = _labels(90)
    split = split_stage.stratified_split(labels, 0.2, folds, seed=3)
    groups = pd.Series({s: f"lab{i % n_groups}" for i, s in enumerate(labels["sample"])})
    grouped = split_stage.grouped_folds(split, groups, folds, seed=3)
    train = grouped[grouped["set"] == "train"]
    assert (grouped.loc[grouped["set"] == "test", "sample"].tolist()
            == split.loc[split["set"] == "test", "sample"].tolist())       # the test set is kept
    assert (train.groupby(train["sample"].map(groups))["fold"].nunique() == 1).all()
    assert train["fold"].nunique() == min(folds, n_groups)                # leave-one-group-out up to `folds`
    assert (train["fold"] >= 0).all() and len(train) == (split["set"] == "train").sum()


def test_grouping_needs_a_group_for_every_training_sample_and_two_groups():
    labels = _labels(20)
    split = split_stage.stratified_split(labels, 0.0, 3, seed=1)
    with pytest.raises(SplitError, match="1 training sample"):
        split_stage.grouped_folds(split, pd.Series({s: "a" if i % 2 else "b" for i, s in
                                                    enumerate(labels["sample"][1:])}), 3, 1)
    with pytest.raises(SplitError, match="1 group"):
        split_stage.grouped_folds(split, pd.Series({s: "only" for s in labels["sample"]}), 3, 1)


def test_the_summary_names_groups_that_hold_one_class():
    labels = _labels(12)
    split = split_stage.stratified_split(labels, 0.0, 3, seed=1)
    groups = pd.Series({s: ("DFCI" if label == "ALL" else "CALGB") for s, label in labels.values})
    summary = split_stage.group_summary(split_stage.grouped_folds(split, groups, 3, 1), groups)
    assert "CALGB (only AML)" in summary and "DFCI (only ALL)" in summary


def _metrics(cv_accuracy: dict[str, list[float]]) -> pd.DataFrame:
    rows = [{"model": m, "fold": str(f), "accuracy": a, "roc_auc": a, "fp": 0, "fn": 0, "f1": a,
             "fit_seconds": 0.1} for m, values in cv_accuracy.items() for f, a in enumerate(values)]
    return pd.DataFrame(rows)


def test_the_best_model_is_the_first_preferred_one_near_the_top():
    metrics = _metrics({"random_forest": [1.0, 1.0], "linear_svm": [0.98, 0.98], "dnn": [0.90, 0.90],
                        "xgboost": [0.99, 1.0]})
    rule = {"best_by": "accuracy", "prefer": ["linear_svm", "xgboost"], "best_within": 0.03}
    assert best_model(metrics, rule) == "linear_svm"                         # 0.02 below the top: near enough
    assert best_model(metrics, {**rule, "best_within": 0.0}) == "random_forest"   # the top CV score alone
    assert best_model(metrics, {**rule, "best_within": 0.015}) == "xgboost"  # 0.005 below: preferred next
    assert best_model(metrics, {**rule, "prefer": ["dnn"]}) == "random_forest"    # dnn is too far below
    assert best_model(metrics, {"best_by": "accuracy"}) == "random_forest"   # older configurations


def test_a_label_file_column_gives_the_groups(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("sample,label,Source\n1,ALL,DFCI\n2,AML,CALGB\n")
    assert label_file_column(path, "source") == {"1": "DFCI", "2": "CALGB"}
    with pytest.raises(LabelError, match="no column 'centre'"):
        label_file_column(path, "centre")
    path.write_text("sample,label,Source\n1,ALL,DFCI\n2,AML,\n")
    with pytest.raises(LabelError, match="line 3: sample 2 has no 'Source'"):
        label_file_column(path, "Source")


@pytest.fixture(scope="module")
def golub_by_centre(spark, tmp_path_factory):
    """All 72 Golub samples, cross-validated with one fold per centre (golub_pheno.csv, Source)."""
    from leukspark.config import load_config
    from leukspark.lake import Lake
    from leukspark.pipeline import Pipeline

    base = tmp_path_factory.mktemp("golub-centres")
    pheno = pd.read_csv(REAL / "golub_pheno.csv", dtype=str)
    pheno.rename(columns={"ALL.AML": "label"})[["sample", "label", "Source"]].to_csv(base / "labels.csv", index=False)
    probes = pd.read_csv(REAL / "golub_train.gct.gz", sep="\t", skiprows=2, usecols=[0], dtype=str).iloc[:, 0]
    pd.DataFrame({"probe_id": probes, "gene": probes}).to_csv(base / "Hu6800.csv", index=False)
    config = load_config(overrides={"spark.shuffle_partitions": 4, "training.models": ["logistic_regression"],
                                    "split.group_by": "Source", "split.test_fraction": 0.0})
    lake = Lake.from_config(spark, base / "lake", config)
    echoed: list[str] = []
    outcome = Pipeline(spark, lake, config, echo=echoed.append).run(
        [str(REAL / "golub_train.gct.gz"), str(REAL / "golub_independent.gct.gz")],
        label_file=str(base / "labels.csv"), annotation=str(base / "Hu6800.csv"))
    return {"lake": lake, "outcome": outcome, "pheno": pheno, "echoed": "\n".join(echoed)}


def test_golub_folds_are_its_centres(golub_by_centre):
    lake, pheno = golub_by_centre["lake"], golub_by_centre["pheno"]
    splits = lake.read("splits").toPandas()
    centre = dict(zip(pheno["sample"], pheno["Source"]))
    by_fold = splits.groupby("fold")["sample"].apply(lambda s: set(s.map(centre)))
    assert sorted(len(c) for c in by_fold) == [1, 1, 1, 1]                  # 4 centres, one fold each
    assert {c for cs in by_fold for c in cs} == set(pheno["Source"])
    # DFCI sent only ALL and CALGB only AML: the run says so.
    assert "CALGB (only AML)" in golub_by_centre["echoed"] and "DFCI (only ALL)" in golub_by_centre["echoed"]


def test_the_grouped_cv_score_is_the_score_on_unseen_centres(golub_by_centre):
    """cv_mean is the mean over centres of the accuracy of a model that never saw that centre."""
    from sklearn.metrics import accuracy_score

    lake, pheno = golub_by_centre["lake"], golub_by_centre["pheno"]
    predictions = lake.read("predictions").toPandas()
    oof = predictions[predictions["fold"].str.isdigit()]
    assert sorted(oof["sample"]) == sorted(pheno["sample"])
    splits = lake.read("splits").toPandas().set_index("sample")["fold"]
    assert (oof["fold"].astype(int).to_numpy() == oof["sample"].map(splits).to_numpy()).all()
    per_centre = pd.Series({fold: accuracy_score(f["truth"], f["predicted"]) for fold, f in oof.groupby("fold")})
    results = lake.read("results").toPandas()
    recorded = results[(results["fold"] == "cv_mean") & (results["metric"] == "accuracy")]["value"].iloc[0]
    assert recorded == pytest.approx(per_centre.mean(), abs=1e-12)


def test_rank_features_take_linear_values_without_the_floor(golub_by_centre):
    """Under the defaults (normalize rank, log_floor auto) Golub's MAS values below 20 keep their order:
    a gene vector's values equal asinh(x/2)/ln 2 of the file's values (probes are genes here)."""
    lake = golub_by_centre["lake"]
    genes = lake.read("genes").toPandas().sort_values("position")["gene"].tolist()
    row = lake.read("gene_features").where("sample = '1'").first()
    frame = pd.read_csv(REAL / "golub_train.gct.gz", sep="\t", skiprows=2, index_col=0).drop(columns="Description")
    raw = frame["1"].reindex(genes).to_numpy(dtype=float)
    assert lake.read("gene_features").count() == 72
    assert (raw < 20).mean() > 0.3                                           # the floor would have tied these
    np.testing.assert_allclose(np.array(row["features"]), np.arcsinh(raw / 2) / np.log(2), rtol=1e-12, atol=1e-12)


def test_each_centre_gets_its_across_group_accuracy_in_results_and_report(golub_by_centre):
    from leukspark.report import load_run_data
    from leukspark.report_science import groups_section

    lake, pheno = golub_by_centre["lake"], golub_by_centre["pheno"]
    run_id = golub_by_centre["outcome"]["train"].run_id
    results = lake.read("results").toPandas()
    oof = lake.read("predictions").toPandas()
    oof = oof[oof["fold"].str.isdigit()].merge(pheno[["sample", "Source"]], on="sample")
    for centre, part in oof.groupby("Source"):
        row = results[(results["fold"] == f"group:{centre}") & (results["metric"] == "accuracy")]
        assert row["value"].iloc[0] == pytest.approx((part["predicted"] == part["truth"]).mean(), abs=1e-12)
        assert results[(results["fold"] == f"group:{centre}") & (results["metric"] == "n")]["value"].iloc[0] == len(part)
    section = groups_section(load_run_data(lake, run_id))
    assert section is not None and all(f"group {c}" in section.body for c in set(pheno["Source"]))
