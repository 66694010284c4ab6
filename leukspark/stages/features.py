"""Probe to gene: join expression with the platform annotation and aggregate with a groupBy.

The result is one row per sample with a `features` array in one fixed gene order (the
`genes` table gives the position of every gene), which is what the models train on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from ..errors import FeatureError
from ..scale import LINEAR, UNKNOWN, needs_log

AGGREGATES = {
    "mean": F.mean,
    "median": F.median,
    "max": F.max,
}


@dataclass
class ProbeMapSummary:
    probes_in: int
    probes_without_symbol: int
    probes_multi_gene: int
    probes_used: int
    genes_out: int

    def text(self) -> str:
        return (f"probes in {self.probes_in:,}; without symbol {self.probes_without_symbol:,} (dropped); "
                f"multi-gene {self.probes_multi_gene:,}; probes used {self.probes_used:,}; "
                f"genes out {self.genes_out:,}")


def probe_gene_map(platform_probes: DataFrame, multi_gene: str) -> DataFrame:
    """(platform, probe_id, gene) rows: which gene(s) each probe counts toward.

    Probes without a symbol are dropped. Multi-gene probes ("A /// B") are dropped, mapped to
    their first symbol, or counted toward each of their genes, per `multi_gene`.
    """
    symbols = F.filter(F.coalesce(F.col("gene_symbols"), F.array().cast("array<string>")),
                       lambda s: F.length(F.trim(s)) > 0)
    probes = platform_probes.select("platform", "probe_id", symbols.alias("symbols"))
    if multi_gene == "drop":
        return probes.where(F.size("symbols") == 1).select("platform", "probe_id", F.col("symbols")[0].alias("gene"))
    if multi_gene == "first":
        return probes.where(F.size("symbols") >= 1).select("platform", "probe_id", F.col("symbols")[0].alias("gene"))
    if multi_gene == "each":
        return probes.select("platform", "probe_id", F.explode("symbols").alias("gene")).distinct()
    raise FeatureError(f"features.multi_gene must be drop, first or each; got {multi_gene!r}")


def summarize_probe_map(platform_probes: DataFrame, probe_map: DataFrame, platforms: list[str]) -> ProbeMapSummary:
    scoped = platform_probes.where(F.col("platform").isin(*platforms))
    sizes = scoped.select(F.size(F.coalesce("gene_symbols", F.array().cast("array<string>"))).alias("n"))
    counts = sizes.agg(
        F.count("*").alias("probes_in"),
        F.sum((F.col("n") == 0).cast("int")).alias("without"),
        F.sum((F.col("n") > 1).cast("int")).alias("multi"),
    ).first()
    used = probe_map.where(F.col("platform").isin(*platforms))
    used_counts = used.agg(F.countDistinct("platform", "probe_id").alias("probes"),
                           F.countDistinct("gene").alias("genes")).first()
    return ProbeMapSummary(counts["probes_in"], counts["without"] or 0, counts["multi"] or 0,
                           used_counts["probes"], used_counts["genes"])


def gene_values(expression: DataFrame, probe_map: DataFrame, aggregate: str, key: str = "gene") -> DataFrame:
    """(sample, key, value): probes of one gene combined by `aggregate` in a groupBy; nulls are ignored.

    `probe_map` holds (platform, probe_id, key); with key="position" the shuffle carries small
    integers instead of gene names.
    """
    if aggregate not in AGGREGATES:
        raise FeatureError(f"features.aggregate must be one of {', '.join(AGGREGATES)}; got {aggregate!r}")
    joined = expression.join(F.broadcast(probe_map.select("platform", "probe_id", key)), ["platform", "probe_id"])
    return joined.groupBy("sample", key).agg(AGGREGATES[aggregate]("value").alias("value"))


def scale_per_sample(values: DataFrame, key: str = "gene") -> DataFrame:
    """Min-max each sample to 0..1 over its genes (the reference study's normalisation)."""
    bounds = values.groupBy("sample").agg(F.min("value").alias("lo"), F.max("value").alias("hi"))
    span = F.col("hi") - F.col("lo")
    return (values.join(bounds, "sample")
            .select("sample", key,
                    F.when(span > 0, (F.col("value") - F.col("lo")) / span).otherwise(F.lit(0.0)).alias("value")))


def gene_table(probe_map: DataFrame, platforms: list[str]) -> DataFrame:
    """(position, gene, n_probes): every gene the platforms' annotation maps a probe to, alphabetically.

    Derived from the annotation, not from the values, so the 100 M-row expression table is read
    once. Gene count is ~20k: numbering on the driver keeps positions exact and deterministic.
    """
    scoped = probe_map.where(F.col("platform").isin(*platforms))
    rows = (scoped.groupBy("gene").agg(F.countDistinct("platform", "probe_id").cast("int").alias("n_probes"))
            .orderBy("gene").collect())
    return probe_map.sparkSession.createDataFrame(
        [(i, r["gene"], r["n_probes"]) for i, r in enumerate(rows)], "position int, gene string, n_probes int")


def feature_vectors(values: DataFrame, n_genes: int) -> DataFrame:
    """(sample, features) from (sample, position, value) rows; an unmeasured gene is NaN.

    Assembling a vector is a scatter by gene position, done per sample in a pandas UDF:
    linear in the number of genes, where Spark's map lookups would be quadratic.
    """
    if n_genes == 0:
        raise FeatureError("no gene could be derived: check the platform annotation (platform_probes)")

    def assemble(group: pd.DataFrame) -> pd.DataFrame:
        vector = np.full(n_genes, np.nan)
        vector[group["position"].to_numpy()] = group["value"].to_numpy(dtype=float)
        return pd.DataFrame({"sample": [group["sample"].iloc[0]], "features": [vector]})

    return values.groupBy("sample").applyInPandas(assemble, schema="sample string, features array<double>")


def to_model_scale(expression: DataFrame, samples: DataFrame, feature_config: dict) -> DataFrame:
    """Expression of `samples` only, log2-transformed where `features.transform` says so.

    `samples` carries each sample's detected `value_scale` (from ingest); a linear sample is
    floored at `features.log_floor` and log2-transformed before probes are combined, since a
    mean of linear signals is dominated by the brightest probe.
    """
    transform, floor = feature_config["transform"], float(feature_config["log_floor"])
    needs_log(UNKNOWN, transform)  # validates the setting
    if transform == "none":
        return expression.join(F.broadcast(samples.select("sample")), "sample", "left_semi")
    logged = F.lit(True) if transform == "log2" else F.coalesce(F.col("value_scale") == LINEAR, F.lit(False))
    flags = samples.select("sample", logged.alias("_log"))
    value = F.when(F.col("_log") & F.col("value").isNotNull(), F.log2(F.greatest(F.col("value"), F.lit(floor))))
    return (expression.join(F.broadcast(flags), "sample")
            .withColumn("value", value.otherwise(F.col("value"))).drop("_log"))


def measured_positions(vectors: DataFrame) -> np.ndarray:
    """Sorted gene positions with a value in at least one of `vectors`' samples.

    Each partition ORs its vectors' finite masks; only those masks (one per partition) reach
    the driver, never the matrix.
    """
    def masks(batches):
        for batch in batches:
            if len(batch):
                stacked = np.vstack(batch["features"].to_numpy())
                yield pd.DataFrame({"measured": [np.isfinite(stacked).any(axis=0)]})

    rows = vectors.select("features").mapInPandas(masks, schema="measured array<boolean>").collect()
    if not rows:
        return np.array([], dtype=int)
    return np.flatnonzero(np.logical_or.reduce([np.asarray(r["measured"], dtype=bool) for r in rows]))


def keep_positions(vectors: DataFrame, genes: DataFrame, positions: np.ndarray) -> tuple[DataFrame, DataFrame]:
    """Vectors and gene table restricted to `positions`, renumbered 0..n-1 in the same order."""
    keep = np.asarray(positions, dtype=np.int64)

    def slice_vectors(batches):
        for batch in batches:
            yield batch.assign(features=[np.asarray(v, dtype=float)[keep] for v in batch["features"]])

    sliced = vectors.mapInPandas(slice_vectors, schema="sample string, features array<double>")
    spark = genes.sparkSession
    renumbered = spark.createDataFrame([(int(i), int(p)) for i, p in enumerate(keep)], "new int, position int")
    kept_genes = (genes.join(F.broadcast(renumbered), "position")
                  .select(F.col("new").alias("position"), "gene", "n_probes"))
    return sliced, kept_genes


def build_features(expression: DataFrame, platform_probes: DataFrame, samples: DataFrame,
                   feature_config: dict) -> tuple[DataFrame, DataFrame, DataFrame]:
    """Stage entry: (gene_features, genes, probe_map) for `samples` (sample, platform, value_scale).

    The gene universe is what was measured: genes of the annotation that no sample has a value
    for are left out, so a model never carries (and prediction never asks for) a gene the data
    did not have.
    """
    probe_map = probe_gene_map(platform_probes, feature_config["multi_gene"])
    platforms = [r["platform"] for r in samples.select("platform").distinct().collect() if r["platform"]]
    genes = gene_table(probe_map, platforms).localCheckpoint()
    n_genes = genes.count()
    _require_genes(n_genes, platforms, feature_config, "could be derived")
    positioned_map = probe_map.join(F.broadcast(genes.select("gene", "position")), "gene")
    scoped = to_model_scale(expression, samples, feature_config)
    values = gene_values(scoped, positioned_map, feature_config["aggregate"], key="position")
    if feature_config["scale_per_sample"]:
        values = scale_per_sample(values, key="position")
    vectors = feature_vectors(values, n_genes).localCheckpoint()
    measured = measured_positions(vectors)
    _require_genes(len(measured), platforms, feature_config, "have values")
    if len(measured) < n_genes:
        vectors, genes = keep_positions(vectors, genes, measured)
    return vectors, genes, probe_map


def _require_genes(n_genes: int, platforms: list[str], feature_config: dict, what: str) -> None:
    if n_genes < feature_config["min_genes"]:
        raise FeatureError(
            f"only {n_genes} genes {what} for platform(s) {', '.join(platforms) or '-'} "
            f"(features.min_genes is {feature_config['min_genes']}): is the platform annotated, and do "
            "its probe ids match the data's? Pass --annotation with a probe-to-symbol file"
        )
