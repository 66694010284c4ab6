"""Probe values to gene values: the one set of rules, in a Spark form and a pandas form side by side.

Training (the features stage), the out-of-distribution check and the Spark batch scoring use
the Spark form over the Delta tables; `predict` on a file uses the pandas form, without a
Spark session. Both apply, in this order:

1. scale: a sample on a linear scale (or every sample, with `transform: log2`) is floored at
   `log_floor` and log2-transformed, probe by probe, before probes are combined (with no floor,
   `log_floor: auto` under rank features, the strictly monotone `scale.monotone_log2`), so that
   every aggregate sees log2 values whatever scale the lab delivered;
2. probe to gene: symbols are trimmed and empty ones dropped; a probe without a symbol is
   dropped; a multi-gene probe ("A /// B") is dropped, counted toward its first gene, or
   toward each of its genes (`multi_gene`: drop | first | each);
3. aggregate: the probes of a gene are combined by mean, median or max, missing values
   ignored (a gene whose probes are all missing stays missing), or by `mean_signal`: the log2 of
   the mean of the probes' signals 2**value (the brightest probe set weighs most, as a sum of
   signals does; step 1 has put every value on a log2 scale);
4. optionally each sample is min-max scaled to 0..1 over its genes (`scale_per_sample`, the
   reference study's normalisation); a missing gene stays missing, a constant sample is 0.

`tests/test_collapse.py` checks that both forms give the same values for every setting.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from ..errors import FeatureError
from ..scale import LINEAR, UNKNOWN, log_floor_of, needs_log, to_log2

MULTI_GENE = ("drop", "first", "each")
#: mean_signal: 2**value is capped at 2**SIGNAL_CAP so that a value that is no log2 (a linear-scale
#: sample kept as it is) cannot overflow a sum; log2 values of arrays stay far below it.
SIGNAL_CAP = 1000.0


def _mean_signal(column):
    column = F.col(column) if isinstance(column, str) else column
    # least() skips nulls (least(null, cap) is cap): a missing value must stay missing.
    capped = F.when(column.isNotNull(), F.least(column, F.lit(SIGNAL_CAP)))
    return F.log2(F.mean(F.pow(F.lit(2.0), capped)))


def to_signal(values: np.ndarray) -> np.ndarray:
    """2**value under SIGNAL_CAP: what `mean_signal` averages (NaN stays NaN)."""
    return np.exp2(np.minimum(values, SIGNAL_CAP))


AGGREGATES = {"mean": F.mean, "median": F.median, "max": F.max, "mean_signal": _mean_signal}


def _check(multi_gene: str | None = None, aggregate: str | None = None) -> None:
    if multi_gene is not None and multi_gene not in MULTI_GENE:
        raise FeatureError(f"features.multi_gene must be drop, first or each; got {multi_gene!r}")
    if aggregate is not None and aggregate not in AGGREGATES:
        raise FeatureError(f"features.aggregate must be one of {', '.join(AGGREGATES)}; got {aggregate!r}")


# -- 1. scale -----------------------------------------------------------------------------
def to_model_scale(expression: DataFrame, samples: DataFrame, feature_config: dict) -> DataFrame:
    """Expression of `samples` only (sample, platform, value_scale), log2 where the transform says so.

    A sample's scale is the one ingest detected and stored in `samples.value_scale`.
    """
    transform, floor = feature_config["transform"], log_floor_of(feature_config)
    needs_log(UNKNOWN, transform)  # validates the setting
    if transform == "none":
        return expression.join(F.broadcast(samples.select("sample")), "sample", "left_semi")
    logged = F.lit(True) if transform == "log2" else F.coalesce(F.col("value_scale") == LINEAR, F.lit(False))
    flags = samples.select("sample", logged.alias("_log"))
    log_value = (F.asinh(F.col("value") / 2.0) / F.lit(float(np.log(2.0))) if floor is None
                 else F.log2(F.greatest(F.col("value"), F.lit(floor))))  # the Spark form of scale.to_log2
    value = F.when(F.col("_log") & F.col("value").isNotNull(), log_value)
    return (expression.join(F.broadcast(flags), "sample")
            .withColumn("value", value.otherwise(F.col("value"))).drop("_log"))


def to_model_scale_pd(values: pd.DataFrame, scales: dict[str, str], feature_config: dict) -> pd.DataFrame:
    """The pandas form: `values` (sample, ..., value), `scales` the detected scale of each sample."""
    transform, floor = feature_config.get("transform", "none"), log_floor_of(feature_config)
    needs_log(UNKNOWN, transform)
    logged = values["sample"].map(lambda s: needs_log(scales.get(s, UNKNOWN), transform)).to_numpy(dtype=bool)
    if not logged.any():
        return values
    value = values["value"].to_numpy(dtype=float).copy()
    value[logged] = to_log2(value[logged], floor)
    return values.assign(value=value)


# -- 2. probe to gene ---------------------------------------------------------------------
def clean_symbols():
    """`gene_symbols` trimmed, empty ones dropped (a missing list is empty): the genes a probe names."""
    trimmed = F.transform(F.coalesce(F.col("gene_symbols"), F.array().cast("array<string>")), lambda s: F.trim(s))
    return F.filter(trimmed, lambda s: F.length(s) > 0)


def clean_symbols_pd(symbols) -> list[str]:
    """The pandas form of `clean_symbols`, for one probe's list."""
    return [x.strip() for x in (list(symbols) if symbols is not None else []) if x is not None and x.strip()]


def probe_gene_map(platform_probes: DataFrame, multi_gene: str) -> DataFrame:
    """(platform, probe_id, gene) rows: which gene(s) each probe counts toward."""
    _check(multi_gene=multi_gene)
    probes = platform_probes.select("platform", "probe_id", clean_symbols().alias("symbols"))
    if multi_gene == "each":
        return probes.select("platform", "probe_id", F.explode("symbols").alias("gene")).distinct()
    kept = probes.where(F.size("symbols") == 1) if multi_gene == "drop" else probes.where(F.size("symbols") >= 1)
    return kept.select("platform", "probe_id", F.col("symbols")[0].alias("gene"))


def probe_gene_map_pd(platform_probes: pd.DataFrame, multi_gene: str) -> pd.DataFrame:
    """The pandas form of `probe_gene_map`."""
    _check(multi_gene=multi_gene)
    frame = platform_probes[["platform", "probe_id"]].assign(symbols=platform_probes["gene_symbols"].map(clean_symbols_pd))
    if multi_gene == "each":
        exploded = frame[frame["symbols"].map(len) >= 1].explode("symbols").rename(columns={"symbols": "gene"})
        return exploded[["platform", "probe_id", "gene"]].drop_duplicates().reset_index(drop=True)
    sizes = frame["symbols"].map(len)
    kept = frame[sizes == 1] if multi_gene == "drop" else frame[sizes >= 1]
    return kept.assign(gene=kept["symbols"].map(lambda s: s[0]))[["platform", "probe_id", "gene"]].reset_index(drop=True)


# -- 3. aggregate -------------------------------------------------------------------------
def gene_values(expression: DataFrame, probe_map: DataFrame, aggregate: str, key: str = "gene") -> DataFrame:
    """(sample, key, value): probes of one gene combined by `aggregate` in a groupBy.

    `probe_map` holds (platform, probe_id, key); with key="position" the shuffle carries small
    integers instead of gene names.
    """
    _check(aggregate=aggregate)
    joined = expression.join(F.broadcast(probe_map.select("platform", "probe_id", key)), ["platform", "probe_id"])
    return joined.groupBy("sample", key).agg(AGGREGATES[aggregate]("value").alias("value"))


def gene_values_pd(values: pd.DataFrame, probe_map: pd.DataFrame, aggregate: str, key: str = "gene") -> pd.DataFrame:
    """The pandas form of `gene_values`."""
    _check(aggregate=aggregate)
    joined = values.merge(probe_map[["platform", "probe_id", key]], on=["platform", "probe_id"], how="inner")
    if aggregate == "mean_signal":  # vectorised: the mean of the signals per group, then its log2
        joined = joined.assign(value=to_signal(joined["value"].to_numpy(dtype=float)))
        means = joined.groupby(["sample", key], sort=False)["value"].mean()
        return np.log2(means).reset_index()
    return joined.groupby(["sample", key], sort=False)["value"].agg(aggregate).reset_index()


# -- 4. per-sample min-max ----------------------------------------------------------------
def scale_per_sample(values: DataFrame, key: str = "gene") -> DataFrame:
    """Min-max each sample to 0..1 over its genes."""
    bounds = values.groupBy("sample").agg(F.min("value").alias("lo"), F.max("value").alias("hi"))
    span = F.col("hi") - F.col("lo")
    scaled = (F.when(F.col("value").isNull(), F.lit(None).cast("double"))
              .when(span > 0, (F.col("value") - F.col("lo")) / span).otherwise(F.lit(0.0)))
    return values.join(bounds, "sample").select("sample", key, scaled.alias("value"))


def scale_per_sample_pd(values: pd.DataFrame) -> pd.DataFrame:
    """The pandas form of `scale_per_sample`."""
    grouped = values.groupby("sample")["value"]
    low, high = grouped.transform("min"), grouped.transform("max")
    span = (high - low).to_numpy(dtype=float)
    value = values["value"].to_numpy(dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        scaled = np.where(span > 0, (value - low.to_numpy(dtype=float)) / span, 0.0)
    return values.assign(value=np.where(np.isnan(value), np.nan, scaled))


# -- the whole collapse -------------------------------------------------------------------
def collapse(expression: DataFrame, samples: DataFrame, probe_map: DataFrame, feature_config: dict,
             key: str = "gene") -> DataFrame:
    """(sample, key, value) gene values of `samples` under every rule above (the Spark form)."""
    scoped = to_model_scale(expression, samples, feature_config)
    values = gene_values(scoped, probe_map, feature_config.get("aggregate", "mean"), key=key)
    return scale_per_sample(values, key=key) if feature_config.get("scale_per_sample") else values


def collapse_pd(values: pd.DataFrame, scales: dict[str, str], probe_map: pd.DataFrame,
                feature_config: dict) -> pd.DataFrame:
    """(sample, gene, value): the pandas form of `collapse`."""
    scaled = to_model_scale_pd(values, scales, feature_config)
    genes = gene_values_pd(scaled, probe_map, feature_config.get("aggregate", "mean"))
    return scale_per_sample_pd(genes) if feature_config.get("scale_per_sample") else genes


def gene_matrix(gene_rows: pd.DataFrame, samples: list[str], gene_order: list[str]) -> np.ndarray:
    """(sample, gene, value) rows as a samples x `gene_order` matrix; an unmeasured gene is NaN."""
    wide = gene_rows.pivot(index="sample", columns="gene", values="value")
    return wide.reindex(index=samples, columns=gene_order).to_numpy(dtype=float)


# -- the per-sample form: one pass over the expression files, no shuffle of probe rows -------
# The relational form above shuffles every (sample, probe) row to its (sample, gene) group:
# 114.6 M rows at GSE13159's size. Mean and max decompose, so each task instead reads its
# expression files with pyarrow and turns each sample's probes into per-gene sums (or maxima)
# and counts with one bincount. Ingest writes every sample whole into one row group, so a task
# usually sees all of a sample's rows (it knows from `samples.n_values`) and emits the sample's
# finished vector; only the parts of a sample split over files (after a rewrite) go through a
# groupBy that combines them.
PER_SAMPLE_AGGREGATES = ("mean", "max", "mean_signal")
_SUMMED = ("mean", "mean_signal")   # partials hold per-gene sums (of values, or of signals)


@dataclass(frozen=True)
class VectorPlan:
    """What every task needs to turn probe rows into gene vectors (shipped to the tasks)."""

    n_genes: int
    aggregate: str
    log_floor: float | None   # None: the floor-free log (scale.monotone_log2)
    scale_per_sample: bool
    platforms: dict           # platform -> (probe ids, CSR offsets into `positions`, positions)
    logged: frozenset         # samples to log2 (linear scale under transform auto, or every one with log2)
    expected_rows: dict       # sample -> its number of expression rows (samples.n_values); wanted samples only


def vector_plan(positioned_map: pd.DataFrame, samples: pd.DataFrame, feature_config: dict, n_genes: int) -> VectorPlan:
    """`positioned_map` (platform, probe_id, position); `samples` (sample, value_scale[, n_values])."""
    _check(aggregate=feature_config["aggregate"])
    transform = feature_config["transform"]
    platforms = {}
    for platform, part in positioned_map.sort_values(["platform", "probe_id", "position"]).groupby("platform"):
        probe_ids, starts = np.unique(part["probe_id"].to_numpy(dtype=object), return_index=True)
        offsets = np.append(starts, len(part)).astype(np.int64)
        platforms[platform] = (pa.array(probe_ids.tolist(), pa.string()), offsets,
                               part["position"].to_numpy(dtype=np.int64))
    logged = frozenset(s for s, scale in zip(samples["sample"], samples["value_scale"])
                       if needs_log(scale if isinstance(scale, str) else UNKNOWN, transform))
    counts = samples["n_values"] if "n_values" in samples else pd.Series(-1, index=samples.index)
    expected = {s: (int(n) if pd.notna(n) else -1) for s, n in zip(samples["sample"], counts)}
    return VectorPlan(n_genes, feature_config["aggregate"], log_floor_of(feature_config),
                      bool(feature_config.get("scale_per_sample")), platforms, logged, expected)


def _positions_of(probe_ids: pa.Array, plan: VectorPlan, platform: str, cache: dict):
    """(row index, gene position) of every row whose probe counts toward a gene; cached per probe order,
    since the samples of one platform and file usually list their probes in the same order."""
    key = (platform, len(probe_ids))
    cached = cache.get(key)
    if cached is not None and cached[0].equals(probe_ids):
        return cached[1]
    known, offsets, positions = plan.platforms[platform]
    index = pc.index_in(probe_ids, value_set=known).to_numpy(zero_copy_only=False)
    rows = np.flatnonzero(~np.isnan(index)) if index.dtype.kind == "f" else np.arange(len(index))
    probe = index[rows].astype(np.int64)
    starts, reps = offsets[probe], offsets[probe + 1] - offsets[probe]
    if (reps == 1).all():
        result = (rows, positions[starts])
    else:  # a probe counted toward several genes (multi_gene: each) is repeated once per gene
        repeated = np.repeat(np.arange(len(rows)), reps)
        within = np.arange(len(repeated)) - np.repeat(np.cumsum(reps) - reps, reps)
        result = (rows[repeated], positions[starts[repeated] + within])
    cache[key] = (probe_ids, result)
    return result


def _plain(column) -> pa.Array:
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return array.dictionary_decode() if pa.types.is_dictionary(array.type) else array


def sample_partials(table: pa.Table, plan: VectorPlan, cache: dict | None = None):
    """(sample, rows seen, per-gene sums or maxima, per-gene counts) for each wanted sample of
    `table` (columns sample, platform, probe_id, value), under the scale rule of `collapse`."""
    cache = {} if cache is None else cache
    out = []
    samples = _plain(table.column("sample"))
    present = pc.unique(samples).to_pylist()
    for sample in present:
        if sample not in plan.expected_rows:
            continue
        rows = table if len(present) == 1 else table.filter(pc.equal(samples, sample))
        platform = _plain(rows.column("platform"))[0].as_py()
        if platform not in plan.platforms:
            continue
        row_index, position = _positions_of(_plain(rows.column("probe_id")), plan, platform, cache)
        value = rows.column("value").combine_chunks().to_numpy(zero_copy_only=False).astype(float)[row_index]
        if sample in plan.logged:
            value = to_log2(value, plan.log_floor)
        measured = ~np.isnan(value)
        value, position = value[measured], position[measured]
        counts = np.bincount(position, minlength=plan.n_genes).astype(np.int32)
        if plan.aggregate in _SUMMED:
            weights = to_signal(value) if plan.aggregate == "mean_signal" else value
            combined = np.bincount(position, weights=weights, minlength=plan.n_genes)
        else:
            combined = np.full(plan.n_genes, -np.inf)
            np.maximum.at(combined, position, value)
        out.append((sample, rows.num_rows, combined, counts))
    return out


def finished_vector(combined: np.ndarray, counts: np.ndarray, aggregate: str, scale_per_sample_: bool) -> np.ndarray:
    """A sample's feature vector from its (summed) partials; NaN = no probe of the gene measured."""
    with np.errstate(invalid="ignore", divide="ignore"):
        vector = combined / counts if aggregate in _SUMMED else combined
        if aggregate == "mean_signal":
            vector = np.log2(vector)
    vector = np.where(counts > 0, vector, np.nan)
    return _min_max(vector) if scale_per_sample_ else vector


PARTIAL_ARROW_SCHEMA = pa.schema([("sample", pa.string()), ("complete", pa.bool_()),
                                  ("combined", pa.list_(pa.float64())), ("counts", pa.list_(pa.int32()))])
PARTIAL_SCHEMA = "sample string, complete boolean, combined array<double>, counts array<int>"


class _MeasuredGenes:
    """Accumulator of the genes with a value in some sample: an OR of masks, so a retried task
    that adds its mask twice changes nothing."""

    def __init__(self, n_genes: int):
        self.n_genes = n_genes

    def zero(self, value):
        return np.zeros(self.n_genes, dtype=bool)

    def addInPlace(self, left, right):
        left |= right
        return left


def sample_column_index(metadata) -> int | None:
    """Index of the `sample` column among a Parquet file's columns (the same in every row group)."""
    schema = metadata.schema
    return next((i for i in range(len(schema)) if schema.column(i).path == "sample"), None)


def _may_hold_wanted(row_group, wanted: list[str], sample_column: int | None) -> bool:
    """False only when the row group's `sample` statistics rule out every wanted (sorted) sample:
    ingest writes a row group per sample, so the unlabelled samples' groups are never decoded."""
    import bisect

    if sample_column is None:
        return True
    stats = row_group.column(sample_column).statistics
    if stats is None or not stats.has_min_max:
        return True
    low, high = stats.min, stats.max
    low, high = (low.decode() if isinstance(low, bytes) else low), (high.decode() if isinstance(high, bytes) else high)
    at = bisect.bisect_left(wanted, low)
    return at < len(wanted) and wanted[at] <= high


def _file_partials(path: str, plan: VectorPlan, cache: dict, wanted: list[str], measured=None):
    """Per row group of one expression file, a list of (sample, complete, values, counts) for its
    wanted samples: a sample seen whole comes finished (`complete`, its vector in `values`, counts
    None); a part of a sample as its per-gene sums or maxima and counts. `measured` (an
    accumulator) gets the genes with a value."""
    import pyarrow.parquet as pq

    from ..lake import local_path

    # probe_id is read plain: ingest stores it plain (asking for a dictionary would hash it).
    parquet = pq.ParquetFile(local_path(path), read_dictionary=["sample", "platform"])
    sample_column = sample_column_index(parquet.metadata)
    for group in range(parquet.num_row_groups):
        if not _may_hold_wanted(parquet.metadata.row_group(group), wanted, sample_column):
            continue
        table = parquet.read_row_group(group, columns=["sample", "platform", "probe_id", "value"])
        rows = []
        for sample, seen, combined, counts in sample_partials(table, plan, cache):
            if measured is not None:
                measured.add(counts > 0)
            if seen == plan.expected_rows[sample]:
                rows.append((sample, True, finished_vector(combined, counts, plan.aggregate, plan.scale_per_sample),
                             None))
            else:
                rows.append((sample, False, combined, counts))
        yield rows


def files_with_samples(expression_files: tuple[str, ...], wanted: list[str]) -> tuple[str, ...]:
    """The files whose row-group statistics may hold one of `wanted` (sorted), read on the driver from
    the Parquet footers: a build of a few new samples starts no task for the files of stored series."""
    import pyarrow.parquet as pq

    from ..lake import local_path

    kept = []
    for path in expression_files:
        metadata = pq.ParquetFile(local_path(path)).metadata
        column = sample_column_index(metadata)
        if any(_may_hold_wanted(metadata.row_group(g), wanted, column) for g in range(metadata.num_row_groups)):
            kept.append(path)
    return tuple(kept)


def read_partials(plan: VectorPlan, measured=None):
    """mapInArrow function over (path) rows: each task reads its expression files row group by row
    group; a sample seen whole is emitted finished (`complete`, its vector in `combined`). With
    `measured` (an accumulator), each task adds the genes its samples have a value for."""
    def run(batches):
        cache: dict = {}
        wanted = sorted(plan.expected_rows)
        for batch in batches:
            for path in batch.column("path").to_pylist():
                for rows in _file_partials(path, plan, cache, wanted, measured):
                    if rows:
                        yield _partials_batch(rows)
    return run


def _partials_batch(rows: list[tuple]) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays(
        [pa.array([r[0] for r in rows], pa.string()), pa.array([r[1] for r in rows]),
         pa.array([r[2] for r in rows], pa.list_(pa.float64())),
         pa.array([r[3] for r in rows], pa.list_(pa.int32()))], schema=PARTIAL_ARROW_SCHEMA)


def combine_partials(aggregate: str, scale_per_sample_: bool):
    """applyInPandas function: the parts of a sample split over files -> its feature vector."""
    def run(group: pd.DataFrame) -> pd.DataFrame:
        combined = np.vstack([np.asarray(v, dtype=float) for v in group["combined"]])
        counts = np.vstack([np.asarray(v, dtype=np.int64) for v in group["counts"]]).sum(axis=0)
        summed = combined.sum(axis=0) if aggregate in _SUMMED else combined.max(axis=0)
        vector = finished_vector(summed, counts, aggregate, scale_per_sample_)
        return pd.DataFrame({"sample": [group["sample"].iloc[0]], "features": [vector]})
    return run


def _min_max(vector: np.ndarray) -> np.ndarray:
    finite = vector[np.isfinite(vector)]
    if not len(finite):
        return vector
    low, span = finite.min(), finite.max() - finite.min()
    scaled = (vector - low) / span if span > 0 else np.zeros_like(vector)
    return np.where(np.isnan(vector), np.nan, scaled)


def collapse_files(spark, expression_files: tuple[str, ...], plan: VectorPlan,
                   n_tasks: int) -> tuple[DataFrame, np.ndarray]:
    """((sample, features), sorted positions of the genes some sample has a value for): the
    per-sample form of `collapse` followed by the vector assembly.

    The files are read once (the partial vectors are checkpointed), whatever reads the vectors next.
    """
    if plan.aggregate not in PER_SAMPLE_AGGREGATES:
        raise FeatureError(f"the per-sample collapse combines mean or max, not {plan.aggregate!r}")
    measured = spark.sparkContext.accumulator(np.zeros(plan.n_genes, dtype=bool), _MeasuredGenes(plan.n_genes))
    paths = spark.createDataFrame([(p,) for p in expression_files], "path string")
    partials = (paths.repartition(max(1, min(n_tasks, len(expression_files))))
                .mapInArrow(read_partials(plan, measured), PARTIAL_SCHEMA).localCheckpoint())
    finished = partials.where(F.col("complete")).select("sample", F.col("combined").alias("features"))
    split = (partials.where(~F.col("complete")).groupBy("sample")
             .applyInPandas(combine_partials(plan.aggregate, plan.scale_per_sample),
                            schema="sample string, features array<double>"))
    return finished.unionByName(split), np.flatnonzero(measured.value)


# -- the per-sample form writing its own files --------------------------------------------
# Handing 20k-double vectors to the JVM (Arrow to rows, rows to Parquet) cost more than reading and
# collapsing the probes themselves; a task that writes its vectors as Parquet hands over a name.
WRITTEN_ARROW_SCHEMA = pa.schema([("vector_file", pa.string()), ("n_parts", pa.int64()), ("sample", pa.string()),
                                  ("combined", pa.list_(pa.float64())), ("counts", pa.list_(pa.int32()))])
WRITTEN_SCHEMA = "vector_file string, n_parts long, sample string, combined array<double>, counts array<int>"
VECTOR_ROW_GROUP = 64


def collapse_files_to(spark, expression_files: tuple[str, ...], plan: VectorPlan,
                      directory: str | Path) -> tuple[list[str], np.ndarray]:
    """(names of the Parquet files of (sample, features) written into `directory`, sorted positions
    of the genes some sample has a value for): the same vectors as `collapse_files`.

    One task per expression file writes that file's finished vectors; parts of samples that
    several files share are combined by a groupBy and written by the tasks of that step.
    """
    if plan.aggregate not in PER_SAMPLE_AGGREGATES:
        raise FeatureError(f"the per-sample collapse combines mean or max, not {plan.aggregate!r}")
    measured = spark.sparkContext.accumulator(np.zeros(plan.n_genes, dtype=bool), _MeasuredGenes(plan.n_genes))
    n_files = len(expression_files)
    # range gives one id per partition: the files are spread over the tasks without a shuffle.
    written = (spark.range(0, n_files, 1, numPartitions=max(n_files, 1))
               .mapInArrow(write_vectors(plan, expression_files, str(directory), measured), WRITTEN_SCHEMA)
               .localCheckpoint())
    per_file = written.where(F.col("n_parts").isNotNull()).select("vector_file", "n_parts").collect()
    names = [r["vector_file"] for r in per_file if r["vector_file"]]
    if sum(r["n_parts"] for r in per_file):
        split = (written.where(F.col("sample").isNotNull()).groupBy("sample")
                 .applyInPandas(combine_partials(plan.aggregate, plan.scale_per_sample),
                                schema="sample string, features array<double>"))
        names += [r["vector_file"] for r in
                  split.mapInArrow(write_vector_batches(str(directory)), "vector_file string").collect()]
    return sorted(names), np.flatnonzero(measured.value)


def write_vectors(plan: VectorPlan, expression_files: tuple[str, ...], directory: str, measured=None):
    """mapInArrow function over (id) rows, each id an index into `expression_files`: the finished
    vectors of that file go to one Parquet file of `directory` named after the id (a retried task
    replaces its own file); yields a row naming it (with the file's count of parts of samples), and
    those parts."""
    def run(batches):
        cache: dict = {}
        wanted = sorted(plan.expected_rows)
        for batch in batches:
            for index in batch.column("id").to_pylist():
                finished, n_parts = [], 0
                for rows in _file_partials(expression_files[index], plan, cache, wanted, measured):
                    finished += [(r[0], r[2]) for r in rows if r[1]]
                    parts = [r for r in rows if not r[1]]
                    if parts:
                        n_parts += len(parts)
                        yield _written_batch([None] * len(parts), [None] * len(parts), parts)
                name = None
                if finished:
                    name = f"vectors-{index:05d}.parquet"
                    write_vector_file(Path(directory) / name, [s for s, _ in finished], [v for _, v in finished])
                yield _written_batch([name], [n_parts], [(None, None, None, None)])
    return run


def write_vector_batches(directory: str):
    """mapInArrow function over (sample, features) rows: each task writes its rows to one Parquet
    file of `directory` (named after its partition) and yields that file's name."""
    def run(batches):
        from pyspark import TaskContext

        samples, vectors = [], []
        for batch in batches:
            samples += batch.column("sample").to_pylist()
            vectors += list(vector_matrix(batch.column("features")))
        if samples:
            name = f"vectors-combined-{TaskContext.get().partitionId():05d}.parquet"
            write_vector_file(Path(directory) / name, samples, vectors)
            yield pa.RecordBatch.from_arrays([pa.array([name], pa.string())], names=["vector_file"])
    return run


def keep_vector_positions(spark, directory: str | Path, names: list[str], positions: np.ndarray) -> list[str]:
    """Names of new vector files of `directory` that hold only `positions` of every vector of the
    files `names`, in that order; the old files are removed once every new one is written (a
    retried task reads its old file again)."""
    keep = np.asarray(positions, dtype=np.int64)
    folder = Path(directory)

    def run(batches):
        import pyarrow.parquet as pq

        for batch in batches:
            for index in batch.column("id").to_pylist():
                table = pq.read_table(folder / names[index])
                vectors = vector_matrix(table.column("features"))[:, keep]
                write_vector_file(folder / f"kept-{names[index]}", table.column("sample").to_pylist(), list(vectors))
                yield pa.RecordBatch.from_arrays([pa.array([index], pa.int64())], names=["id"])

    if names:
        spark.range(0, len(names), 1, numPartitions=len(names)).mapInArrow(run, "id long").collect()
    for name in names:
        (folder / name).unlink()
    return [f"kept-{name}" for name in names]


def write_vector_file(path: Path, samples: list[str], vectors: list[np.ndarray]) -> None:
    """(sample, features) rows as a Parquet file laid out as Spark writes array<double>; written
    aside and renamed, so a reader never sees half a file."""
    import os

    import pyarrow.parquet as pq

    width = len(vectors[0]) if vectors else 0
    flat = np.concatenate(vectors).astype(float) if vectors else np.array([], dtype=float)
    offsets = pa.array(np.arange(len(vectors) + 1, dtype=np.int64) * width, pa.int32())
    table = pa.table({"sample": pa.array(samples, pa.string()),
                      "features": pa.ListArray.from_arrays(offsets, pa.array(flat, pa.float64()))})
    aside = path.with_name(f".{path.name}.writing")
    pq.write_table(table, aside, compression="snappy", row_group_size=VECTOR_ROW_GROUP)
    os.replace(aside, path)


def vector_matrix(features) -> np.ndarray:
    """An Arrow list column of equal-length vectors as a (rows, genes) matrix."""
    array = features.combine_chunks() if isinstance(features, pa.ChunkedArray) else features
    if not len(array):
        return np.empty((0, 0))
    return array.flatten().to_numpy(zero_copy_only=False).reshape(len(array), -1)


def _written_batch(files: list, counts: list, parts: list[tuple]) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays(
        [pa.array(files, pa.string()), pa.array(counts, pa.int64()), pa.array([p[0] for p in parts], pa.string()),
         pa.array([p[2] for p in parts], pa.list_(pa.float64())), pa.array([p[3] for p in parts], pa.list_(pa.int32()))],
        schema=WRITTEN_ARROW_SCHEMA)
