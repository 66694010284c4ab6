"""A lake that grows by series: 1, 2 and 4 GSE13159-shaped series end to end, a rerun that adds one
series to a lake of three against building the same four-series lake from scratch, and the single
process of bench_end_to_end.py at each size, stopped at a memory limit.

Everything runs in subprocesses (benchmarks/measure.py: wall time, peak resident memory of the
whole process tree):

* (a) leukspark `run` (ingest, labels, features, split, train, report) on the first k of four
  series written by `leukspark synth --series 4` (each `--samples-per-series` samples x `--probes`
  probes, its own accession, GSM ids and noise); per stage, the seconds and the peak memory of the
  process tree while that stage ran (sampled every 0.2 s in the driver process);
* (b) a lake of the first three series (one `run`, not timed), then `leukspark.rerun.rerun` adding
  the fourth: features appended for the new series only (incremental), retraining on all four;
  against (a)'s four-series run from scratch (the full rebuild), and its features step against the
  incremental one;
* (c) the single process of bench_end_to_end.py (GEOparse, pandas, the same 30 fits one after
  another), reading the k series' SOFT files, in a subprocess whose process tree is killed as soon
  as its resident memory passes `--baseline-memory-limit-gb` (a watchdog on RSS, measure.py): such a
  run is reported as "did not fit in X GB" instead of taking the machine.

    python benchmarks/bench_lake.py [--samples-per-series 2096] [--probes 54675] [--series 1 2 4]
                                    [--baseline-memory-limit-gb 8] [--out lake.md]

Full size (4 x 2,096 samples x 54,675 probes) takes long and needs a quiet machine; a small run
(`--samples-per-series 150 --probes 5000`) proves the script in a few minutes.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_end_to_end import BASELINE, parse_result  # noqa: E402
from measure import WORK, header, measure, write_results  # noqa: E402

N_SERIES = 4
STAGES = ["ingest", "labels", "features", "split", "train", "report"]

# Peak memory per stage: a thread samples the resident memory of this process and its descendants
# (the JVM, its Python workers); the pipeline's own step lines ("[2/6] labels") say which stage runs.
STAGE_PEAKS = """
import re, threading, time, psutil
stage_peaks, current = {}, ["spark start"]
def _sample():
    me = psutil.Process()
    while True:
        try:
            rss = me.memory_info().rss + sum(c.memory_info().rss for c in me.children(recursive=True))
            stage_peaks[current[0]] = max(stage_peaks.get(current[0], 0), rss / 1024 ** 3)
        except psutil.Error:
            pass
        time.sleep(0.2)
threading.Thread(target=_sample, daemon=True).start()
def echo(message):
    found = re.match(r"\\s*\\[\\d+/\\d+\\] (\\w+)$", message)
    if found:
        current[0] = found.group(1)
"""

LEUKSPARK = STAGE_PEAKS + """
import json, sys, time
from leukspark.config import load_config
from leukspark.lake import Lake
from leukspark.pipeline import Pipeline
from leukspark.spark import build_session
softs, lake_root, report_dir = sys.argv[1].split(","), sys.argv[2], sys.argv[3]
config = load_config(sys.argv[4] or None)
began = time.perf_counter()
spark = build_session(config)
timings = {"spark start": time.perf_counter() - began}
pipeline = Pipeline(spark, Lake.from_config(spark, lake_root, config), config, echo=echo)
pipeline.run(softs, report_dir=report_dir)
timings.update(pipeline.timings)
print("RESULT " + json.dumps({"timings": timings, "peaks": stage_peaks}))
"""

RERUN = STAGE_PEAKS + """
import json, sys, time
from leukspark.config import load_config
from leukspark.lake import Lake
from leukspark.pipeline import Pipeline
from leukspark.rerun import rerun
from leukspark.spark import build_session
soft, lake_root = sys.argv[1], sys.argv[2]
config = load_config(sys.argv[3] or None)
began = time.perf_counter()
spark = build_session(config)
timings = {"spark start": time.perf_counter() - began}
messages = []
def note(message):
    messages.append(message)
pipeline = Pipeline(spark, Lake.from_config(spark, lake_root, config), config, echo=note)

def timed(name, step):
    def run(*args, **kwargs):
        current[0] = name
        began = time.perf_counter()
        try:
            return step(*args, **kwargs)
        finally:
            timings[name] = timings.get(name, 0.0) + time.perf_counter() - began
    return run

for name in ("ingest", "labels", "features", "split", "train"):
    setattr(pipeline, name, timed(name, getattr(pipeline, name)))
outcome = rerun(pipeline, [soft])
feature_lines = [m for m in messages if m.startswith("features:")]
print("RESULT " + json.dumps({"timings": timings, "peaks": stage_peaks, "features": feature_lines,
                              "new_samples": outcome.new_samples, "reason": outcome.reason}))
"""


def baseline_for_series(n_series: int) -> str:
    """bench_end_to_end.py's single process, reading several SOFT files (comma-separated) into one
    set of samples; the rest (label rules, pandas collapse, split from the lake, 30 fits) unchanged."""
    code = BASELINE
    for old, new in (("soft, lake_root = sys.argv[1:3]", "softs, lake_root = sys.argv[1].split(','), sys.argv[2]"),
                     ("config = load_config()", "config = load_config(sys.argv[3] or None)"),
                     ("gse = GEOparse.get_GEO(filepath=soft, silent=True)",
                      "gses = [GEOparse.get_GEO(filepath=s, silent=True) for s in softs]\n"
                      "class _Series: pass\n"
                      "gse = _Series(); gse.gsms = {k: v for g in gses for k, v in g.gsms.items()}; "
                      "gse.gpls = gses[0].gpls")):
        if code.count(old) != 1:
            raise AssertionError(f"bench_end_to_end.BASELINE changed: cannot find {old!r}")
        code = code.replace(old, new)
    return code


def write_series(samples: int, probes: int) -> list[Path]:
    """Four series of `samples` each in benchmarks/work (written once): GSE13159 and three more."""
    out = WORK / f"lake_series_{samples}x{probes}"
    softs = sorted(out.glob("*_family.soft.gz"))
    if len(softs) < N_SERIES:
        measure(f"synth {N_SERIES} x {samples}", [sys.executable, "-m", "leukspark.cli", "synth", "--samples",
                                                 str(samples), "--probes", str(probes), "--seed", "0", "--series",
                                                 str(N_SERIES), "--no-matrix", "--out", str(out)])
        softs = sorted(out.glob("*_family.soft.gz"))
    # GSE13159 first, then GSE90000001.. in order (the sorted names give exactly that)
    return softs[:N_SERIES]


def run_sizes(softs: list[Path], counts: list[int], tag: str, limit_gb: float, config: str) -> list[dict]:
    rows = []
    for k in counts:
        lake = WORK / f"lake_{tag}_{k}"
        shutil.rmtree(lake, ignore_errors=True)
        inputs = ",".join(str(s) for s in softs[:k])
        ours = measure(f"leukspark {k} series", [sys.executable, "-c", LEUKSPARK, inputs, str(lake),
                                                 str(WORK / f"report_{tag}_{k}"), config])
        theirs = measure(f"single process {k} series", [sys.executable, "-c", baseline_for_series(k), inputs,
                                                        str(lake), config], rss_limit_gb=limit_gb)
        rows.append({"k": k, "ours": ours, "our": parse_result(ours), "theirs": theirs,
                     "their": parse_result(theirs), "lake": lake})
    return rows


def run_rerun(softs: list[Path], tag: str, config: str) -> dict:
    lake = WORK / f"lake_{tag}_rerun"
    shutil.rmtree(lake, ignore_errors=True)
    setup = measure("setup: leukspark 3 series (not compared)",
                    [sys.executable, "-c", LEUKSPARK, ",".join(str(s) for s in softs[:3]), str(lake),
                     str(WORK / f"report_{tag}_rerun"), config])
    added = measure("rerun adding series 4", [sys.executable, "-c", RERUN, str(softs[3]), str(lake), config])
    return {"setup": setup, "rerun": added, "result": parse_result(added)}


def _fmt(value, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def size_lines(rows: list[dict], samples: int, limit_gb: float) -> list[str]:
    lines = ["## (a) + (c): 1, 2 and 4 series end to end, against the single process\n",
             "Seconds per stage; peak = the largest resident memory of the process tree while the stage ran. "
             "ratio = single process / leukspark. leukspark's whole row includes the Spark start and the report, "
             "which the single process does not make.\n",
             "| series | samples | stage | leukspark (s) | peak (GB) | single process (s) | ratio |",
             "| ---: | ---: | --- | ---: | ---: | ---: | ---: |"]
    for row in rows:
        k, n = row["k"], row["k"] * samples
        times, peaks = row["our"].get("timings", {}), row["our"].get("peaks", {})
        theirs = row["their"].get("timings", {})
        for stage in ["spark start", *STAGES]:
            mine, other = times.get(stage), theirs.get(stage)
            ratio = f"{other / mine:.2f}" if mine and other else "-"
            lines.append(f"| {k} | {n:,} | {stage} | {_fmt(mine)} | {_fmt(peaks.get(stage), 2)} | {_fmt(other)} "
                         f"| {ratio} |")
        ours, single = row["ours"], row["theirs"]
        if single.returncode == 0:
            their_total, ratio = f"{single.seconds:.1f} (peak {single.peak_gb:.1f} GB)", f"**{single.seconds / ours.seconds:.2f}**"
        elif single.stopped_at_limit or "MemoryError" in single.output_tail:
            their_total, ratio = f"did not fit in {limit_gb:g} GB (stopped after {single.seconds:.0f} s)", "-"
        else:
            their_total, ratio = f"failed (exit {single.returncode}) after {single.seconds:.0f} s", "-"
        status = "" if ours.returncode == 0 else f" FAILED (exit {ours.returncode})"
        lines.append(f"| {k} | {n:,} | **whole (wall){status}** | **{ours.seconds:.1f}** | **{ours.peak_gb:.2f}** | "
                     f"{their_total} | {ratio} |")
    return lines


def rerun_lines(rerun: dict, full: dict | None) -> list[str]:
    result, added = rerun["result"], rerun["rerun"]
    times, peaks = result.get("timings", {}), result.get("peaks", {})
    full_times = full["our"].get("timings", {}) if full else {}
    lines = ["\n## (b) A rerun adding a fourth series to a lake of three, against the four-series lake from scratch\n",
             f"Rerun: `leukspark.rerun.rerun` with the fourth series ({result.get('new_samples')} new samples; "
             f"{result.get('reason')}). The full rebuild is (a)'s four-series run from an empty lake "
             "(its report step aside). Features lines of the rerun: "
             + "; ".join(f"`{line}`" for line in result.get("features", [])) + "\n",
             "| stage | rerun (s) | rerun peak (GB) | full rebuild (s) | rerun / full |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for stage in ["spark start", "ingest", "labels", "features", "split", "train"]:
        mine, other = times.get(stage), full_times.get(stage)
        share = f"{mine / other:.2f}" if mine and other else "-"
        lines.append(f"| {stage} | {_fmt(mine)} | {_fmt(peaks.get(stage), 2)} | {_fmt(other)} | {share} |")
    if full:
        whole_full = full["ours"].seconds - (full_times.get("report") or 0.0)
        lines.append(f"| **whole (wall)** | **{added.seconds:.1f}** | **{added.peak_gb:.2f}** | **{whole_full:.1f}** | "
                     f"**{added.seconds / whole_full:.2f}** |")
        without_train = [sum(t.get(s) or 0.0 for s in ("spark start", "ingest", "labels", "features", "split"))
                         for t in (times, full_times)]
        lines.append(f"| everything but train | {without_train[0]:.1f} | - | {without_train[1]:.1f} | "
                     f"{without_train[0] / without_train[1]:.2f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples-per-series", type=int, default=2096)
    parser.add_argument("--probes", type=int, default=54675)
    parser.add_argument("--series", type=int, nargs="+", default=[1, 2, 4], choices=[1, 2, 3, 4])
    parser.add_argument("--baseline-memory-limit-gb", type=float, default=8.0,
                        help="resident memory at which the single process is stopped (default 8)")
    parser.add_argument("--out", default="lake.md", help="results file under benchmarks/results")
    parser.add_argument("--note", default="", help="a line put under the header (e.g. 'small run')")
    parser.add_argument("--config", default="", help="a configuration YAML for every run (default: the defaults)")
    args = parser.parse_args()
    samples = args.samples_per_series
    softs = write_series(samples, args.probes)
    tag = f"{samples}x{args.probes}"
    config = str(Path(args.config).resolve()) if args.config else ""
    rows = run_sizes(softs, sorted(set(args.series)), tag, args.baseline_memory_limit_gb, config)
    rerun = run_rerun(softs, tag, config)
    full = next((row for row in rows if row["k"] == N_SERIES), None)
    lines = [header("A lake of several series", "python benchmarks/bench_lake.py " + " ".join(sys.argv[1:])), ""]
    if args.note:
        lines.append(f"**{args.note}**\n")
    lines.append(f"Data: `leukspark synth --samples {samples} --probes {args.probes} --seed 0 --series {N_SERIES}` "
                 f"(GSE13159 and GSE90000001-3: own GSM ids, samples, noise and centres; docs/synthetic.md); "
                 + (f"configuration `{args.config}`.\n" if args.config else
                    "default configuration (5 models x (5 folds + final), rank features).\n"))
    lines += size_lines(rows, samples, args.baseline_memory_limit_gb)
    lines += rerun_lines(rerun, full)
    write_results(args.out, lines)


if __name__ == "__main__":
    main()
