"""Ingest benchmark: GSE13159-shaped family SOFT at 200, 500 and 2,096 samples x 54,675 probes.

For each size: `leukspark ingest` into a fresh lake (wall time, peak memory of the whole process
tree, Spark JVM included) next to GEOparse parsing the same file (`GEOparse.get_GEO(filepath=...)`),
both in subprocesses of this one script. Results go to benchmarks/results/ingest.md.

    .venv/bin/python benchmarks/bench_ingest.py [--sizes 200 500 2096] [--skip-geoparse-above N]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from measure import WORK, header, measure, synthetic_series, write_results  # noqa: E402



def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 500, 2096])
    parser.add_argument("--geoparse-memory-limit-gb", type=float, default=21.0)
    args = parser.parse_args()
    rows = []
    for n in args.sizes:
        soft = synthetic_series(n)
        lake = WORK / f"lake_ingest_{n}"
        shutil.rmtree(lake, ignore_errors=True)
        ours = measure(f"leukspark ingest {n}", [sys.executable, "-m", "leukspark.cli", "ingest", str(soft),
                                                "--lake", str(lake)])
        theirs = measure(f"GEOparse parse {n}", [sys.executable, "-c",
                         "import sys, GEOparse; g = GEOparse.get_GEO(filepath=sys.argv[1], silent=True); "
                         "print(len(g.gsms), 'samples')", str(soft)],
                         memory_limit_gb=args.geoparse_memory_limit_gb)
        rows.append((n, soft.stat().st_size / 1e6, ours, theirs))
    lines = [header("Ingest benchmark", "python benchmarks/bench_ingest.py " + " ".join(sys.argv[1:])), ""]
    lines.append("Each row: one GSE13159-shaped family SOFT (54,675 probes per sample, gzipped), "
                 "ingested into a fresh lake (`leukspark ingest`: Spark start, one Spark task "
                 "streaming the file and writing `expression` Parquet files, one delta-rs commit, then "
                 "`samples`, `series`, `platform_probes`), and GEOparse "
                 "parsing the same file into its objects (no pivot). Peak memory is the process tree's "
                 "(JVM included).\n")
    lines.append("| samples | file (MB gz) | leukspark ingest (s) | peak (GB) | GEOparse parse (s) | peak (GB) | speed-up |")
    lines.append("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n, size, ours, theirs in rows:
        their_time = f"{theirs.seconds:.1f}" if theirs.returncode == 0 else f"failed ({theirs.seconds:.0f} s)"
        speedup = f"{theirs.seconds / ours.seconds:.2f}x" if theirs.returncode == 0 and ours.returncode == 0 else "-"
        lines.append(f"| {n:,} | {size:.0f} | {ours.seconds:.1f} | {ours.peak_gb:.2f} | {their_time} | "
                     f"{theirs.peak_gb:.2f} | {speedup} |")
    write_results("ingest.md", lines)


if __name__ == "__main__":
    main()
