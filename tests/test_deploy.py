"""The schedule examples call the real rerun entry point with arguments it accepts."""

from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path

from leukspark.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]


def test_cron_line_runs_the_rerun_job_with_valid_arguments():
    lines = [l for l in (ROOT / "deploy/cron/leukspark.cron").read_text().splitlines() if l and not l.startswith("#")]
    assert len(lines) == 1
    words = shlex.split(lines[0].split(" ", 5)[5].split(">>")[0])
    job = next(i for i, w in enumerate(words) if w.endswith("jobs/rerun.py"))
    assert (ROOT / words[job]).exists()
    arguments = build_parser().parse_args(["rerun", *words[job + 1:]])
    assert arguments.lake and arguments.config
    assert (ROOT / arguments.config).exists()


def test_airflow_dag_submits_the_rerun_job():
    source = (ROOT / "deploy/airflow/leukspark_rerun_dag.py").read_text()
    tree = ast.parse(source)  # valid Python
    assert "jobs/rerun.py --lake" in source and "spark-submit" in source
    assert any(isinstance(n, ast.Call) and getattr(n.func, "id", "") == "DAG" for n in ast.walk(tree))
    assert re.search(r'schedule="[^"]+"', source)
    assert (ROOT / "jobs/rerun.py").exists() and (ROOT / "scripts/build_pyfiles.sh").exists()
