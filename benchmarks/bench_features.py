"""Probe-to-gene benchmark at full GSE13159 shape (2,096 x 54,675 = 114.6 M expression rows).

Needs the lake that `bench_ingest.py --sizes 2096` leaves in benchmarks/work/lake_ingest_2096.
Times the labels step and the features step (join with platform_probes, groupBy (sample, gene),
vector assembly, Delta writes of `genes` and `gene_features`) in a subprocess, with the peak
memory of the process tree. Results: benchmarks/results/features.md.

    .venv/bin/python benchmarks/bench_features.py [--lake benchmarks/work/lake_ingest_2096]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from measure import header, measure, write_results  # noqa: E402

STEP = """
import json, sys, time
from leukspark.config import load_config
from leukspark.lake import Lake
from leukspark.pipeline import Pipeline
from leukspark.spark import build_session
config = load_config()
spark = build_session(config)
pipeline = Pipeline(spark, Lake.from_config(spark, sys.argv[1], config), config)
began = time.perf_counter(); pipeline.labels(); labels_s = time.perf_counter() - began
began = time.perf_counter(); summary = pipeline.features(); features_s = time.perf_counter() - began
rows = pipeline.lake.read("expression").count()
print("RESULT " + json.dumps({"labels_s": labels_s, "features_s": features_s, "expression_rows": rows,
      "probes_in": summary.probes_in, "probes_used": summary.probes_used, "genes_out": summary.genes_out}))
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lake", default=str(HERE / "work" / "lake_ingest_2096"))
    args = parser.parse_args()
    run = measure("labels + features", [sys.executable, "-c", STEP, args.lake])
    result = json.loads(next(line for line in run.output_tail.splitlines() if line.startswith("RESULT "))[7:])
    lines = [header("Probe-to-gene benchmark", "python benchmarks/bench_features.py " + " ".join(sys.argv[1:])), ""]
    lines.append(f"Lake: {args.lake} ({result['expression_rows']:,} expression rows). One subprocess runs the "
                 "labels step, then the features step; the process-tree peak covers both (and the Spark start).\n")
    lines.append("| step | seconds |")
    lines.append("| --- | ---: |")
    lines.append(f"| labels (rules over 2,096 samples) | {result['labels_s']:.1f} |")
    lines.append(f"| features (join, groupBy, vectors, Delta writes) | {result['features_s']:.1f} |")
    lines.append(f"| whole subprocess (incl. Spark start) | {run.seconds:.1f} |")
    lines.append(f"\nPeak memory of the process tree: {run.peak_gb:.2f} GB. Probes in {result['probes_in']:,}, "
                 f"used {result['probes_used']:,}, genes out {result['genes_out']:,}.")
    write_results("features.md", lines)


if __name__ == "__main__":
    main()
