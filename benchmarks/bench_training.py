"""Training benchmark: the Spark fan-out against the same fits one after another in one process.

Needs a lake with `gene_features`, `genes` and `splits` (e.g. the full-size lake that
bench_ingest.py + bench_features.py leave in benchmarks/work/lake_ingest_2096; this script runs
the split step there if `splits` is missing). In subprocesses of this one script:

1. fan-out: `Pipeline.train()`: 5 models x (5 CV folds + final fit) as one applyInPandas;
2. sequential: the same 30 (model, fold) fits, same data, same seeds, same code path
   (`stages.train._train_one`), in one plain Python process without Spark.

Both report wall time and the process tree's peak memory; the script checks that both produced
the same probabilities and writes benchmarks/results/training.md with the leaderboard.

    .venv/bin/python benchmarks/bench_training.py [--lake benchmarks/work/lake_ingest_2096]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from measure import header, measure, write_results  # noqa: E402

FANOUT = """
import json, sys
from leukspark.config import load_config
from leukspark.lake import Lake
from leukspark.pipeline import Pipeline
from leukspark.spark import build_session
config = load_config()
spark = build_session(config)
pipeline = Pipeline(spark, Lake.from_config(spark, sys.argv[1], config), config)
if not pipeline.lake.exists("splits"):
    pipeline.split()
outcome = pipeline.train()
predictions = pipeline.lake.read("predictions").where(f"run = '{outcome.run_id}'").toPandas()
predictions.to_parquet(sys.argv[2])
print("RESULT " + json.dumps({"run": outcome.run_id, "leaderboard": outcome.leaderboard_text}))
"""

SEQUENTIAL = """
import json, sys, time
sys.path.insert(0, sys.argv[3])
from measure import training_context
import pandas as pd
from leukspark.config import load_config
from leukspark.stages import train as train_stage
lake = sys.argv[1]
config = load_config()
context = training_context(lake, "sequential", config)
tasks = train_stage.plan_tasks(config["training"]["models"], config["split"]["folds"], config["training"]["params"])
frames = [train_stage._train_one(task, context) for _, task in tasks.iterrows()]
pd.concat(frames).to_parquet(sys.argv[2])
print("RESULT " + json.dumps({"fits": len(frames)}))
"""


def main() -> None:
    import pandas as pd

    parser = argparse.ArgumentParser()
    parser.add_argument("--lake", default=str(HERE / "work" / "lake_ingest_2096"))
    args = parser.parse_args()
    work = HERE / "work"
    fanout = measure("spark fan-out (30 fits)", [sys.executable, "-c", FANOUT, args.lake,
                                                 str(work / "fanout_predictions.parquet")])
    result = json.loads(next(l for l in fanout.output_tail.splitlines() if l.startswith("RESULT "))[7:])
    sequential = measure("sequential (30 fits)", [sys.executable, "-c", SEQUENTIAL, args.lake,
                                                  str(work / "sequential_predictions.parquet"), str(HERE)])
    key = ["model", "fold", "sample"]
    a = pd.read_parquet(work / "fanout_predictions.parquet").sort_values(key).reset_index(drop=True)
    b = pd.read_parquet(work / "sequential_predictions.parquet").sort_values(key).reset_index(drop=True)
    same_rows = a[key].equals(b[key])
    max_difference = float((a["probability_AML"] - b["probability_AML"]).abs().max()) if same_rows else float("nan")

    lines = [header("Training fan-out benchmark", "python benchmarks/bench_training.py " + " ".join(sys.argv[1:])), ""]
    lines.append(f"Lake: {args.lake}. Both runs fit the same 30 (model, fold) tasks on the same feature matrix "
                 "with the same seeds; same prediction rows: "
                 f"{same_rows}, largest probability difference {max_difference:.2e}.\n")
    lines.append("| way | wall (s) | peak memory (GB) |")
    lines.append("| --- | ---: | ---: |")
    lines.append(f"| Spark fan-out, `groupBy(task).applyInPandas`, local[2] | {fanout.seconds:.1f} | {fanout.peak_gb:.2f} |")
    lines.append(f"| one plain Python process, one fit after another | {sequential.seconds:.1f} | {sequential.peak_gb:.2f} |")
    lines.append(f"\nSpeed-up of the fan-out: **{sequential.seconds / fanout.seconds:.2f}x** on 2 cores "
                 "(both walls include start-up: Spark session and Python imports).\n")
    lines.append(f"Leaderboard of the fan-out run {result['run']}:\n\n```\n{result['leaderboard']}\n```")
    write_results("training.md", lines)


if __name__ == "__main__":
    main()
