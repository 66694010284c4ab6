"""Expression matrices a user brings: CSV/TSV (genes or probes x samples) and GSEA .gct.

They yield the same records as the GEO parser, so the ingest stage treats them alike.
Rows are gene symbols unless a platform is named (`--platform GPL570`): then they are that
platform's probe ids, collapsed to genes through its annotation like any GEO series.
"""

from __future__ import annotations

import gzip
import io
import re
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa

from .errors import GeoFormatError, InputError
from .geo.soft import PlatformRecord, SampleRecord, SampleTable, SeriesRecord

GENE_SYMBOL_PLATFORM = "GENE_SYMBOLS"


def _open_text(path: Path) -> io.TextIOBase:
    if not path.is_file():
        raise InputError(f"{path}: matrix file does not exist")
    if path.name.lower().endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path), encoding="utf-8")
    return open(path, encoding="utf-8")


def read_matrix(path: Path) -> pd.DataFrame:
    """Features x samples, as floats; the index holds probe ids or gene symbols."""
    name = path.name.lower().removesuffix(".gz")
    with _open_text(path) as handle:
        if name.endswith(".gct"):
            version = handle.readline().strip()
            if not version.startswith("#1.2"):
                raise GeoFormatError(f"{path}: line 1: a GCT file starts with '#1.2'; got {version[:30]!r}")
            handle.readline()  # "rows cols"
            frame = pd.read_csv(handle, sep="\t", index_col=0, dtype=str)
            frame = frame.drop(columns=[c for c in frame.columns if c.lower() == "description"])
            header_lines = 3
        else:
            sep = "\t" if name.endswith(".tsv") else ","
            frame = pd.read_csv(handle, sep=sep, index_col=0, dtype=str)
            header_lines = 1
    if frame.empty or frame.shape[1] == 0:
        raise GeoFormatError(f"{path}: no sample columns found")
    if frame.index.has_duplicates:
        duplicate = frame.index[frame.index.duplicated()][0]
        raise GeoFormatError(f"{path}: row id {duplicate!r} appears more than once")
    if frame.columns.has_duplicates:
        duplicate = frame.columns[frame.columns.duplicated()][0]
        raise GeoFormatError(f"{path}: sample {duplicate!r} appears more than once")
    return _to_numbers(frame, path, header_lines)


def _to_numbers(frame: pd.DataFrame, path: Path, header_lines: int) -> pd.DataFrame:
    missing = frame.isna() | frame.isin(["null", "NULL", "NA", "NaN", "nan", "N/A", ""])
    numbers = frame.apply(pd.to_numeric, errors="coerce")
    bad = numbers.isna() & ~missing
    if bad.to_numpy().any():
        row, column = np.argwhere(bad.to_numpy())[0]
        raise GeoFormatError(
            f"{path}: line {row + header_lines + 1}: sample {frame.columns[column]}: "
            f"value {frame.iat[row, column]!r} is not a number"
        )
    return numbers.astype(float)


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
