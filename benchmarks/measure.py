"""Run a command in a subprocess and report its wall time and peak memory.

Peak memory is the largest sum of resident set sizes over the process and all its
descendants (the Spark JVM and its Python workers included), sampled every 0.2 s.
"""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import psutil


@dataclass
class Measurement:
    label: str
    seconds: float
    peak_gb: float
    returncode: int
    output_tail: str
    stopped_at_limit: bool = False   # killed by the `rss_limit_gb` watchdog


def measure(label: str, command: list[str], *, env: dict | None = None, cwd: str | None = None,
            memory_limit_gb: float | None = None, rss_limit_gb: float | None = None) -> Measurement:
    """`memory_limit_gb` caps the address space (RLIMIT_AS); `rss_limit_gb` kills the process tree as
    soon as its resident memory passes the limit (`stopped_at_limit`), before it can take the machine."""
    def limit_memory():
        if memory_limit_gb:
            import resource

            limit = int(memory_limit_gb * 1024 ** 3)
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                               preexec_fn=limit_memory, text=True)
    peak = 0
    stop = threading.Event()
    stopped = threading.Event()

    def sample():
        nonlocal peak
        root = psutil.Process(process.pid)
        while not stop.is_set():
            try:
                total = root.memory_info().rss + sum(
                    child.memory_info().rss for child in root.children(recursive=True))
                peak = max(peak, total)
                if rss_limit_gb and total > rss_limit_gb * 1024 ** 3:
                    stopped.set()
                    for process_ in [*root.children(recursive=True), root]:
                        try:
                            process_.kill()
                        except psutil.Error:
                            pass
            except psutil.Error:
                pass
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output, _ = process.communicate()
    seconds = time.perf_counter() - started
    stop.set()
    sampler.join()
    result = Measurement(label, seconds, peak / 1024 ** 3, process.returncode, output[-3000:], stopped.is_set())
    status = ("ok" if process.returncode == 0 else f"stopped at {rss_limit_gb:g} GB" if stopped.is_set()
              else f"FAILED (exit {process.returncode})")
    print(f"{label}: {seconds:.1f} s, peak {result.peak_gb:.2f} GB, {status}", flush=True)
    if process.returncode != 0:
        print(result.output_tail, file=sys.stderr)
    return result


def machine_line() -> str:
    memory = psutil.virtual_memory().total / 1024 ** 3
    return (f"{platform.node()} ({platform.machine()}, {psutil.cpu_count()} cores, {memory:.0f} GB RAM, "
            f"Python {platform.python_version()}, {platform.system()} {platform.release()})")


def header(title: str, command: str) -> str:
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load = ", ".join(f"{x:.1f}" for x in psutil.getloadavg())
    return (f"# {title}\n\n- machine: {machine_line()}\n- date: {now}\n- command: `{command}`\n"
            f"- load average at start: {load}\n")


WORK = Path(__file__).resolve().parent / "work"
RESULTS = Path(__file__).resolve().parent / "results"
FULL_PROBES = 54675


def synthetic_series(n_samples: int, n_probes: int = FULL_PROBES) -> Path:
    """A GSE13159-shaped family SOFT of `n_samples` (seed 0) in benchmarks/work, generated once."""
    out = WORK / f"series_{n_samples}"
    soft = out / "GSE13159_family.soft.gz"
    if not soft.exists():
        measure(f"synth {n_samples}", [sys.executable, "-m", "leukspark.cli", "synth", "--samples", str(n_samples),
                                       "--probes", str(n_probes), "--seed", "0", "--out", str(out), "--no-matrix"])
    return soft


def write_results(name: str, lines: list[str]) -> None:
    """Write benchmarks/results/<name> and echo it."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / name).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def training_context(lake: str, run_id: str, config: dict, **settings):
    """A TrainingContext over the tables a lake holds, read with deltalake (no Spark), for
    benchmark snippets that run training tasks one after another or as a fan-out."""
    from deltalake import DeltaTable

    from leukspark.stages import train as train_stage

    genes = DeltaTable(f"{lake}/genes").to_pandas().sort_values("position")["gene"].tolist()
    return train_stage.TrainingContext(
        run_id=run_id, feature_files=tuple(DeltaTable(f"{lake}/gene_features").file_uris()), gene_order=tuple(genes),
        assignments=train_stage.split_assignments(DeltaTable(f"{lake}/splits").to_pandas()),
        seed=config["training"]["seed"], scaler=config["training"]["scaler"], bundle_root=None, **settings)

