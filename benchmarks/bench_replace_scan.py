"""What a new series' ingest reads of the stored ones: the replace of its samples' rows with and
without the files' key ranges (Delta stats, `lake.file_stats`).

An ingest replaces the rows of every sample it writes (a sample an interrupted ingest left rows of
must not end up twice), so each new series' commit asks which stored files hold any of its sample
ids. Without file statistics that question reads the `sample` column of every stored file: the
cost of an append grows with the lake. With them, the files whose [min, max] excludes every new id
are skipped unread.

The script builds an expression table of `--series` stored series (`--samples` x `--probes` rows
each, one commit per series, as ingest makes them), then commits further new series alternately
with the range check switched off (every stored file scanned, as before) and on, and reports
seconds per commit and the ratio. Both run in this one process on the same table, so load from
elsewhere hits both alike.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_replace_scan.py [--series 3] [--samples 1048]
        [--probes 54675] [--repeats 2]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from statistics import median

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from measure import WORK, header, write_results  # noqa: E402


def stage_series(spark, lake, index: int, n_samples: int, n_probes: int):
    """One series' expression rows written into a staging folder, as ingest's tasks do."""
    from pyspark.sql import functions as F

    staged = lake.new_staging("expression")
    first = 9_000_000 + index * 100_000
    # Row i is probe i % n_probes of sample i // n_probes: each of the 8 range partitions (one file) holds
    # a contiguous block of samples, as ingest's parse tasks write them, with no shuffle to build it.
    rows = (spark.range(0, n_samples * n_probes, numPartitions=8)
            .select(F.lit(f"GSE{900000 + index}").alias("series"),
                    F.concat(F.lit("GSM"), (F.lit(first) + (F.col("id") / n_probes).cast("long")).cast("string"))
                    .alias("sample"),
                    F.lit("GPL570").alias("platform"),
                    F.concat(F.lit("p"), (F.col("id") % n_probes).cast("string")).alias("probe_id"),
                    F.rand(index).alias("value")))
    rows.write.mode("overwrite").parquet(str(staged.directory))
    return staged, [f"GSM{first + i}" for i in range(n_samples)]


def timed_commit(spark, lake, staged, samples: list[str], use_ranges: bool) -> float:
    import leukspark.lake as lake_module
    from leukspark import schemas

    real = lake_module._files_in_range
    if not use_ranges:
        lake_module._files_in_range = lambda snapshot, table_dir, files, key, keys: files
    try:
        keys = spark.createDataFrame([(s,) for s in samples], "sample string")
        started = time.perf_counter()
        lake.commit_staged(staged, schemas.EXPRESSION, replace_keys=keys, operation="ingest")
        return time.perf_counter() - started
    finally:
        lake_module._files_in_range = real


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--series", type=int, default=3)
    parser.add_argument("--samples", type=int, default=1048)
    parser.add_argument("--probes", type=int, default=54675)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    from leukspark import schemas
    from leukspark.config import load_config
    from leukspark.lake import Lake
    from leukspark.spark import build_session

    root = WORK / "replace_scan"
    shutil.rmtree(root, ignore_errors=True)
    config = load_config()
    spark = build_session(config)
    lake = Lake.from_config(spark, root, config)
    started = time.perf_counter()
    for index in range(args.series):
        staged, _ = stage_series(spark, lake, index, args.samples, args.probes)
        lake.commit_staged(staged, schemas.EXPRESSION, operation="ingest")
    build_s = time.perf_counter() - started
    rows = []
    for repeat in range(args.repeats):
        for use_ranges in (False, True):
            index = args.series + len(rows)
            staged, samples = stage_series(spark, lake, index, args.samples, args.probes)
            stored = lake.read("expression").count()
            seconds = timed_commit(spark, lake, staged, samples, use_ranges)
            rows.append((repeat, use_ranges, index, stored, seconds))
            print(f"repeat {repeat} ranges {use_ranges}: {seconds:.1f} s over {stored:,} stored rows", flush=True)
    off = [r[4] for r in rows if not r[1]]
    on = [r[4] for r in rows if r[1]]
    command = "PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_replace_scan.py " + " ".join(sys.argv[1:])
    lines = [header("A new series' replace: every stored file scanned, or only those whose key range may hold it",
                    command.strip()),
             f"Stored table built from {args.series} series of {args.samples:,} samples x {args.probes:,} probes "
             f"({build_s:.0f} s); each timed commit adds one more series of that size (its rows already staged) "
             "and replaces its samples' rows (none stored). Alternating off/on, so the later commits see a "
             "larger table.",
             "",
             "| repeat | key ranges | stored rows before | commit (s) |",
             "| ---: | --- | ---: | ---: |"]
    lines += [f"| {r} | {'on' if u else 'off'} | {n:,} | {s:.1f} |" for r, u, _, n, s in rows]
    lines += ["", f"Median commit: off {median(off):.1f} s, on {median(on):.1f} s; "
              f"ratio off / on {median(off) / median(on):.1f}x."]
    write_results("replace_scan.md", lines)


if __name__ == "__main__":
    main()
