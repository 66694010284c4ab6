"""What one Python task costs in a Spark worker, with and without `leukspark.worker_imports`.

Before every task PySpark's worker calls importlib.invalidate_caches(), and Python 3.11 then re-reads
the directory of every zip archive it has an importer for: spark-core's jar (5,264 entries) and
pyspark.zip (1,220 entries, once per subpackage). leukspark skips archives whose size and
modification time are unchanged (`leukspark/worker_imports.py`); `LEUKSPARK_ZIP_INVALIDATION=eager`
in the workers' environment keeps Python's behaviour: the baseline, run in this same script.

For each mode: a local[2] session, a warm-up job, then 3 jobs of 64 tasks that import leukspark and
return; the wall time and the CPU seconds of the Python workers (psutil). Then the demo pipeline
(`leukspark run` on the embedded demo series, default configuration, no report) in each mode.

    .venv/bin/python benchmarks/bench_python_tasks.py [--no-pipeline]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from measure import header, write_results  # noqa: E402

MODES = {"eager (Python's behaviour)": "eager", "skip unchanged archives (leukspark)": "skip"}
TASKS, REPEATS = 64, 3


def worker_cpu_seconds() -> float:
    total = 0.0
    for process in psutil.Process().children(recursive=True):
        try:
            if "pyspark.daemon" in " ".join(process.cmdline()):
                times = process.cpu_times()
                total += times.user + times.system
        except psutil.Error:
            pass
    return total


def task_costs(mode: str) -> tuple[list[float], list[float]]:
    from leukspark.config import load_config
    from leukspark.spark import build_session

    config = load_config(overrides={"spark.extra": {"spark.executorEnv.LEUKSPARK_ZIP_INVALIDATION": mode}})
    spark = build_session(config, app_name=f"bench-python-tasks-{mode}")
    context = spark.sparkContext

    def task(_):
        import leukspark  # noqa: F401  (in a worker: installs the skip unless told eager)

        return [0]

    context.parallelize(range(8), 8).mapPartitions(task).collect()
    walls, cpus = [], []
    for _ in range(REPEATS):
        cpu, started = worker_cpu_seconds(), time.perf_counter()
        context.parallelize(range(TASKS), TASKS).mapPartitions(task).collect()
        walls.append(time.perf_counter() - started)
        # Workers forked for this job that already ended are not counted: with reuse they live on.
        cpus.append(worker_cpu_seconds() - cpu)
    spark.stop()
    return walls, cpus


def pipeline_seconds(mode: str, work: Path) -> float:
    config = work / f"{mode}.yaml"
    config.write_text(yaml.safe_dump({"spark": {"extra": {"spark.executorEnv.LEUKSPARK_ZIP_INVALIDATION": mode}}}))
    from leukspark.synth import demo_series_dir

    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "leukspark.cli", "run", "--input", str(demo_series_dir() / "GSE13159_family.soft.gz"),
                    "--lake", str(work / f"lake-{mode}"), "--config", str(config), "--no-report"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--no-pipeline", action="store_true", help="skip the two demo pipeline runs")
    args = parser.parse_args()
    lines = [header("One Python task in a Spark worker: zip archives re-read before each task, or not",
                    "python benchmarks/bench_python_tasks.py" + (" --no-pipeline" if args.no_pipeline else "")),
             "", f"{REPEATS} jobs of {TASKS} tasks that import leukspark and return, local[2], after a warm-up job. "
             "`worker CPU`: CPU seconds of the Python worker processes during the job.", "",
             "| mode | wall per job (s) | wall per task (ms) | worker CPU per job (s) |", "| --- | ---: | ---: | ---: |"]
    results = {}
    for label, mode in MODES.items():
        walls, cpus = task_costs(mode)
        results[mode] = min(walls)
        lines.append(f"| {label} | {' / '.join(f'{w:.2f}' for w in walls)} | {1000 * min(walls) / TASKS:.0f} | "
                     f"{' / '.join(f'{c:.2f}' for c in cpus)} |")
        print(lines[-1], flush=True)
    lines += ["", f"Ratio (best job, eager / skip): {results['eager'] / results['skip']:.1f}x."]
    if not args.no_pipeline:
        with tempfile.TemporaryDirectory() as folder:
            seconds = {mode: pipeline_seconds(mode, Path(folder)) for mode in MODES.values()}
        lines += ["", "Demo pipeline (`leukspark run`, embedded demo series, default configuration, `--no-report`), "
                  "whole process: " + ", ".join(f"{mode} {s:.1f} s" for mode, s in seconds.items())
                  + f" (eager / skip {seconds['eager'] / seconds['skip']:.2f}x)."]
    write_results("python_tasks.md", lines)


if __name__ == "__main__":
    main()
