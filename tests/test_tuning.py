"""Nested hyperparameter tuning: candidates, inner folds, the choice, leakage, and one small
Spark run whose tuning table, results and bundle are checked against scikit-learn."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler

from leukspark import tuning
from leukspark.config import load_config
from leukspark.errors import ConfigError
from leukspark.models import get_model
from leukspark.stages import train as train_stage

TUNING = {"method": "grid", "n_candidates": 6, "inner_folds": 2, "metric": "roc_auc",
          "grids": {"logistic_regression": {"C": [0.0005, 0.05, 5.0]}}}


def test_grid_and_random_candidates_are_validated_points_of_the_grid():
    spec = get_model("random_forest")
    grid = {**TUNING, "grids": {}}
    points = tuning.candidates(spec, grid, {"n_estimators": 7}, seed=0)
    expected = [{"max_features": f, "min_samples_leaf": leaf} for f in spec.tuning_grid["max_features"]
                for leaf in spec.tuning_grid["min_samples_leaf"]]
    assert [{k: p[k] for k in ("max_features", "min_samples_leaf")} for p in points] == expected
    assert all(p["n_estimators"] == 7 for p in points)  # the run's overrides stay under the grid
    drawn = tuning.candidates(spec, {**grid, "method": "random", "n_candidates": 4}, {}, seed=3)
    assert len(drawn) == 4 and len({json.dumps(p, sort_keys=True) for p in drawn}) == 4
    assert all(p in tuning.candidates(spec, grid, {}, seed=0) for p in drawn)
    assert drawn == tuning.candidates(spec, {**grid, "method": "random", "n_candidates": 4}, {}, seed=3)


@pytest.mark.parametrize("overrides, key", [
    ({"training.tuning.grids": {"logistic_regression": {"C": [0.1, -1.0]}}}, "training.tuning.grids.logistic_regression.C"),
    ({"training.tuning.grids": {"logistic_regression": {"gamma": [1]}}}, "training.tuning.grids.logistic_regression.gamma"),
    ({"training.tuning.grids": {"no_such_model": {"C": [1]}}}, "training.tuning.grids.no_such_model"),
    ({"training.tuning.grids": {"logistic_regression": {"C": []}}}, "training.tuning.grids.logistic_regression.C"),
    ({"training.tuning.method": "bayes"}, "training.tuning.method"),
    ({"training.tuning.inner_folds": 1}, "training.tuning.inner_folds"),
    ({"training.tuning.metric": "f2"}, "training.tuning.metric"),
])
def test_bad_tuning_settings_fail_at_config_load_naming_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(overrides=overrides)


def test_inner_folds_are_stratified_and_depend_only_on_the_outer_training_rows():
    rng = np.random.default_rng(0)
    samples = np.array([f"GSM{i:03d}" for i in range(40)])
    labels = np.array(["AML"] * 15 + ["ALL"] * 25, dtype=object)
    in_train = rng.random(40) < 0.8
    ids = tuning.inner_fold_ids(samples, labels, in_train, 3, seed=5)
    assert (ids[~in_train] == -1).all()
    for fold in range(3):
        held = ids == fold
        assert abs((labels[held] == "AML").sum() - (labels[in_train] == "AML").sum() / 3) <= 1
    # Another row order, and other rows outside the training set: the same assignment per sample.
    order = rng.permutation(40)
    again = tuning.inner_fold_ids(samples[order], labels[order], in_train[order], 3, seed=5)
    assert dict(zip(samples[order], again)) == dict(zip(samples, ids))
    with pytest.raises(ConfigError, match="inner_folds"):
        tuning.inner_fold_ids(samples, labels, in_train & (labels == "ALL") | (np.arange(40) == 0), 3, seed=5)


def test_the_best_mean_inner_score_wins_and_ties_go_to_the_lower_brier_then_the_earlier_candidate():
    scores = pd.DataFrame({
        "model": ["m"] * 4 + ["n"] * 2, "outer": ["0"] * 4 + ["0"] * 2, "candidate": [0, 1, 2, 3, 0, 1],
        "inner_score": [0.9, 0.95, 0.95, 0.8, 0.7, 0.7], "inner_brier": [0.1, 0.2, 0.1, 0.0, 0.3, 0.3],
    })
    chosen = tuning.choose(scores, "roc_auc")
    assert chosen.loc[chosen["chosen"], "candidate"].tolist() == [2, 0]
    lowest = tuning.choose(scores.assign(inner_score=[0.3, 0.2, 0.25, 0.2, 0.5, 0.5]), "brier")
    assert lowest.loc[lowest["chosen"], "candidate"].tolist() == [3, 0]  # 0.2 tied: the lower Brier


def _write_features(path, samples, matrix):
    table = pa.table({"sample": samples, "features": pa.array(list(matrix.astype(np.float32)),
                                                              type=pa.list_(pa.float32()))})
    pq.write_table(table, path)
    return str(path)


@pytest.fixture(scope="module")
def small_problem():
    """60 samples x 40 genes with a weak signal (so candidates score differently), 12 held out."""
    rng = np.random.default_rng(11)
    n, genes = 60, 40
    y = np.array([1] * 24 + [0] * 36)
    matrix = rng.normal(size=(n, genes))
    matrix[:, :4] += 0.9 * y[:, None]
    samples = np.array([f"GSM{i:03d}" for i in range(n)])
    test = np.zeros(n, bool)
    test[rng.choice(n, 12, replace=False)] = True
    folds = np.where(test, -1, np.arange(n) % 3)
    assignments = {s: ("test" if t else "train", None if t else int(f), "AML" if label else "ALL")
                   for s, t, f, label in zip(samples, test, folds, y)}
    return samples, matrix, assignments, test, folds


def _search(tmp_path, name, samples, matrix, assignments):
    files = (_write_features(tmp_path / f"{name}.parquet", samples, matrix),)
    context = train_stage.TrainingContext(run_id="r", feature_files=files, gene_order=tuple(map(str, range(40))),
                                          assignments=assignments, seed=1, scaler="standard", bundle_root=None,
                                          inner_folds=2)
    tasks = tuning.plan_tuning_tasks(["logistic_regression"], ["0", "1", "2", "test"], TUNING, {}, seed=1)
    rows, _ = train_stage.split_task_rows(train_stage.run_tasks_sequentially(tasks, context))
    return tuning.search_choices(rows, tasks, "roc_auc").sort_values(["outer", "candidate"]).reset_index(drop=True)


def test_test_rows_and_an_outer_folds_own_rows_never_move_its_search(tmp_path, small_problem):
    samples, matrix, assignments, test, folds = small_problem
    base = _search(tmp_path, "base", samples, matrix, assignments)
    assert len(base) == 3 * 4 and base.groupby("outer")["chosen"].sum().eq(1).all()
    assert base["inner_score"].nunique() > 2  # the candidates really differ on this problem

    shifted = matrix.copy()
    shifted[test] = np.random.default_rng(99).normal(5, 3, size=(test.sum(), matrix.shape[1]))
    moved = _search(tmp_path, "test_changed", samples, shifted, assignments)
    pd.testing.assert_frame_equal(base, moved)  # no tuned parameter, no inner score moves

    fold0 = matrix.copy()
    fold0[folds == 0] = -fold0[folds == 0]
    moved = _search(tmp_path, "fold0_changed", samples, fold0, assignments)
    pd.testing.assert_frame_equal(base[base["outer"] == "0"], moved[moved["outer"] == "0"])
    assert not base[base["outer"] == "test"]["inner_score"].equals(moved[moved["outer"] == "test"]["inner_score"])


def test_inner_scores_equal_a_scikit_learn_cross_validation(tmp_path, small_problem):
    samples, matrix, assignments, test, _ = small_problem
    choices = _search(tmp_path, "oracle", samples, matrix, assignments)
    train = np.flatnonzero(~test)
    train = train[np.argsort(samples[train])]
    X, y = matrix[train].astype(np.float32).astype(np.float64), np.array(
        [assignments[s][2] == "AML" for s in samples[train]], dtype=int)
    for candidate, C in enumerate(TUNING["grids"]["logistic_regression"]["C"]):
        aucs = []
        for fit_rows, held in StratifiedKFold(2, shuffle=True, random_state=1).split(X, y):
            scaler = StandardScaler().fit(X[fit_rows])
            model = LogisticRegression(C=C, max_iter=2000, tol=1e-4).fit(scaler.transform(X[fit_rows]), y[fit_rows])
            aucs.append(roc_auc_score(y[held], model.predict_proba(scaler.transform(X[held]))[:, 1]))
        row = choices[(choices["outer"] == "test") & (choices["candidate"] == candidate)].iloc[0]
        assert row["inner_score"] == pytest.approx(np.mean(aucs), abs=1e-3)


@pytest.fixture(scope="module")
def tuned_run(spark, tmp_path_factory):
    from leukspark.lake import Lake
    from leukspark.pipeline import Pipeline
    from leukspark.synth import write_synthetic_series

    base = tmp_path_factory.mktemp("tuned")
    series = write_synthetic_series(base / "series", n_samples=80, n_probes=600, seed=4, signal=0.15)
    config = load_config(overrides={"spark.shuffle_partitions": 4, "training.models": ["logistic_regression"],
                                    "split.folds": 3, "training.tuning": TUNING})
    lake = Lake.from_config(spark, base / "lake", config)
    outcome = Pipeline(spark, lake, config, echo=lambda _: None).run([str(series.family_soft)])
    run_id = outcome["train"].run_id
    frames = {name: lake.read(name).toPandas() for name in ("tuning", "results", "predictions")}
    return {name: frame[frame["run"] == run_id] for name, frame in frames.items()} | {
        "lake": lake, "run_id": run_id}


def test_a_tuned_run_records_every_candidate_and_uses_the_chosen_parameters(tuned_run):
    table, results = tuned_run["tuning"], tuned_run["results"]
    assert len(table) == 3 * 4 and set(table["outer_fold"]) == {"0", "1", "2", "test"}
    recomputed = tuning.choose(table.rename(columns={"outer_fold": "outer"}), "roc_auc")
    assert recomputed["chosen"].tolist() == table["chosen"].tolist()
    chosen = table[table["chosen"]].set_index("outer_fold")["params"]
    accuracy = results[results["metric"] == "accuracy"].set_index("fold")["params"]
    for fold in ("0", "1", "2", "test"):
        assert accuracy[fold] == chosen[fold]
    from leukspark.bundle import load_bundle
    from leukspark.runs import RunLog

    bundle = load_bundle(RunLog(tuned_run["lake"].root).bundle_dir(tuned_run["run_id"], "logistic_regression"))
    assert bundle.params["C"] == json.loads(chosen["test"])["C"]
    assert not tuned_run["predictions"]["fold"].str.startswith("tune").any()  # tuning rows are not stored


def test_optimism_gap_is_the_inner_score_minus_the_recomputed_outer_score(tuned_run):
    table, results, predictions = tuned_run["tuning"], tuned_run["results"], tuned_run["predictions"]
    gaps = results[results["metric"] == "optimism_gap"].set_index("fold")["value"]
    for fold in ("0", "1", "2"):
        part = predictions[predictions["fold"] == fold]
        outer = roc_auc_score(part["truth"] == "AML", part["probability_AML"])
        inner = table[(table["outer_fold"] == fold) & table["chosen"]]["inner_score"].iloc[0]
        assert gaps[fold] == pytest.approx(inner - outer)
    assert gaps["cv_pooled"] == pytest.approx(np.mean([gaps[f] for f in ("0", "1", "2")]))


def test_the_report_has_a_tuning_section_with_every_outer_fold(tuned_run, spark, tmp_path):
    from leukspark.report import write_report

    lake = tuned_run["lake"]
    page = write_report(spark, lake, tuned_run["run_id"], tmp_path / "report", load_config(
        overrides={"training.models": ["logistic_regression"]})).read_text()
    section = page[page.index("id='tuning'"):]
    section = section[:section.index("</section>")]
    gaps = tuned_run["results"].query("metric == 'optimism_gap'").set_index("fold")["value"]
    assert section.count("<tr>") == 1 + 4 + 1  # header, outer folds 0-2 and final, the mean
    assert f"{gaps['cv_pooled']:.4f}" in section
    assert "C=" in section


def test_tasks_are_packed_longest_first_into_balanced_bins():
    costs = np.array([5.0, 1.0, 4.0, 3.0, 3.0, 2.0, 2.0])
    bins = train_stage.pack_tasks(costs, 3)
    # LPT by hand: 5->b0, 4->b1, 3->b2, 3->b2 (3 < 4 < 5), 2->b1 (4), 2->b0 (5), 1->b1 (6 < 7)
    assert bins.tolist() == [0, 1, 1, 2, 2, 1, 0]
    assert sorted(np.bincount(bins, weights=costs).tolist()) == [6.0, 7.0, 7.0]
    assert train_stage.pack_tasks(costs, 10).tolist() == [0, 6, 1, 2, 3, 4, 5]  # one task a bin when bins suffice
    tasks = pd.DataFrame({"model": ["dnn", "logistic_regression", "dnn"], "fold": ["test", "0", "tune:0:1:2"]})
    assert train_stage.task_costs(tasks).tolist() == [5.0 * 1.25, 1.0, 5.0 * 0.75]


def test_the_packed_spark_fan_out_gives_the_sequential_rows(spark, tmp_path, small_problem):
    samples, matrix, assignments, _, _ = small_problem
    files = (_write_features(tmp_path / "features.parquet", samples, matrix),)
    context = train_stage.TrainingContext(run_id="r", feature_files=files, gene_order=tuple(map(str, range(40))),
                                          assignments=assignments, seed=1, scaler="standard", bundle_root=None,
                                          inner_folds=2)
    tasks = tuning.plan_tuning_tasks(["logistic_regression", "linear_svm"], ["0", "1", "2", "test"], TUNING, {}, seed=1)
    n_bins = max(train_stage.MIN_BINS, train_stage.BINS_PER_CORE * spark.sparkContext.defaultParallelism)
    assert len(tasks) > n_bins  # several tasks share a Spark task
    key = ["model", "fold", "sample"]
    fanned = train_stage.run_task_rows(spark, tasks, context).toPandas().drop(columns="fit_seconds")
    plain = train_stage.run_tasks_sequentially(tasks, context).drop(columns="fit_seconds")
    assert len(fanned) == len(plain) and fanned.groupby(["model", "fold"]).ngroups == len(tasks)
    pd.testing.assert_frame_equal(fanned.sort_values(key).reset_index(drop=True)[plain.columns],
                                  plain.sort_values(key).reset_index(drop=True), check_dtype=False)
