"""The other-disease check (leukspark/other_disease.py) against an independent scikit-learn pipeline,
its out-of-fold values and the false-flag rate its threshold promises."""

from __future__ import annotations

import numpy as np
import pytest

from leukspark import other_disease
from leukspark.config import load_config


def _cohort(rng, n_per_class: dict, n_genes: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """Rows of log-scale values whose classes differ in their own block of 20 genes."""
    rows, classes = [], []
    for k, (name, n) in enumerate(n_per_class.items()):
        X = rng.normal(8.0, 1.0, size=(n, n_genes))
        X[:, 20 * k:20 * (k + 1)] += 1.5
        rows.append(X)
        classes += [name] * n
    return np.vstack(rows), np.array(classes, dtype=object)


def _oracle(ranks: np.ndarray, classes: np.ndarray):
    """The same model written as a plain scikit-learn pipeline (its own selection, scaling and fit)."""
    from sklearn.feature_selection import SelectKBest, f_classif
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(SelectKBest(f_classif, k=other_disease.N_GENES), StandardScaler(),
                         LogisticRegression(C=other_disease.REGULARISATION_C, max_iter=2000)).fit(ranks, classes)


def _p_other(pipeline, ranks):
    other = [c not in other_disease.ACUTE_CLASSES for c in pipeline.classes_]
    return pipeline.predict_proba(ranks)[:, other].sum(axis=1)


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(3)
    acute, acute_labels = _cohort(rng, {"ALL": 60, "AML": 60})
    other, other_labels = _cohort(rng, {"ALL": 0, "AML": 0, "CLL": 30, "MDS": 30, "CML": 3, "NL": 2})
    folds = np.arange(len(acute)) % 5
    check, acute_oof, other_oof = other_disease.fit_other_disease_check(
        acute, acute_labels, folds, other, other_labels, rate=0.1, seed=0)
    return {"acute": acute, "labels": acute_labels, "folds": folds, "other": other, "other_labels": other_labels,
            "check": check, "acute_oof": acute_oof, "other_oof": other_oof, "rng": rng}


def test_the_stored_check_scores_as_a_scikit_learn_pipeline_does(fitted):
    merged = np.where(np.isin(fitted["other_labels"], ["CML", "NL"]), "CML / NL", fitted["other_labels"])  # < 5 folds
    ranks = other_disease.rank_rows(np.vstack([fitted["acute"], fitted["other"]]))
    oracle = _oracle(ranks, np.concatenate([fitted["labels"], merged]))
    check = fitted["check"]
    assert sorted(check["classes"]) == ["ALL", "AML", "CLL", "CML / NL", "MDS"]
    new_rows = np.vstack([fitted["acute"][:5], fitted["other"][:5]]) + 0.3
    p, closest = other_disease.other_probability(check, new_rows)
    assert p == pytest.approx(_p_other(oracle, other_disease.rank_rows(new_rows)), abs=1e-4)  # lbfgs stops at its tolerance
    assert closest[5:] == ["CLL"] * 5


def test_each_out_of_fold_value_comes_from_a_fit_without_its_fold(fitted):
    merged = np.where(np.isin(fitted["other_labels"], ["CML", "NL"]), "CML / NL", fitted["other_labels"]).astype(object)
    other_folds = other_disease._deal_folds(merged, np.unique(fitted["folds"]), 0)
    ranks = other_disease.rank_rows(np.vstack([fitted["acute"], fitted["other"]]))
    classes = np.concatenate([fitted["labels"], merged])
    folds = np.concatenate([fitted["folds"], other_folds])
    expected = np.empty(len(classes))
    for fold in np.unique(folds):
        held = folds == fold
        expected[held] = _p_other(_oracle(ranks[~held], classes[~held]), ranks[held])
    assert np.concatenate([fitted["acute_oof"], fitted["other_oof"]]) == pytest.approx(expected, abs=1e-4)  # lbfgs stops at its tolerance
    # Every class is spread over the folds (stratified), so each fold's fit knows every class.
    for name in ("CLL", "MDS"):
        assert len(set(other_folds[merged == name])) == 5


def test_the_threshold_is_the_conformal_rank_and_keeps_its_rate_on_new_samples(fitted):
    check, acute_oof = fitted["check"], fitted["acute_oof"]
    k = int(np.ceil((len(acute_oof) + 1) * (1 - 0.1)))
    assert check["threshold"] == pytest.approx(np.sort(acute_oof)[k - 1])
    new_acute, _ = _cohort(np.random.default_rng(11), {"ALL": 500, "AML": 500})
    new_other, _ = _cohort(np.random.default_rng(12), {"ALL": 0, "AML": 0, "CLL": 100, "MDS": 100})
    p_acute, _ = other_disease.other_probability(check, new_acute)
    p_other, _ = other_disease.other_probability(check, new_other)
    # About 10 % of new acute samples flagged (binomial sd ~1 %, plus the threshold's own spread at n=120).
    assert 0.03 <= np.mean(p_acute > check["threshold"]) <= 0.2
    assert np.mean(p_other > check["threshold"]) >= 0.95
    assert check["out_of_fold_acute_flagged"] <= 0.1 + 1e-9


def test_other_disease_classes_follow_the_lineage_rules(spark):
    """The check's classes are the subtypes the labels step's own rules (labels.lineage_column, the
    same Spark expression) give lineage `other`; the pipeline reads them that way."""
    from pyspark.sql import functions as F

    from leukspark.stages.labels import lineage_column

    rules = load_config()["labels"]["lineage_rules"]
    subtypes = ["CLL", "MDS", "CML", "Non-leukemia and healthy bone marrow", "AML with t(8;21)",
                "T-ALL", "mature B-ALL with t(8;14)", None, "something else"]
    frame = spark.createDataFrame([(i, s) for i, s in enumerate(subtypes)], "i int, subtype string")
    lineages = [r["lineage"] for r in frame.select("i", lineage_column(F.col("subtype"), rules).alias("lineage"))
                .orderBy("i").collect()]
    others = [s if lineage == other_disease.OTHER_LINEAGE else None for s, lineage in zip(subtypes, lineages)]
    assert others == ["CLL", "MDS", "CML", "Non-leukemia and healthy bone marrow", None, None, None, None, None]


def test_the_message_can_be_taken_out_of_a_warning_and_nothing_else():
    text = other_disease.message(0.91, 0.4, "CLL")
    assert "0.91" in text and "CLL" in text
    assert other_disease.without_message(f"first; {text}; last (a; b)") == "first; last (a; b)"
    assert other_disease.without_message(text) is None
    assert other_disease.without_message("nothing of it") == "nothing of it"
