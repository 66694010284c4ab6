"""Fixed costs at a small size: what a 120-sample series costs before the data's size matters.

One subprocess, one synthetic GSE13159-shaped series (120 samples x 54,675 probes, seed 0):

* imports (leukspark and the libraries a run loads) and the Spark start;
* the floor of any Spark job (an empty count) and of the first Python task (a Python worker
  starts for the first mapInPandas of a session; later ones reuse it);
* each pipeline step (ingest, labels, features, split, train, report), and each again on the same
  lake (warm session, Python workers running);
* the reductions made for issue 13, each against the code it replaced in the same process: the
  probe-map summary in pandas vs the Spark aggregation, the report's reads with delta-rs vs Spark
  (`toPandas`), Barnes-Hut vs exact t-SNE; and the report's sections one by one.

Writes benchmarks/results/fixed_costs.md.

    .venv/bin/python benchmarks/bench_fixed_costs.py [--samples 120]
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

STEPS = """
import json, sys, time
t0 = time.perf_counter()
import numpy as np, pandas as pd
import leukspark.pipeline, leukspark.report, leukspark.models  # what a run imports before its first step
imports_s = time.perf_counter() - t0
from pyspark.sql import functions as F
from leukspark.config import load_config
from leukspark.lake import Lake
from leukspark.pipeline import Pipeline
from leukspark.spark import build_session
from leukspark.stages import collapse as C, features as feature_stage
from leukspark import report as R

soft, lake_root, report_dir = sys.argv[1:4]
config = load_config()
out = {"imports": imports_s}

def timed(name, call):
    began = time.perf_counter(); value = call(); out[name] = time.perf_counter() - began
    return value

spark = timed("spark start", lambda: build_session(config))
timed("empty Spark job", lambda: spark.range(1).count())
timed("empty Spark job (2nd)", lambda: spark.range(1).count())
def first_python_task():
    return spark.range(2).mapInPandas(lambda it: it, "id long").count()
timed("first Python task (worker start)", first_python_task)
timed("Python task (worker running)", first_python_task)
pipeline = Pipeline(spark, Lake.from_config(spark, lake_root, config), config, echo=lambda m: None)
pipeline.run([soft], report_dir=report_dir)
out.update({f"step {k}": v for k, v in pipeline.timings.items()})
pipeline.timings.clear()
pipeline.run([soft], report_dir=report_dir)
out.update({f"step {k} (again)": v for k, v in pipeline.timings.items()})

lake = pipeline.lake
# probe-map summary: pandas on the driver (now) vs the Spark aggregation (before), same counts
platforms = ["GPL570"]
probes = lake.read("platform_probes")
scoped = timed("summary input toPandas", lambda: probes.where(F.col("platform").isin(*platforms)).toPandas())
spark_map = C.probe_gene_map(probes, "drop")
by_spark = timed("summary: Spark aggregation", lambda: feature_stage.summarize_probe_map(probes, spark_map, platforms))
by_pandas = timed("summary: pandas", lambda: feature_stage.summarize_probe_map_pd(scoped, C.probe_gene_map_pd(scoped, "drop")))
assert by_spark == by_pandas, (by_spark, by_pandas)

# the report's reads: delta-rs (now) vs Spark toPandas (before), same rows
run_id = pipeline.latest_run()
timed("report read: delta-rs", lambda: lake.read_small("gene_features", ["sample", "features"]))
timed("report read: Spark toPandas", lambda: lake.read("gene_features").select("sample", "features").toPandas())
data = timed("report: load run data", lambda: R.load_run_data(lake, run_id, config["training"]["best_by"]))
embedding = timed("report: embedding inputs (read + PCA)", lambda: R.gene_embedding_inputs(lake, data))

from sklearn.manifold import TSNE
# t-SNE at this size and at the 524-sample series' 323 labelled samples (two clusters in 50 dimensions,
# the PCA components t-SNE runs on): the report now uses exact only up to 100 samples, before up to 500.
rng = np.random.default_rng(0)
larger = np.vstack([rng.normal(0, 1, (162, 50)), rng.normal(1.5, 1, (161, 50))])
for label, points in (("", embedding.components), (" (323 samples)", larger)):
    perplexity = R.tsne_perplexity(config["report"]["tsne_perplexity"], points.shape[0])
    for method in ("barnes_hut", "exact"):
        timed(f"t-SNE {method}{label}", lambda: TSNE(2, perplexity=perplexity, init="pca", learning_rate="auto",
                                                     method=method, random_state=0).fit_transform(points))
from pathlib import Path
figures = R.FigureWriter(Path(report_dir))
sections = {
    "class counts": lambda: R.class_counts_section(data, figures),
    "PCA figure": lambda: R.pca_section(embedding, figures),
    "t-SNE section": lambda: R.tsne_section(embedding, figures, config["report"]["tsne_perplexity"]),
    "confusion": lambda: R.confusion_section(data, figures),
    "ROC": lambda: R.roc_section(data, figures),
    "CV figure": lambda: R.cv_section(data, figures),
    "top genes": lambda: R.top_genes_section(lake, data, figures, config["report"]["top_genes"]),
    "science sections": lambda: R.science_sections(data, figures),
}
for name, call in sections.items():
    timed(f"report section: {name}", call)
out["labelled samples"] = len(data.labels)
print("RESULT " + json.dumps(out))
"""

GROUPS = [
    ("start-up", ["imports", "spark start", "empty Spark job", "empty Spark job (2nd)",
                  "first Python task (worker start)", "Python task (worker running)"]),
    ("pipeline steps, first run (cold) and again (warm)", None),
    ("replaced code, same process (before vs now)", [
        ("summary: Spark aggregation", "summary: pandas"),
        ("report read: Spark toPandas", "report read: delta-rs"),
        ("t-SNE exact (323 samples)", "t-SNE barnes_hut (323 samples)")]),
    ("the report's parts", None),
]
STEP_NAMES = ["ingest", "labels", "features", "split", "train", "report"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=120)
    args = parser.parse_args()
    soft = synthetic_series(args.samples)
    lake = WORK / f"lake_fixed_{args.samples}"
    shutil.rmtree(lake, ignore_errors=True)
    run = measure(f"fixed costs {args.samples}", [sys.executable, "-c", STEPS, str(soft), str(lake),
                                                  str(WORK / f"report_fixed_{args.samples}")])
    line = next((l for l in run.output_tail.splitlines() if l.startswith("RESULT ")), None)
    if run.returncode != 0 or line is None:
        raise SystemExit("the fixed-cost run failed")
    t = json.loads(line[7:])
    lines = [header("Fixed costs at a small size", "python benchmarks/bench_fixed_costs.py " + " ".join(sys.argv[1:])),
             f"Synthetic GSE13159-shaped series, {args.samples} samples x 54,675 probes (seed 0, default preset; "
             f"{t['labelled samples']} labelled), one process, Spark local[2]; whole process {run.seconds:.1f} s, "
             f"peak {run.peak_gb:.2f} GB.\n",
             "## Start-up\n", "| what | seconds |", "| --- | ---: |"]
    lines += [f"| {name} | {t[name]:.2f} |" for name in GROUPS[0][1]]
    lines += ["\n## Pipeline steps\n", "| step | first run (s) | again, same session (s) |", "| --- | ---: | ---: |"]
    lines += [f"| {s} | {t[f'step {s}']:.2f} | {t[f'step {s} (again)']:.2f} |" for s in STEP_NAMES]
    lines += ["\n## Replaced code, measured side by side in the same process\n",
              "| before | s | now | s | ratio |", "| --- | ---: | --- | ---: | ---: |"]
    for before, now in GROUPS[2][1]:
        lines.append(f"| {before} | {t[before]:.2f} | {now} | {t[now]:.2f} | {t[before] / t[now]:.1f}x |")
    lines.append(f"\nAt this size ({t['labelled samples']} labelled) t-SNE stays exact: {t['t-SNE exact']:.2f} s vs "
                 f"Barnes-Hut {t['t-SNE barnes_hut']:.2f} s.")
    lines += ["\n## The report's parts (warm)\n", "| part | seconds |", "| --- | ---: |"]
    lines += [f"| {k.removeprefix('report: ').removeprefix('report section: ')} | {v:.2f} |"
              for k, v in t.items() if k.startswith("report: ") or k.startswith("report section: ")]
    write_results("fixed_costs.md", lines)


if __name__ == "__main__":
    main()
