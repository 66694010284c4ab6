"""Platform annotations: which gene(s) each microarray probe measures.

Three sources are accepted, all giving the same Arrow table
(``platform``, ``probe_id``, ``gene_symbols``, ``entrez_ids``):

* a platform SOFT (``GPL96.txt.gz``) or the platforms inside a family SOFT;
* a GEO ``.annot`` file (``GPL97.annot.gz``);
* a CSV/TSV of probe id and gene symbol (``probe_id,gene``).

Multi-gene probes are written ``A /// B`` in all of them; they become lists.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from leukspark.errors import GeoFormatError
from leukspark.geo.soft import (
    PlatformRecord,
    SampleTable,
    bounded_text,
    require_file,
    detect_format,
    iter_geo_records,
)

__all__ = ["ANNOTATION_SCHEMA", "annotation_from_platform_table", "annotation_platform_name",
           "read_platform_annotation"]

# A CSV/TSV annotation is read whole: GPL570's with GO columns is ~80 MB of text.
MAX_ANNOTATION_BYTES = 1024 * 1024 * 1024

ANNOTATION_SCHEMA = pa.schema(
    [
        ("platform", pa.string()),
        ("probe_id", pa.string()),
        ("gene_symbols", pa.list_(pa.string())),
        ("entrez_ids", pa.list_(pa.string())),
    ]
)

# Column names, lower-cased, in order of preference. "gene" comes last because
# some platforms (Agilent) use GENE for the Entrez id next to GENE_SYMBOL.
_SYMBOL_COLUMNS = ("gene symbol", "gene_symbol", "symbol", "gene")
_ENTREZ_COLUMNS = ("entrez_gene_id", "gene id", "gene_id", "entrez gene id", "entrez_id", "entrez")
_PROBE_COLUMNS = ("id", "id_ref", "probe_id", "probe", "probeset_id")
# Separator of several genes in one cell; spaces around it are stripped.
_MULTI_VALUE_SEPARATOR = "///"
# Cell texts that mean "no gene" ("---" is Affymetrix's spelling).
_NO_VALUE = ("", "---")


def read_platform_annotation(path, platform: str | None = None) -> pa.Table:
    """Read probe -> gene symbol (and Entrez id) annotation from a GEO or CSV file.

    ``platform`` selects one platform of a family SOFT and is checked against the
    file's own platform; for a CSV/TSV, which does not say its platform, it is
    required. Raises GeoFormatError (naming the file) for unsuitable input.
    """
    path = require_file(path)
    file_format = detect_format(path)
    if file_format == "csv":
        return _read_csv_annotation(path, platform)
    if file_format in ("sample_soft", "series_matrix"):
        raise GeoFormatError(f"{path}: a {file_format.replace('_', ' ')} file has no platform table")
    records = _platform_records(path)
    return _annotation_from_records(path, records, platform)


def annotation_platform_name(path) -> str:
    """A stable platform name for the probes an annotation file describes.

    A GEO file names its platform; for a CSV the GPL accession in the file name is used
    ("GPL80_annotation.csv" -> GPL80), else the file name without its suffixes, so that the
    same annotation always gives the same platform and a second cohort joins the first.
    """
    path = require_file(path)
    if detect_format(path) != "csv":
        platforms = [record.accession for record in _platform_records(path)]
        if len(platforms) == 1:
            return platforms[0]
        raise GeoFormatError(f"{path}: holds {len(platforms)} platforms ({platforms}): pass --platform to pick one")
    match = re.search(r"GPL\d+", path.name, re.IGNORECASE)
    if match:
        return match.group(0).upper()
    stem = path.name.split(".")[0]
    return re.sub(r"[^A-Za-z0-9_-]+", "_", stem) or "ANNOTATED"


def annotation_from_platform_table(platform: str, table: pa.Table) -> pa.Table:
    """Build the annotation table from a GEO platform table (all-string columns).

    The probe is the ``ID`` column (else the first column); symbols come from
    ``Gene Symbol`` / ``GENE_SYMBOL`` / ``Gene symbol`` (or ``symbol``/``gene``),
    Entrez ids from ``ENTREZ_GENE_ID`` / ``Gene ID`` when present.
    """
    return _build_annotation(platform, table, source=f"platform {platform}'s table")


# --------------------------------------------------------------------------- GEO files


def _platform_records(path: Path) -> list[PlatformRecord]:
    """The platform records of a SOFT/.annot file, stopping before the samples."""
    records = []
    iterator = iter_geo_records(path)
    try:
        for record in iterator:
            if isinstance(record, SampleTable):
                break  # GEO writes platforms before samples: no need to parse the rest
            if isinstance(record, PlatformRecord):
                records.append(record)
    finally:
        iterator.close()
    return records


def _annotation_from_records(path: Path, records: list[PlatformRecord], platform: str | None) -> pa.Table:
    found = [record.accession for record in records]
    if platform is not None:
        records = [record for record in records if record.accession == platform]
        if not records:
            raise GeoFormatError(f"{path}: no platform {platform} in the file (platforms found: {found})")
    if not records:
        raise GeoFormatError(f"{path}: the file holds no platform")
    tables = []
    for record in records:
        if record.table is None:
            raise GeoFormatError(f"{path}: platform {record.accession} has no data table")
        tables.append(_build_annotation(record.accession, record.table, source=str(path)))
    return pa.concat_tables(tables)


# --------------------------------------------------------------------------- CSV / TSV


def _read_csv_annotation(path: Path, platform: str | None) -> pa.Table:
    if not platform:
        raise GeoFormatError(
            f"{path}: a CSV/TSV annotation does not say its platform; pass platform= (e.g. 'GPL570')"
        )
    text = bounded_text(path, MAX_ANNOTATION_BYTES, "a platform annotation")  # a few MB; 80 MB for GPL570 with GO
    header = text[: text.find(b"\n")] if b"\n" in text else text
    parse_options = pacsv.ParseOptions(delimiter="\t" if b"\t" in header else ",")
    try:
        names = pacsv.read_csv(pa.py_buffer(header + b"\n"), parse_options=parse_options).column_names
        # Every column as text: numeric-looking probe ids ("0071") must keep their zeros.
        table = pacsv.read_csv(
            pa.py_buffer(text),
            parse_options=parse_options,
            convert_options=pacsv.ConvertOptions(
                column_types={name: pa.string() for name in names}, strings_can_be_null=False
            ),
        )
    except pa.ArrowInvalid as exc:
        raise GeoFormatError(f"{path}: cannot read as CSV/TSV: {exc}") from None
    return _build_annotation(platform, table, source=str(path), probe_column=0)


# --------------------------------------------------------------------------- table building


def _build_annotation(platform: str, table: pa.Table, *, source: str, probe_column: int | None = None) -> pa.Table:
    names = table.column_names
    if probe_column is None:
        probe_column = _find_column(names, _PROBE_COLUMNS)
        probe_column = 0 if probe_column is None else probe_column
    symbol_column = _find_column(names, _SYMBOL_COLUMNS)
    if symbol_column is None:
        raise GeoFormatError(
            f"{source}: no gene symbol column (looked for {list(_SYMBOL_COLUMNS)}, "
            f"case-insensitive; columns found: {names})"
        )
    entrez_column = _find_column(names, _ENTREZ_COLUMNS)
    probe_ids = _as_strings(table.column(probe_column))
    symbols = _split_multi_values(_as_strings(table.column(symbol_column)))
    if entrez_column is None:
        entrez = _empty_lists(len(probe_ids))
    else:
        entrez = _split_multi_values(_as_strings(table.column(entrez_column)))
    return pa.Table.from_arrays(
        [pa.array([platform] * len(probe_ids), pa.string()), probe_ids, symbols, entrez],
        schema=ANNOTATION_SCHEMA,
    )


def _find_column(names: list[str], candidates: tuple[str, ...]) -> int | None:
    lowered = [name.strip().lower() for name in names]
    for candidate in candidates:
        if candidate in lowered:
            return lowered.index(candidate)
    return None


def _as_strings(column: pa.ChunkedArray) -> pa.Array:
    array = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if not pa.types.is_string(array.type):
        array = array.cast(pa.string())
    return pc.fill_null(array, "")


def _split_multi_values(cells: pa.Array) -> pa.Array:
    """``"A /// B"`` -> ``["A", "B"]``; ``""`` and ``"---"`` -> ``[]`` (vectorised)."""
    pieces = pc.split_pattern(cells, pattern=_MULTI_VALUE_SEPARATOR)
    flat = pc.utf8_trim_whitespace(pc.list_flatten(pieces))
    parents = pc.list_parent_indices(pieces)
    keep = pc.invert(pc.is_in(flat, value_set=pa.array(_NO_VALUE, pa.string())))
    kept_values = flat.filter(keep)
    counts = np.bincount(parents.filter(keep).to_numpy(), minlength=len(cells))
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), kept_values, type=pa.list_(pa.string()))


def _empty_lists(n: int) -> pa.Array:
    return pa.ListArray.from_arrays(pa.array(np.zeros(n + 1, dtype=np.int32)), pa.array([], pa.string()),
                                    type=pa.list_(pa.string()))
