"""Hostile GEO and matrix inputs: repeated probe ids, byte-order marks, and small compressed
files that hold a huge line (the readers must refuse them within bounded memory)."""

from __future__ import annotations

import codecs
import gzip
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from leukspark.errors import GeoFormatError, InputError, LabelError
from leukspark.geo import SampleTable, detect_format, iter_geo_records

SERIES_MATRIX = [
    '!Series_title\t"hostile"',
    '!Series_geo_accession\t"GSE1"',
    '!Series_platform_id\t"GPL570"',
    '!Sample_title\t"a"\t"b"',
    '!Sample_geo_accession\t"GSM1"\t"GSM2"',
    '!Sample_platform_id\t"GPL570"\t"GPL570"',
    '!Sample_characteristics_ch1\t"disease: AML"\t"disease: ALL"',
    "!series_matrix_table_begin",
    '"ID_REF"\t"GSM1"\t"GSM2"',
    '"1007_s_at"\t1.5\t2.5',
    '"1053_at"\t3.5\t4.5',
    '"117_at"\t5.5\t6.5',
    "!series_matrix_table_end",
]

SAMPLE_SOFT = [
    "^SAMPLE = GSM9",
    "!Sample_title = s9",
    "!Sample_geo_accession = GSM9",
    "!Sample_platform_id = GPL570",
    "!Sample_characteristics_ch1 = disease: AML",
    "!sample_table_begin",
    "ID_REF\tVALUE",
    "1007_s_at\t1.5",
    "1053_at\t3.5",
    "117_at\t5.5",
    "!sample_table_end",
]


def _write(path: Path, lines: list[str], encoding: str = "utf-8", bom: bytes = b"") -> Path:
    path.write_bytes(bom + ("\n".join(lines) + "\n").encode(encoding))
    return path


def _tables(path) -> list[SampleTable]:
    return [r for r in iter_geo_records(path) if isinstance(r, SampleTable)]


# -- 5. a repeated probe id ---------------------------------------------------------------
@pytest.mark.parametrize("name, lines, message", [
    ("GSE1_series_matrix.txt", SERIES_MATRIX[:11] + ['"1007_s_at"\t9.5\t9.5'] + SERIES_MATRIX[11:],
     r"GSE1_series_matrix.txt, sample GSM1.*line 12: probe 1007_s_at appears twice \(first at line 10\)"),
    ("GSM9.soft", SAMPLE_SOFT[:9] + ["1007_s_at\t9.5"] + SAMPLE_SOFT[9:],
     r"GSM9.soft, sample GSM9, line 10: probe 1007_s_at appears twice \(first at line 8\)"),
], ids=["series_matrix", "sample_soft"])
def test_a_repeated_probe_is_refused_naming_file_sample_probe_and_line(tmp_path, name, lines, message):
    with pytest.raises(GeoFormatError, match=message):
        _tables(_write(tmp_path / name, lines))


def test_tables_without_repeats_still_parse(tmp_path):
    tables = _tables(_write(tmp_path / "GSE1_series_matrix.txt", SERIES_MATRIX))
    assert [t.sample.accession for t in tables] == ["GSM1", "GSM2"]
    assert tables[1].value.to_pylist() == [2.5, 4.5, 6.5]


# -- 8. byte-order marks ------------------------------------------------------------------
@pytest.mark.parametrize("encoding, bom", [("utf-8", codecs.BOM_UTF8), ("utf-16-le", codecs.BOM_UTF16_LE),
                                           ("utf-16-be", codecs.BOM_UTF16_BE)])
@pytest.mark.parametrize("compress", [False, True])
def test_geo_files_with_a_byte_order_mark_read_like_plain_utf8(tmp_path, encoding, bom, compress):
    for lines, name, kind in ((SERIES_MATRIX, "GSE1_series_matrix.txt", "series_matrix"),
                              (SAMPLE_SOFT, "GSM9.soft", "sample_soft")):
        plain = _write(tmp_path / f"plain_{name}", lines)
        marked = _write(tmp_path / name, lines, encoding, bom)
        if compress:
            marked.write_bytes(gzip.compress(marked.read_bytes()))
        assert detect_format(marked) == kind
        expected = [(t.sample.accession, t.probe_id.to_pylist(), t.value.to_pylist()) for t in _tables(plain)]
        assert [(t.sample.accession, t.probe_id.to_pylist(), t.value.to_pylist()) for t in _tables(marked)] == expected


def test_utf16_line_numbers_in_errors_match_the_file(tmp_path):
    lines = SAMPLE_SOFT[:8] + ["1053_at\tabc"] + SAMPLE_SOFT[9:]
    path = _write(tmp_path / "GSM9.soft", lines, "utf-16-le", codecs.BOM_UTF16_LE)
    with pytest.raises(GeoFormatError, match="sample GSM9, line 9"):
        _tables(path)


# -- 9. small compressed files that hold a huge line -------------------------------------
@pytest.fixture(scope="module")
def gigabyte_of_sevens() -> bytes:
    """Gzip of 1 GiB of '7' and no newline (~1 MB): 1,024 members of 1 MiB each (concatenated
    members are one valid gzip stream, as bgzip writes them)."""
    return gzip.compress(b"7" * (1 << 20), compresslevel=9) * 1024


def _gzip_of(path: Path, head: bytes, tail_member: bytes) -> Path:
    """`head` then the tail member's text, as two gzip members (valid gzip: bgzip writes such files)."""
    path.write_bytes(gzip.compress(head) + tail_member)
    return path


READERS = {
    "series_matrix": ("from leukspark.geo import iter_geo_records; list(iter_geo_records(path))",
                      b'!Series_title\t"x"\n!Series_geo_accession\t"GSE1"\n!Sample_title\t'),
    "sample_soft": ("from leukspark.geo import iter_geo_records; list(iter_geo_records(path))",
                    b"^SAMPLE = GSM1\n!Sample_title = "),
    "sample_table": ("from leukspark.geo import iter_geo_records; list(iter_geo_records(path))",
                     b"^SAMPLE = GSM1\n!sample_table_begin\nID_REF\tVALUE\n1007_s_at\t"),
    "csv_matrix": ("from leukspark.matrix import read_matrix; read_matrix(path)", b"gene,S1,S2\nTP53,1,"),
    "gct_matrix": ("from leukspark.matrix import read_matrix; read_matrix(path)", b"#1.2\n"),
    "annotation": ("from leukspark.geo.annotation import read_platform_annotation; "
                   "read_platform_annotation(path, 'GPL570')", b"ID,Gene Symbol\n1007_s_at,"),
}


@pytest.mark.parametrize("reader", sorted(READERS))
def test_a_small_gzip_holding_a_huge_line_is_refused_in_bounded_memory(tmp_path, reader, gigabyte_of_sevens):
    call, head = READERS[reader]
    suffix = {"csv_matrix": ".csv.gz", "gct_matrix": ".gct.gz", "annotation": ".csv.gz"}.get(reader, ".txt.gz")
    path = _gzip_of(tmp_path / f"huge{suffix}", head, gigabyte_of_sevens)  # 1 GiB of '7', no newline
    assert path.stat().st_size < 2 << 20
    script = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from leukspark.errors import LeukSparkError
        path = Path({str(path)!r})
        try:
            {call}
            print("ACCEPTED")
        except LeukSparkError as error:
            print("REFUSED", error)
        # VmHWM: this process's peak resident memory (ru_maxrss would carry the forking pytest's peak)
        peak_kb = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
        print("PEAK_MB", peak_kb // 1024)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]   # before the bounds: ~4.5 GB, or killed
    out = done.stdout
    assert "REFUSED" in out and str(path) in out and "line" in out and "longer than" in out, out
    peak = int(out.split("PEAK_MB")[1].split()[0])
    assert peak < 600, out          # the interpreter with pyarrow and pandas is ~150 MB; 1 GiB would show


def test_a_label_file_larger_than_any_label_table_is_refused_before_it_is_read(tmp_path):
    from leukspark.stages.labels import read_label_rows

    path = tmp_path / "labels.csv"
    with open(path, "wb") as handle:
        handle.write(b"sample,label\n")
        handle.truncate(300 << 20)       # sparse: 300 MB without using the disk
    with pytest.raises(LabelError, match="labels.csv: .*larger than"):
        read_label_rows(path)


def test_too_many_metadata_lines_in_one_entity_are_refused(tmp_path):
    path = tmp_path / "many.soft.gz"
    with gzip.open(path, "wb") as handle:
        handle.write(b"^SAMPLE = GSM1\n")
        line = b"!Sample_description = x\n"
        for _ in range(12):
            handle.write(line * 100_000)
    with pytest.raises(GeoFormatError, match=r"many.soft.gz, sample GSM1, line \d+: more than .* attribute lines"):
        _tables(path)


def test_endless_blank_lines_in_a_soft_entity_are_refused(tmp_path):
    path = tmp_path / "blank.soft.gz"
    path.write_bytes(gzip.compress(b"^SAMPLE = GSM1\n!Sample_title = x\n" + b"\n" * 300_000))
    with pytest.raises(GeoFormatError, match=r"blank.soft.gz, sample GSM1, line \d+: more than .* attribute lines"):
        _tables(path)


def test_a_repeated_probe_in_a_later_sample_of_a_soft_file_is_refused(tmp_path):
    first = [line.replace("GSM9", "GSM8") for line in SAMPLE_SOFT]
    second = SAMPLE_SOFT[:8] + ["1007_s_at\t9.5"] + SAMPLE_SOFT[9:]   # 1053_at replaced by a repeat
    path = _write(tmp_path / "two.soft", first + second)
    with pytest.raises(GeoFormatError, match=r"two.soft, sample GSM9, line 20: probe 1007_s_at appears twice "
                                             r"\(first at line 19\)"):
        _tables(path)
