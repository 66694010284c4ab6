"""Probe-to-gene benchmark: the features step at 524, 1,048 and 2,096 samples x 54,675 probes.

For each size (a GSE13159-shaped series, seed 0, ingested into a fresh lake), one subprocess runs
the labels step and then, timed separately, the features step three ways:

* per-sample (the default since issue 13): each task reads its `expression` files and turns each
  sample's probes into per-gene sums and counts (one bincount); Spark's groupBy combines those;
* relational (the previous default, still used for the median): join with the probe map and a
  groupBy (sample, gene) over every expression row, then the vector assembly;
* pandas: the single-process collapse of bench_end_to_end.py (per sample: reindex the probe to gene
  map, groupby mean), on the same rows already in memory (reading them is not timed).

Both Spark forms write `genes` and `gene_features` (Delta commits included) and their vectors are
checked equal. Results: benchmarks/results/features.md.

    .venv/bin/python benchmarks/bench_features.py [--sizes 524 1048 2096]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from measure import WORK, header, measure, synthetic_series, write_results  # noqa: E402

STEP = """
import json, sys, time
import numpy as np, pandas as pd
import pyarrow.parquet as pq
from deltalake import DeltaTable
from leukspark.config import load_config
from leukspark.lake import Lake
from leukspark.pipeline import Pipeline
from leukspark.spark import build_session
from leukspark.stages import features as feature_stage
lake_root = sys.argv[1]
config = load_config()
began = time.perf_counter(); spark = build_session(config); start_s = time.perf_counter() - began
lake = Lake.from_config(spark, lake_root, config)
pipeline = Pipeline(spark, lake, config, echo=lambda m: None)
began = time.perf_counter(); pipeline.labels(); labels_s = time.perf_counter() - began
timings = {"spark start": start_s, "labels": labels_s}
vectors = {}
for form in ("per-sample", "relational", "per-sample (2nd)"):
    original = feature_stage.build_features
    if form == "relational":
        feature_stage.build_features = lambda *a, expression_files=None, **k: original(*a, **k)
    began = time.perf_counter(); pipeline.features(); timings[form] = time.perf_counter() - began
    feature_stage.build_features = original
    table = DeltaTable(lake.path("gene_features")).to_pandas().sort_values("sample")
    vectors[form] = np.vstack(table["features"].to_numpy())
same = all(np.allclose(vectors["relational"], v, rtol=1e-9, atol=1e-12, equal_nan=True) for v in vectors.values())

# pandas: the single-process collapse of bench_end_to_end.py on the same rows (read untimed)
probes = DeltaTable(lake.path("platform_probes")).to_pandas()
single = probes[probes["gene_symbols"].map(lambda s: s is not None and len(s) == 1)]
probe_gene = pd.Series([s[0] for s in single["gene_symbols"]], index=single["probe_id"].astype(str))
labelled = set(DeltaTable(lake.path("labels")).to_pandas()["sample"])
tables = {}
for path in DeltaTable(lake.path("expression")).file_uris():
    frame = pq.read_table(path.replace("file://", ""), columns=["sample", "probe_id", "value"]).to_pandas()
    for name, part in frame.groupby("sample"):
        if name in labelled:
            tables[name] = part
began = time.perf_counter()
rows = {}
for name in sorted(tables):
    table = tables[name]
    values = pd.Series(table["value"].to_numpy(), index=table["probe_id"].astype(str))
    joined = pd.DataFrame({"gene": probe_gene.reindex(values.index), "value": values}).dropna(subset=["gene"])
    rows[name] = joined.groupby("gene")["value"].mean()
matrix = pd.DataFrame(rows).T.sort_index(axis=1)
timings["pandas"] = time.perf_counter() - began
print("RESULT " + json.dumps({"timings": timings, "same_vectors": bool(same), "samples": len(tables),
                              "genes": int(vectors["per-sample"].shape[1]), "pandas_genes": int(matrix.shape[1]),
                              "expression_files": len(lake.active_files("expression"))}))
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[524, 1048, 2096])
    args = parser.parse_args()
    results = []
    for n in args.sizes:
        soft = synthetic_series(n)
        lake = WORK / f"lake_features_{n}"
        shutil.rmtree(lake, ignore_errors=True)
        measure(f"ingest {n}", [sys.executable, "-m", "leukspark.cli", "ingest", str(soft), "--lake", str(lake)])
        run = measure(f"features {n}", [sys.executable, "-c", STEP, str(lake)])
        line = next(x for x in run.output_tail.splitlines() if x.startswith("RESULT "))
        results.append((n, run, json.loads(line[7:])))
    lines = [header("Probe-to-gene benchmark", "python benchmarks/bench_features.py " + " ".join(sys.argv[1:])), ""]
    lines.append("Synthetic GSE13159-shaped series (seed 0, default preset), 54,675 probes per sample, ingested "
                 "into a fresh lake; one subprocess per size. Spark local[2]. Each Spark form is the whole "
                 "features step (probe map, gene table, vectors, measured genes, Delta writes of `genes` and "
                 "`gene_features`, the feature_builds row); pandas is the collapse alone on rows already in "
                 "memory. ratio = pandas / per-sample (above 1: faster than pandas).\n")
    lines.append("| samples | expression rows | per-sample (s) | again, warm (s) | relational (s) | pandas (s) | "
                 "ratio vs pandas | vs relational | vectors equal | peak (GB) |")
    lines.append("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |")
    for n, run, result in results:
        t = result["timings"]
        lines.append(f"| {n:,} | {n * 54675:,} | {t['per-sample']:.1f} | {t['per-sample (2nd)']:.1f} | "
                     f"{t['relational']:.1f} | {t['pandas']:.1f} | {t['pandas'] / t['per-sample']:.2f} | "
                     f"{t['relational'] / t['per-sample']:.2f} | {result['same_vectors']} | {run.peak_gb:.2f} |")
    lines.append("")
    for n, run, result in results:
        lines.append(f"- {n:,} samples: {result['expression_files']} expression files, {result['genes']:,} genes "
                     f"(pandas {result['pandas_genes']:,}), Spark start {result['timings']['spark start']:.1f} s, "
                     f"labels {result['timings']['labels']:.1f} s")
    write_results("features.md", lines)


if __name__ == "__main__":
    main()
