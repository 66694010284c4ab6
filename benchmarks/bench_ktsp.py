"""k-TSP pair search at full GSE13159 shape: Spark tasks over blocks of gene pairs against the same
search in one process, and against the numpy kernel the search had before (the baseline), in this one script.

Data: a synthetic float32 matrix of 1,033 training samples x 21,000 genes (numpy, seed 0) with a
planted signal: 40 gene pairs that swap order between AML and ALL, 200 genes shifted in AML.
For each candidate-set size (the default prefilter, 1,000 genes, and a larger one) the script
times, from the same within-sample ranks and candidates (computed once on the driver, timed apart):

0. the baseline: the numpy tensor kernel that `pairs.score_block` replaced, per-row best pairs, in this
   process (`tensor_kernel_top_pairs` below; up to --baseline-max candidates);
1. whole score matrix: `pairs.scores_from_ranks` + `pairs.top_disjoint_pairs` (the form a
   `ktsp` fit uses at the default prefilter; skipped where the matrix would pass 4 GB);
2. per-row best pairs: `pairs.numpy_top_pairs` in this process (one core);
3. Spark: `pairs.spark_top_pairs` (blocks of genes as tasks, ranks broadcast, each task returning its
   rows' best pairs) on the configured local master, after a warm-up job;

checks that all forms choose the same pairs, and times one whole default `ktsp` fit (5 inner folds
+ final search) on the same matrix. Writes benchmarks/results/ktsp.md.

    .venv/bin/python benchmarks/bench_ktsp.py [--large 2000] [--full] [--baseline-max 21000]
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

N_SAMPLES, N_GENES = 1033, 21000
MAX_PAIRS = 25


def synthetic_matrix(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(N_SAMPLES) < 0.45).astype(np.int8)
    X = rng.standard_normal((N_SAMPLES, N_GENES), dtype=np.float32) * 1.5 + 7.0
    sign = np.where(y == 1, 1.0, -1.0).astype(np.float32)
    for p in range(40):  # co-expressed pairs that swap order between the classes
        swing = sign * (0.3 + 0.02 * p) + rng.standard_normal(N_SAMPLES, dtype=np.float32)
        X[:, 100 + 2 * p + 1] = X[:, 100 + 2 * p] - swing / 2
        X[:, 100 + 2 * p] += swing / 2
    X[:, 1000:1200] += (y[:, None] * 0.8).astype(np.float32)
    return X, y


def tensor_kernel_top_pairs(ranks: np.ndarray, y: np.ndarray, candidates: np.ndarray, max_pairs: int):
    """The baseline: the numpy kernel that `pairs.score_block` replaced, in one process.

    Per block of rows it built the (samples x block rows x genes) int8 tensor of signs and summed it
    over the samples, blocks bounded to 1 M tensor elements (so one row per block from ~1,000
    candidates on). Written out here, as it was (complete data only: the matrix has no NaN), and
    given the same per-row best pairs and greedy choice as the other forms.
    """
    from leukspark import pairs

    subset = ranks[:, candidates]
    values = np.concatenate([subset[y == 1], subset[y == 0]]).astype(np.float32)
    n_aml = int((y == 1).sum())

    def tensor_block(_rows, start, stop):
        frequencies = []
        for part in (slice(0, n_aml), slice(n_aml, None)):
            left, right = values[part, start:stop, None], values[part, None, start:]
            sign = (left > right).view(np.int8) - (left < right).view(np.int8)
            frequencies.append(sign.sum(axis=0, dtype=np.int32).astype(np.float64) / left.shape[0])
        return (frequencies[0] - frequencies[1]) / 2.0

    rows_per_block = max(1, (1 << 20) // (values.shape[0] * values.shape[1]))
    bounds = [(a, min(a + rows_per_block, values.shape[1])) for a in range(0, values.shape[1], rows_per_block)]
    difference = pairs.rank_difference(subset, y)
    kernel = pairs.score_block
    pairs.score_block = tensor_block  # block_top_entries calls the module's kernel: this process only
    try:
        parts = [pairs.block_top_entries(None, difference, a, b, 2 * max_pairs) for a, b in bounds]
    finally:
        pairs.score_block = kernel
    return pairs.greedy_disjoint_pairs(pairs.TopEntries.concatenate(parts), candidates, max_pairs)


def warm_workers(spark) -> float:
    """Compile the pair kernel in each Python worker: one task per core, each held for a second so
    that no worker takes two (a worker compiles the kernel once, ~1 s, on its first block)."""
    def compile_here(_):
        import leukspark.pairs as pairs

        rng = np.random.default_rng(0)
        values = rng.random((30, 20)).astype(np.float32)
        labels = np.arange(30) % 2
        pairs.score_block(pairs.ranked_rows(values, labels), 0, 10)
        values[0, 0] = np.nan
        pairs.score_block(pairs.ranked_rows(values, labels), 0, 10)
        time.sleep(1.0)
        return [0]

    cores = spark.sparkContext.defaultParallelism
    _, seconds = timed(lambda: spark.sparkContext.parallelize(range(cores), cores).mapPartitions(compile_here).collect())
    return seconds


def timed(function, *args, **kwargs):
    started = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--large", type=int, default=2000, help="the larger candidate set")
    parser.add_argument("--full", action="store_true", help=f"also every one of the {N_GENES:,} genes (no prefilter)")
    parser.add_argument("--baseline-max", type=int, default=N_GENES,
                        help="run the numpy tensor baseline up to this many candidates (it takes minutes at full size)")
    args = parser.parse_args()

    from leukspark.config import load_config
    from leukspark.models import fit_and_predict
    from leukspark.pairs import (numpy_top_pairs, prefilter_genes, scores_from_ranks, spark_top_pairs,
                                 top_disjoint_pairs, within_sample_ranks)
    from leukspark.spark import build_session

    command = f"python benchmarks/bench_ktsp.py --large {args.large}" + (" --full" if args.full else "")
    if args.baseline_max != N_GENES:
        command += f" --baseline-max {args.baseline_max}"
    lines = [header("k-TSP pair search: Spark tasks over blocks vs one process, and vs the numpy kernel before", command)]
    X, y = synthetic_matrix()
    config = load_config()
    (spark, start_seconds) = timed(build_session, config, app_name="bench-ktsp")
    _, warm_seconds = timed(lambda: spark.sparkContext.parallelize(range(8), 8).map(lambda x: x).collect())
    ranks, rank_seconds = timed(within_sample_ranks, X)
    lines += ["", f"Matrix: synthetic {N_SAMPLES} samples x {N_GENES} genes (float32, seed 0, planted signal). "
              f"Spark master {config['spark']['master']}; session start {start_seconds:.1f} s and warm-up job "
              f"{warm_seconds:.1f} s, not counted below. Within-sample ranks of the whole matrix, computed once on "
              f"the driver for every form: {rank_seconds:.1f} s. The search: the greedy {MAX_PAIRS} disjoint pairs "
              "(the default max_k).", "",
              "| candidate genes | prefilter (s) | pairs | baseline: numpy tensor kernel, one process (s) "
              "| whole score matrix, one process (s) | per-row best pairs, one process (s) "
              "| Spark tasks, per-row best pairs (s) | baseline / Spark | one process / Spark (same kernel) "
              "| identical pairs |",
              "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    counts = [1000, args.large] + ([N_GENES] if args.full else [])
    # Compile the kernel in this process and in every Spark Python worker, outside the timings.
    warm = prefilter_genes(ranks, y, 200)
    numpy_top_pairs(ranks, y, warm, MAX_PAIRS)
    compile_seconds = warm_workers(spark)
    for count in counts:
        candidates, prefilter_seconds = timed(prefilter_genes, ranks, y, count)
        whole, whole_seconds = None, None
        if count * count * 8 * 3 < 4e9:  # delta, gamma and the greedy's working copy, float64
            whole, whole_seconds = timed(lambda: top_disjoint_pairs(scores_from_ranks(ranks, y, candidates), MAX_PAIRS))
        local, numpy_seconds = timed(numpy_top_pairs, ranks, y, candidates, MAX_PAIRS)
        distributed, spark_seconds = timed(spark_top_pairs, spark, ranks, y, candidates, MAX_PAIRS)
        baseline, baseline_seconds = None, None
        if count <= args.baseline_max:
            baseline, baseline_seconds = timed(tensor_kernel_top_pairs, ranks, y, candidates, MAX_PAIRS)
        same = all(np.array_equal(a, b) for a, b in zip(local, distributed)) and all(
            other is None or all(np.array_equal(a, b) for a, b in zip(other, local)) for other in (whole, baseline))
        pairs = count * (count - 1) // 2
        whole_text = f"{whole_seconds:.1f}" if whole is not None else "not run (score matrix over 4 GB)"
        baseline_text = f"{baseline_seconds:.1f}" if baseline is not None else "not run (--baseline-max)"
        ratio = f"{baseline_seconds / spark_seconds:.1f}x" if baseline is not None else "-"
        lines.append(f"| {count:,} | {prefilter_seconds:.1f} | {pairs:,} | {baseline_text} | {whole_text} | "
                     f"{numpy_seconds:.1f} | {spark_seconds:.1f} | {ratio} | {numpy_seconds / spark_seconds:.2f}x | {same} |")
        print(lines[-1], flush=True)
    lines += ["", f"Before the timings the kernel was compiled in this process and in each Spark Python worker "
              f"({compile_seconds:.1f} s for the warm-up job: one task per core, each held 1 s). The Spark forms run "
              f"{2 * spark.sparkContext.defaultParallelism} tasks of about equal work (`pairs.task_groups`)."]
    spark.stop()
    result, fit_seconds = timed(fit_and_predict, "ktsp", {}, X, y, X[:0], seed=42)
    planted = set(range(100, 180))
    found = sum(1 for i, j in result.model.pairs if i in planted and j in planted and abs(int(i) - int(j)) == 1)
    lines += ["", f"One default `ktsp` fit (prefilter 1,000, 5 inner folds + final search, k chosen "
              f"{len(result.model.pairs)}): {fit_seconds:.1f} s in one process; {found} of its pairs are planted pairs.",
              "", "The baseline is the numpy kernel `pairs.score_block` had until 2026-12-07 (one samples x block x genes "
              "int8 tensor per block; written out in this script); every other form runs today's compiled kernel "
              "(`leukspark.pairs.score_block`, numba) on the same blocks, compiled before the timings. The per-row forms "
              f"keep each gene's best {2 * MAX_PAIRS} partners per block (`pairs.block_top_entries`; why that is "
              "enough for the greedy choice is in its docstring) and choose the same pairs (column 'identical pairs'); "
              "the Spark column includes broadcasting the ranks and collecting the kept entries. Read the load "
              "average above before the ratios: other work shared the 2 cores."]
    write_results("ktsp.md", lines)


if __name__ == "__main__":
    main()
