"""Gene features: probes collapsed to genes (the rules are in `collapse`) and assembled into vectors.

The result is one row per sample with a `features` array in one fixed gene order (the
`genes` table gives the position of every gene), which is what the models train on.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from ..errors import FeatureError
from .collapse import (PER_SAMPLE_AGGREGATES, clean_symbols, clean_symbols_pd, collapse, collapse_files,
                       collapse_files_to, files_with_samples, keep_vector_positions, probe_gene_map, probe_gene_map_pd,
                       vector_matrix, vector_plan)

@dataclass
class ProbeMapSummary:
    """What the annotation of the samples' platforms gave: probes in, dropped and used, genes out.

    `genes_out` is the gene universe the models train on: the annotation's genes less the
    `genes_unmeasured` ones, which no sample has a value for."""
    probes_in: int
    probes_without_symbol: int
    probes_multi_gene: int
    probes_used: int
    genes_out: int
    genes_unmeasured: int = 0

    def text(self) -> str:
        unmeasured = (f" ({self.genes_unmeasured:,} annotated genes without a value in any sample left out)"
                      if self.genes_unmeasured else "")
        return (f"probes in {self.probes_in:,}; without symbol {self.probes_without_symbol:,} (dropped); "
                f"multi-gene {self.probes_multi_gene:,}; probes used {self.probes_used:,}; "
                f"genes out {self.genes_out:,}{unmeasured}")

    def measured(self, n_measured: int) -> "ProbeMapSummary":
        """This summary once the genes without any value are left out."""
        return replace(self, genes_out=n_measured, genes_unmeasured=self.genes_out - n_measured)


@dataclass
class FeatureBuild:
    """The features stage's output: the tables to write and what went into them."""
    vectors: DataFrame        # (sample, features)
    genes: pd.DataFrame       # (position, gene, n_probes): ~20k rows, numbered on the driver
    summary: ProbeMapSummary
    n_samples: int            # samples asked for; one without any expression row gets no vector
    platforms: list[str]
    vector_files: tuple[str, ...] = ()   # with `vectors_to`: the files there that hold `vectors`
    universe: str | None = None          # `GeneUniverse.digest` (per-sample form only): an increment needs it


@dataclass
class GeneUniverse:
    """The genes the annotation of the samples' platforms gives, before the measured ones are kept.

    `digest` covers the platforms, every (platform, probe, gene position) pair and the gene table:
    two builds with the same digest number the same genes the same way, so vectors built apart
    fit together (an incremental build checks it)."""
    positioned: pd.DataFrame            # (platform, probe_id, gene, position)
    gene_rows: list[tuple[int, str, int]]
    summary: ProbeMapSummary
    platforms: list[str]
    digest: str


def gene_universe(platform_probes: DataFrame, platforms: list[str], feature_config: dict) -> GeneUniverse:
    """The per-sample form's gene universe, made on the driver from the platforms' annotation (~55k probes)."""
    scoped = platform_probes.where(F.col("platform").isin(*platforms)).toPandas()
    probe_map = probe_gene_map_pd(scoped, feature_config["multi_gene"])
    summary = summarize_probe_map_pd(scoped, probe_map)
    positioned, gene_rows = gene_positions_pd(probe_map)
    _require_genes(summary.genes_out, platforms, feature_config, "could be derived")
    pairs = positioned[["platform", "probe_id", "position"]].sort_values(["platform", "probe_id", "position"])
    digest = hashlib.sha256(json.dumps([platforms, gene_rows]).encode())
    digest.update(pd.util.hash_pandas_object(pairs, index=False).to_numpy().tobytes())
    return GeneUniverse(positioned, gene_rows, summary, list(platforms), digest.hexdigest()[:16])


def settings_digest(feature_config: dict) -> str:
    """Hash of the features settings (what every vector is made with)."""
    return hashlib.sha256(json.dumps(feature_config, sort_keys=True).encode()).hexdigest()[:16]


def samples_digest(checksums: dict[str, str]) -> str:
    """Hash of (sample, values checksum) pairs: equal when the same samples hold the same values."""
    return hashlib.sha256(json.dumps(sorted((str(k), str(v)) for k, v in checksums.items())).encode()).hexdigest()[:16]


def summarize_probe_map(platform_probes: DataFrame, probe_map: DataFrame, platforms: list[str]) -> ProbeMapSummary:
    """Counts over the annotation rows of `platforms` (symbols as the map reads them: trimmed,
    empty ones dropped); genes_out here is every gene the map names."""
    scoped = platform_probes.where(F.col("platform").isin(*platforms))
    sizes = scoped.select(F.size(clean_symbols()).alias("n"))
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


def summarize_probe_map_pd(scoped_probes: pd.DataFrame, probe_map: pd.DataFrame) -> ProbeMapSummary:
    """The pandas form of `summarize_probe_map`, over annotation rows already scoped to the platforms."""
    sizes = scoped_probes["gene_symbols"].map(lambda s: len(clean_symbols_pd(s)))
    return ProbeMapSummary(len(scoped_probes), int((sizes == 0).sum()), int((sizes > 1).sum()),
                           len(probe_map.drop_duplicates(["platform", "probe_id"])), int(probe_map["gene"].nunique()))


def gene_table(probe_map: DataFrame, platforms: list[str]) -> pd.DataFrame:
    """(position, gene, n_probes): every gene the platforms' annotation maps a probe to, alphabetically.

    Derived from the annotation, not from the values, so the 100 M-row expression table is read
    once. Gene count is ~20k: numbering on the driver keeps positions exact and deterministic.
    """
    scoped = probe_map.where(F.col("platform").isin(*platforms))
    rows = (scoped.groupBy("gene").agg(F.countDistinct("platform", "probe_id").cast("int").alias("n_probes"))
            .orderBy("gene").collect())
    return genes_frame([(i, r["gene"], r["n_probes"]) for i, r in enumerate(rows)])


def genes_frame(rows: list[tuple[int, str, int]]) -> pd.DataFrame:
    """The `genes` table's rows (position, gene, n_probes), as the driver holds them."""
    frame = pd.DataFrame(rows, columns=["position", "gene", "n_probes"])
    return frame.astype({"position": "int32", "n_probes": "int32"})


def kept_genes(genes: pd.DataFrame, positions: np.ndarray) -> pd.DataFrame:
    """`genes` restricted to `positions`, renumbered 0..n-1 in the same order."""
    kept = genes.set_index("position").loc[np.asarray(positions, dtype=int)].reset_index(drop=True)
    return genes_frame(list(zip(range(len(kept)), kept["gene"], kept["n_probes"])))


def gene_positions_pd(probe_map: pd.DataFrame) -> tuple[pd.DataFrame, list[tuple[int, str, int]]]:
    """The pandas form of `gene_table`: (probe map with positions, (position, gene, n_probes) rows)."""
    counts = probe_map.drop_duplicates(["platform", "probe_id", "gene"]).groupby("gene").size().sort_index()
    position = {gene: i for i, gene in enumerate(counts.index)}
    rows = [(i, gene, int(n)) for i, (gene, n) in enumerate(counts.items())]
    return probe_map.assign(position=probe_map["gene"].map(position)), rows


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

    Each task ORs the finite masks of its vectors, read straight from the Arrow batches; only
    those masks (one per batch) reach the driver, never the matrix.
    """
    import pyarrow as pa

    def masks(batches):
        for batch in batches:
            features = batch.column("features")
            if len(features):
                flat = vector_matrix(features)
                yield pa.RecordBatch.from_arrays([pa.array([np.isfinite(flat).any(axis=0)], pa.list_(pa.bool_()))],
                                                 names=["measured"])

    rows = vectors.select("features").mapInArrow(masks, schema="measured array<boolean>").collect()
    if not rows:
        return np.array([], dtype=int)
    return np.flatnonzero(np.logical_or.reduce([np.asarray(r["measured"], dtype=bool) for r in rows]))


def keep_positions(vectors: DataFrame, genes: pd.DataFrame, positions: np.ndarray) -> tuple[DataFrame, pd.DataFrame]:
    """Vectors and gene table restricted to `positions`, renumbered 0..n-1 in the same order."""
    keep = np.asarray(positions, dtype=np.int64)

    def slice_vectors(batches):
        for batch in batches:
            yield batch.assign(features=[np.asarray(v, dtype=float)[keep] for v in batch["features"]])

    sliced = vectors.mapInPandas(slice_vectors, schema="sample string, features array<double>")
    return sliced, kept_genes(genes, keep)


def build_features(expression: DataFrame, platform_probes: DataFrame, samples: DataFrame,
                   feature_config: dict, expression_files: tuple[str, ...] | None = None,
                   vectors_to: str | Path | None = None) -> FeatureBuild:
    """Stage entry: gene feature vectors and gene table for `samples` (sample, platform, value_scale).

    The gene universe is what was measured: genes of the annotation that no sample has a value
    for are left out, so a model never carries (and prediction never asks for) a gene the data
    did not have. With `expression_files` (the active files of `expression`, read as they are)
    and a mean or max aggregate, probes are combined per sample in one pass over the files
    (`collapse_files`); otherwise by the relational groupBy over `expression`. Both give the
    same vectors (tests/test_collapse.py). With `vectors_to` as well (a folder, e.g. a Delta
    table's staging folder), the tasks write the vectors there as Parquet files themselves
    (`vector_files`) and `vectors` reads those files.
    """
    columns = [c for c in ("sample", "platform", "value_scale", "n_values") if c in samples.columns]
    sample_rows = samples.select(*columns).toPandas()
    platforms = sorted(p for p in sample_rows["platform"].dropna().unique())
    spark = expression.sparkSession
    if expression_files and feature_config["aggregate"] in PER_SAMPLE_AGGREGATES:
        # The annotation is small (~55k probes a platform): its gene table and counts are made on the driver.
        universe = gene_universe(platform_probes, platforms, feature_config)
        summary, gene_rows = universe.summary, universe.gene_rows
        plan = vector_plan(universe.positioned, sample_rows, feature_config, summary.genes_out)
        if vectors_to is not None:
            return _build_into_files(spark, expression_files, plan, Path(vectors_to), universe, sample_rows,
                                     feature_config)
        genes = genes_frame(gene_rows)
        vectors, measured = collapse_files(spark, expression_files, plan, n_tasks=len(expression_files))
    else:
        probe_map = probe_gene_map(platform_probes, feature_config["multi_gene"])
        summary = summarize_probe_map(platform_probes, probe_map, platforms)
        genes = gene_table(probe_map, platforms)
        _require_genes(summary.genes_out, platforms, feature_config, "could be derived")
        positions = spark.createDataFrame(genes[["gene", "position"]], "gene string, position int")
        positioned_map = probe_map.join(F.broadcast(positions), "gene")
        values = collapse(expression, samples, positioned_map, feature_config, key="position")
        vectors = feature_vectors(values, summary.genes_out).localCheckpoint()
        measured = measured_positions(vectors)
    _require_genes(len(measured), platforms, feature_config, "have values")
    if len(measured) < summary.genes_out:
        vectors, genes = keep_positions(vectors, genes, measured)
    return FeatureBuild(vectors, genes, summary.measured(len(measured)), len(sample_rows), platforms)


def _build_into_files(spark, expression_files: tuple[str, ...], plan, folder: Path, universe: GeneUniverse,
                      sample_rows: pd.DataFrame, feature_config: dict) -> FeatureBuild:
    gene_rows, summary, platforms = universe.gene_rows, universe.summary, universe.platforms
    names, measured = collapse_files_to(spark, expression_files, plan, folder)
    _require_genes(len(measured), platforms, feature_config, "have values")
    genes = genes_frame(gene_rows)
    if len(measured) < summary.genes_out:
        names = keep_vector_positions(spark, folder, names, measured)
        genes = kept_genes(genes, measured)
    schema = "sample string, features array<double>"
    vectors = (spark.read.schema(schema).parquet(*[str(folder / n) for n in names]) if names
               else spark.createDataFrame([], schema))
    return FeatureBuild(vectors, genes, summary.measured(len(measured)), len(sample_rows), platforms, tuple(names),
                        universe.digest)


# -- incremental builds ---------------------------------------------------------------------
# A sample's vector depends on its own values, the features settings and the gene universe only:
# the transform, log floor, aggregate and min-max are per sample, and normalisation (rank,
# quantile reference) happens at training, inside each fit. The one thing the whole lake decides
# is which genes are kept: those some sample measured (an OR over samples). New samples whose
# measured genes lie inside the stored universe leave it, and so every stored vector, unchanged.
@dataclass
class StoredBuild:
    """What the stored `gene_features` and `genes` were built from (a finished build's record)."""
    settings: str | None        # settings_digest
    universe: str | None        # GeneUniverse.digest
    samples: str | None         # samples_digest of the samples the vectors hold
    vector_samples: set         # the samples `gene_features` holds


def incremental_refusal(stored: StoredBuild | None, feature_config: dict, checksums: dict[str, str],
                        per_sample_form: bool) -> str | None:
    """Why the stored vectors cannot be kept and extended (None: they can), in one line."""
    if not per_sample_form:
        return (f"features.aggregate {feature_config['aggregate']} (or the delta-spark engine) builds through the "
                "relational form, which rebuilds every sample")
    if stored is None:
        return "no finished features build is stored"
    if None in (stored.settings, stored.universe, stored.samples):
        return "the stored build predates incremental builds (no settings, universe or samples digest)"
    if stored.settings != settings_digest(feature_config):
        return "the features settings changed"
    removed = sorted(stored.vector_samples - set(checksums))
    if removed:
        return (f"{len(removed)} stored sample(s) are no longer labelled or in the lake "
                f"({', '.join(removed[:3])}{' ...' if len(removed) > 3 else ''})")
    if samples_digest({s: checksums[s] for s in stored.vector_samples}) != stored.samples:
        return "values of stored samples changed (re-ingested with other values)"
    return None


@dataclass
class Increment:
    """The new samples' vectors, written into a staging folder, in the stored gene order."""
    vector_files: tuple[str, ...]
    n_built: int
    refusal: str | None = None    # why they cannot be appended (the universe grew): rebuild every sample


def build_increment(spark, expression_files: tuple[str, ...], universe: GeneUniverse, new_rows: pd.DataFrame,
                    stored_genes: pd.DataFrame, feature_config: dict, folder: str | Path) -> Increment:
    """Vectors of `new_rows`' samples (sample, platform, value_scale, n_values) in the order of the
    stored `genes` table, written into `folder`; a `refusal` when they measure genes it lacks.

    Only the expression files that may hold a new sample are read (their Parquet statistics)."""
    genes = genes_frame(universe.gene_rows)
    position_of = dict(zip(genes["gene"], genes["position"]))
    stored = stored_genes.sort_values("position")
    kept = np.array([position_of.get(g, -1) for g in stored["gene"]], dtype=np.int64)
    if (kept < 0).any() or [int(n) for n in genes["n_probes"].to_numpy()[kept]] != [int(n) for n in stored["n_probes"]]:
        return Increment((), 0, "the stored genes table does not match the gene universe of the annotation")
    plan = vector_plan(universe.positioned, new_rows, feature_config, universe.summary.genes_out)
    files = files_with_samples(expression_files, sorted(new_rows["sample"]))
    names, measured = collapse_files_to(spark, files, plan, Path(folder))
    outside = np.setdiff1d(measured, kept)
    if len(outside):
        return Increment(tuple(names), len(new_rows),
                         f"the new samples measure {len(outside)} gene(s) the stored gene universe lacks "
                         f"({', '.join(genes['gene'].to_numpy()[outside[:3]])}{' ...' if len(outside) > 3 else ''})")
    if names and len(kept) < universe.summary.genes_out:
        names = keep_vector_positions(spark, folder, names, kept)
    return Increment(tuple(names), len(new_rows))


def _require_genes(n_genes: int, platforms: list[str], feature_config: dict, what: str) -> None:
    if n_genes < feature_config["min_genes"]:
        raise FeatureError(
            f"only {n_genes} genes {what} for platform(s) {', '.join(platforms) or '-'} "
            f"(features.min_genes is {feature_config['min_genes']}): is the platform annotated, and do "
            "its probe ids match the data's? Pass --annotation with a probe-to-symbol file"
        )
