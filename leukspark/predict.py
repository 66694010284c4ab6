"""Scoring new samples with a run's model bundle.

Two paths share the same collapse-and-score code:

* `predict_file` parses a GEO or matrix file in plain Python and scores it: one sample
  takes milliseconds with a loaded bundle, no Spark job.
* `score_series` is the Spark batch path (`jobs/predict.py`): expression rows from the
  lake, probes collapsed by the feature stage's groupBy, vectors scored per partition with
  `mapInPandas`, results appended to `scored_samples`.

Genes the model needs but a sample lacks are filled with the training means (the bundle's
imputer) when they are few; above `predict.max_missing_gene_fraction` the sample gets an
error instead of a score. A sample's error never stops the others.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from . import NEGATIVE_CLASS, POSITIVE_CLASS
from .errors import BundleError, PredictionError, TableError


@dataclass
class ScoredSample:
    sample: str
    prediction: str | None
    probability_AML: float | None
    missing_genes: int
    error: str | None = None

    def record(self) -> dict:
        if self.error:
            return {"sample": self.sample, "error": self.error}
        return {"sample": self.sample, "prediction": self.prediction,
                "probability_AML": round(float(self.probability_AML), 6), "missing_genes": self.missing_genes}


# -- small tables straight from Delta (no Spark session needed) ---------------------------
def read_small_table(lake_root: str | Path, table: str, columns: list[str] | None = None,
                     filters: list | None = None) -> pd.DataFrame:
    from deltalake import DeltaTable

    path = Path(lake_root) / table
    if not (path / "_delta_log").is_dir():
        raise TableError(f"table '{table}' does not exist at {path}")
    dataset = DeltaTable(str(path)).to_pyarrow_dataset()
    import pyarrow.compute as pc

    expression = None
    for column, values in filters or []:
        condition = pc.field(column).isin(values)
        expression = condition if expression is None else expression & condition
    return dataset.to_table(columns=columns, filter=expression).to_pandas()


def resolve_bundle_dir(lake_root: str | Path, run_id: str | None, model: str | None) -> Path:
    """The bundle folder of `model` in `run_id` (defaults: latest successful run, its best model)."""
    runs = read_small_table(lake_root, "runs")
    runs = runs[runs["status"] == "succeeded"]
    if runs.empty:
        raise TableError(f"no successful run in the lake at {lake_root}: run `leukspark run` first")
    if run_id is None:
        row = runs.sort_values("finished_at").iloc[-1]
    else:
        matching = runs[runs["run"] == run_id]
        if matching.empty:
            raise TableError(f"run {run_id} is not in the lake; known runs: {', '.join(runs['run'])}")
        row = matching.iloc[-1]
    from .lake import resolve_stored_path

    run_bundles = resolve_stored_path(lake_root, row["bundle_dir"], in_lake=f"models/{row['run']}")
    directory = run_bundles / (model or row["best_model"])
    if not directory.is_dir():
        raise BundleError(f"{directory}: no model bundle '{model or row['best_model']}' in run {row['run']}")
    return directory


# -- collapse probes to the bundle's genes -----------------------------------------------
def probe_to_gene_map(platform_probes: pd.DataFrame, multi_gene: str) -> pd.DataFrame:
    """(platform, probe_id, gene) with the same rules as the Spark feature stage."""
    symbols = platform_probes["gene_symbols"].map(
        lambda s: [x.strip() for x in (list(s) if s is not None else []) if x and x.strip()])
    frame = platform_probes[["platform", "probe_id"]].assign(symbols=symbols)
    if multi_gene == "drop":
        frame = frame[frame["symbols"].map(len) == 1]
    else:
        frame = frame[frame["symbols"].map(len) >= 1]
    if multi_gene in ("drop", "first"):
        return frame.assign(gene=frame["symbols"].map(lambda s: s[0]))[["platform", "probe_id", "gene"]]
    exploded = frame.explode("symbols").rename(columns={"symbols": "gene"})
    return exploded[["platform", "probe_id", "gene"]].drop_duplicates()


def collapse_to_genes(values: pd.DataFrame, probe_map: pd.DataFrame, gene_order: list[str],
                      feature_settings: dict) -> tuple[np.ndarray, np.ndarray]:
    """Rows (sample, platform, probe_id, value) -> matrix in `gene_order`, and measured-gene counts."""
    joined = values.merge(probe_map, on=["platform", "probe_id"], how="inner")
    aggregate = feature_settings.get("aggregate", "mean")
    per_gene = joined.groupby(["sample", "gene"], sort=False)["value"].agg(aggregate).reset_index()
    if feature_settings.get("scale_per_sample"):
        bounds = per_gene.groupby("sample")["value"].agg(["min", "max"])
        per_gene = per_gene.join(bounds, on="sample")
        span = (per_gene["max"] - per_gene["min"]).where(lambda s: s > 0)
        per_gene["value"] = ((per_gene["value"] - per_gene["min"]) / span).fillna(0.0)
    wide = per_gene.pivot(index="sample", columns="gene", values="value")
    samples = list(dict.fromkeys(values["sample"]))
    wide = wide.reindex(index=samples, columns=gene_order)
    matrix = wide.to_numpy(dtype=float)
    return matrix, np.isfinite(matrix).sum(axis=1)


def score_matrix(bundle, samples: list[str], matrix: np.ndarray, max_missing_fraction: float) -> list[ScoredSample]:
    n_genes = len(bundle.gene_order)
    missing = n_genes - np.isfinite(matrix).sum(axis=1)
    scorable = missing <= max_missing_fraction * n_genes
    results: list[ScoredSample] = []
    # float32, as in training: the same sample then gets the same probability on both paths.
    probabilities = bundle.predict_proba(matrix[scorable].astype(np.float32)) if scorable.any() else np.array([])
    scores = iter(probabilities)
    for sample, n_missing, ok in zip(samples, missing, scorable):
        if not ok:
            error = (f"{int(n_missing)} of {n_genes} model genes are missing "
                     f"(more than {max_missing_fraction:.0%}): wrong platform or annotation?")
            if n_missing == n_genes:
                error = "no model gene measured: empty sample, or a platform this model was not trained on"
            results.append(ScoredSample(sample, None, None, int(n_missing), error))
            continue
        probability = float(next(scores))
        results.append(ScoredSample(sample, POSITIVE_CLASS if probability >= 0.5 else NEGATIVE_CLASS,
                                    probability, int(n_missing)))
    return results


# -- from a file, no Spark ----------------------------------------------------------------
def sample_tables_from_file(path: Path, platform: str | None = None):
    """(values frame (sample, platform, probe_id, value), platform tables found in the file)."""
    from .geo.annotation import annotation_from_platform_table
    from .geo.soft import PlatformRecord, SampleTable, iter_geo_records
    from .stages.ingest import is_matrix_file

    if is_matrix_file(path):
        from .matrix import iter_matrix_records

        records = iter_matrix_records(path, platform=platform)
    else:
        records = iter_geo_records(path)
    frames, platforms = [], []
    for record in records:
        if isinstance(record, PlatformRecord) and record.table is not None and record.table.num_rows:
            platforms.append(annotation_from_platform_table(record.accession, record.table).to_pandas())
        elif isinstance(record, SampleTable):
            frames.append(pd.DataFrame({
                "sample": record.sample.accession,
                "platform": record.sample.platform,
                "probe_id": record.probe_id.to_numpy(zero_copy_only=False),
                "value": record.value.to_numpy(zero_copy_only=False),
            }))
    if not frames:
        raise PredictionError(f"{path}: no samples to score")
    return pd.concat(frames, ignore_index=True), platforms


def predict_file(path: Path, lake_root: str | Path, *, run_id: str | None = None, model: str | None = None,
                 platform: str | None = None, max_missing_fraction: float = 0.05) -> list[ScoredSample]:
    from .bundle import load_bundle

    bundle = load_bundle(resolve_bundle_dir(lake_root, run_id, model))
    values, file_platforms = sample_tables_from_file(path, platform)
    platforms_needed = sorted(values["platform"].dropna().unique())
    probes = read_small_table(lake_root, "platform_probes", filters=[("platform", platforms_needed)])
    if file_platforms:
        probes = pd.concat([probes] + [p[~p["platform"].isin(probes["platform"])] for p in file_platforms])
    probe_map = probe_to_gene_map(probes, bundle.manifest["extra"].get("features", {}).get("multi_gene", "drop"))
    matrix, _ = collapse_to_genes(values, probe_map, bundle.gene_order, bundle.manifest["extra"].get("features", {}))
    samples = list(dict.fromkeys(values["sample"]))
    scored = score_matrix(bundle, samples, matrix, max_missing_fraction)
    annotated = set(probes["platform"])
    platform_of = values.drop_duplicates("sample").set_index("sample")["platform"]
    for result in scored:
        platform_id = platform_of.get(result.sample)
        if platform_id not in annotated:
            result.prediction, result.probability_AML = None, None
            result.error = (f"platform {platform_id} has no probe annotation in the lake: "
                            "the model cannot map its probes to genes (wrong platform?)")
    return scored


def predict_series_from_lake(lake_root: str | Path, series: str, *, run_id: str | None = None,
                             model: str | None = None, max_missing_fraction: float = 0.05) -> list[ScoredSample]:
    from .bundle import load_bundle

    bundle = load_bundle(resolve_bundle_dir(lake_root, run_id, model))
    values = read_small_table(lake_root, "expression", filters=[("series", [series])])
    if values.empty:
        raise PredictionError(f"series {series} has no samples in the lake at {lake_root}")
    probes = read_small_table(lake_root, "platform_probes",
                              filters=[("platform", sorted(values["platform"].dropna().unique()))])
    settings = bundle.manifest["extra"].get("features", {})
    probe_map = probe_to_gene_map(probes, settings.get("multi_gene", "drop"))
    matrix, _ = collapse_to_genes(values, probe_map, bundle.gene_order, settings)
    return score_matrix(bundle, list(dict.fromkeys(values["sample"])), matrix, max_missing_fraction)


def format_records(scored: list[ScoredSample], output_format: str) -> str:
    if output_format == "jsonl":
        return "\n".join(json.dumps(s.record()) for s in scored)
    lines = [f"{'sample':<14}{'prediction':<12}{'probability_AML':>16}{'missing':>9}  error"]
    for s in scored:
        probability = "" if s.probability_AML is None else f"{s.probability_AML:.4f}"
        lines.append(f"{s.sample:<14}{s.prediction or '-':<12}{probability:>16}{s.missing_genes:>9}  {s.error or ''}")
    return "\n".join(lines)


def predict_command(args) -> int:
    from .config import load_config

    config = load_config(args.config)
    threshold = config["predict"]["max_missing_gene_fraction"]
    model = args.model or (None if config["predict"]["model"] == "best" else config["predict"]["model"])
    source = Path(args.source).expanduser()
    if source.exists():
        scored = predict_file(source, args.lake, run_id=args.run, model=model, platform=args.platform,
                              max_missing_fraction=threshold)
    else:
        scored = predict_series_from_lake(args.lake, args.source, run_id=args.run, model=model,
                                          max_missing_fraction=threshold)
    print(format_records(scored, args.format))
    if args.write:
        write_scores(args, config, scored)
    return 0 if all(s.error is None for s in scored) else 3


def write_scores(args, config, scored: list[ScoredSample]) -> None:
    """Append scores to `scored_samples` (a Spark session is started only for this)."""
    from datetime import datetime, timezone

    from . import schemas
    from .lake import Lake
    from .spark import build_session

    bundle_dir = resolve_bundle_dir(args.lake, args.run, args.model)
    spark = build_session(config)
    lake = Lake.from_config(spark, args.lake, config)
    now = datetime.now(timezone.utc)
    rows = [(now, bundle_dir.parent.name, bundle_dir.name, s.sample, str(args.source), s.probability_AML,
             s.prediction, s.missing_genes, s.error) for s in scored]
    lake.append("scored_samples", spark.createDataFrame(rows, schemas.SCORED_SAMPLES), operation="predict")
    print(f"appended {len(rows)} row(s) to scored_samples", file=sys.stderr)


# -- the Spark batch path -----------------------------------------------------------------
def score_series(spark, lake, series: list[str] | None, bundle_dir: Path, max_missing_fraction: float):
    """Spark job: collapse and score every sample of `series` (all when None); returns scored_samples rows."""
    from datetime import datetime, timezone

    from pyspark.sql import functions as F

    from . import schemas
    from .bundle import load_bundle
    from .stages.features import gene_values, probe_gene_map, scale_per_sample

    bundle = load_bundle(bundle_dir)
    settings = bundle.manifest["extra"].get("features", {})
    expression = lake.read("expression")
    if series:
        expression = expression.where(F.col("series").isin(*series))
    probe_map = probe_gene_map(lake.read("platform_probes"), settings.get("multi_gene", "drop"))
    values = gene_values(expression, probe_map, settings.get("aggregate", "mean"))
    if settings.get("scale_per_sample"):
        values = scale_per_sample(values)
    wanted = spark.createDataFrame([(g,) for g in bundle.gene_order], "gene string")
    values = values.join(F.broadcast(wanted), "gene", "left_semi")
    bundle_path = str(bundle_dir)
    run_id, model_name, now = bundle.run_id, bundle.model_name, datetime.now(timezone.utc)

    def score_groups(group: pd.DataFrame) -> pd.DataFrame:
        from .bundle import load_bundle as load

        scorer = _BUNDLE_CACHE.get(bundle_path) or _BUNDLE_CACHE.setdefault(bundle_path, load(Path(bundle_path)))
        frame = group.assign(platform="", probe_id=group["gene"])
        identity = pd.DataFrame({"platform": "", "probe_id": scorer.gene_order, "gene": scorer.gene_order})
        matrix, _ = collapse_to_genes(frame[["sample", "platform", "probe_id", "value"]], identity,
                                      scorer.gene_order, {"aggregate": "mean"})
        samples = list(dict.fromkeys(frame["sample"]))
        scored = score_matrix(scorer, samples, matrix, max_missing_fraction)
        return pd.DataFrame({
            "scored_at": now, "run": run_id, "model": model_name,
            "sample": [s.sample for s in scored], "source": "lake",
            "probability_AML": [s.probability_AML for s in scored],
            "prediction": [s.prediction for s in scored],
            "missing_genes": [s.missing_genes for s in scored],
            "error": [s.error for s in scored],
        })

    return values.groupBy("sample").applyInPandas(score_groups, schema=schemas.SCORED_SAMPLES)


_BUNDLE_CACHE: dict = {}
