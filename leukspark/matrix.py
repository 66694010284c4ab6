"""Expression matrices a user brings: CSV/TSV (genes or probes x samples) and GSEA .gct.

They yield the same records as the GEO parser, so the ingest stage treats them alike.
Rows are gene symbols unless a platform is named (`--platform GPL570`): then they are that
platform's probe ids, collapsed to genes through its annotation like any GEO series.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import math
import re
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa

from .errors import GeoFormatError, InputError
from .geo.soft import (MAX_LINE_BYTES, MISSING_VALUE_TOKENS, PlatformRecord, SampleRecord, SampleTable,
                       SeriesRecord, infinite_value_error, line_too_long_error)

GENE_SYMBOL_PLATFORM = "GENE_SYMBOLS"


# A byte-order mark tells the encoding (Excel saves "Unicode text" as UTF-16 with one).
_BYTE_ORDER_MARKS = ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"),
                     (codecs.BOM_UTF16_BE, "utf-16"))


def text_encoding(head: bytes) -> str:
    """The encoding a file's first bytes announce with a byte-order mark; UTF-8 without one."""
    return next((name for mark, name in _BYTE_ORDER_MARKS if head.startswith(mark)), "utf-8")


def _open_text(path: Path) -> io.TextIOBase:
    if not path.is_file():
        raise InputError(f"{path}: matrix file does not exist")
    raw = gzip.open(path) if path.name.lower().endswith(".gz") else open(path, "rb")
    try:
        head = raw.read(4)
        raw.seek(0)
    except (OSError, EOFError) as error:
        raw.close()
        raise GeoFormatError(f"{path}: cannot be read: {error}") from None
    encoding = text_encoding(head)
    # newline="" lets the csv module see line ends inside quoted cells.
    return io.TextIOWrapper(raw, encoding=encoding, newline="")


def read_matrix(path: Path) -> pd.DataFrame:
    """Features x samples, as floats; the index holds probe ids or gene symbols."""
    name = path.name.lower().removesuffix(".gz")
    is_gct = name.endswith(".gct")
    with _open_text(path) as text:
        handle = _bounded_lines(text, path)
        try:
            declared = _gct_dimensions(handle, path) if is_gct else None
            header, rows, lines = _read_cells(handle, "\t" if is_gct or name.endswith(".tsv") else ",", path,
                                              first_line=3 if is_gct else 1)
        except UnicodeDecodeError as error:
            raise InputError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start}): "
                             "save it as UTF-8") from None
        except (OSError, EOFError, csv.Error) as error:  # a damaged gzip stream or CSV quoting
            raise GeoFormatError(f"{path}: cannot be read: {error}") from None
    frame = pd.DataFrame(rows, columns=header, dtype=str).set_index(header[0])
    frame = frame.drop(columns=[c for c in frame.columns if is_gct and c.lower() == "description"])
    if frame.shape[1] == 0:
        raise GeoFormatError(f"{path}: no sample columns found")
    if frame.empty:
        raise GeoFormatError(f"{path}: no data rows below the header")
    if declared is not None:
        _check_gct_dimensions(declared, frame.shape, path)
    if frame.index.has_duplicates:
        duplicate = frame.index[frame.index.duplicated()][0]
        raise GeoFormatError(f"{path}: row id {duplicate!r} appears more than once")
    return _to_numbers(frame, path, lines)


def _bounded_lines(handle: io.TextIOBase, path: Path) -> Iterator[str]:
    """The file's lines, each read with a bounded size: a small gzip of one endless line is
    refused at MAX_LINE_BYTES characters instead of being held whole."""
    line_no = 0
    while line := handle.readline(MAX_LINE_BYTES + 1):
        line_no += 1
        if len(line) > MAX_LINE_BYTES:
            raise line_too_long_error(path, line_no)
        yield line


def _read_cells(handle, sep: str, path: Path, first_line: int) -> tuple[list[str], list[list[str]], np.ndarray]:
    """Header, data rows and each row's line number; a row of another width than the header is refused."""
    reader = csv.reader(handle, delimiter=sep)
    header = next(reader, None)
    if header is None:
        raise GeoFormatError(f"{path}: the file is empty" if first_line == 1 else f"{path}: no header line")
    if "\x00" in "".join(header):
        raise GeoFormatError(f"{path}: line {first_line}: the header holds NUL characters "
                             "(UTF-16 without a byte-order mark?): save the file as UTF-8")
    _check_header(header, path, first_line)
    # Label files' sample ids are stripped; a matrix's must be too, or no label would match " S1 ".
    header = [header[0], *(name.strip() for name in header[1:])]
    rows, lines = [], []
    for row in reader:
        if not any(cell.strip() for cell in row):
            continue
        line = first_line - 1 + reader.line_num
        if len(row) != len(header):
            raise GeoFormatError(f"{path}: line {line}: {len(row)} fields, but the header (line {first_line}) "
                                 f"has {len(header)}")
        rows.append(row)
        lines.append(line)
    return header, rows, np.array(lines, dtype=np.int64)


def _check_header(header: list[str], path: Path, line: int) -> None:
    # pandas would rename a repeated column to 'S1.1' and store it as a sample of that name.
    # Names are compared as stored: without surrounding spaces ('S1' and ' S1 ' are one sample).
    seen: dict[str, tuple[int, str]] = {}
    for column, name in enumerate(header[1:], start=2):
        if not name.strip():
            raise GeoFormatError(f"{path}: line {line}: column {column} has no sample name")
        if name.strip() in seen:
            first, as_written = seen[name.strip()]
            spaces = "" if as_written == name else f", as {as_written!r} and {name!r}: equal without surrounding spaces"
            raise GeoFormatError(f"{path}: line {line}: sample column {name.strip()!r} appears twice "
                                 f"(columns {first} and {column}{spaces})")
        seen[name.strip()] = (column, name)


def _gct_dimensions(handle, path: Path) -> tuple[int, int]:
    """Lines 1 and 2 of a GCT: the '#1.2' version and the declared 'rows<TAB>samples'."""
    version = next(handle, "").strip()
    if not version.startswith("#1.2"):
        raise GeoFormatError(f"{path}: line 1: a GCT file starts with '#1.2'; got {version[:30]!r}")
    text = next(handle, "").strip()
    parts = text.split()
    if len(parts) != 2 or not all(part.isdigit() for part in parts):
        raise GeoFormatError(f"{path}: line 2: the GCT dimension line must be two integers "
                             f"(rows, samples); got {text[:40]!r}")
    return int(parts[0]), int(parts[1])


def _check_gct_dimensions(declared: tuple[int, int], shape: tuple[int, int], path: Path) -> None:
    for what, said, found in zip(("rows", "samples"), declared, shape):
        if said != found:
            raise GeoFormatError(f"{path}: line 2: the GCT dimension line declares {said} {what}, "
                                 f"but the file holds {found}")


def _to_numbers(frame: pd.DataFrame, path: Path, lines: np.ndarray) -> pd.DataFrame:
    missing = frame.isna() | frame.isin(MISSING_VALUE_TOKENS)
    numbers = frame.apply(pd.to_numeric, errors="coerce")
    # pandas reads 'inf' as infinity but '1e400' as not-a-number: both are refused as infinite.
    bad = (numbers.isna() & ~missing) | np.isinf(numbers)
    if bad.to_numpy().any():
        row, column = np.argwhere(bad.to_numpy())[0]
        text = frame.iat[row, column]
        where = dict(sample=frame.columns[column], probe=frame.index[row], line=int(lines[row]), text=text)
        if _is_infinite(text):
            raise infinite_value_error(path, **where)
        raise GeoFormatError(f"{path}, sample {where['sample']}, line {where['line']}: probe {where['probe']}: "
                             f"value {text!r} is not a number")
    return numbers.astype(float)


def _is_infinite(text: str) -> bool:
    try:
        return math.isinf(float(text))
    except ValueError:
        return False


def matrix_sample_ids(path: Path) -> list[str]:
    return [str(c) for c in read_matrix(path).columns]


# Affymetrix probe set ids: "1007_s_at", "AFFX-BioB-5_at", "M27891_at", "U22376_cds2_s_at".
_AFFY_PROBE = re.compile(r"(^AFFX-)|(_at$)|(_st$)", re.IGNORECASE)


def looks_like_probe_ids(row_ids) -> bool:
    """True when most rows are Affymetrix probe set ids rather than gene symbols."""
    ids = [str(i) for i in row_ids][:5000]
    return bool(ids) and sum(bool(_AFFY_PROBE.search(i)) for i in ids) > 0.5 * len(ids)


def iter_matrix_records(path: Path, platform: str | None = None) -> Iterator:
    """SeriesRecord, PlatformRecord (gene-symbol rows map to themselves), then one SampleTable per column.

    With `platform` the rows are that platform's probe ids (the annotation comes from the lake
    or --annotation). Without it the rows must be gene symbols: probe ids there would become
    "genes" that no other cohort has, so they are refused.
    """
    frame = read_matrix(path)
    series = path.name.split(".")[0]
    if platform is None and looks_like_probe_ids(frame.index):
        raise GeoFormatError(
            f"{path}: the rows are probe ids (e.g. {frame.index[0]!r}), not gene symbols: pass --annotation "
            "with the platform's probe-to-symbol file (CSV, GPL SOFT or GEO .annot), or --platform GPL... "
            "when the lake already holds that platform's annotation"
        )
    platform_id = platform or GENE_SYMBOL_PLATFORM
    yield SeriesRecord(accession=series, title=f"matrix {path.name}", summary=None, platforms=[platform_id],
                       sample_ids=[str(c) for c in frame.columns], attributes={})
    if platform is None:
        ids = pa.array([str(i) for i in frame.index], pa.string())
        yield PlatformRecord(accession=platform_id, title="gene symbols from a matrix file", attributes={},
                             table=pa.table({"ID": ids, "Gene Symbol": ids}))
    probe_ids = pa.array([str(i) for i in frame.index], pa.string())
    for column in frame.columns:
        values = frame[column].to_numpy(dtype=float)
        value_array = pa.array(values, mask=np.isnan(values), type=pa.float64())
        record = SampleRecord(accession=str(column), series=series, platform=platform_id, title=str(column),
                              source=str(path), characteristics={}, characteristics_raw=[], description=[],
                              data_row_count=len(frame), attributes={})
        yield SampleTable(sample=record, probe_id=probe_ids, value=value_array,
                          n_missing=int(np.isnan(values).sum()), first_line=1)
