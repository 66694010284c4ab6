"""Scheduled reruns: ingest what is new, re-derive labels and features, retrain only on change.

Each step is idempotent, so a rerun after a crash (or a kill) finishes the work: ingest skips
stored samples and repairs half-written ones, labels/features/split are rewritten only when
they differ, incomplete runs are discarded before training, and training happens only when
the data fingerprint or the settings differ from the last successful run's.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import functions as F

from .config import config_hash
from .errors import TableError
from .pipeline import Pipeline, TrainingOutcome


@dataclass
class RerunOutcome:
    new_samples: int
    trained: TrainingOutcome | None
    previous_run: str | None
    reason: str


def rerun(pipeline: Pipeline, sources: list[str], *, report_dir: str | None = None) -> RerunOutcome:
    new_samples = 0
    if sources:
        report = pipeline.ingest(sources)
        new_samples = len(report.new_samples) + len(report.replaced_samples)
    if not pipeline.lake.exists("samples"):
        raise TableError("the lake holds no samples yet: give series to ingest (--series or ingest.series)")
    pipeline.labels()
    pipeline.features(only_if_changed=True)
    pipeline.split()
    previous = pipeline.run_log.latest_successful()
    fingerprint, settings = pipeline.data_fingerprint(), config_hash(pipeline.config)
    if previous and previous["data_fingerprint"] == fingerprint and previous["config_hash"] == settings:
        reason = f"data and settings unchanged since run {previous['run']}: no retraining"
        pipeline.discard_incomplete_runs()
        pipeline.echo(reason)
        return RerunOutcome(new_samples, None, previous["run"], reason)
    reason = "first run" if previous is None else (
        "data changed" if previous["data_fingerprint"] != fingerprint else "settings changed")
    pipeline.echo(f"retraining: {reason}")
    outcome = pipeline.train(previous_run=previous["run"] if previous else None)
    if report_dir:
        pipeline.report(report_dir, outcome.run_id)
    if previous:
        pipeline.echo(_comparison_text(pipeline, outcome.run_id, previous["run"]))
    return RerunOutcome(new_samples, outcome, previous["run"] if previous else None, reason)


def _comparison_text(pipeline: Pipeline, run_id: str, previous_run: str) -> str:
    rows = (pipeline.lake.read("results")
            .where((F.col("run") == run_id) & (F.col("fold") == "change_vs_previous")
                   & F.col("metric").isin("accuracy", "roc_auc"))
            .select("model", "metric", "value").orderBy("model", "metric").collect())
    lines = [f"change of test metrics against {previous_run}:"]
    lines += [f"  {r['model']:<22}{r['metric']:<10}{r['value']:+.4f}" for r in rows]
    return "\n".join(lines)
