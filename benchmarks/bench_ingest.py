"""Ingest benchmark: GSE13159-shaped family SOFT at 200, 500 and 2,096 samples x 54,675 probes.

For each size: `leukspark ingest` into a fresh lake (wall time, peak memory of the whole process
tree, Spark JVM included), the same with one Spark task per file (`ingest.split_file_mb: 0`, the
way before a big file was shared between tasks), and GEOparse parsing the same file
(`GEOparse.get_GEO(filepath=...)`), all in subprocesses of this one script. Results go to
benchmarks/results/ingest.md.

    .venv/bin/python benchmarks/bench_ingest.py [--sizes 200 500 2096] [--geoparse-memory-limit-gb 21]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from measure import WORK, header, measure, synthetic_series, write_results  # noqa: E402



def seconds(run) -> str:
    return f"{run.seconds:.1f}" if run.returncode == 0 else f"failed ({run.seconds:.0f} s)"


def ratio(baseline, run) -> str:
    """How many times faster `run` is than `baseline`; '-' when either failed."""
    return f"{baseline.seconds / run.seconds:.2f}x" if baseline.returncode == 0 and run.returncode == 0 else "-"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 500, 2096])
    parser.add_argument("--geoparse-memory-limit-gb", type=float, default=21.0)
    args = parser.parse_args()
    rows = []
    one_task = WORK / "one_task_per_file.yaml"
    one_task.write_text("ingest:\n  split_file_mb: 0\n")
    for n in args.sizes:
        soft = synthetic_series(n)
        lake = WORK / f"lake_ingest_{n}"
        shutil.rmtree(lake, ignore_errors=True)
        ours = measure(f"leukspark ingest {n}", [sys.executable, "-m", "leukspark.cli", "ingest", str(soft),
                                                "--lake", str(lake)])
        shutil.rmtree(lake, ignore_errors=True)
        single = measure(f"leukspark ingest {n}, one task", [sys.executable, "-m", "leukspark.cli", "ingest",
                                                             str(soft), "--lake", str(lake), "--config", str(one_task)])
        theirs = measure(f"GEOparse parse {n}", [sys.executable, "-c",
                         "import sys, GEOparse; g = GEOparse.get_GEO(filepath=sys.argv[1], silent=True); "
                         "print(len(g.gsms), 'samples')", str(soft)],
                         memory_limit_gb=args.geoparse_memory_limit_gb)
        rows.append((n, soft.stat().st_size / 1e6, ours, single, theirs))
    lines = [header("Ingest benchmark", "python benchmarks/bench_ingest.py " + " ".join(sys.argv[1:])), ""]
    lines.append("Each row: one GSE13159-shaped family SOFT (54,675 probes per sample, gzipped), "
                 "ingested into a fresh lake (`leukspark ingest`: Spark start, Spark tasks streaming the "
                 "file and writing `expression` Parquet files (a file over `ingest.split_file_mb` is read "
                 "by one task per core, each parsing its share of the samples), one delta-rs commit, then "
                 "`samples`, `series`, `platform_probes`); the same with one task per file "
                 "(`ingest.split_file_mb: 0`); and GEOparse parsing the same file into its objects (no "
                 "pivot). Peak memory is the process tree's (JVM included).\n")
    lines.append("| samples | file (MB gz) | leukspark ingest (s) | peak (GB) | one task per file (s) | "
                 "shares vs one task | GEOparse parse (s) | peak (GB) | vs GEOparse |")
    lines.append("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n, size, ours, single, theirs in rows:
        lines.append(f"| {n:,} | {size:.0f} | {seconds(ours)} | {ours.peak_gb:.2f} | {seconds(single)} | "
                     f"{ratio(single, ours)} | {seconds(theirs)} | {theirs.peak_gb:.2f} | {ratio(theirs, ours)} |")
    write_results("ingest.md", lines)


if __name__ == "__main__":
    main()
