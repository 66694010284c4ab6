"""Scoring latency: one sample with a loaded bundle, per model, in plain Python (no Spark).

Uses a finished run in a lake (default: the demo lake that `bash scripts/demo.sh` leaves in
demo-lake/). For each model bundle of the run: load time, then the median and 95th percentile
of scoring one sample (gene vector -> probability) over 200 calls, and the time of the whole
path for one sample from a GEO series-matrix file (parse, collapse probes, score), as
`leukspark predict` does it. Results: benchmarks/results/predict.md.

    .venv/bin/python benchmarks/bench_predict.py [--lake demo-lake]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from measure import header, write_results  # noqa: E402


def main() -> None:
    from leukspark.bundle import load_bundle
    from leukspark.predict import predict_file, read_small_table, resolve_bundle_dir
    from leukspark.synth import demo_series_dir

    parser = argparse.ArgumentParser()
    parser.add_argument("--lake", default="demo-lake")
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--out", default="predict.md", help="results file name in benchmarks/results")
    parser.add_argument("--no-file", action="store_true", help="skip the whole-path timing on the demo series matrix")
    args = parser.parse_args()
    best_dir = resolve_bundle_dir(args.lake, None, None)
    run_dir = best_dir.parent
    features = read_small_table(args.lake, "gene_features")
    one_sample = np.asarray(features["features"].iloc[0], dtype=np.float32)[None, :]

    lines = [header("Scoring latency (one sample, no Spark)", "python benchmarks/bench_predict.py "
                    + " ".join(sys.argv[1:])), ""]
    lines.append(f"Run {run_dir.name}, {one_sample.shape[1]:,} genes. Scoring = `Bundle.predict_proba` on one "
                 f"gene vector, {args.calls} calls.\n")
    lines.append("| model | bundle load (ms) | score one sample, median (ms) | p95 (ms) |")
    lines.append("| --- | ---: | ---: | ---: |")
    for bundle_dir in sorted(p for p in run_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        began = time.perf_counter()
        bundle = load_bundle(bundle_dir)
        load_ms = (time.perf_counter() - began) * 1000
        bundle.predict_proba(one_sample)  # warm-up (lazy imports, torch graph)
        timings = []
        for _ in range(args.calls):
            began = time.perf_counter()
            bundle.predict_proba(one_sample)
            timings.append((time.perf_counter() - began) * 1000)
        lines.append(f"| {bundle_dir.name} | {load_ms:.1f} | {np.median(timings):.2f} | "
                     f"{np.percentile(timings, 95):.2f} |")
    matrix_file = demo_series_dir() / "GSE13159_series_matrix.txt.gz"
    if args.no_file:
        write_results(args.out, lines)
        return
    began = time.perf_counter()
    scored = predict_file(matrix_file, args.lake)
    whole = time.perf_counter() - began
    lines.append(f"\nWhole `predict` path on {matrix_file.name} ({len(scored)} samples: parse, collapse "
                 f"probes to genes, load the best bundle, score): {whole * 1000:.0f} ms, "
                 f"{whole * 1000 / len(scored):.1f} ms per sample.")
    write_results(args.out, lines)


if __name__ == "__main__":
    main()
