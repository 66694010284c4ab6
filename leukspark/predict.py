"""Scoring new samples with a run's model bundle.

Two paths share the probe-to-gene rules (`stages.collapse`, a pandas and a Spark form) and
the scoring code:

* `predict_file` parses a GEO or matrix file in plain Python and scores it: one sample
  takes milliseconds with a loaded bundle, no Spark job; the lake is read with `LakeReader`.
* `score_series` is the Spark batch path (`jobs/predict.py`): expression rows from the
  lake, probes collapsed by the feature stage's groupBy, vectors scored per sample group
  with `applyInPandas`, results appended to `scored_samples`.

Genes the model needs but a sample lacks are filled with the training means (the bundle's
imputer) when they are few; above `predict.max_missing_gene_fraction` the sample gets an
error instead of a score. A sample's error never stops the others.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import NEGATIVE_CLASS, POSITIVE_CLASS
from .errors import PredictionError
from .lake import LakeReader
from .runs import RunLog

UNCLASSIFIED = "unclassified"  # P(AML) inside the bundle's abstention band


@dataclass
class ScoredSample:
    sample: str
    prediction: str | None
    probability_AML: float | None
    missing_genes: int
    error: str | None = None
    input_scale: str | None = None            # detected scale of the input values
    shared_gene_fraction: float | None = None  # share of the model's genes the sample has
    warning: str | None = None                 # scored, but unlike the training samples
    explanation: list | None = None            # --explain: top genes by weight x standardized value
    explanation_key: str = "top_genes"         # its record field (k-TSP: "pairs", each pair's vote)
    bundle_dir: Path | None = None             # the bundle that scored it: the run and model its stored row names
    flags: list = field(default_factory=list)  # novelty, unseen_lineage:<program>, input_range
    novelty: float | None = None               # distance to the nearest training class, as the model sees it
    lineage_scores: dict | None = None         # program -> score (B-lymphoid, T-lymphoid, myeloid)
    dominant_lineage: str | None = None
    blast_index: float | None = None           # blast markers' within-sample rank score minus mature granulocytes'
    probability_other: float | None = None     # P(another disease than ALL/AML), where training saw some

    FLAG_COLUMNS = ("flags", "novelty", "lineage_b", "lineage_t", "lineage_myeloid", "dominant_lineage", "blast_index",
                    "probability_other")

    def flag_columns(self) -> dict:
        """The stored form of the checks (columns SCORING_FLAGS of `predictions` and `scored_samples`)."""
        lineage = self.lineage_scores or {}
        return {"flags": ",".join(self.flags) or None, "novelty": self.novelty,
                "lineage_b": lineage.get("B-lymphoid"), "lineage_t": lineage.get("T-lymphoid"),
                "lineage_myeloid": lineage.get("myeloid"), "dominant_lineage": self.dominant_lineage,
                "blast_index": self.blast_index, "probability_other": self.probability_other}
    # A multi-class bundle (training.target lineage/subtype): the model's lineage and subtype calls,
    # 'unclassified' below the class's threshold (the parent is still called); None otherwise.
    lineage: str | None = None
    lineage_probability: float | None = None
    subtype: str | None = None
    subtype_probability: float | None = None

    CALL_COLUMNS = ("lineage", "lineage_probability", "subtype", "subtype_probability")

    def stored_columns(self) -> dict:
        """Every column of `scored_samples` this sample fills after `warning`: the checks, then the calls."""
        return {**self.flag_columns(), **{name: getattr(self, name) for name in self.CALL_COLUMNS}}

    def record(self) -> dict:
        context = {"input_scale": self.input_scale} if self.input_scale else {}
        if self.error:
            return {"sample": self.sample, "error": self.error, **context}
        record = {"sample": self.sample, "prediction": self.prediction,
                  "probability_AML": round(float(self.probability_AML), 6), "missing_genes": self.missing_genes,
                  **context}
        if self.shared_gene_fraction is not None:
            record["shared_gene_fraction"] = round(self.shared_gene_fraction, 4)
        if self.warning:
            record["warning"] = self.warning
        if self.flags:
            record["flags"] = list(self.flags)
        if self.novelty is not None:
            record["novelty"] = round(self.novelty, 4)
        if self.lineage_scores is not None:
            record["lineage_scores"] = {k: (None if v is None else round(v, 4)) for k, v in self.lineage_scores.items()}
            record["dominant_lineage"] = self.dominant_lineage
        if self.blast_index is not None:
            record["blast_index"] = round(self.blast_index, 4)
        if self.probability_other is not None:
            record["probability_other"] = round(self.probability_other, 6)
        if self.explanation is not None:
            record[self.explanation_key] = self.explanation
        if self.lineage is not None:
            record.update(lineage=self.lineage, lineage_probability=round(float(self.lineage_probability), 6))
        if self.subtype is not None:
            record.update(subtype=self.subtype, subtype_probability=round(float(self.subtype_probability), 6))
        return record


@dataclass(frozen=True)
class ScoringPolicy:
    """When a sample is scored, refused or flagged (the `predict` section of the configuration)."""

    max_missing_fraction: float = 0.05   # same platform as training: more missing = damaged sample
    min_shared_fraction: float = 0.5     # another platform: scored on the shared genes above this
    range_margin: float = 0.25           # input check of bundles without a novelty model: slack around the range
    abstain_on_unseen_lineage: bool = False  # withhold the call of a sample in a lineage training never covered

    @classmethod
    def from_config(cls, config: dict) -> "ScoringPolicy":
        cfg = config["predict"]
        return cls(cfg["max_missing_gene_fraction"], cfg["min_shared_gene_fraction"], cfg["range_margin"],
                   cfg.get("abstain_on_unseen_lineage", False))


# -- input scale ---------------------------------------------------------------------------
def detect_sample_scales(values: pd.DataFrame) -> dict[str, str]:
    """Each sample's input scale, detected from its values as ingest detects it at training."""
    from .scale import detect_scale, value_quantiles

    return {sample: detect_scale(value_quantiles(part.to_numpy(dtype=float)))
            for sample, part in values.groupby("sample", sort=False)["value"]}


def _scale_error(bundle, input_scale: str | None) -> str | None:
    """Why a sample's values cannot be put on the scale the model was trained on, if they cannot."""
    from .scale import model_scale, transform_settings

    trained_on = bundle.training_inputs.get("model_scales")
    if not trained_on or input_scale is None:
        return None
    transform, _ = transform_settings(bundle.feature_settings)
    arrives_as = model_scale(input_scale, transform)
    if arrives_as in trained_on or arrives_as == "unknown":
        return None
    return (f"values are on a {input_scale} scale and stay {arrives_as} under the model's features.transform "
            f"({transform}), but the model was trained on {'/'.join(trained_on)} values: transform the input, "
            "or retrain with features.transform: auto")


def _coverage_error(bundle, platform: str | None, measured: int, n_used: int, policy: ScoringPolicy) -> str | None:
    """Refuse a sample that lacks too many of the genes the model reads."""
    if measured == 0:
        return "no model gene measured: empty sample, or a platform this model was not trained on"
    trained_platforms = bundle.training_inputs.get("platforms") or [platform]
    missing = n_used - measured
    if platform in trained_platforms:
        if missing > policy.max_missing_fraction * n_used:
            return (f"{missing} of {n_used} model genes are missing (more than {policy.max_missing_fraction:.0%}): "
                    "wrong platform or annotation?")
        return None
    if measured < policy.min_shared_fraction * n_used:
        return (f"platform {platform} shares {measured} of the model's {n_used} genes "
                f"({measured / n_used:.0%}), below predict.min_shared_gene_fraction "
                f"({policy.min_shared_fraction:.0%}) for a model trained on {', '.join(trained_platforms)}")
    return None


def score_matrix(bundle, samples: list[str], matrix: np.ndarray, policy: ScoringPolicy | float = ScoringPolicy(),
                 *, platforms: dict | None = None, scales: dict | None = None,
                 explain: bool = False) -> list[ScoredSample]:
    """Score gene vectors in `bundle.gene_order`; a sample that cannot be scored gets an error.

    Only genes the model reads count as missing. A sample of another platform than the
    training samples is scored through the genes the two share (the others are filled with
    the training means); each scored sample is checked against the training distribution.
    A probability inside the bundle's abstention band gives prediction 'unclassified'; with
    `explain`, a linear model's samples get their top contributing genes, a k-TSP model's its pairs' votes.
    """
    if not isinstance(policy, ScoringPolicy):
        policy = ScoringPolicy(max_missing_fraction=float(policy))
    platforms, scales = platforms or {}, scales or {}
    used = bundle.used_genes
    n_used = int(used.sum())
    measured = np.isfinite(matrix[:, used]).sum(axis=1)
    results: list[ScoredSample] = []
    for sample, n_measured in zip(samples, measured):
        scale = scales.get(sample)
        error = _scale_error(bundle, scale) or _coverage_error(bundle, platforms.get(sample), int(n_measured),
                                                               n_used, policy)
        results.append(ScoredSample(sample, None, None, int(n_used - n_measured), error, scale,
                                    float(n_measured) / max(1, n_used)))
    scorable = [r.error is None for r in results]
    if any(scorable):
        # float32, as in training: the same sample then gets the same probability on both paths.
        rows = matrix[np.array(scorable)].astype(np.float32)
        probabilities = bundle.predict_proba(rows)
        band = getattr(bundle, "abstain_band", None)
        explanations = bundle.explain(rows) if explain else None
        called = [r for r in results if r.error is None]
        check_samples(bundle, matrix[np.array(scorable)], called, policy,
                      np.where(np.asarray(probabilities) >= 0.5, POSITIVE_CLASS, NEGATIVE_CLASS))
        _attach_class_calls(called, bundle, rows)
        for i, (result, probability) in enumerate(zip(called, probabilities)):
            result.probability_AML = float(probability)
            result.prediction = POSITIVE_CLASS if probability >= 0.5 else NEGATIVE_CLASS
            if band is not None and band[0] <= probability <= band[1]:
                result.prediction = UNCLASSIFIED
            if policy.abstain_on_unseen_lineage and any(f.startswith("unseen_lineage") for f in result.flags):
                result.prediction = UNCLASSIFIED
            if explanations is not None:
                result.explanation = explanations[i]
                result.explanation_key = getattr(bundle, "explanation_key", "top_genes")
    return results


def check_samples(bundle, rows: np.ndarray, results: list[ScoredSample], policy: ScoringPolicy,
                  calls=None) -> None:
    """Flag scored samples the model should not be trusted on, in place (`flags`, `warning`,
    `novelty`, lineage program scores, `blast_index`): see input_check.check_rows."""
    from .input_check import check_rows, out_of_range
    from .reference import LINEAGE_PROGRAMS, dominant_lineage

    reference, inputs = bundle.input_reference, bundle.training_inputs
    has_novelty = reference is not None and "novelty_components" in reference
    range_check = (None if has_novelty or reference is None or not inputs.get("input_check") else
                   lambda i: out_of_range(rows[i], reference, inputs["input_check"], policy.range_margin))
    checks = check_rows(rows, bundle.gene_order, bundle.preprocessor, reference if has_novelty else None, inputs,
                        range_check, calls)
    for i, result in enumerate(results):
        result.flags.extend(checks.flags[i])
        if checks.novelty is not None:
            result.novelty = float(checks.novelty[i])
        if np.isfinite(checks.programs[i]).any():
            result.lineage_scores = {p: (float(v) if np.isfinite(v) else None)
                                     for p, v in zip(LINEAGE_PROGRAMS, checks.programs[i])}
            result.dominant_lineage = dominant_lineage(checks.programs[i])
        if np.isfinite(checks.blast[i]):
            result.blast_index = float(checks.blast[i])
        if checks.other is not None:
            result.probability_other = float(checks.other[i])
        result.warning = "; ".join(checks.messages[i]) or None


# -- from a file, no Spark ----------------------------------------------------------------
def _attach_class_calls(results: list[ScoredSample], bundle, rows: np.ndarray) -> None:
    """Lineage and subtype calls of a multi-class bundle (none for an ALL/AML bundle)."""
    calls = bundle.class_calls(rows) if hasattr(bundle, "class_calls") else None
    if calls is None:
        return
    for result, call in zip(results, calls.to_dict("records")):
        result.lineage, result.lineage_probability = call["lineage"], call["lineage_probability"]
        if call["subtype"] is not None:
            result.subtype, result.subtype_probability = call["subtype"], call["subtype_probability"]


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


def score_values(bundle, values: pd.DataFrame, probes: pd.DataFrame, policy: ScoringPolicy,
                 explain: bool = False) -> list[ScoredSample]:
    """Probe values (sample, platform, probe_id, value) -> scale decision, genes, scores."""
    from .stages.collapse import collapse_pd, gene_matrix, probe_gene_map_pd

    settings = bundle.feature_settings
    scales = detect_sample_scales(values)
    probe_map = probe_gene_map_pd(probes, settings.get("multi_gene", "drop"))
    samples = list(dict.fromkeys(values["sample"]))
    matrix = gene_matrix(collapse_pd(values, scales, probe_map, settings), samples, bundle.gene_order)
    platform_of = values.drop_duplicates("sample").set_index("sample")["platform"].to_dict()
    scored = score_matrix(bundle, samples, matrix, policy, platforms=platform_of, scales=scales, explain=explain)
    annotated = set(probes["platform"])
    for result in scored:
        if platform_of.get(result.sample) not in annotated:
            result.prediction, result.probability_AML, result.warning, result.explanation = None, None, None, None
            result.error = (f"platform {platform_of.get(result.sample)} has no probe annotation in the lake: "
                            "the model cannot map its probes to genes (wrong platform? pass --annotation)")
    return scored


def predict_file(path: Path, lake_root: str | Path, *, run_id: str | None = None, model: str | None = None,
                 platform: str | None = None, annotation: str | Path | None = None,
                 policy: ScoringPolicy | None = None, explain: bool = False,
                 bundle_dir: Path | None = None) -> list[ScoredSample]:
    """Score every sample of a GEO or matrix file. Probe annotations come from the file itself,
    `annotation` (which also names the platform of a probe matrix) and the lake, in that order."""
    from .bundle import load_bundle
    from .geo.annotation import annotation_platform_name, read_platform_annotation

    if annotation is not None and platform is None:
        platform = annotation_platform_name(Path(annotation))
    # The input first: a malformed file is refused for what it is, whatever the lake holds.
    values, file_platforms = sample_tables_from_file(path, platform)
    lake = LakeReader.of(lake_root)
    bundle_dir = bundle_dir or RunLog(lake).bundle_dir(run_id, model)
    bundle = load_bundle(bundle_dir, as_stored=True)
    if annotation is not None:
        file_platforms.append(read_platform_annotation(Path(annotation), platform=platform).to_pandas())
    platforms_needed = sorted(values["platform"].dropna().unique())
    probes = lake.read_small("platform_probes", filters=[("platform", platforms_needed)])
    if file_platforms:
        given = pd.concat(file_platforms, ignore_index=True)
        probes = pd.concat([given, probes[~probes["platform"].isin(given["platform"])]], ignore_index=True)
    return _scored_by(bundle_dir, score_values(bundle, values, probes, policy or ScoringPolicy(), explain))


def _scored_by(bundle_dir: Path, scored: list[ScoredSample]) -> list[ScoredSample]:
    for result in scored:
        result.bundle_dir = bundle_dir
    return scored


def predict_series_from_lake(lake_root: str | Path, series: str, *, run_id: str | None = None,
                             model: str | None = None, policy: ScoringPolicy | None = None,
                             explain: bool = False, bundle_dir: Path | None = None) -> list[ScoredSample]:
    from .bundle import load_bundle

    lake = LakeReader.of(lake_root)
    bundle_dir = bundle_dir or RunLog(lake).bundle_dir(run_id, model)
    bundle = load_bundle(bundle_dir, as_stored=True)
    values = lake.read_small("expression", filters=[("series", [series])])
    if values.empty:
        raise PredictionError(f"series {series} has no samples in the lake at {lake.root}")
    probes = lake.read_small("platform_probes", filters=[("platform", sorted(values["platform"].dropna().unique()))])
    return _scored_by(bundle_dir, score_values(bundle, values, probes, policy or ScoringPolicy(), explain))


def format_records(scored: list[ScoredSample], output_format: str) -> str:
    if output_format == "jsonl":
        return "\n".join(json.dumps(s.record()) for s in scored)
    lines = [f"{'sample':<14}{'prediction':<14}{'probability_AML':>16}{'missing':>9}{'scale':>8}  error / warning"]
    for s in scored:
        probability = "" if s.probability_AML is None else f"{s.probability_AML:.4f}"
        calls = f"  [{s.lineage} / {s.subtype or '-'}]" if s.lineage is not None else ""
        lines.append(f"{s.sample:<14}{s.prediction or '-':<14}{probability:>16}{s.missing_genes:>9}"
                     f"{s.input_scale or '-':>8}  {s.error or s.warning or ''}{calls}")
    return "\n".join(lines)


def configured_model(requested: str | None, config: dict) -> str | None:
    """The model to score with: the one asked for, else `predict.model` (None: the run's best)."""
    return requested or (None if config["predict"]["model"] == "best" else config["predict"]["model"])


def write_scores(lake_root: str | Path, config: dict, scored: list[ScoredSample], source: str) -> int:
    """Append scores to `scored_samples`, each naming the bundle that scored it (a Spark session is
    started only for this); returns the number of rows."""
    from datetime import datetime, timezone

    from . import schemas
    from .lake import Lake
    from .spark import build_session

    spark = build_session(config)
    lake = Lake.from_config(spark, lake_root, config)
    now = datetime.now(timezone.utc)
    rows = [(now, s.bundle_dir.parent.name, s.bundle_dir.name, s.sample, source, s.probability_AML,
             s.prediction, s.missing_genes, s.error, s.input_scale, s.warning, *s.stored_columns().values())
            for s in scored]
    schemas.ensure_columns(lake, "scored_samples", schemas.SCORED_SAMPLES)
    lake.append("scored_samples", spark.createDataFrame(rows, schemas.SCORED_SAMPLES), operation="predict")
    return len(rows)


# -- the Spark batch path -----------------------------------------------------------------
def score_series(spark, lake, series: list[str] | None, bundle_dir: Path,
                 policy: ScoringPolicy | float = ScoringPolicy()):
    """Spark job: collapse and score every sample of `series` (all when None); returns scored_samples rows."""
    from datetime import datetime, timezone

    from pyspark.sql import functions as F

    from . import schemas
    from .bundle import load_bundle
    from .scale import transform_settings
    from .stages.collapse import collapse, gene_matrix, probe_gene_map

    bundle = load_bundle(bundle_dir, as_stored=True)
    settings = bundle.feature_settings
    samples = lake.read("samples").select("sample", "platform", "value_scale", "series")
    if series:
        samples = samples.where(F.col("series").isin(*series))
    transform, floor = transform_settings(settings)
    probe_map = probe_gene_map(lake.read("platform_probes"), settings.get("multi_gene", "drop"))
    values = collapse(lake.read("expression"), samples, probe_map,
                      {**settings, "transform": transform, "log_floor": floor})
    wanted = spark.createDataFrame([(g,) for g in bundle.gene_order], "gene string")
    values = values.join(F.broadcast(wanted), "gene", "left_semi")
    inputs = {r["sample"]: (r["platform"], r["value_scale"]) for r in samples.collect()}  # one row per sample
    bundle_path = str(bundle_dir)
    run_id, model_name, now = bundle.run_id, bundle.model_name, datetime.now(timezone.utc)

    def score_groups(group: pd.DataFrame) -> pd.DataFrame:
        from .bundle import load_bundle as load

        scorer = _BUNDLE_CACHE.get(bundle_path) or _BUNDLE_CACHE.setdefault(bundle_path, load(Path(bundle_path)))
        names = list(dict.fromkeys(group["sample"]))
        matrix = gene_matrix(group, names, scorer.gene_order)
        scored = score_matrix(scorer, names, matrix, policy, platforms={n: inputs[n][0] for n in names},
                              scales={n: inputs[n][1] for n in names})
        return pd.DataFrame({
            "scored_at": now, "run": run_id, "model": model_name,
            "sample": [s.sample for s in scored], "source": "lake",
            "probability_AML": [s.probability_AML for s in scored],
            "prediction": [s.prediction for s in scored],
            "missing_genes": [s.missing_genes for s in scored],
            "error": [s.error for s in scored],
            "input_scale": [s.input_scale for s in scored],
            "warning": [s.warning for s in scored],
            **pd.DataFrame([s.stored_columns() for s in scored],
                           columns=[*ScoredSample.FLAG_COLUMNS, *ScoredSample.CALL_COLUMNS]).to_dict("list"),
        })

    return values.groupBy("sample").applyInPandas(score_groups, schema=schemas.SCORED_SAMPLES)


_BUNDLE_CACHE: dict = {}
