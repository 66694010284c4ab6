"""Ingest GEO files (or expression matrices) into the lake.

A gzipped GEO file cannot be split, so each input file is one Spark task: the task streams
the file (one sample table in memory at a time) and writes the values of every sample that
is not already stored as Parquet files straight into a staging folder of the `expression`
table. The driver gathers the small metadata the tasks return, decides (new, unchanged,
changed: fail or replace), and commits the staged files in one Delta transaction. Tables
are written in the order expression, platform_probes, samples, series: a sample counts as
ingested once it is in `samples`, so a crash after the `expression` commit is repaired by the
next run (the orphan rows are replaced, not duplicated).
"""

from __future__ import annotations

import hashlib
import logging
import re
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from .. import schemas
from ..errors import DuplicateSampleError, GeoFormatError, InputError, LeukSparkError, storage_error
from ..lake import Lake, removed_staging_text
from ..scale import detect_scale, series_scale, value_quantiles

log = logging.getLogger(__name__)

MATRIX_SUFFIXES = (".csv", ".tsv", ".gct", ".csv.gz", ".tsv.gz", ".gct.gz")
SAMPLES_PER_FILE = 48  # ~2.6 M rows, ~40 MB: a good Parquet file and Spark task size
# No expression array measures beyond this (16-bit scanners top out at 65,535; RNA-seq counts
# at ~1e8): a larger finite value (1.7e308) would overflow to infinity when probes are averaged
# or features standardised, so it is refused where it enters.
MAX_ABS_VALUE = 1e15
ACCESSION_LIKE = re.compile(r"^(GSE|GSM|GPL|GDS)\w*$", re.IGNORECASE)


@dataclass
class ParsedSource:
    """What one input file holds: metadata rows, and the Parquet files its task wrote."""

    source_file: str
    series_rows: list[dict] = field(default_factory=list)
    sample_rows: list[dict] = field(default_factory=list)
    platform_tables: list[pa.Table] = field(default_factory=list)
    written_files: list[str] = field(default_factory=list)
    written_samples: list[str] = field(default_factory=list)
    n_values: int = 0
    n_missing: int = 0
    error: tuple[str, str] | None = None      # (error class name, message) raised in the task


@dataclass
class IngestReport:
    sources: list[str]
    new_samples: list[str]
    unchanged_samples: list[str]
    replaced_samples: list[str]
    n_values: int
    n_missing: int
    platforms: list[str]
    series: list[str]
    orphans_removed: list[str] = field(default_factory=list)

    def summary(self) -> str:
        text = (
            f"ingested {len(self.sources)} source(s), series {', '.join(self.series) or '-'} on "
            f"{', '.join(self.platforms) or '-'}: {len(self.new_samples)} new sample(s), "
            f"{len(self.replaced_samples)} replaced, {len(self.unchanged_samples)} already stored; "
            f"{self.n_values:,} values read, {self.n_missing:,} missing (kept as null)"
        )
        if self.orphans_removed:
            text += "\n" + removed_staging_text(self.orphans_removed)
        return text


def resolve_source(source: str, cache_dir: str | Path) -> Path:
    """A local file as is; a GEO accession through the download cache."""
    from ..geo.download import fetch_series

    path = Path(source).expanduser()
    if path.exists():
        if not path.is_file():
            raise InputError(f"{path}: not a file")
        return path
    if ACCESSION_LIKE.match(source):
        return fetch_series(source, Path(cache_dir).expanduser())
    raise InputError(f"{source}: no such file, and not a GEO series accession (GSE followed by digits)")


def is_matrix_file(path: Path) -> bool:
    return path.name.lower().endswith(MATRIX_SUFFIXES)


def parse_source(path: Path, staging_dir: Path, stored_checksums: dict[str, str], *, file_tag: str,
                 platform: str | None = None) -> ParsedSource:
    """Stream one GEO file (or matrix); write the values of samples not stored identically already."""
    return finish_source(read_source(path, staging_dir, stored_checksums, file_tag=file_tag, platform=platform))


def read_source(path: Path, staging_dir: Path, stored_checksums: dict[str, str], *, file_tag: str,
                platform: str | None = None, share: tuple[int, int] | None = None) -> ParsedSource:
    """What `parse_source` reads, before the per-file checks and counts of `finish_source`.

    With `share` (index, count), only the samples of that share of a SOFT file are parsed and
    written (`in_share`); the `count` shares of a file, merged, are what one reader would return.
    """
    from ..geo.annotation import annotation_from_platform_table
    from ..geo.soft import PlatformRecord, SampleTable, SeriesRecord, iter_geo_records

    parsed = ParsedSource(source_file=str(path))
    if is_matrix_file(path):
        from ..matrix import iter_matrix_records

        records = iter_matrix_records(path, platform=platform)
    elif share is None:
        records = iter_geo_records(path)
    else:
        records = iter_geo_records(path, keep_sample=lambda ordinal: in_share(ordinal, *share))

    writer = _ExpressionWriter(staging_dir, file_tag)
    seen: set[str] = set()
    current_series: str | None = None
    try:
        for record in records:
            if isinstance(record, SeriesRecord):
                current_series = record.accession
                parsed.series_rows.append(_series_row(record, path))
            elif isinstance(record, PlatformRecord):
                if record.table is not None and record.table.num_rows:
                    parsed.platform_tables.append(annotation_from_platform_table(record.accession, record.table))
            elif isinstance(record, SampleTable):
                sample = record.sample
                if sample.accession in seen:
                    raise GeoFormatError(f"{path}: sample {sample.accession} appears twice")
                seen.add(sample.accession)
                _refuse_huge_values(record, path)
                series = sample.series or current_series or _series_from_filename(path)
                row = _sample_row(record, series, path)
                if stored_checksums.get(row["sample"]) != row["values_checksum"]:
                    writer.add(series, record)
                    parsed.written_samples.append(row["sample"])
                parsed.sample_rows.append(row)
                parsed.n_values += row["n_values"]
                parsed.n_missing += row["n_missing"]
    finally:
        parsed.written_files = writer.close()
    return parsed


def in_share(ordinal: int, index: int, count: int) -> bool:
    """Whether the file's `ordinal`-th sample belongs to share `index` of `count`: blocks of one
    Parquet file's worth of samples, dealt round robin, so every share writes whole files."""
    return (ordinal // SAMPLES_PER_FILE) % count == index


def merge_shares(shares: list[ParsedSource]) -> ParsedSource:
    """One file's shares as one reader's result: the metadata every share read once (from the
    first), the samples, files and counts of all. The first share's error, if any, wins."""
    failed = next((share for share in shares if share.error is not None), None)
    if failed is not None:
        return failed
    first = shares[0]
    if len(shares) == 1:
        return first
    return ParsedSource(
        source_file=first.source_file, series_rows=first.series_rows, platform_tables=first.platform_tables,
        sample_rows=[row for share in shares for row in share.sample_rows],
        written_files=[name for share in shares for name in share.written_files],
        written_samples=[sample for share in shares for sample in share.written_samples],
        n_values=sum(share.n_values for share in shares), n_missing=sum(share.n_missing for share in shares),
    )


def finish_source(parsed: ParsedSource) -> ParsedSource:
    """Checks and counts over a whole file: it holds samples; series rows (from the file's own, or
    derived from its samples) with their sample counts."""
    path = parsed.source_file
    if parsed.error is not None:
        return parsed
    if not parsed.sample_rows:
        raise GeoFormatError(f"{path}: no sample tables found")
    if not parsed.series_rows:
        series_ids = sorted({r["series"] for r in parsed.sample_rows})
        parsed.series_rows = [
            {"series": s, "title": None, "summary": None,
             "platforms": sorted({r["platform"] for r in parsed.sample_rows if r["series"] == s and r["platform"]}),
             "source_file": str(path)} for s in series_ids
        ]
    counts: dict[str, int] = {}
    for row in parsed.sample_rows:
        counts[row["series"]] = counts.get(row["series"], 0) + 1
    for series_row in parsed.series_rows:
        series_row["n_samples"] = counts.get(series_row["series"], 0)
    return parsed


def _parse_task(task: tuple[int, str, int, int], *, staging_dir: str, stored_checksums: dict[str, str],
                platform: str | None) -> ParsedSource:
    """Runs in a Spark task: typed errors travel back as data, so the driver can re-raise them."""
    index, path, share, shares = task
    try:
        return read_source(Path(path), Path(staging_dir), stored_checksums,
                           file_tag=f"{index:04d}" if shares == 1 else f"{index:04d}s{share:02d}", platform=platform,
                           share=None if shares == 1 else (share, shares))
    except LeukSparkError as error:
        return ParsedSource(source_file=path, error=(type(error).__name__, str(error)))
    except Exception as error:  # an unexpected failure: keep its traceback for the driver's message
        return ParsedSource(source_file=path, error=("GeoFormatError",
                            f"{path}: could not be read: {error}\n{traceback.format_exc(limit=5)}"))


class _ExpressionWriter:
    """Writes sample tables to Parquet files of a few dozen samples each (the table's data files).

    Encodings chosen by measurement (54,675 probes a sample): probe ids plain (snappy squeezes their
    sorted, similar strings better than a dictionary of 54,675 entries, and writes 4x faster); the
    three columns constant within a sample as dictionaries written directly from one-entry dictionary
    arrays. The Arrow schema is not stored, so every reader sees plain strings, as the table declares.
    """

    file_schema = pa.schema([
        ("series", pa.dictionary(pa.int32(), pa.string())), ("sample", pa.dictionary(pa.int32(), pa.string())),
        ("platform", pa.dictionary(pa.int32(), pa.string())), ("probe_id", pa.string()), ("value", pa.float64()),
    ])
    constant_columns = ["series", "sample", "platform"]

    def __init__(self, directory: Path, file_tag: str):
        self.directory = directory
        self.file_tag = file_tag
        self.writer: pq.ParquetWriter | None = None
        self.samples_in_file = 0
        self.files: list[str] = []

    def add(self, series: str, record) -> None:
        # A failed write is the lake's disk (full, read-only, no permission), never the source
        # file being unreadable: it gets its own error, naming the folder written to.
        try:
            self._add(series, record)
        except OSError as error:
            raise storage_error(error, f"cannot write the expression table's staging folder {self.directory}") from None

    def _add(self, series: str, record) -> None:
        if self.writer is None or self.samples_in_file >= SAMPLES_PER_FILE:
            self._roll()
        n = len(record.probe_id)
        table = pa.table({
            "series": _constant(series, n),
            "sample": _constant(record.sample.accession, n),
            "platform": _constant(record.sample.platform, n),
            "probe_id": _combined(record.probe_id).cast(pa.string()),
            "value": _combined(record.value).cast(pa.float64()),
        }, schema=self.file_schema)
        self.writer.write_table(table)
        self.samples_in_file += 1

    def _roll(self) -> None:
        self._close_current()
        name = f"part-{self.file_tag}-{len(self.files):05d}.parquet"
        self.writer = pq.ParquetWriter(self.directory / name, self.file_schema, compression="snappy",
                                       use_dictionary=self.constant_columns, store_schema=False)
        self.files.append(name)
        self.samples_in_file = 0

    def _close_current(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def close(self) -> list[str]:
        try:
            self._close_current()
        except OSError as error:
            raise storage_error(error, f"cannot write the expression table's staging folder {self.directory}") from None
        return list(self.files)


def _constant(value: str | None, n: int) -> pa.Array:
    # A one-entry dictionary: no n strings built, and Parquet stores it as a dictionary page plus one run.
    if value is None:  # Parquet cannot write a null inside a dictionary: null indices instead
        return pa.DictionaryArray.from_arrays(pa.nulls(n, pa.int32()), pa.array([], pa.string()))
    indices = pa.array(np.zeros(n, dtype=np.int32))
    return pa.DictionaryArray.from_arrays(indices, pa.array([value], pa.string()))


def _combined(array) -> pa.Array:
    return array.combine_chunks() if isinstance(array, pa.ChunkedArray) else array


def values_checksum(probe_ids, values) -> str:
    """Fingerprint of a sample's (probe, value) table, to tell a re-sent sample from a changed one."""
    probes = pa.concat_arrays([_combined(probe_ids).cast(pa.string())])
    numbers = _combined(values).cast(pa.float64()).to_numpy(zero_copy_only=False)
    digest = hashlib.sha256()
    for buffer in probes.buffers()[1:]:
        if buffer is not None:
            digest.update(memoryview(buffer))
    digest.update(np.ascontiguousarray(numbers).tobytes())
    return digest.hexdigest()[:32]


def _refuse_huge_values(record, path: Path) -> None:
    """GeoFormatError naming the file, sample, probe and value when a value is beyond MAX_ABS_VALUE."""
    huge = pc.greater(pc.abs(record.value), MAX_ABS_VALUE)
    if not pc.any(huge).as_py():
        return
    row = int(np.flatnonzero(pc.fill_null(huge, False).to_numpy(zero_copy_only=False))[0])
    raise GeoFormatError(
        f"{path}, sample {record.sample.accession}: probe {record.probe_id[row].as_py()}: value "
        f"{record.value[row].as_py()!r} is larger than any expression array measures (|value| above "
        f"{MAX_ABS_VALUE:g}): fix or blank it")


def _sample_row(record, series: str, path: Path) -> dict:
    sample = record.sample
    quantiles = value_quantiles(record.value.to_numpy(zero_copy_only=False))
    return {
        "sample": sample.accession,
        "series": series,
        "platform": sample.platform,
        "title": sample.title,
        "source": sample.source,
        "characteristics": dict(sample.characteristics),
        "characteristics_raw": list(sample.characteristics_raw),
        "description": list(sample.description),
        "n_values": int(len(record.probe_id)),
        "n_missing": int(record.n_missing),
        "values_checksum": values_checksum(record.probe_id, record.value),
        "value_scale": detect_scale(quantiles),
        "value_quantiles": quantiles,
        "source_file": str(path),
    }


def _series_row(record, path: Path) -> dict:
    return {"series": record.accession, "title": record.title, "summary": record.summary,
            "platforms": list(record.platforms), "source_file": str(path)}


def _series_from_filename(path: Path) -> str:
    match = re.match(r"(GSE\d+)", path.name, re.IGNORECASE)
    if match:
        return match.group(1).upper()
    return path.name.split(".")[0]


# ---------------------------------------------------------------------------------------
# Planning which samples to write (pure)
# ---------------------------------------------------------------------------------------
@dataclass
class IngestPlan:
    to_write: dict[str, dict]          # sample -> row, new or replacing
    new: list[str]
    unchanged: list[str]
    replaced: list[str]


def plan_samples(parsed: list[ParsedSource], stored_checksums: dict[str, str], on_conflict: str) -> IngestPlan:
    """Decide per sample: new, unchanged (skipped) or changed (fail or replace, per config)."""
    to_write: dict[str, dict] = {}
    new, unchanged, replaced, conflicts = [], [], [], []
    for source in parsed:
        for row in source.sample_rows:
            sample = row["sample"]
            previous = to_write.get(sample)
            stored = stored_checksums.get(sample)
            if previous is not None:
                if previous["values_checksum"] != row["values_checksum"]:
                    conflicts.append((sample, previous["source_file"], row["source_file"]))
                    to_write[sample] = row
                continue
            if stored is None:
                to_write[sample] = row
                new.append(sample)
            elif stored == row["values_checksum"]:
                unchanged.append(sample)
            else:
                conflicts.append((sample, "the lake", row["source_file"]))
                to_write[sample] = row
                replaced.append(sample)
    if conflicts and on_conflict == "fail":
        shown = "; ".join(f"{s} (in {a} and {b})" for s, a, b in conflicts[:10])
        more = f" and {len(conflicts) - 10} more" if len(conflicts) > 10 else ""
        raise DuplicateSampleError(
            f"{len(conflicts)} sample(s) arrive with values different from those already stored: "
            f"{shown}{more}. Nothing was written. Set ingest.on_conflict: replace to overwrite them."
        )
    return IngestPlan(to_write=to_write, new=new, unchanged=unchanged, replaced=replaced)


# ---------------------------------------------------------------------------------------
# Spark side
# ---------------------------------------------------------------------------------------
def rows_frame(spark: SparkSession, rows: list[dict], schema, now: datetime | None = None) -> DataFrame:
    now = now or datetime.now(timezone.utc)
    names = schema.fieldNames()
    records = []
    for row in rows:
        complete = dict(row)
        if "ingested_at" in names:
            complete["ingested_at"] = now
        records.append(tuple(complete.get(name) for name in names))
    return spark.createDataFrame(records, schema)


def platform_probes_frame(spark: SparkSession, tables: list[pa.Table]) -> DataFrame | None:
    if not tables:
        return None
    combined = pa.concat_tables([t.select(schemas.PLATFORM_PROBES.fieldNames()) for t in tables])
    pdf = combined.to_pandas()
    pdf = pdf.drop_duplicates(subset=["platform", "probe_id"], keep="last")
    return spark.createDataFrame(pdf, schemas.PLATFORM_PROBES)


def ingest_sources(spark: SparkSession, lake: Lake, sources: list[str], config: dict, *,
                   annotation: str | None = None, platform: str | None = None) -> IngestReport:
    """Ingest every source; each table gets at most one commit, and nothing is written on error."""
    from ..geo.annotation import read_platform_annotation

    cache_dir = config["ingest"]["cache_dir"]
    paths = [resolve_source(s, cache_dir) for s in sources]
    annotation_path = None
    if annotation:
        annotation_path = Path(annotation).expanduser()
        if not annotation_path.is_file():
            raise InputError(f"{annotation_path}: annotation file does not exist")

    # Before this ingest stages anything of its own: a killed ingest left its files here.
    orphans = lake.remove_orphaned_staging()
    platform = _matrix_platform(paths, annotation_path, platform)
    stored: dict[str, str] = {}
    if lake.exists("samples"):
        stored = {r["sample"]: r["values_checksum"]
                  for r in lake.read("samples").select("sample", "values_checksum").collect()}
    staged = lake.new_staging("expression")
    try:
        parsed = _parse_in_tasks(spark, paths, staged.directory, stored, platform,
                                 split_bytes=int(config["ingest"]["split_file_mb"] * 2**20))
        plan = plan_samples(parsed, stored, config["ingest"]["on_conflict"])
        _drop_second_copies(parsed, staged.directory)

        annotation_tables = [t for p in parsed for t in p.platform_tables]
        sample_platforms = sorted({r["platform"] for p in parsed for r in p.sample_rows if r["platform"]})
        if annotation_path is not None:
            annotation_platform = platform or (sample_platforms[0] if len(sample_platforms) == 1 else None)
            annotation_tables.append(read_platform_annotation(annotation_path, platform=annotation_platform))

        # Replace rows of changed samples, and of samples whose rows an interrupted ingest left
        # in `expression` without a `samples` row (they are "new" here but may have old rows).
        written = sorted({s for p in parsed for s in p.written_samples})
        replace_keys = spark.createDataFrame([(s,) for s in written], "sample string") if written else None
        lake.commit_staged(staged, schemas.EXPRESSION, replace_keys=replace_keys, operation="ingest")
    except BaseException:
        lake.discard_staged(staged)
        raise

    probes = platform_probes_frame(spark, annotation_tables)
    if probes is not None:
        if annotation_path is not None:
            lake.merge("platform_probes", probes, ["platform", "probe_id"], operation="annotate")
        else:
            lake.insert_new("platform_probes", probes, ["platform", "probe_id"], operation="ingest")
    if plan.to_write:
        lake.merge("samples", rows_frame(spark, list(plan.to_write.values()), schemas.SAMPLES),
                   ["sample"], operation="ingest")
    series_rows = _merge_series_rows(lake, [r for p in parsed for r in p.series_rows])
    if plan.to_write or not lake.exists("series"):
        lake.merge("series", rows_frame(spark, series_rows, schemas.SERIES), ["series"], operation="ingest")
    return IngestReport(
        sources=[str(p) for p in paths],
        new_samples=plan.new, unchanged_samples=plan.unchanged, replaced_samples=plan.replaced,
        n_values=sum(p.n_values for p in parsed), n_missing=sum(p.n_missing for p in parsed),
        platforms=sample_platforms, series=sorted({r["series"] for r in series_rows}), orphans_removed=orphans,
    )


def _matrix_platform(paths: list[Path], annotation_path: Path | None, platform: str | None) -> str | None:
    """The platform of matrix inputs: --platform, else the one the --annotation file describes."""
    if platform or annotation_path is None or not any(is_matrix_file(p) for p in paths):
        return platform
    from ..geo.annotation import annotation_platform_name

    return annotation_platform_name(annotation_path)


def shares_per_file(sizes: list[int], slots: int, split_bytes: int, splittable: list[bool]) -> list[int]:
    """How many Spark tasks read each file. A gzipped file is one stream, so a big SOFT file can only
    be spread by having several tasks each gunzip all of it and parse a share of its samples; that
    pays while there are idle slots (fewer files than cores) and the file is big enough that parsing
    outweighs the repeated gunzip (ISA-L: 3.8 s for a 776 MB GSE13159-sized file, parse ~25 s)."""
    if split_bytes <= 0 or len(sizes) >= slots:
        return [1] * len(sizes)
    per_file = max(1, slots // len(sizes))
    return [max(1, min(per_file, size // split_bytes)) if can else 1 for size, can in zip(sizes, splittable)]


def _is_splittable(path: Path) -> bool:
    from ..geo.soft import detect_format

    return not is_matrix_file(path) and detect_format(path) in ("family_soft", "sample_soft")


def _parse_in_tasks(spark: SparkSession, paths: list[Path], staging_dir: Path, stored: dict[str, str],
                    platform: str | None, split_bytes: int = 0) -> list[ParsedSource]:
    """One Spark task per input file, or per share of a big SOFT file (`shares_per_file`); the
    first typed error, in file order, is raised here."""
    from functools import partial

    from .. import errors as error_module

    shares = shares_per_file([p.stat().st_size for p in paths], spark.sparkContext.defaultParallelism,
                             split_bytes, [_is_splittable(p) for p in paths])
    tasks = [(i, str(p.resolve()), share, count) for i, (p, count) in enumerate(zip(paths, shares))
             for share in range(count)]
    parse = partial(_parse_task, staging_dir=str(staging_dir), stored_checksums=stored, platform=platform)
    results = spark.sparkContext.parallelize(tasks, len(tasks)).map(parse).collect()
    by_file: dict[int, list[ParsedSource]] = {}
    for (index, *_), result in zip(tasks, results):
        by_file.setdefault(index, []).append(result)
    parsed = []
    for index in range(len(paths)):
        result = merge_shares(by_file[index])
        if result.error is not None:
            name, message = result.error
            error_type = getattr(error_module, name, None)
            if not (isinstance(error_type, type) and issubclass(error_type, LeukSparkError)):
                error_type = GeoFormatError
            raise error_type(message)
        parsed.append(finish_source(result))
    return parsed


def _drop_second_copies(parsed: list[ParsedSource], staging_dir: Path) -> None:
    """A sample written by two sources' tasks keeps only its last copy (the one plan_samples chose)."""
    last_source = {}
    for index, source in enumerate(parsed):
        for sample in source.written_samples:
            last_source[sample] = index
    for index, source in enumerate(parsed):
        extra = {s for s in source.written_samples if last_source[s] != index}
        if not extra:
            continue
        for name in source.written_files:
            path = staging_dir / name
            table = pq.read_table(path)
            keep = pc.invert(pc.is_in(table.column("sample"), pa.array(sorted(extra))))
            pq.write_table(table.filter(keep), path, compression="snappy")
        source.written_samples = [s for s in source.written_samples if s not in extra]


def _merge_series_rows(lake: Lake, rows: list[dict]) -> list[dict]:
    """One row per series; sample counts add up what the lake holds for that series."""
    merged: dict[str, dict] = {}
    for row in rows:
        if row["series"] in merged:
            known = merged[row["series"]]
            known["platforms"] = sorted(set(known["platforms"]) | set(row["platforms"]))
        else:
            merged[row["series"]] = dict(row)
    counts, scales = {}, {}
    if lake.exists("samples"):
        stored = (lake.read("samples").groupBy("series")
                  .agg(F.count("*").alias("count"), F.collect_set("value_scale").alias("scales")).collect())
        counts = {r["series"]: r["count"] for r in stored}
        scales = {r["series"]: list(r["scales"]) for r in stored}
    for series, row in merged.items():
        row["n_samples"] = max(counts.get(series, 0), row.get("n_samples") or 0)
        row["value_scale"] = series_scale(scales.get(series, []))
    return list(merged.values())
