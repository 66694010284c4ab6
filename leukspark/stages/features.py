"""Gene features: probes collapsed to genes (the rules are in `collapse`) and assembled into vectors.

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
from .collapse import PER_SAMPLE_AGGREGATES, collapse, collapse_files, probe_gene_map, vector_plan

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
                   feature_config: dict, expression_files: tuple[str, ...] | None = None,
                   ) -> tuple[DataFrame, DataFrame, DataFrame]:
    """Stage entry: (gene_features, genes, probe_map) for `samples` (sample, platform, value_scale).

    The gene universe is what was measured: genes of the annotation that no sample has a value
    for are left out, so a model never carries (and prediction never asks for) a gene the data
    did not have. With `expression_files` (the active files of `expression`, read as they are)
    and a mean or max aggregate, probes are combined per sample in one pass over the files
    (`collapse_files`); otherwise by the relational groupBy over `expression`. Both give the
    same vectors (tests/test_collapse.py).
    """
    probe_map = probe_gene_map(platform_probes, feature_config["multi_gene"])
    platforms = [r["platform"] for r in samples.select("platform").distinct().collect() if r["platform"]]
    genes = gene_table(probe_map, platforms).localCheckpoint()
    n_genes = genes.count()
    _require_genes(n_genes, platforms, feature_config, "could be derived")
    positioned_map = probe_map.join(F.broadcast(genes.select("gene", "position")), "gene")
    if expression_files and feature_config["aggregate"] in PER_SAMPLE_AGGREGATES:
        plan = vector_plan(positioned_map.toPandas(), samples.select("sample", "value_scale").toPandas(),
                           feature_config, n_genes)
        vectors = collapse_files(expression.sparkSession, expression_files, plan,
                                 feature_config["scale_per_sample"], n_tasks=len(expression_files))
    else:
        values = collapse(expression, samples, positioned_map, feature_config, key="position")
        vectors = feature_vectors(values, n_genes)
    vectors = vectors.localCheckpoint()
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
