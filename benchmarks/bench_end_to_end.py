"""End-to-end benchmark: the whole pipeline at 25%, 50% and 100% of GSE13159's size, per stage,
against the same work done the way a single analyst would without Spark.

For each size (samples x 54,675 probes; 100% = 2,096 samples) this script, in subprocesses:

* leukspark: ingest, labels, features (probe to gene), split, training fan-out (5 models x 6 fits),
  report; wall time per stage and the process tree's peak memory;
* tuning (with `--tune-candidates N`): the nested tuning fan-out of the model-science step on
  the features just built, N random candidates per model x 5 outer folds x 3 inner folds, each
  fit with in-fold moderated-t selection of 1,000 genes and cheaper trees; as Spark tasks, and
  the same fits one after another in one process (each in its own subprocess);
* single process: GEOparse reads the family SOFT, the same label rules, pandas collapses probes to
  genes (mean, multi-gene probes dropped), the same split (read from the leukspark run's `splits`
  table) and the same 30 fits one after another (same models, params, seeds, preprocessing code).

It reports the ratio per stage and overall, the exponent of a power fit of each stage's time
against the number of samples, and writes benchmarks/results/end_to_end.md.

    .venv/bin/python benchmarks/bench_end_to_end.py [--fractions 0.25 0.5 1.0] [--tune-candidates 2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from measure import WORK, header, measure, synthetic_series, write_results  # noqa: E402

FULL_SAMPLES = 2096

LEUKSPARK = """
import json, sys, time
from leukspark.config import load_config
from leukspark.lake import Lake
from leukspark.pipeline import Pipeline
from leukspark.spark import build_session
soft, lake_root, report_dir = sys.argv[1:4]
config = load_config()
began = time.perf_counter()
spark = build_session(config)
timings = {"spark start": time.perf_counter() - began}
pipeline = Pipeline(spark, Lake.from_config(spark, lake_root, config), config, echo=lambda m: None)
pipeline.run([soft], report_dir=report_dir)
timings.update(pipeline.timings)
print("RESULT " + json.dumps(timings))
"""

BASELINE = """
import json, re, sys, time
import numpy as np, pandas as pd, GEOparse
from deltalake import DeltaTable
from leukspark.config import load_config
from leukspark.models import fit_and_predict
soft, lake_root = sys.argv[1:3]
config = load_config()
timings = {}
began = time.perf_counter()
gse = GEOparse.get_GEO(filepath=soft, silent=True)
timings["ingest"] = time.perf_counter() - began

began = time.perf_counter()
labels = {}
for name, gsm in gse.gsms.items():
    chars = dict(c.split(": ", 1) for c in gsm.metadata.get("characteristics_ch1", []) if ": " in c)
    value = chars.get("leukemia class", "")
    found = {r["label"] for r in config["labels"]["rules"] if re.search(r["pattern"], value)}
    if len(found) == 1:
        labels[name] = found.pop()
timings["labels"] = time.perf_counter() - began

began = time.perf_counter()
platform = next(iter(gse.gpls.values())).table
symbols = platform["Gene Symbol"].fillna("").astype(str)
single = platform[(symbols != "") & ~symbols.str.contains("///")]
probe_gene = pd.Series(single["Gene Symbol"].to_numpy(), index=single["ID"].astype(str))
rows = {}
for name in sorted(labels):
    table = gse.gsms[name].table
    values = pd.Series(pd.to_numeric(table["VALUE"], errors="coerce").to_numpy(), index=table["ID_REF"].astype(str))
    joined = pd.DataFrame({"gene": probe_gene.reindex(values.index), "value": values}).dropna(subset=["gene"])
    rows[name] = joined.groupby("gene")["value"].mean()
matrix = pd.DataFrame(rows).T.sort_index(axis=1)
timings["features"] = time.perf_counter() - began

began = time.perf_counter()
split = DeltaTable(f"{lake_root}/splits").to_pandas().set_index("sample").loc[matrix.index]
timings["split"] = time.perf_counter() - began

began = time.perf_counter()
X = matrix.to_numpy(dtype=np.float32)
y = (split["label"] == "AML").to_numpy().astype(int)
accuracy = {}
for model in config["training"]["models"]:
    params = config["training"]["params"].get(model, {})
    for fold in [str(k) for k in range(config["split"]["folds"])] + ["test"]:
        if fold == "test":
            train, held = (split["set"] == "train").to_numpy(), (split["set"] == "test").to_numpy()
        else:
            train = ((split["set"] == "train") & (split["fold"] != int(fold))).to_numpy()
            held = ((split["set"] == "train") & (split["fold"] == int(fold))).to_numpy()
        result = fit_and_predict(model, params, X[train], y[train], X[held], seed=config["training"]["seed"],
                                 scaler=config["training"]["scaler"])
        if fold == "test":
            accuracy[model] = float(((result.probabilities >= 0.5).astype(int) == y[held]).mean())
timings["train"] = time.perf_counter() - began
print("RESULT " + json.dumps({"timings": timings, "test_accuracy": accuracy, "genes": matrix.shape[1]}))
"""

TUNE = """
import json, sys, time
sys.path.insert(0, sys.argv[4])
from measure import training_context
from leukspark import tuning
from leukspark.config import load_config
from leukspark.stages import train as train_stage
lake_root, way, candidates = sys.argv[1], sys.argv[2], int(sys.argv[3])
cheaper = {"random_forest": {"n_estimators": 100}, "xgboost": {"n_estimators": 100}, "dnn": {"max_epochs": 20}}
config = load_config(overrides={"training.params": cheaper, "training.tuning.inner_folds": 3,
                                "training.tuning.method": "random", "training.tuning.n_candidates": candidates,
                                "training.selection": "moderated_t", "training.selection_k": 1000})
cfg = config["training"]
context = training_context(lake_root, "bench", config, selection=cfg["selection"], selection_k=cfg["selection_k"],
                           inner_folds=3)
tasks = tuning.plan_tuning_tasks(cfg["models"], [str(k) for k in range(5)], cfg["tuning"], cfg["params"], cfg["seed"])
if way == "spark":
    from leukspark.spark import build_session
    spark = build_session(config)
    began = time.perf_counter()
    rows = train_stage.run_task_rows(spark, tasks, context).toPandas()
else:
    began = time.perf_counter()
    rows = train_stage.run_tasks_sequentially(tasks, context)
print("RESULT " + json.dumps({"tune": time.perf_counter() - began, "fits": len(tasks)}))
"""

STAGES = ["ingest", "labels", "features", "split", "train", "report"]


def parse_result(measurement) -> dict:
    line = next((l for l in measurement.output_tail.splitlines() if l.startswith("RESULT ")), None)
    return json.loads(line[7:]) if line else {}


def power_exponent(sizes: list[int], seconds: list[float]) -> float:
    if len(sizes) < 2 or min(seconds) <= 0:
        return float("nan")
    return float(np.polyfit(np.log(sizes), np.log(seconds), 1)[0])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.25, 0.5, 1.0])
    parser.add_argument("--baseline-memory-limit-gb", type=float, default=20.0)
    parser.add_argument("--tune-candidates", type=int, default=2, help="0: no tuning rows")
    args = parser.parse_args()
    rows = []
    for fraction in args.fractions:
        n = int(round(FULL_SAMPLES * fraction))
        soft = synthetic_series(n)
        lake = WORK / f"lake_e2e_{n}"
        shutil.rmtree(lake, ignore_errors=True)
        ours = measure(f"leukspark {n}", [sys.executable, "-c", LEUKSPARK, str(soft), str(lake), str(WORK / f"report_{n}")])
        theirs = measure(f"single process {n}", [sys.executable, "-c", BASELINE, str(soft), str(lake)],
                         memory_limit_gb=args.baseline_memory_limit_gb)
        our_times, their_result = parse_result(ours), parse_result(theirs)
        if args.tune_candidates and ours.returncode == 0:
            for way, times in (("spark", our_times), ("sequential", their_result.setdefault("timings", {}))):
                tuned = measure(f"tuning {way} {n}", [sys.executable, "-c", TUNE, str(lake), way,
                                                       str(args.tune_candidates), str(HERE)])
                result = parse_result(tuned)
                times.update({"tune": result.get("tune"), "tune fits": result.get("fits"),
                              "tune peak": tuned.peak_gb})
        rows.append((n, ours, our_times, theirs, their_result))

    lines = [header("End-to-end benchmark", "python benchmarks/bench_end_to_end.py " + " ".join(sys.argv[1:])), ""]
    lines.append("Per size: seconds per stage for leukspark (Spark local[2], Delta tables) and for a single "
                 "process (GEOparse, pandas, the same models one after another); ratio = single / leukspark. "
                 "leukspark's total includes the Spark start and the report, which the single process does not make. "
                 "The tune row is the nested tuning fan-out on the features just built, in processes of its own "
                 "(its seconds exclude start-up; not part of the whole row).\n")
    lines.append("| samples | stage | leukspark (s) | single process (s) | ratio |")
    lines.append("| ---: | --- | ---: | ---: | ---: |")
    for n, ours, our_times, theirs, their_result in rows:
        their_times = their_result.get("timings", {})
        for stage in ["spark start", *STAGES]:
            mine = our_times.get(stage)
            other = their_times.get(stage)
            ratio = f"{other / mine:.2f}" if mine and other else "-"
            lines.append(f"| {n:,} | {stage} | {mine if mine is None else f'{mine:.1f}'} | "
                         f"{'-' if other is None else f'{other:.1f}'} | {ratio} |")
        if "tune" in our_times:
            mine, other = our_times["tune"], their_times.get("tune")
            ratio = f"{other / mine:.2f}" if mine and other else "-"
            lines.append(f"| {n:,} | tune ({our_times['tune fits']} fits; peak {our_times['tune peak']:.1f} GB vs "
                         f"{their_times.get('tune peak', float('nan')):.1f} GB) | {mine:.1f} | "
                         f"{'-' if other is None else f'{other:.1f}'} | {ratio} |")
        their_total = f"{theirs.seconds:.1f}" if theirs.returncode == 0 else f"failed after {theirs.seconds:.0f} s"
        ratio = f"**{theirs.seconds / ours.seconds:.2f}**" if theirs.returncode == 0 else "-"
        lines.append(f"| {n:,} | **whole (wall, peak {ours.peak_gb:.1f} GB vs {theirs.peak_gb:.1f} GB)** | "
                     f"**{ours.seconds:.1f}** | {their_total} | {ratio} |")
    if len(rows) >= 2:
        lines.append("\nGrowth with the number of samples (exponent b of a power fit t = a * n^b over the sizes):\n")
        lines.append("| stage | leukspark b | single process b |")
        lines.append("| --- | ---: | ---: |")
        sizes = [r[0] for r in rows]
        for stage in STAGES + (["tune"] if all("tune" in r[2] for r in rows) else []):
            mine = [r[2].get(stage, 0) for r in rows]
            other = [r[4].get("timings", {}).get(stage, 0) for r in rows]
            lines.append(f"| {stage} | {power_exponent(sizes, mine):.2f} | {power_exponent(sizes, other):.2f} |")
    accuracy_lines = [f"- {n:,} samples, single process test accuracy: {r.get('test_accuracy')}" for n, _, _, _, r in rows]
    lines.append("\n" + "\n".join(accuracy_lines))
    write_results("end_to_end.md", lines)


if __name__ == "__main__":
    main()
