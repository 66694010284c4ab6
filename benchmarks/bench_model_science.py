"""Model science at full size on a hard synthetic series: what tuning, in-fold selection,
calibration and ensembles change, and what the tuning fan-out costs.

Data: a full-size GSE13159-shaped series (2,096 samples x 54,675 probes) written with the
`hard` generator preset (11 labs with batch shifts partly confounded with the class, 3 %
ambiguous samples, weaker signal; docs/synthetic.md), so that the models do not all score 1.0.

Two parts, each in subprocesses of this one script:

* ``--part compare``: one lake (ingest, labels, features, split once), then one training run per
  configuration: plain; in-fold moderated-t selection of 1,000 genes; selection + nested tuning;
  selection + isotonic calibration + both ensembles. Every run uses the automatic abstention band,
  so each model's coverage at its band is measured too. Writes results/model_science.md.
* ``--part tuning``: the tuning fan-out alone (models x outer folds x candidates x inner folds)
  as one `groupBy(task).applyInPandas` against the same fits one after another in one plain
  Python process (same code path, `stages.train._train_one`), with wall time and the process
  tree's peak memory. Writes results/tuning.md.

    .venv/bin/python benchmarks/bench_model_science.py --part compare
    .venv/bin/python benchmarks/bench_model_science.py --part tuning [--outer 5 --inner 3 --candidates 6]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from measure import FULL_PROBES, WORK, header, measure, write_results  # noqa: E402

# Cheaper trees and network for the tuning part: 450 fits must fit in minutes on 2 cores.
TUNING_PARAMS = {"random_forest": {"n_estimators": 100}, "xgboost": {"n_estimators": 100},
                 "dnn": {"max_epochs": 20}}
SELECTION = {"training.selection": "moderated_t", "training.selection_k": 1000}
CONFIGS = {
    "plain": {},
    "selected": SELECTION,
    "selected + tuned": {**SELECTION, "training.tuning.method": "grid"},
    "selected + calibrated + ensembles": {**SELECTION, "training.calibration": "isotonic",
                                          "training.ensembles": ["soft_voting", "stacking"]},
}

PREPARE = """
import sys
from leukspark.config import load_config
from leukspark.lake import Lake
from leukspark.pipeline import Pipeline
from leukspark.spark import build_session
config = load_config()
spark = build_session(config)
pipeline = Pipeline(spark, Lake.from_config(spark, sys.argv[1], config), config)
pipeline.run([sys.argv[2]], until="split")
"""

TRAIN = """
import json, sys
from leukspark.config import load_config
from leukspark.lake import Lake
from leukspark.pipeline import Pipeline
from leukspark.spark import build_session
overrides = json.loads(sys.argv[2])
config = load_config(overrides={"predict.abstain_band": "auto", **overrides})
spark = build_session(config)
pipeline = Pipeline(spark, Lake.from_config(spark, sys.argv[1], config), config)
outcome = pipeline.train()
print("RESULT " + json.dumps({"run": outcome.run_id, "best": outcome.best_model}))
"""

TASKS = """
import json, sys
sys.path.insert(0, sys.argv[8])
from measure import training_context
from leukspark import tuning
from leukspark.config import load_config
from leukspark.stages import train as train_stage
lake, outer, inner, candidates = sys.argv[1], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
config = load_config(overrides={"training.params": json.loads(sys.argv[6]), "training.tuning.inner_folds": inner,
                                "training.tuning.method": "random", "training.tuning.n_candidates": candidates,
                                "training.selection": "moderated_t", "training.selection_k": 1000})
cfg = config["training"]
context = training_context(lake, "bench", config, selection=cfg["selection"], selection_k=cfg["selection_k"],
                           inner_folds=inner)
tasks = tuning.plan_tuning_tasks(cfg["models"], [str(k) for k in range(outer)], cfg["tuning"], cfg["params"], cfg["seed"])
if sys.argv[2] == "spark":
    from leukspark.spark import build_session
    spark = build_session(config)
    rows = train_stage.run_task_rows(spark, tasks, context).toPandas()
else:
    rows = train_stage.run_tasks_sequentially(tasks, context)
predictions, _ = train_stage.split_task_rows(rows)
predictions.to_parquet(sys.argv[7])
print("RESULT " + json.dumps({"fits": len(tasks)}))
"""


def series(samples: int) -> Path:
    out = WORK / f"series_hard_{samples}"
    soft = out / "GSE13159_family.soft.gz"
    if not soft.exists():
        measure(f"synth hard {samples}", [sys.executable, "-m", "leukspark.cli", "synth", "--samples", str(samples),
                                          "--probes", str(FULL_PROBES), "--seed", "0", "--preset", "hard",
                                          "--out", str(out), "--no-matrix"])
    return soft


def prepared_lake(samples: int) -> Path:
    lake = WORK / f"lake_hard_{samples}"
    if not (lake / "splits").exists():
        measure("ingest, labels, features, split", [sys.executable, "-c", PREPARE, str(lake), str(series(samples))])
    return lake


def compare(samples: int) -> None:
    from deltalake import DeltaTable

    lake = prepared_lake(samples)
    timings, runs = {}, {}
    for name, overrides in CONFIGS.items():
        measured = measure(f"train: {name}", [sys.executable, "-c", TRAIN, str(lake), json.dumps(overrides)])
        if measured.returncode != 0:
            raise SystemExit(f"training run {name!r} failed")
        runs[name] = json.loads(next(l for l in measured.output_tail.splitlines() if l.startswith("RESULT "))[7:])
        timings[name] = measured
    results = DeltaTable(str(lake / "results")).to_pandas()
    lines = [header("Model science at full size on the hard synthetic series",
                    "python benchmarks/bench_model_science.py " + " ".join(sys.argv[1:])), "",
             f"Data: synthetic, `leukspark synth --samples {samples} --probes {FULL_PROBES} --seed 0 --preset hard` "
             "(11 labs with batch shifts partly confounded with the class, 3 % ambiguous samples, signal 0.5). "
             "Same lake, same 80/20 split and 5 folds for every run; every run chooses its abstention band "
             "automatically (`predict.abstain_band: auto`, target 99.5 % accuracy on the calls, from the CV "
             "out-of-fold probabilities). Test-set metrics of each final model; coverage and accuracy on "
             "calls at that model's band.\n",
             "| configuration | model | test accuracy | ROC AUC | Brier | ECE | coverage | accuracy on calls | "
             "CV accuracy |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, run in runs.items():
        part = results[results["run"] == run["run"]]
        value = part.set_index(["model", "fold", "metric"])["value"]
        for model in dict.fromkeys(part["model"]):
            def get(fold, metric):
                key = (model, fold, metric)
                return f"{value[key]:.4f}" if key in value.index else "—"
            marker = " (best by CV)" if model == run["best"] else ""
            lines.append(f"| {name} | {model}{marker} | {get('test', 'accuracy')} | {get('test', 'roc_auc')} | "
                         f"{get('test', 'brier')} | {get('test', 'ece')} | {get('test', 'coverage')} | "
                         f"{get('test', 'accuracy_on_calls')} | {get('cv_mean', 'accuracy')} |")
    lines += ["", "Training wall time (each run in its own process, Spark start included):", "",
              "| configuration | wall (s) | peak memory (GB) |", "| --- | ---: | ---: |"]
    lines += [f"| {name} | {m.seconds:.1f} | {m.peak_gb:.2f} |" for name, m in timings.items()]
    tuned = results[(results["run"] == runs["selected + tuned"]["run"]) & (results["metric"] == "optimism_gap")
                    & (results["fold"] == "cv_pooled")]
    lines += ["", "Optimism gap of the tuned run (mean inner ROC AUC of the chosen candidate minus its outer "
              "fold's ROC AUC, over the 5 outer folds): "
              + ", ".join(f"{r.model} {r.value:+.4f}" for r in tuned.itertuples())]
    write_results("model_science.md", lines)


def tuning_fanout(samples: int, outer: int, inner: int, candidates: int) -> None:
    import pandas as pd

    lake = prepared_lake(samples)
    params = json.dumps(TUNING_PARAMS)
    out = {}
    for way in ("spark", "sequential"):
        path = WORK / f"tuning_{way}.parquet"
        out[way] = measure(f"tuning {way}", [sys.executable, "-c", TASKS, str(lake), way, str(outer), str(inner),
                                             str(candidates), params, str(path), str(HERE)])
        if out[way].returncode != 0:
            raise SystemExit(f"tuning {way} failed")
    fits = json.loads(next(l for l in out["spark"].output_tail.splitlines() if l.startswith("RESULT "))[7:])["fits"]
    key = ["model", "fold", "sample"]
    a = pd.read_parquet(WORK / "tuning_spark.parquet").sort_values(key).reset_index(drop=True)
    b = pd.read_parquet(WORK / "tuning_sequential.parquet").sort_values(key).reset_index(drop=True)
    same_rows = a[key].equals(b[key])
    difference = float((a["probability_AML"] - b["probability_AML"]).abs().max()) if same_rows else float("nan")
    spark, sequential = out["spark"], out["sequential"]
    lines = [header("Nested tuning fan-out benchmark",
                    "python benchmarks/bench_model_science.py " + " ".join(sys.argv[1:])), "",
             f"Data: synthetic full-size hard series ({samples} samples x {FULL_PROBES} probes, `--preset hard`), "
             f"lake {lake.name}. {fits} fits: 5 models x {outer} outer folds x {candidates} candidates x {inner} "
             f"inner folds (random search over each model's grid), each fit with in-fold moderated-t selection "
             f"of 1,000 genes; cheaper settings {TUNING_PARAMS}. Same fits, data and seeds both ways; same "
             f"prediction rows: {same_rows}, largest probability difference {difference:.2e}.\n",
             "| way | wall (s) | peak memory (GB) |", "| --- | ---: | ---: |",
             f"| Spark fan-out (`groupBy(task).applyInPandas`, local[2], one thread per task) | {spark.seconds:.1f} | "
             f"{spark.peak_gb:.2f} |",
             f"| one plain Python process, one fit after another (libraries' default threads) | "
             f"{sequential.seconds:.1f} | {sequential.peak_gb:.2f} |", "",
             f"Speed-up of the fan-out: **{sequential.seconds / spark.seconds:.2f}x** on 2 cores (both walls include "
             "start-up: the Spark session, Python imports, reading the feature matrix)."]
    write_results("tuning.md", lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--part", choices=["compare", "tuning"], required=True)
    parser.add_argument("--samples", type=int, default=2096)
    parser.add_argument("--outer", type=int, default=5)
    parser.add_argument("--inner", type=int, default=3)
    parser.add_argument("--candidates", type=int, default=6)
    args = parser.parse_args()
    WORK.mkdir(exist_ok=True)
    if args.part == "compare":
        compare(args.samples)
    else:
        tuning_fanout(args.samples, args.outer, args.inner, args.candidates)


if __name__ == "__main__":
    main()
