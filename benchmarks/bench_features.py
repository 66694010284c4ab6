"""Probe-to-gene benchmark: the features step at 524, 1,048 and 2,096 samples x 54,675 probes.

For each size (a GSE13159-shaped series, seed 0, ingested into a fresh lake), two subprocesses
run the labels step and then, timed separately, the features step in these forms (each process's
first form is timed cold: the first Arrow job of its session):

* per-sample (the default since issue 13): each task reads its `expression` files, turns each
  sample's probes into per-gene sums and counts (one bincount) and writes the finished vectors as
  Parquet into `gene_features`' staging folder; the driver commits those files;
* per-sample, Spark writes (the step before that last change): the same vectors handed to the JVM
  as a DataFrame and written by Spark;
* relational (the previous default, still used for the median): join with the probe map and a
  groupBy (sample, gene) over every expression row, then the vector assembly;
* pandas: the single-process collapse of bench_end_to_end.py (per sample: reindex the probe to gene
  map, groupby mean), on the same rows already in memory (reading them is not timed).

Every Spark form writes `genes` and `gene_features` (Delta commits included) and all their vectors
are checked equal. Results: benchmarks/results/features.md.

    .venv/bin/python benchmarks/bench_features.py [--sizes 524 1048 2096]
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
lake_root, forms, vectors_out, with_pandas = sys.argv[1], sys.argv[2].split("|"), sys.argv[3], sys.argv[4] == "pandas"
config = load_config()
began = time.perf_counter(); spark = build_session(config); start_s = time.perf_counter() - began
lake = Lake.from_config(spark, lake_root, config)
pipeline = Pipeline(spark, lake, config, echo=lambda m: None)
began = time.perf_counter(); pipeline.labels(); labels_s = time.perf_counter() - began
timings = {"spark start": start_s, "labels": labels_s}
vectors = {}
original = feature_stage.build_features
VARIANTS = {  # how each form differs from the pipeline's own features step
    "relational": lambda *a, expression_files=None, **k: original(*a, **k),
    # the step before the tasks wrote their own files: vectors handed to the JVM, written by Spark
    "per-sample, Spark writes": lambda *a, vectors_to=None, **k: original(*a, **k),
}
for form in forms:
    feature_stage.build_features = VARIANTS.get(form.removesuffix(" (2nd)"), original)
    began = time.perf_counter(); pipeline.features(); timings[form] = time.perf_counter() - began
    feature_stage.build_features = original
    table = DeltaTable(lake.path("gene_features")).to_pandas().sort_values("sample")
    vectors[form] = np.vstack(table["features"].to_numpy())
first = vectors[forms[0]]
same = all(np.allclose(first, v, rtol=1e-9, atol=1e-12, equal_nan=True) for v in vectors.values())
np.save(vectors_out, first)
result = {"timings": timings, "same_vectors": bool(same), "genes": int(first.shape[1]),
          "expression_files": len(lake.active_files("expression"))}
if with_pandas:
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
    result.update(samples=len(tables), pandas_genes=int(matrix.shape[1]))
print("RESULT " + json.dumps(result))
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
        # Each process times its first form cold (the first Arrow job of a session, worker imports).
        runs, matrices = [], []
        for forms, pandas in ((FORMS_NOW, "pandas"), (FORMS_BEFORE, "-")):
            out = WORK / f"features_{n}_{len(runs)}.npy"
            run = measure(f"features {n}: {forms}", [sys.executable, "-c", STEP, str(lake), forms, str(out), pandas])
            line = next(x for x in run.output_tail.splitlines() if x.startswith("RESULT "))
            runs.append((run, json.loads(line[7:])))
            matrices.append(np.load(out))
            out.unlink()
        (now_run, now), (before_run, before) = runs
        same = now["same_vectors"] and before["same_vectors"] and np.allclose(
            *matrices, rtol=1e-9, atol=1e-12, equal_nan=True)
        results.append((n, max(now_run.peak_gb, before_run.peak_gb), {**before["timings"], **now["timings"]},
                        {**now, "same_vectors": bool(same)}))
    write_results("features.md", report(results))


FORMS_NOW = "per-sample|relational|per-sample (2nd)"
FORMS_BEFORE = "per-sample, Spark writes|per-sample, Spark writes (2nd)"


def report(results: list) -> list[str]:
    lines = [header("Probe-to-gene benchmark", "python benchmarks/bench_features.py " + " ".join(sys.argv[1:])), ""]
    lines.append("Synthetic GSE13159-shaped series (seed 0, default preset), 54,675 probes per sample, ingested "
                 "into a fresh lake; per size two subprocesses, each timing its first form cold (first Arrow job "
                 "of the session). Spark local[2]. Each Spark form is the whole features step (probe map, gene "
                 "table, vectors, measured genes, Delta writes of `genes` and `gene_features`, the "
                 "feature_builds row): per-sample (the tasks write the vectors' Parquet files themselves), "
                 "per-sample with Spark writing the vectors (the step before that change: vectors handed to "
                 "the JVM), relational (join + groupBy). pandas is the collapse alone on rows already in memory. "
                 "ratio = other / per-sample (above 1: per-sample is faster).\n")
    lines.append("| samples | expression rows | per-sample cold (s) | warm (s) | Spark writes cold (s) | warm (s) | "
                 "relational (s) | pandas (s) | vs pandas | vs Spark writes (cold / warm) | vs relational | "
                 "vectors equal | peak (GB) |")
    lines.append("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |")
    for n, peak, t, result in results:
        now, warm = t["per-sample"], t["per-sample (2nd)"]
        before, before_warm = t["per-sample, Spark writes"], t["per-sample, Spark writes (2nd)"]
        lines.append(f"| {n:,} | {n * 54675:,} | {now:.1f} | {warm:.1f} | {before:.1f} | {before_warm:.1f} | "
                     f"{t['relational']:.1f} | {t['pandas']:.1f} | {t['pandas'] / now:.2f} | "
                     f"{before / now:.2f} / {before_warm / warm:.2f} | {t['relational'] / now:.2f} | "
                     f"{result['same_vectors']} | {peak:.2f} |")
    lines.append("")
    for n, _, t, result in results:
        lines.append(f"- {n:,} samples: {result['expression_files']} expression files, {result['genes']:,} genes "
                     f"(pandas {result['pandas_genes']:,}), Spark start {t['spark start']:.1f} s, "
                     f"labels {t['labels']:.1f} s")
    return lines


if __name__ == "__main__":
    main()
