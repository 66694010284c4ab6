"""Labels, probe-to-gene features, split, training fan-out, results and prediction on one small series.

The pipeline runs once for the module (on a 90-sample GSE13159-shaped series); each test
checks one table against an independent oracle: the reference class table, a pandas
groupBy, scikit-learn's metrics, a second fan-out with altered test data.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from leukspark.config import load_config
from leukspark.lake import Lake
from leukspark.pipeline import Pipeline

FAST_PARAMS = {
    "random_forest": {"n_estimators": 40},
    "xgboost": {"n_estimators": 40},
    "dnn": {"hidden_layers": [32], "max_epochs": 15, "patience": 4},
}
N_SAMPLES, N_PROBES = 90, 500
MILE_INFO = Path(__file__).resolve().parents[1] / "leukspark" / "data" / "GSE13159.info"


def mile_classes() -> dict[str, str]:
    """GSM -> MILE class, read from the reference table with a parser of the test's own."""
    rows = MILE_INFO.read_text().splitlines()[1:]
    return {parts[0]: parts[-1] for parts in (re.split(r"\s{2,}", r.strip()) for r in rows if r.strip())}


@pytest.fixture(scope="module")
def run(spark, tmp_path_factory):
    from leukspark.synth import write_synthetic_series

    base = tmp_path_factory.mktemp("pipeline")
    series = write_synthetic_series(base / "series", n_samples=N_SAMPLES, n_probes=N_PROBES, seed=3)
    config = load_config(overrides={"spark.shuffle_partitions": 4, "training.params": FAST_PARAMS})
    lake = Lake.from_config(spark, base / "lake", config)
    messages: list[str] = []
    pipeline = Pipeline(spark, lake, config, echo=messages.append)
    outcome = pipeline.run([str(series.family_soft)])
    return {"pipeline": pipeline, "lake": lake, "series": series, "outcome": outcome, "messages": messages,
            "config": config}


def test_labels_follow_the_reference_classes(run):
    lake = run["lake"]
    classes = mile_classes()
    expected = {}
    for sample in run["series"].sample_ids:
        cls = classes[sample]
        expected[sample] = "AML" if cls.startswith("AML") else "ALL" if re.search(r"\bALL\b", cls) else None
    labels = {r["sample"]: (r["label"], r["subtype"]) for r in lake.read("labels").collect()}
    excluded = {r["sample"]: r["reason"] for r in lake.read("excluded_samples").collect()}
    assert {s: l for s, (l, _) in labels.items()} == {s: l for s, l in expected.items() if l}
    assert set(excluded) == {s for s, l in expected.items() if l is None}
    assert all(subtype == classes[s] for s, (_, subtype) in labels.items())
    assert len(labels) + len(excluded) == N_SAMPLES
    summary = "\n".join(run["messages"])
    assert "total" in summary and "excluded" in summary


def test_gene_features_equal_a_pandas_groupby(run):
    lake = run["lake"]
    expression = lake.read("expression").toPandas()
    probes = lake.read("platform_probes").toPandas()
    single = probes[probes["gene_symbols"].map(lambda s: len([x for x in s if x.strip()]) == 1)]
    probe_gene = single.assign(gene=single["gene_symbols"].map(lambda s: s[0]))[["platform", "probe_id", "gene"]]
    labelled = set(lake.read("labels").toPandas()["sample"])
    merged = expression[expression["sample"].isin(labelled)].merge(probe_gene, on=["platform", "probe_id"])
    # The default aggregate, mean_signal: the log2 of the mean of the probes' signals 2**value
    # (the synthetic series is log2, so no transform comes first).
    assert run["config"]["features"]["aggregate"] == "mean_signal"
    signals = merged.assign(value=np.exp2(merged["value"]))
    oracle = np.log2(signals.groupby(["sample", "gene"])["value"].mean().unstack())

    genes = lake.read("genes").toPandas().sort_values("position")
    assert list(genes["gene"]) == sorted(oracle.columns)
    assert list(genes["position"]) == list(range(len(genes)))
    features = lake.read("gene_features").toPandas().set_index("sample")
    assert set(features.index) == labelled
    matrix = np.vstack(features.loc[sorted(labelled), "features"].to_numpy())
    expected = oracle.loc[sorted(labelled), list(genes["gene"])].to_numpy()
    np.testing.assert_allclose(matrix, expected, rtol=1e-12, equal_nan=True)


def test_split_is_stratified_and_stable(run):
    lake, pipeline = run["lake"], run["pipeline"]
    split = lake.read("splits").toPandas()
    labels = lake.read("labels").toPandas()
    assert set(split["sample"]) == set(labels["sample"])
    test = split[split["set"] == "test"]
    assert len(test) == int(np.ceil(0.2 * len(split)))
    overall = (labels["label"] == "AML").mean()
    train = split[split["set"] == "train"]
    for fold, part in train.groupby("fold"):
        expected_aml = overall * len(part)
        assert abs((part["label"] == "AML").sum() - expected_aml) <= 1.0 + 1e-9, fold
    version = lake.version("splits")
    again = pipeline.split()
    assert lake.version("splits") == version  # identical split: no new commit
    pd.testing.assert_frame_equal(again.sort_values("sample").reset_index(drop=True),
                                  split.sort_values("sample").reset_index(drop=True), check_dtype=False)


def test_every_model_trains_and_predictions_cover_each_fold(run):
    lake = run["lake"]
    run_id = run["outcome"]["train"].run_id
    predictions = lake.read("predictions").toPandas()
    predictions = predictions[predictions["run"] == run_id]
    split = lake.read("splits").toPandas()
    n_train, n_test = (split["set"] == "train").sum(), (split["set"] == "test").sum()
    for model in run["config"]["training"]["models"]:
        rows = predictions[predictions["model"] == model]
        assert (rows["fold"] != "test").sum() == n_train, model
        assert (rows["fold"] == "test").sum() == n_test, model
        assert set(rows.loc[rows["fold"] == "test", "sample"]) == set(split.loc[split["set"] == "test", "sample"])
        assert rows["probability_AML"].between(0, 1).all()
    test_rows = predictions[predictions["fold"] == "test"]
    accuracy = (test_rows["predicted"] == test_rows["truth"]).groupby(test_rows["model"]).mean()
    assert accuracy.max() >= 0.9


def test_results_metrics_equal_scikit_learn(run):
    lake = run["lake"]
    run_id = run["outcome"]["train"].run_id
    predictions = lake.read("predictions").toPandas()
    results = lake.read("results").toPandas()
    results = results[results["run"] == run_id]
    for (model, fold), part in predictions[predictions["run"] == run_id].groupby(["model", "fold"]):
        y = (part["truth"] == "AML").astype(int)
        p = part["probability_AML"]
        yhat = (p >= 0.5).astype(int)
        stored = results[(results["model"] == model) & (results["fold"] == fold)].set_index("metric")["value"]
        assert stored["accuracy"] == pytest.approx(skm.accuracy_score(y, yhat))
        assert stored["sensitivity"] == pytest.approx(skm.recall_score(y, yhat, zero_division=0))
        assert stored["specificity"] == pytest.approx(skm.recall_score(1 - y, 1 - yhat, zero_division=0))
        assert stored["precision"] == pytest.approx(skm.precision_score(y, yhat, zero_division=0))
        assert stored["f1"] == pytest.approx(skm.f1_score(y, yhat, zero_division=0))
        assert stored["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p))
        tn, fp, fn, tp = skm.confusion_matrix(y, yhat, labels=[0, 1]).ravel()
        assert (stored["tp"], stored["fp"], stored["tn"], stored["fn"]) == (tp, fp, tn, fn)
    cv = results[results["fold"].isin([str(k) for k in range(5)]) & (results["metric"] == "accuracy")]
    means = cv.groupby("model")["value"].mean()
    stored_means = results[(results["fold"] == "cv_mean") & (results["metric"] == "accuracy")].set_index("model")["value"]
    pd.testing.assert_series_equal(means.sort_index(), stored_means.sort_index(), check_names=False)
    assert set(results["params"].map(lambda p: tuple(sorted(json.loads(p))) if p else ())) != {()}


def test_leaderboard_is_printed_with_labelled_confusion_matrices(run):
    text = run["outcome"]["train"].leaderboard_text
    assert "test acc" in text
    assert "actual AML" in text and "predicted ALL" in text


def test_fanout_is_deterministic_and_test_values_do_not_leak(run, spark, tmp_path):
    """Same seed, same numbers; altering test samples changes no CV result and no fitted scaler.

    Two fan-outs (Spark jobs) on the same training rows, one with altered test rows: every fit
    (the CV fits and the final fit) must come out the same in both, which shows determinism and
    that no test value reaches a fit; the test rows' own scores must differ."""
    from leukspark.stages import train as train_stage
    from leukspark.bundle import load_bundle

    lake = run["lake"]
    split = lake.read("splits").toPandas()
    genes = [r["gene"] for r in lake.read("genes").orderBy("position").collect()]
    features = lake.read("gene_features").toPandas()
    test_samples = set(split.loc[split["set"] == "test", "sample"])
    altered = features.copy()
    altered["features"] = [np.asarray(f) * 3.0 + 100.0 if s in test_samples else np.asarray(f)
                           for s, f in zip(altered["sample"], altered["features"])]
    paths = {}
    for name, frame in (("original", features), ("altered", altered)):
        path = tmp_path / f"{name}.parquet"
        frame.to_parquet(path)
        paths[name] = (str(path),)

    def fan_out(files, bundle_root):
        context = train_stage.TrainingContext(
            run_id="leak-check", feature_files=files, gene_order=tuple(genes),
            assignments={r.sample: (r.set, None if pd.isna(r.fold) else int(r.fold), r.label)
                         for r in split.itertuples(index=False)},
            seed=7, scaler="standard", bundle_root=str(bundle_root))
        tasks = train_stage.plan_tasks(["logistic_regression", "random_forest"], 5, FAST_PARAMS)
        return train_stage.run_fanout(spark, tasks, context).toPandas().sort_values(["model", "fold", "sample"])

    first = fan_out(paths["original"], tmp_path / "b1")
    leaked = fan_out(paths["altered"], tmp_path / "b3")
    columns = ["model", "fold", "sample", "probability_AML"]
    cv = lambda frame: frame[frame["fold"] != "test"][columns].reset_index(drop=True)  # noqa: E731
    pd.testing.assert_frame_equal(cv(first), cv(leaked))
    test_rows = features[features["sample"].isin(test_samples)].sort_values("sample")
    original_test_values = np.vstack(test_rows["features"].to_numpy()).astype(np.float32)  # as the fan-out reads them
    for model in ("logistic_regression", "random_forest"):
        original, with_altered_test = load_bundle(tmp_path / "b1" / model), load_bundle(tmp_path / "b3" / model)
        arrays = original.preprocessor.to_arrays()
        for key, array in with_altered_test.preprocessor.to_arrays().items():
            np.testing.assert_array_equal(arrays[key], array)
        # The final fits are the same model: they score the original test rows alike, and as the first fan-out did.
        scores = original.predict_proba(original_test_values)
        np.testing.assert_array_equal(with_altered_test.predict_proba(original_test_values), scores)
        recorded = first[(first["model"] == model) & (first["fold"] == "test")].sort_values("sample")
        np.testing.assert_allclose(recorded["probability_AML"].to_numpy(), scores, rtol=0, atol=1e-9)
    # The altered test rows do change the test predictions: the check above can fail.
    test = lambda frame: frame[frame["fold"] == "test"]["probability_AML"].to_numpy()  # noqa: E731
    assert not np.allclose(test(first), test(leaked))


def test_prediction_from_the_file_equals_the_recorded_test_predictions(run):
    from leukspark.predict import predict_file

    lake = run["lake"]
    outcome = run["outcome"]["train"]
    predictions = lake.read("predictions").toPandas()
    recorded = predictions[(predictions["run"] == outcome.run_id) & (predictions["fold"] == "test")
                           & (predictions["model"] == outcome.best_model)].set_index("sample")
    scored = predict_file(run["series"].series_matrix, lake.root, run_id=outcome.run_id)
    by_sample = {s.sample: s for s in scored}
    assert set(recorded.index) <= set(by_sample)
    for sample, row in recorded.iterrows():
        assert by_sample[sample].probability_AML == pytest.approx(row["probability_AML"], abs=1e-9)
        assert by_sample[sample].prediction == row["predicted"]


def _probe_matrix(run, tmp_path, damage):
    """A probes x samples CSV of three real samples, each damaged as asked."""
    lake = run["lake"]
    samples = sorted(lake.read("splits").where("set = 'test'").toPandas()["sample"])[:3]
    rows = lake.read("expression").where(f"sample in ({','.join(repr(s) for s in samples)})").toPandas()
    matrix = rows.pivot(index="probe_id", columns="sample", values="value")[samples]
    for sample, fraction in damage.items():
        probes = matrix.index.to_numpy()
        drop = np.random.default_rng(0).choice(len(probes), int(round(fraction * len(probes))), replace=False)
        matrix.loc[probes[drop], sample] = np.nan
    path = tmp_path / "new_samples.csv"
    matrix.to_csv(path)
    return path, samples


def test_prediction_fills_few_missing_genes_and_refuses_many(run, tmp_path):
    from leukspark.predict import predict_file

    outcome = run["outcome"]["train"]
    _, (intact, few, many) = _probe_matrix(run, tmp_path, {})
    path, _ = _probe_matrix(run, tmp_path, {few: 0.01, many: 0.5})
    scored = {s.sample: s for s in predict_file(path, run["lake"].root, run_id=outcome.run_id, platform="GPL570")}
    assert scored[intact].error is None and scored[intact].missing_genes == 0
    assert scored[few].error is None and 0 < scored[few].missing_genes <= 0.05 * len(_genes(run))
    assert scored[many].prediction is None and "missing" in scored[many].error
    recorded = run["lake"].read("predictions").toPandas()
    recorded = recorded[(recorded["run"] == outcome.run_id) & (recorded["fold"] == "test")
                        & (recorded["model"] == outcome.best_model)].set_index("sample")
    assert scored[intact].probability_AML == pytest.approx(recorded.loc[intact, "probability_AML"], abs=1e-9)


def _genes(run):
    return [r["gene"] for r in run["lake"].read("genes").collect()]


def test_wrong_platform_and_empty_samples_get_errors_and_others_are_scored(run, tmp_path):
    from leukspark.predict import predict_file

    path, samples = _probe_matrix(run, tmp_path, {})
    outcome = run["outcome"]["train"]
    wrong = predict_file(path, run["lake"].root, run_id=outcome.run_id, platform="GPL96")
    assert all(s.error and "platform GPL96" in s.error and s.prediction is None for s in wrong)
    frame = pd.read_csv(path, index_col=0)
    frame[samples[1]] = np.nan
    frame.to_csv(path)
    scored = {s.sample: s for s in predict_file(path, run["lake"].root, run_id=outcome.run_id, platform="GPL570")}
    assert scored[samples[1]].error and "empty" in scored[samples[1]].error
    assert scored[samples[0]].error is None and scored[samples[2]].error is None


def test_predict_command_prints_json_lines(run, capsys):
    from leukspark.cli import main

    code = main(["predict", str(run["series"].series_matrix), "--lake", str(run["lake"].root), "--format", "jsonl"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert code == 0
    assert {line["sample"] for line in lines} == set(run["series"].sample_ids)
    assert all(line["prediction"] in ("ALL", "AML") and 0 <= line["probability_AML"] <= 1 for line in lines)


def _table_versions(lake) -> dict:
    return {t: lake.version(t) for t in lake.catalog if lake.exists(t)}


@pytest.mark.parametrize("token", ["inf", "-Infinity", "1e400"])
def test_predict_refuses_a_file_with_an_infinite_value_naming_the_sample_and_writes_nothing(run, tmp_path,
                                                                                           capsys, token):
    from leukspark.cli import main

    path, samples = _probe_matrix(run, tmp_path, {})
    lines = path.read_text().splitlines()
    probe, *cells = lines[7].split(",")
    cells[1] = token
    lines[7] = ",".join([probe, *cells])
    path.write_text("\n".join(lines) + "\n")
    before = _table_versions(run["lake"])
    code = main(["predict", str(path), "--lake", str(run["lake"].root), "--platform", "GPL570", "--write"])
    output = capsys.readouterr()
    assert code == 2 and output.out == ""
    assert output.err.count("\n") == 1 and "Traceback" not in output.err
    assert f"sample {samples[1]}" in output.err and f"probe {probe}" in output.err and "line 8" in output.err
    assert _table_versions(run["lake"]) == before


@pytest.mark.parametrize("argument", ["1.5", "1", "-0.1"])
def test_a_bad_test_fraction_is_refused_before_any_table_is_rewritten(run, tmp_path, capsys, argument):
    from leukspark.cli import main

    lake = run["lake"]
    before = _table_versions(lake)
    assert {"genes", "gene_features", "splits"} <= set(before)
    settings = tmp_path / "small.yaml"
    settings.write_text("spark: {shuffle_partitions: 4, driver_memory: 4g}\n")
    code = main(["run", "--input", str(run["series"].family_soft), "--lake", str(lake.root), "--config",
                 str(settings), "--test-fraction", argument, "--no-report"])
    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1
    assert error.startswith("leukspark run: error: --test-fraction must be a number in [0, 1)")
    assert _table_versions(lake) == before


def test_spark_batch_scoring_matches_recorded_predictions(run, spark):
    from leukspark.predict import score_series
    from leukspark.runs import RunLog

    lake, outcome = run["lake"], run["outcome"]["train"]
    bundle_dir = RunLog(lake.root).bundle_dir(outcome.run_id, None)
    scored = score_series(spark, lake, None, bundle_dir, 0.05)
    lake.append("scored_samples", scored, operation="predict")
    stored = lake.read("scored_samples").toPandas().set_index("sample")
    assert len(stored) == N_SAMPLES
    recorded = lake.read("predictions").toPandas()
    recorded = recorded[(recorded["run"] == outcome.run_id) & (recorded["fold"] == "test")
                        & (recorded["model"] == outcome.best_model)]
    for row in recorded.itertuples():
        assert stored.loc[row.sample, "probability_AML"] == pytest.approx(row.probability_AML, abs=1e-9)
        assert stored.loc[row.sample, "prediction"] == row.predicted


def test_predict_model_in_the_configuration_scores_and_names_that_model(run, tmp_path, capsys):
    """Regression: `predict.model` set in conf and no --model, from the CLI and the spark-submit job:
    the rows written to scored_samples name the model that scored them, and carry its probabilities."""
    import importlib.util

    from leukspark.cli import main

    lake, outcome = run["lake"], run["outcome"]["train"]
    chosen = next(m for m in run["config"]["training"]["models"] if m != outcome.best_model)
    settings = tmp_path / "predict.yaml"
    settings.write_text(f"spark: {{shuffle_partitions: 4}}\npredict: {{model: {chosen}}}\n")
    source = str(run["series"].series_matrix)
    assert main(["predict", source, "--lake", str(lake.root), "--config", str(settings), "--write"]) == 0
    printed = {json.loads(line)["sample"]: json.loads(line)["probability_AML"]
               for line in capsys.readouterr().out.splitlines() if line.strip()}
    spec = importlib.util.spec_from_file_location("predict_job", Path(__file__).resolve().parents[1] / "jobs" / "predict.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    before = set(lake.read("scored_samples").toPandas()["scored_at"])
    assert job.main(["--lake", str(lake.root), "--config", str(settings)]) == 0

    stored = lake.read("scored_samples").toPandas()
    from_cli, from_job = stored[stored["source"] == source], stored[~stored["scored_at"].isin(before)]
    assert len(from_cli) == N_SAMPLES and set(from_cli["model"]) == {chosen} and set(from_cli["run"]) == {outcome.run_id}
    assert len(from_job) == N_SAMPLES and set(from_job["model"]) == {chosen}
    recorded = lake.read("predictions").toPandas()
    recorded = recorded[(recorded["run"] == outcome.run_id) & (recorded["fold"] == "test") & (recorded["model"] == chosen)]
    for row in recorded.itertuples():
        assert printed[row.sample] == pytest.approx(row.probability_AML, abs=5e-7)  # printed to 6 places
        assert from_cli.set_index("sample").loc[row.sample, "probability_AML"] == pytest.approx(row.probability_AML, abs=1e-9)


def test_a_features_step_that_fails_at_its_commit_leaves_the_tables_as_they_were(spark, tmp_path, monkeypatch):
    from leukspark.errors import TableError
    from leukspark.synth import write_synthetic_series

    series = write_synthetic_series(tmp_path / "series", n_samples=40, n_probes=400, seed=8, write_matrix=False)
    config = load_config(overrides={"spark.shuffle_partitions": 4})
    lake = Lake.from_config(spark, tmp_path / "lake", config)
    pipeline = Pipeline(spark, lake, config, echo=lambda _m: None)
    pipeline.ingest([str(series.family_soft)])
    pipeline.labels()
    pipeline.features()
    tables = ("genes", "gene_features", "feature_builds")
    built = {t: lake.version(t) for t in tables}
    vectors = lake.read_small("gene_features").sort_values("sample")

    def refuse(*_args, **_kwargs):
        raise OSError("disk full while committing")

    # 1. the vectors' commit fails: no table moves, and no file of the failed build is left
    with monkeypatch.context() as patch:
        patch.setattr(Lake, "commit_staged", refuse)
        with pytest.raises(OSError, match="disk full"):
            pipeline.features()
    assert {t: lake.version(t) for t in tables} == built
    table_dir = Path(lake.path("gene_features"))
    active = {Path(u.removeprefix("file://")).resolve() for u in lake.active_files("gene_features")}
    assert {p.resolve() for p in table_dir.rglob("*.parquet")} == active

    # 2. a build of another gene set whose `genes` commit fails: training refuses the mismatch
    each = Pipeline(spark, lake, load_config(overrides={"spark.shuffle_partitions": 4,
                                                        "features.multi_gene": "each"}), echo=lambda _m: None)
    with monkeypatch.context() as patch:
        patch.setattr(Lake, "overwrite_small", refuse)
        with pytest.raises(OSError, match="disk full"):
            each.features()
    assert lake.version("gene_features") == built["gene_features"] + 1 and lake.version("genes") == built["genes"]
    assert len(lake.read_small("gene_features")["features"].iloc[0]) != len(lake.read_small("genes"))
    with pytest.raises(TableError, match="did not finish"):
        pipeline._check_genes_match_vectors(len(lake.read_small("genes")))

    pipeline.features()   # the rerun finishes the build: one row per sample, the first vectors again
    again = lake.read_small("gene_features").sort_values("sample")
    assert again["sample"].tolist() == vectors["sample"].tolist()
    np.testing.assert_array_equal(np.vstack(again["features"]), np.vstack(vectors["features"]))
    pipeline._check_genes_match_vectors(len(lake.read_small("genes")))
    assert lake.version("feature_builds") == built["feature_builds"] + 1
