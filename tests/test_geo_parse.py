"""GEO parsing: checked against GEOparse, pandas and raw line counts on real files, plus bad inputs.

The oracles are independent of leukspark.geo: GEOparse's own parser, pandas.read_csv
on a table block cut out with plain string handling, and counts made by iterating the
gzipped file's lines. Malformed inputs are built in tmp_path from the real files.
"""

from __future__ import annotations

import gzip
import io
import math
import re
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from leukspark.errors import GeoFormatError, InputError
from leukspark.geo import (
    PlatformRecord,
    SampleTable,
    SeriesRecord,
    annotation_from_platform_table,
    detect_format,
    iter_geo_records,
    parse_characteristics,
    read_platform_annotation,
)

GEOparse = pytest.importorskip("GEOparse")


# --------------------------------------------------------------------------- helpers and fixtures


def _raw_lines(path: Path) -> list[str]:
    """The file's lines as plain gzip + text iteration sees them (line endings removed)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors="replace", newline="") as handle:
        return [line.rstrip("\r\n") for line in handle]


def _write_text(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _index_of(lines: list[str], text: str, start: int = 0) -> int:
    return next(i for i in range(start, len(lines)) if lines[i] == text)


def _sample_tables(path) -> list[SampleTable]:
    return [record for record in iter_geo_records(path) if isinstance(record, SampleTable)]


def _error_for(path, call=lambda p: list(iter_geo_records(p))) -> str:
    """Run ``call(path)``, check it raises GeoFormatError naming the file; return the rest of the message.

    The path is cut out so that checks on the rest cannot be fooled by words in
    pytest's tmp_path (which contains the test's name).
    """
    with pytest.raises(GeoFormatError) as caught:
        call(path)
    message = str(caught.value)
    assert str(path) in message
    return message.replace(str(path), "<file>")


def _values(array) -> np.ndarray:
    return np.array([math.nan if v is None else v for v in array.to_pylist()], dtype=float)


@pytest.fixture(scope="module")
def gse781_path(geo_data_dir) -> Path:
    return geo_data_dir / "GSE781_family.soft.gz"


@pytest.fixture(scope="module")
def gse781_geoparse(gse781_path):
    return GEOparse.get_GEO(filepath=str(gse781_path), silent=True)


@pytest.fixture(scope="module")
def gse781_records(gse781_path):
    return list(iter_geo_records(gse781_path))


@pytest.fixture(scope="module")
def gse781_bytes(gse781_path) -> bytes:
    return gzip.decompress(gse781_path.read_bytes())


@pytest.fixture(scope="module")
def gse781_lines(gse781_bytes) -> list[str]:
    return [line.rstrip("\r") for line in gse781_bytes.decode("utf-8", "replace").split("\n")[:-1]]


@pytest.fixture(scope="module")
def gsm11805_lines(geo_data_dir) -> list[str]:
    return _raw_lines(geo_data_dir / "GSM11805.txt.gz")


@pytest.fixture(scope="module")
def mini_family_lines(gse781_lines) -> list[str]:
    """A small family SOFT cut from GSE781: series, the GPL96 platform and its first two samples.

    Much faster to write and re-parse than the whole file, for the malformed-input tests.
    """
    gpl97_start = gse781_lines.index("^PLATFORM = GPL97")
    blocks, start = [], None
    for i, line in enumerate(gse781_lines):
        if line.startswith("^SAMPLE"):
            start = i
        elif line == "!sample_table_end" and "!Sample_platform_id = GPL96" in gse781_lines[start:i]:
            blocks.append(gse781_lines[start : i + 1])
            if len(blocks) == 2:
                break
    return gse781_lines[:gpl97_start] + blocks[0] + blocks[1]


# --------------------------------------------------------------------------- format detection


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("GSE781_family.soft.gz", "family_soft"),
        ("GSM11805.txt.gz", "sample_soft"),
        ("GPL96.txt.gz", "platform_soft"),
        ("GPL97.annot.gz", "annot"),
        ("GSE37587_series_matrix.txt.gz", "series_matrix"),
    ],
)
def test_detect_format_of_real_files(geo_data_dir, name, expected):
    assert detect_format(geo_data_dir / name) == expected


def test_detect_format_of_csv(tmp_path):
    assert detect_format(_write_text(tmp_path / "annot.csv", ["probe_id,gene", "1007_s_at,DDR1"])) == "csv"


# --------------------------------------------------------------------------- GSE781 family SOFT vs GEOparse


def test_gse781_samples_match_geoparse(gse781_records, gse781_geoparse):
    tables = [r for r in gse781_records if isinstance(r, SampleTable)]
    assert [t.sample.accession for t in tables] == list(gse781_geoparse.gsms)
    for table in tables:
        oracle = gse781_geoparse.gsms[table.sample.accession]
        assert table.sample.platform == oracle.metadata["platform_id"][0]
        assert table.sample.title == oracle.metadata["title"][0]
        assert table.sample.source == oracle.metadata["source_name_ch1"][0]
        assert table.sample.characteristics_raw == oracle.metadata.get("characteristics_ch1", [])
        assert table.sample.description == oracle.metadata["description"]
        assert table.sample.attributes == oracle.metadata
        assert table.sample.series == oracle.metadata["series_id"][0]
        assert table.probe_id.to_pylist() == oracle.table["ID_REF"].astype(str).tolist()
        assert np.array_equal(_values(table.value), oracle.table["VALUE"].to_numpy(float), equal_nan=True)
        assert table.n_missing == int(oracle.table["VALUE"].isna().sum())


def test_gse781_series_and_platforms_match_geoparse(gse781_records, gse781_geoparse):
    series = gse781_records[0]
    assert isinstance(series, SeriesRecord)
    assert series.accession == gse781_geoparse.name
    assert series.title == gse781_geoparse.metadata["title"][0]
    assert series.sample_ids == gse781_geoparse.metadata["sample_id"]
    assert series.platforms == gse781_geoparse.metadata["platform_id"]
    assert series.attributes == gse781_geoparse.metadata
    platforms = [r for r in gse781_records if isinstance(r, PlatformRecord)]
    assert [p.accession for p in platforms] == list(gse781_geoparse.gpls)
    for platform in platforms:
        oracle = gse781_geoparse.gpls[platform.accession].table
        assert platform.table.num_rows == len(oracle)
        assert platform.table.column_names == list(oracle.columns)
        assert platform.table.column("ID").to_pylist() == oracle["ID"].astype(str).tolist()


def test_gse781_counts_agree_with_raw_line_counts(gse781_records, gse781_lines):
    """Rows per sample and the header line number, counted by plain line iteration."""
    expected = {}
    for i, line in enumerate(gse781_lines):
        if line.startswith("^SAMPLE"):
            sample = line.split("=", 1)[1].strip()
        elif line == "!sample_table_begin":
            begin = i
        elif line == "!sample_table_end":
            expected[sample] = (i - begin - 2, begin + 2)  # data rows; 1-based header line
    tables = [r for r in gse781_records if isinstance(r, SampleTable)]
    assert {t.sample.accession: (len(t.value), t.first_line) for t in tables} == expected


def test_gse781_mixed_line_endings_leave_no_carriage_returns(gse781_bytes, gse781_records):
    raw = gse781_bytes
    assert b"\r\n" in raw and raw.count(b"\n") > raw.count(b"\r\n")  # the file mixes CRLF and LF
    series = gse781_records[0]
    assert not any(v.endswith("\r") for values in series.attributes.values() for v in values)


def test_crlf_and_lf_files_parse_identically(tmp_path, gsm11805_lines):
    lf = tmp_path / "GSM11805_lf.txt"
    lf.write_bytes(("\n".join(gsm11805_lines) + "\n").encode())
    crlf = tmp_path / "GSM11805_crlf.txt"
    crlf.write_bytes(("\r\n".join(gsm11805_lines) + "\r\n").encode())
    [a], [b] = _sample_tables(lf), _sample_tables(crlf)
    assert a.sample == b.sample
    assert a.probe_id.equals(b.probe_id) and a.value.equals(b.value)


def test_gzip_with_several_members_reads_like_one(tmp_path, geo_data_dir, gsm11805_lines):
    text = ("\n".join(gsm11805_lines) + "\n").encode()
    middle = text.index(b"\n", len(text) // 2) + 1
    two_members = tmp_path / "GSM11805_two_members.txt.gz"
    two_members.write_bytes(gzip.compress(text[:middle]) + gzip.compress(text[middle:]))
    [a], [b] = _sample_tables(two_members), _sample_tables(geo_data_dir / "GSM11805.txt.gz")
    assert a.probe_id.equals(b.probe_id) and a.value.equals(b.value)


# --------------------------------------------------------------------------- single sample, platform, series matrix


def test_gsm11805_sample_soft_matches_geoparse(geo_data_dir):
    path = geo_data_dir / "GSM11805.txt.gz"
    oracle = GEOparse.get_GEO(filepath=str(path), silent=True)
    [table] = list(iter_geo_records(path))
    assert table.sample.accession == oracle.name
    assert table.sample.attributes == oracle.metadata
    assert table.sample.data_row_count == len(oracle.table)
    assert table.probe_id.to_pylist() == oracle.table["ID_REF"].astype(str).tolist()
    assert np.array_equal(_values(table.value), oracle.table["VALUE"].to_numpy(float), equal_nan=True)


def test_gse37587_series_matrix_matches_pandas(geo_data_dir):
    path = geo_data_dir / "GSE37587_series_matrix.txt.gz"
    lines = _raw_lines(path)
    begin = _index_of(lines, "!series_matrix_table_begin")
    end = _index_of(lines, "!series_matrix_table_end", begin)
    oracle = pd.read_csv(io.StringIO("\n".join(lines[begin + 1 : end])), sep="\t", index_col=0)
    assert oracle.shape == (24526, 68)  # as documented in PROVENANCE.md

    records = list(iter_geo_records(path))
    series, tables = records[0], records[1:]
    raw_accession = next(l for l in lines if l.startswith("!Series_geo_accession")).split("\t")[1].strip('"')
    assert isinstance(series, SeriesRecord) and series.accession == raw_accession
    assert series.sample_ids == list(oracle.columns)
    assert [t.sample.accession for t in tables] == list(oracle.columns)
    for table in tables:
        assert table.probe_id.to_pylist() == list(oracle.index)
        assert np.array_equal(_values(table.value), oracle[table.sample.accession].to_numpy(float), equal_nan=True)
        assert table.first_line == begin + 2

    characteristic_rows = [l.split("\t")[1:] for l in lines if l.startswith("!Sample_characteristics_ch1")]
    platform_row = next(l for l in lines if l.startswith("!Sample_platform_id")).split("\t")[1:]
    for column, table in enumerate(tables):
        raw = [row[column].strip('"') for row in characteristic_rows]
        assert table.sample.characteristics_raw == raw
        assert len(table.sample.characteristics) == len(characteristic_rows)
        assert table.sample.characteristics == {r.split(":", 1)[0]: r.split(":", 1)[1].strip() for r in raw}
        assert table.sample.platform == platform_row[column].strip('"')
        assert table.sample.series == raw_accession


# --------------------------------------------------------------------------- annotations


def test_gpl96_annotation_matches_geoparse_gene_symbols(geo_data_dir):
    path = geo_data_dir / "GPL96.txt.gz"
    oracle = GEOparse.get_GEO(filepath=str(path), silent=True).table
    annotation = read_platform_annotation(path)
    assert annotation.num_rows == len(oracle)
    assert set(annotation.column("platform").to_pylist()) == {"GPL96"}
    assert annotation.column("probe_id").to_pylist() == oracle["ID"].astype(str).tolist()
    expected = [[] if pd.isna(cell) else [s.strip() for s in str(cell).split("///")] for cell in oracle["Gene Symbol"]]
    assert annotation.column("gene_symbols").to_pylist() == expected
    expected_entrez = [
        [] if pd.isna(cell) else [s.strip() for s in str(cell).split("///")] for cell in oracle["ENTREZ_GENE_ID"]
    ]
    assert annotation.column("entrez_ids").to_pylist() == expected_entrez


def test_gpl97_annot_file_matches_pandas(geo_data_dir):
    path = geo_data_dir / "GPL97.annot.gz"
    lines = _raw_lines(path)
    begin = _index_of(lines, "!platform_table_begin")
    end = _index_of(lines, "!platform_table_end", begin)
    oracle = pd.read_csv(io.StringIO("\n".join(lines[begin + 1 : end])), sep="\t", dtype=str)
    platform = next(l for l in lines if l.startswith("!Annotation_platform =")).split("=", 1)[1].strip()
    annotation = read_platform_annotation(path)
    assert annotation.num_rows == len(oracle)
    assert set(annotation.column("platform").to_pylist()) == {platform}
    assert annotation.column("probe_id").to_pylist() == oracle["ID"].tolist()
    expected = [[] if pd.isna(c) else [s.strip() for s in c.split("///")] for c in oracle["Gene symbol"]]
    assert annotation.column("gene_symbols").to_pylist() == expected
    expected_entrez = [[] if pd.isna(c) else [s.strip() for s in c.split("///")] for c in oracle["Gene ID"]]
    assert annotation.column("entrez_ids").to_pylist() == expected_entrez


def test_annotation_from_family_soft_platform(gse781_path, gse781_records, gse781_geoparse):
    gpl97 = next(r for r in gse781_records if isinstance(r, PlatformRecord) and r.accession == "GPL97")
    from_table = annotation_from_platform_table("GPL97", gpl97.table)
    from_file = read_platform_annotation(gse781_path, platform="GPL97")
    assert from_table.equals(from_file)
    oracle = gse781_geoparse.gpls["GPL97"].table
    assert from_table.column("probe_id").to_pylist() == oracle["ID"].astype(str).tolist()
    with pytest.raises(GeoFormatError, match="GPL570"):
        read_platform_annotation(gse781_path, platform="GPL570")


def test_csv_annotation_splits_multi_gene_probes(tmp_path):
    rows = ["probe_id,gene", "1007_s_at,DDR1", "1598_g_at,GAS6 /// LOC100133684", "1552256_a_at,"]
    annotation = read_platform_annotation(_write_text(tmp_path / "gpl.csv", rows), platform="GPL570")
    assert annotation.to_pylist() == [
        {"platform": "GPL570", "probe_id": "1007_s_at", "gene_symbols": ["DDR1"], "entrez_ids": []},
        {"platform": "GPL570", "probe_id": "1598_g_at", "gene_symbols": ["GAS6", "LOC100133684"], "entrez_ids": []},
        {"platform": "GPL570", "probe_id": "1552256_a_at", "gene_symbols": [], "entrez_ids": []},
    ]
    tsv = _write_text(tmp_path / "gpl.tsv", ["ID\tGene Symbol", "1007_s_at\tDDR1"])
    assert read_platform_annotation(tsv, platform="GPL96").column("gene_symbols").to_pylist() == [["DDR1"]]


def test_csv_annotation_needs_platform_and_symbol_column(tmp_path):
    good = _write_text(tmp_path / "gpl.csv", ["probe_id,gene", "1007_s_at,DDR1"])
    assert "platform=" in _error_for(good, read_platform_annotation)
    bad = _write_text(tmp_path / "nosymbol.csv", ["probe_id,description", "1007_s_at,kinase"])
    message = _error_for(bad, lambda p: read_platform_annotation(p, platform="GPL570"))
    assert "'probe_id', 'description'" in message


# --------------------------------------------------------------------------- missing values and characteristics


def test_missing_values_become_nulls_and_are_counted(tmp_path, gsm11805_lines):
    lines = list(gsm11805_lines)
    header = _index_of(lines, "!sample_table_begin") + 1
    tokens = ["null", "", "NA", "NaN", "nan", "N/A", "NULL", "-nan"]
    originals = {}
    for offset, token in enumerate(tokens, start=1):
        probe, value, call = lines[header + offset].split("\t")
        originals[probe] = value
        lines[header + offset] = f"{probe}\t{token}\t{call}"
    [table] = _sample_tables(_write_text(tmp_path / "GSM11805.txt", lines))
    values = table.value.to_pylist()
    assert values[: len(tokens)] == [None] * len(tokens)
    assert table.n_missing == len(tokens)
    assert values[len(tokens)] == float(lines[header + len(tokens) + 1].split("\t")[1])
    assert 0.0 not in values[: len(tokens)]


def test_parse_characteristics_keys():
    parsed = parse_characteristics(["tissue: bone marrow", "leukemia class: AML", "no colon here", "tissue: blood"])
    assert parsed == {
        "tissue": "bone marrow",
        "leukemia class": "AML",
        "characteristics_3": "no colon here",
        "tissue_2": "blood",
    }


# --------------------------------------------------------------------------- bad inputs


def test_truncated_gzip_names_the_file(tmp_path, gse781_path):
    data = gse781_path.read_bytes()
    cut = tmp_path / "GSE781_cut_family.soft.gz"
    cut.write_bytes(data[: len(data) // 2])
    message = _error_for(cut)
    assert "truncated" in message


def test_corrupt_gzip_names_the_file(tmp_path, geo_data_dir):
    data = bytearray((geo_data_dir / "GSM11805.txt.gz").read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)
    corrupt = tmp_path / "GSM11805_corrupt.txt.gz"
    corrupt.write_bytes(bytes(data))
    assert "corrupt" in _error_for(corrupt)


def test_missing_sample_table_end_names_sample_and_begin_line(tmp_path, mini_family_lines):
    lines = list(mini_family_lines)
    begin = _index_of(lines, "!sample_table_begin")
    del lines[_index_of(lines, "!sample_table_end", begin)]
    path = _write_text(tmp_path / "family.soft", lines)
    message = _error_for(path)
    assert "GSM11805" in message and f"line {begin + 1}" in message


def test_missing_table_end_at_end_of_file(tmp_path, gsm11805_lines):
    lines = [l for l in gsm11805_lines if l != "!sample_table_end"]
    path = _write_text(tmp_path / "GSM11805.txt", lines)
    message = _error_for(path)
    begin = _index_of(lines, "!sample_table_begin") + 1
    assert "GSM11805" in message and f"line {begin}" in message


def test_missing_platform_table_end(tmp_path, mini_family_lines):
    lines = list(mini_family_lines)
    begin = _index_of(lines, "!platform_table_begin")
    del lines[_index_of(lines, "!platform_table_end", begin)]
    path = _write_text(tmp_path / "family.soft", lines)
    message = _error_for(path)
    assert f"line {begin + 1}" in message and "!platform_table_end" in message


def test_missing_series_matrix_table_end(tmp_path, geo_data_dir):
    lines = [l for l in _raw_lines(geo_data_dir / "GSE37587_series_matrix.txt.gz") if l != "!series_matrix_table_end"]
    path = _write_text(tmp_path / "GSE37587_series_matrix.txt", lines)
    message = _error_for(path)
    begin = _index_of(lines, "!series_matrix_table_begin") + 1
    assert f"line {begin}" in message


def test_non_numeric_value_names_sample_line_and_text(tmp_path, mini_family_lines):
    lines = list(mini_family_lines)
    second_sample = [i for i, l in enumerate(lines) if l.startswith("^SAMPLE")][1]
    bad_index = _index_of(lines, "!sample_table_begin", second_sample) + 100
    probe, _, call = lines[bad_index].split("\t")
    lines[bad_index] = f"{probe}\tabc\t{call}"
    path = _write_text(tmp_path / "family.soft", lines)
    message = _error_for(path)
    sample = lines[second_sample].split("=")[1].strip()
    assert sample in message and f"line {bad_index + 1}" in message and "'abc'" in message


def test_non_numeric_value_in_series_matrix(tmp_path, geo_data_dir):
    lines = _raw_lines(geo_data_dir / "GSE37587_series_matrix.txt.gz")
    header_index = _index_of(lines, "!series_matrix_table_begin") + 1
    sample = lines[header_index].split("\t")[5].strip('"')
    bad_index = header_index + 500
    cells = lines[bad_index].split("\t")
    cells[5] = "abc"
    lines[bad_index] = "\t".join(cells)
    path = _write_text(tmp_path / "GSE37587_series_matrix.txt", lines)
    message = _error_for(path)
    assert sample in message and f"line {bad_index + 1}" in message and "'abc'" in message


def test_duplicate_sample_block(tmp_path, mini_family_lines):
    lines = list(mini_family_lines)
    start = next(i for i, l in enumerate(lines) if l.startswith("^SAMPLE"))
    end = _index_of(lines, "!sample_table_end", start)
    path = _write_text(tmp_path / "family.soft", lines + lines[start : end + 1])
    message = _error_for(path)
    assert "GSM11805" in message and "duplicate" in message
    assert f"line {len(lines) + 1}" in message and f"line {start + 1}" in message


def test_duplicate_sample_column_in_series_matrix(tmp_path, geo_data_dir):
    lines = _raw_lines(geo_data_dir / "GSE37587_series_matrix.txt.gz")
    header_index = _index_of(lines, "!series_matrix_table_begin") + 1
    cells = lines[header_index].split("\t")
    duplicated = cells[1].strip('"')
    cells[2] = cells[1]
    lines[header_index] = "\t".join(cells)
    path = _write_text(tmp_path / "GSE37587_series_matrix.txt", lines)
    message = _error_for(path)
    assert duplicated in message and "duplicate" in message


def test_row_count_differs_from_data_row_count(tmp_path, mini_family_lines):
    lines = list(mini_family_lines)
    begin = _index_of(lines, "!sample_table_begin")
    declared = next(l for l in lines[:begin] if l.startswith("!Sample_data_row_count")).split("=")[1].strip()
    del lines[begin + 50]
    path = _write_text(tmp_path / "family.soft", lines)
    message = _error_for(path)
    assert "GSM11805" in message
    assert str(int(declared) - 1) in message and declared in message


def test_row_count_differs_from_platform_probe_count(tmp_path, mini_family_lines):
    lines = [l for l in mini_family_lines if not l.startswith("!Sample_data_row_count")]
    platform_begin = _index_of(lines, "!platform_table_begin")
    n_probes = _index_of(lines, "!platform_table_end", platform_begin) - platform_begin - 2
    begin = _index_of(lines, "!sample_table_begin")
    del lines[begin + 50]
    path = _write_text(tmp_path / "family.soft", lines)
    message = _error_for(path)
    assert "GSM11805" in message and "GPL96" in message
    assert str(n_probes - 1) in message


def test_wrong_column_count_names_the_line(tmp_path, gsm11805_lines):
    lines = list(gsm11805_lines)
    bad_index = _index_of(lines, "!sample_table_begin") + 10
    lines[bad_index] = lines[bad_index].rsplit("\t", 1)[0]
    path = _write_text(tmp_path / "GSM11805.txt", lines)
    message = _error_for(path)
    assert "GSM11805" in message and f"line {bad_index + 1}" in message


def test_missing_path_raises_input_error(tmp_path):
    missing = tmp_path / "nowhere" / "GSE1_family.soft.gz"
    for call in (detect_format, lambda p: list(iter_geo_records(p)), read_platform_annotation):
        with pytest.raises(InputError, match=re.escape(str(missing))):
            call(missing)


@pytest.mark.parametrize(
    ("name", "content", "complaint"),
    [
        ("empty.soft", b"", "empty"),
        ("blank.soft", b"\n\n  \n", "empty"),
        ("empty.soft.gz", gzip.compress(b"", mtime=0), "empty"),
        ("garbage.bin", bytes(range(256)) * 8, "not a"),
        ("prose.txt", b"hello world\nthis is not GEO\n", "not a GEO"),
    ],
)
def test_unknown_or_empty_files(tmp_path, name, content, complaint):
    path = tmp_path / name
    path.write_bytes(content)
    assert complaint in _error_for(path)


def test_csv_is_not_a_soft_file(tmp_path):
    path = _write_text(tmp_path / "annot.csv", ["probe_id,gene", "1007_s_at,DDR1"])
    assert "CSV" in _error_for(path)


def test_stopping_early_ends_the_reader_thread(gse781_path):
    before = threading.active_count()
    records = iter_geo_records(gse781_path)
    assert isinstance(next(records), SeriesRecord)
    records.close()
    assert threading.active_count() == before


INFINITE_SPELLINGS = ["inf", "1e400", "-Infinity", "Inf"]


@pytest.mark.parametrize("token", INFINITE_SPELLINGS)
def test_infinite_value_in_sample_soft_names_sample_line_and_probe(tmp_path, gsm11805_lines, token):
    lines = list(gsm11805_lines)
    bad_index = _index_of(lines, "!sample_table_begin") + 5
    probe, _, *rest = lines[bad_index].split("\t")
    lines[bad_index] = "\t".join([probe, token, *rest])
    message = _error_for(_write_text(tmp_path / "GSM11805.txt", lines))
    assert "GSM11805" in message and f"line {bad_index + 1}" in message and probe in message
    assert f"{token!r} is infinite" in message


@pytest.mark.parametrize("token", INFINITE_SPELLINGS)
def test_infinite_value_in_series_matrix_names_sample_line_and_probe(tmp_path, geo_data_dir, token):
    lines = _raw_lines(geo_data_dir / "GSE37587_series_matrix.txt.gz")
    header_index = _index_of(lines, "!series_matrix_table_begin") + 1
    sample = lines[header_index].split("\t")[3].strip('"')
    bad_index = header_index + 700
    cells = lines[bad_index].split("\t")
    cells[3] = token
    lines[bad_index] = "\t".join(cells)
    message = _error_for(_write_text(tmp_path / "GSE37587_series_matrix.txt", lines))
    assert sample in message and f"line {bad_index + 1}" in message and cells[0].strip('"') in message
    assert f"{token!r} is infinite" in message


# --------------------------------------------------------------------------- readers sharing a file


def _sample_order(path: Path) -> list[str]:
    return [line.split("=", 1)[1].strip() for line in _raw_lines(path) if line.startswith("^SAMPLE")]


def test_readers_sharing_a_family_soft_each_get_their_samples_and_together_all(geo_data_dir):
    path = geo_data_dir / "GSE781_family.soft.gz"
    order = _sample_order(path)
    whole = {r.sample.accession: r for r in iter_geo_records(path) if isinstance(r, SampleTable)}
    assert list(whole) == order
    for count in (2, 3):
        seen = []
        for index in range(count):
            records = list(iter_geo_records(path, keep_sample=lambda ordinal: ordinal % count == index))
            samples = [r for r in records if isinstance(r, SampleTable)]
            assert [s.sample.accession for s in samples] == order[index::count]
            # Series and platform records are every reader's: each share needs them.
            assert sum(isinstance(r, SeriesRecord) for r in records) == 1
            assert sorted(r.accession for r in records if isinstance(r, PlatformRecord)) == ["GPL96", "GPL97"]
            for table in samples:
                reference = whole[table.sample.accession]
                assert table.probe_id.equals(reference.probe_id) and table.value.equals(reference.value)
                assert table.first_line == reference.first_line
            seen += [s.sample.accession for s in samples]
        assert sorted(seen) == sorted(order)


def test_a_broken_table_is_reported_by_the_reader_that_keeps_it_only(geo_data_dir, tmp_path):
    path = geo_data_dir / "GSE781_family.soft.gz"
    victim = _sample_order(path)[1]
    lines = _raw_lines(path)
    start = lines.index(f"^SAMPLE = {victim}")
    begin = next(i for i in range(start, len(lines)) if lines[i].lower() == "!sample_table_begin")
    lines[begin + 2] = lines[begin + 2].split("\t")[0] + "\tnot-a-number"
    bad = tmp_path / "bad_family.soft.gz"
    bad.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    others = [r for r in iter_geo_records(bad, keep_sample=lambda ordinal: ordinal != 1) if isinstance(r, SampleTable)]
    assert victim not in {r.sample.accession for r in others}
    with pytest.raises(GeoFormatError) as caught:
        list(iter_geo_records(bad, keep_sample=lambda ordinal: ordinal == 1))
    assert victim in str(caught.value) and f"line {begin + 3}" in str(caught.value)


def test_a_missing_end_marker_is_found_even_in_a_sample_the_reader_skips(geo_data_dir, tmp_path):
    path = geo_data_dir / "GSE781_family.soft.gz"
    lines = [line for line in _raw_lines(path)]
    first_end = next(i for i, line in enumerate(lines) if line.lower() == "!sample_table_end")
    del lines[first_end]
    bad = tmp_path / "no_end_family.soft.gz"
    bad.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    with pytest.raises(GeoFormatError, match="sample_table_end"):
        list(iter_geo_records(bad, keep_sample=lambda ordinal: ordinal != 0))


def test_a_series_matrix_is_not_read_in_shares(geo_data_dir):
    with pytest.raises(ValueError, match="series matrix"):
        iter_geo_records(geo_data_dir / "GSE37587_series_matrix.txt.gz", keep_sample=lambda ordinal: True)


def test_gunzip_gives_the_same_text_and_errors_with_zlib_and_with_isal(geo_data_dir, tmp_path, monkeypatch):
    import zlib

    from leukspark.geo import soft

    modules = [zlib]
    try:
        from isal import isal_zlib
        modules.append(isal_zlib)
    except ImportError:  # the fallback alone is what such an install runs
        pass
    path = geo_data_dir / "GSE781_family.soft.gz"
    raw = path.read_bytes()
    truncated, corrupt = tmp_path / "truncated.soft.gz", tmp_path / "corrupt.soft.gz"
    truncated.write_bytes(raw[: len(raw) // 2])
    corrupt.write_bytes(raw[:5000] + bytes(b ^ 0xFF for b in raw[5000:5100]) + raw[5100:])
    for module in modules:
        monkeypatch.setattr(soft, "_inflate", module)
        assert b"".join(soft.decompressed_chunks(path, 1 << 16)) == gzip.decompress(raw)
        with pytest.raises(GeoFormatError, match="truncated"):
            b"".join(soft.decompressed_chunks(truncated))
        with pytest.raises(GeoFormatError, match="corrupt"):
            b"".join(soft.decompressed_chunks(corrupt))
