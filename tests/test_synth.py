"""Tests of the synthetic series generator (leukspark.synth) and the reference loaders.

The written files are read back with plain gzip and line iteration, and the reference
files with small parsers written here, so that the checks do not trust the generator's
own code.
"""

from __future__ import annotations

import csv
import gzip
import math
import re
from collections import Counter
from pathlib import Path

import pytest

from leukspark.reference import (
    ALL_MARKERS,
    AML_MARKERS,
    load_gpl570_symbols,
    load_mile_samples,
)
from leukspark.synth import demo_series_dir, write_synthetic_series

PACKAGE_DATA = Path(__file__).resolve().parents[1] / "leukspark" / "data"
N_SAMPLES, N_PROBES = 60, 800


# --------------------------------------------------------------------------------------
# Independent readers
# --------------------------------------------------------------------------------------


def read_info_file() -> list[tuple[str, str, str]]:
    """(gsm, title, class) rows of GSE13159.info: columns split on runs of 2+ spaces."""
    lines = (PACKAGE_DATA / "GSE13159.info").read_text().splitlines()
    return [tuple(re.split(r"\s{2,}", line.strip())) for line in lines[1:] if line.strip()]


def read_annotation_file() -> dict[str, str]:
    with open(PACKAGE_DATA / "GPL570_annot.csv", newline="") as handle:
        return {row["probe_id"]: row["gene"] for row in csv.DictReader(handle)}


def marker_probe_ids(annotation: dict[str, str], markers) -> set[str]:
    return {p for p, gene in annotation.items() if set(gene.split(" /// ")) & set(markers)}


def parse_value(text: str) -> float:
    return math.nan if text == "null" else float(text)


def read_soft(path: Path) -> dict:
    """Series sample ids, the platform table and every sample block of a family SOFT."""
    series_ids: list[str] = []
    platform_rows: list[list[str]] = []
    samples: dict[str, dict] = {}
    section, current, in_table, table_header = None, None, False, None
    with gzip.open(path, "rt", newline="") as handle:
        for line in handle:
            assert line.endswith("\n") and not line.endswith("\r\n")
            line = line[:-1]
            if line.startswith("^"):
                section = line.split(" = ")[0]
                if section == "^SAMPLE":
                    current = {"meta": [], "values": {}, "header": None}
                    samples[line.split(" = ")[1]] = current
                continue
            if line in ("!platform_table_begin", "!sample_table_begin"):
                in_table, table_header = True, None
                continue
            if line in ("!platform_table_end", "!sample_table_end"):
                in_table = False
                continue
            if in_table:
                cells = line.split("\t")
                if table_header is None:
                    table_header = cells
                    if section == "^SAMPLE":
                        current["header"] = cells
                elif section == "^PLATFORM":
                    platform_rows.append(cells)
                else:
                    current["values"][cells[0]] = cells[1]
            elif section == "^SERIES" and line.startswith("!Series_sample_id = "):
                series_ids.append(line.split(" = ", 1)[1])
            elif section == "^SAMPLE":
                current["meta"].append(line)
    return {"series_ids": series_ids, "platform_rows": platform_rows, "samples": samples}


def characteristics(block: dict) -> list[str]:
    prefix = "!Sample_characteristics_ch1 = "
    return [line[len(prefix):] for line in block["meta"] if line.startswith(prefix)]


def read_matrix(path: Path) -> dict:
    meta: dict[str, list[list[str]]] = {}
    values: dict[str, list[str]] = {}
    header = None
    in_table = False
    with gzip.open(path, "rt", newline="") as handle:
        for line in handle:
            line = line.rstrip("\n")
            if line == "!series_matrix_table_begin":
                in_table = True
            elif line == "!series_matrix_table_end":
                in_table = False
            elif in_table and header is None:
                header = [cell.strip('"') for cell in line.split("\t")]
            elif in_table:
                cells = line.split("\t")
                values[cells[0].strip('"')] = cells[1:]
            elif line.startswith("!"):
                key, *cells = line.split("\t")
                meta.setdefault(key, []).append([cell.strip('"') for cell in cells])
    return {"meta": meta, "header": header, "values": values}


# --------------------------------------------------------------------------------------
# Fixtures: one small series, written once
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth_small")
    result = write_synthetic_series(out, n_samples=N_SAMPLES, n_probes=N_PROBES, seed=3)
    return result, read_soft(result.family_soft), read_matrix(result.series_matrix)


# --------------------------------------------------------------------------------------
# Reference loaders
# --------------------------------------------------------------------------------------


def test_reference_loaders_match_independent_parse():
    rows = read_info_file()
    assert len(rows) == 2096 and all(len(r) == 3 for r in rows)
    lineage = Counter(
        "ALL" if "ALL" in c else "AML" if c.startswith("AML") else "other" for _, _, c in rows
    )
    assert lineage == {"ALL": 750, "AML": 542, "other": 804}

    samples = load_mile_samples()
    assert list(samples.columns) == ["gsm", "title", "mile_class", "lineage"]
    assert list(samples.itertuples(index=False, name=None)) == [
        (g, t, c, "ALL" if "ALL" in c else "AML" if c.startswith("AML") else "other")
        for g, t, c in rows
    ]
    classes = Counter(c for _, _, c in rows)
    assert len(classes) == 18
    assert (classes["CLL"], classes["MDS"], classes["CML"]) == (448, 207, 76)
    assert classes["Non-leukemia and healthy bone marrow"] == 73


def test_gpl570_symbols_and_markers():
    symbols = load_gpl570_symbols()
    annotation = read_annotation_file()
    assert list(symbols.columns) == ["probe_id", "gene"]
    assert len(symbols) == 45_782 == len(annotation)
    assert dict(zip(symbols["probe_id"], symbols["gene"])) == annotation
    assert symbols["gene"].str.contains(" /// ", regex=False).any()
    genes = {g for gene in annotation.values() for g in gene.split(" /// ")}
    for marker in ALL_MARKERS + AML_MARKERS:
        assert marker in genes, marker
    assert len(ALL_MARKERS) == len(AML_MARKERS) == 10


def test_package_data_is_byte_identical_to_provenance():
    import hashlib

    provenance = (PACKAGE_DATA / "PROVENANCE.md").read_text()
    for name in ("GSE13159.info", "GPL570_annot.csv"):
        digest = hashlib.sha256((PACKAGE_DATA / name).read_bytes()).hexdigest()
        assert digest in provenance, name


# --------------------------------------------------------------------------------------
# Determinism
# --------------------------------------------------------------------------------------


def test_same_seed_gives_identical_bytes(small, tmp_path):
    result, _, _ = small
    again = write_synthetic_series(tmp_path, n_samples=N_SAMPLES, n_probes=N_PROBES, seed=3)
    for first, second in [
        (result.family_soft, again.family_soft),
        (result.series_matrix, again.series_matrix),
        (result.annotation_csv, again.annotation_csv),
    ]:
        assert first.read_bytes() == second.read_bytes(), first.name
    # gzip header: no time stamp.
    assert result.family_soft.read_bytes()[4:8] == b"\x00\x00\x00\x00"


def test_other_seed_gives_other_values(small, tmp_path):
    result, soft, _ = small
    other = write_synthetic_series(tmp_path, n_samples=N_SAMPLES, n_probes=N_PROBES, seed=4)
    other_soft = read_soft(other.family_soft)
    shared = set(soft["samples"]) & set(other_soft["samples"])
    differences = 0
    for gsm in shared:
        first, second = soft["samples"][gsm]["values"], other_soft["samples"][gsm]["values"]
        for probe in set(first) & set(second):
            differences += first[probe] != second[probe]
    assert differences > 0
    assert result.family_soft.read_bytes() != other.family_soft.read_bytes()


# --------------------------------------------------------------------------------------
# Structure of the files
# --------------------------------------------------------------------------------------


def test_soft_counts_and_real_samples(small):
    result, soft, _ = small
    real = {gsm: (title, mile_class) for gsm, title, mile_class in read_info_file()}

    assert len(soft["samples"]) == N_SAMPLES
    assert soft["series_ids"] == list(soft["samples"]) == result.sample_ids
    assert len(soft["platform_rows"]) == N_PROBES
    assert [row[0] for row in soft["platform_rows"]] == result.probe_ids
    for gsm, block in soft["samples"].items():
        assert gsm in real
        assert block["header"] == ["ID_REF", "VALUE"]
        assert len(block["values"]) == N_PROBES
        assert list(block["values"]) == result.probe_ids
        assert f"!Sample_title = {real[gsm][0]}" in block["meta"]
        assert f"!Sample_data_row_count = {N_PROBES}" in block["meta"]
        tissue_line, class_line = characteristics(block)
        assert tissue_line in ("tissue: bone marrow", "tissue: peripheral blood")
        assert class_line == f"leukemia class: {real[gsm][1]}"
        source = [line for line in block["meta"] if line.startswith("!Sample_source_name_ch1")]
        assert source == [f"!Sample_source_name_ch1 = {tissue_line.split(': ')[1]}"]


def test_platform_table_and_annotation_csv(small):
    result, soft, _ = small
    annotation = read_annotation_file()
    with open(result.annotation_csv, newline="") as handle:
        written = [(row["probe_id"], row["gene"]) for row in csv.DictReader(handle)]
    assert [p for p, _ in written] == result.probe_ids
    for (probe_id, gene), platform_row in zip(written, soft["platform_rows"]):
        assert gene == annotation.get(probe_id, "")
        assert platform_row[:2] == [probe_id, gene]
        if probe_id not in annotation:
            assert re.fullmatch(r"16\d{5}_at", probe_id)


def test_values_are_log2_scale_with_four_decimals(small):
    _, soft, _ = small
    cells = [v for block in soft["samples"].values() for v in block["values"].values()]
    numbers = [float(v) for v in cells if v != "null"]
    assert all(re.fullmatch(r"\d{1,2}\.\d{4}", v) for v in cells if v != "null")
    inside = sum(2.0 <= x <= 15.0 for x in numbers) / len(numbers)
    assert inside > 0.95 and min(numbers) >= 1.0 and max(numbers) <= 16.0


def test_matrix_and_soft_carry_the_same_values(small):
    result, soft, matrix = small
    assert matrix["header"] == ["ID_REF"] + result.sample_ids
    assert list(matrix["values"]) == result.probe_ids
    for column, gsm in enumerate(result.sample_ids):
        block = soft["samples"][gsm]["values"]
        for probe_id, row in matrix["values"].items():
            assert row[column] == block[probe_id]
    meta = matrix["meta"]
    assert meta["!Sample_geo_accession"] == [result.sample_ids]
    tissue_row, class_row = meta["!Sample_characteristics_ch1"]
    for column, gsm in enumerate(result.sample_ids):
        assert [tissue_row[column], class_row[column]] == characteristics(soft["samples"][gsm])
    assert meta["!Sample_data_row_count"] == [[str(N_PROBES)] * N_SAMPLES]


# --------------------------------------------------------------------------------------
# Sampling and biology
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_samples", [N_SAMPLES, 120, 500])
def test_subset_is_stratified_by_class(small, n_samples, tmp_path):
    rows = read_info_file()
    full = Counter(c for _, _, c in rows)
    if n_samples == N_SAMPLES:
        soft = small[1]
        classes = [characteristics(b)[1].split(": ", 1)[1] for b in soft["samples"].values()]
    else:
        result = write_synthetic_series(
            tmp_path, n_samples=n_samples, n_probes=40, seed=5, write_matrix=False
        )
        class_of = {gsm: c for gsm, _, c in rows}
        classes = [class_of[gsm] for gsm in result.sample_ids]
    counts = Counter(classes)
    assert sum(counts.values()) == n_samples
    assert set(counts) == set(full)  # every class present
    for mile_class, size in full.items():
        expected = n_samples * size / len(rows)
        assert abs(counts[mile_class] - expected) <= 1, (mile_class, counts[mile_class], expected)


def test_all_samples_in_file_order(tmp_path):
    result = write_synthetic_series(
        tmp_path, n_samples=2096, n_probes=40, seed=0, write_matrix=False
    )
    assert result.sample_ids == [gsm for gsm, _, _ in read_info_file()]


def test_marker_probes_included_and_separate_lineages(small):
    result, soft, _ = small
    annotation = read_annotation_file()
    all_probes = marker_probe_ids(annotation, ALL_MARKERS)
    aml_probes = marker_probe_ids(annotation, AML_MARKERS)
    assert all_probes | aml_probes <= set(result.probe_ids)

    def mean_over(probes, lineage):
        values = [
            parse_value(block["values"][p])
            for block in soft["samples"].values()
            if lineage_of(characteristics(block)[1]) == lineage
            for p in probes
        ]
        values = [v for v in values if not math.isnan(v)]
        return sum(values) / len(values)

    def lineage_of(class_line):
        mile_class = class_line.split(": ", 1)[1]
        return "ALL" if "ALL" in mile_class else "AML" if mile_class.startswith("AML") else "other"

    assert mean_over(all_probes, "ALL") > mean_over(all_probes, "AML") + 1.0
    assert mean_over(aml_probes, "AML") > mean_over(aml_probes, "ALL") + 1.0


def test_probe_subset_keeps_platform_proportions(small):
    result, _, _ = small
    annotation = read_annotation_file()
    no_symbol = sum(p not in annotation for p in result.probe_ids) / N_PROBES
    multi = sum(" /// " in annotation.get(p, "") for p in result.probe_ids) / N_PROBES
    assert abs(no_symbol - 8_893 / 54_675) < 0.01
    assert abs(multi - 2_796 / 54_675) < 0.01


def test_full_platform_has_all_real_probes_plus_generated(tmp_path):
    result = write_synthetic_series(tmp_path, n_samples=2, n_probes=54_675, write_matrix=False)
    annotation = read_annotation_file()
    assert len(result.probe_ids) == len(set(result.probe_ids)) == 54_675
    generated = [p for p in result.probe_ids if p not in annotation]
    assert set(annotation) <= set(result.probe_ids)
    assert len(generated) == 8_893
    assert all(re.fullmatch(r"16\d{5}_at", p) for p in generated)


# --------------------------------------------------------------------------------------
# Missing values
# --------------------------------------------------------------------------------------


def test_missing_values_written_as_null(tmp_path):
    fraction = 0.01
    result = write_synthetic_series(
        tmp_path, n_samples=N_SAMPLES, n_probes=N_PROBES, seed=3, missing_fraction=fraction
    )
    soft, matrix = read_soft(result.family_soft), read_matrix(result.series_matrix)
    expected = fraction * N_SAMPLES * N_PROBES
    soft_nulls = sum(
        v == "null" for block in soft["samples"].values() for v in block["values"].values()
    )
    matrix_nulls = sum(v == "null" for row in matrix["values"].values() for v in row)
    assert soft_nulls == matrix_nulls > 0
    assert abs(soft_nulls - expected) <= max(1, 0.05 * expected)


def test_no_missing_values_when_fraction_is_zero(tmp_path):
    result = write_synthetic_series(
        tmp_path, n_samples=20, n_probes=100, seed=3, missing_fraction=0.0, write_matrix=False
    )
    assert b"null" not in gzip.decompress(result.family_soft.read_bytes())
    assert result.series_matrix is None


# --------------------------------------------------------------------------------------
# Real-world format oracle and the demo
# --------------------------------------------------------------------------------------


def test_geoparse_reads_the_family_soft(tmp_path):
    GEOparse = pytest.importorskip("GEOparse")
    result = write_synthetic_series(
        tmp_path, n_samples=20, n_probes=60, seed=11, missing_fraction=0.01
    )
    own = read_soft(result.family_soft)
    gse = GEOparse.get_GEO(filepath=str(result.family_soft), silent=True)
    assert gse.name == "GSE13159"
    assert list(gse.gsms) == result.sample_ids
    assert list(gse.gpls) == ["GPL570"]
    assert list(gse.gpls["GPL570"].table["ID"]) == result.probe_ids
    for gsm_id, gsm in gse.gsms.items():
        block = own["samples"][gsm_id]
        assert gsm.metadata["characteristics_ch1"] == characteristics(block)
        table = gsm.table
        assert list(table["ID_REF"]) == result.probe_ids
        for probe_id, value in zip(table["ID_REF"], table["VALUE"]):
            expected = parse_value(block["values"][probe_id])
            assert (math.isnan(value) and math.isnan(expected)) or value == pytest.approx(expected)


def test_demo_series_matches_the_generator(tmp_path):
    demo = demo_series_dir()
    regenerated = write_synthetic_series(
        tmp_path, n_samples=120, n_probes=3000, seed=7, accession="GSE13159"
    )
    for path in (regenerated.family_soft, regenerated.series_matrix):
        committed = demo / path.name
        assert gzip.decompress(committed.read_bytes()) == gzip.decompress(path.read_bytes())
    committed_csv = demo / regenerated.annotation_csv.name
    assert committed_csv.read_bytes() == regenerated.annotation_csv.read_bytes()
    total = sum(p.stat().st_size for p in demo.iterdir())
    assert total < 4_000_000


def test_invalid_arguments_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="n_probes"):
        write_synthetic_series(tmp_path, n_samples=10, n_probes=10)
    with pytest.raises(ValueError, match="n_samples"):
        write_synthetic_series(tmp_path, n_samples=0, n_probes=100)
    with pytest.raises(ValueError, match="n_samples"):
        write_synthetic_series(tmp_path, n_samples=2097, n_probes=100)
    with pytest.raises(ValueError, match="missing_fraction"):
        write_synthetic_series(tmp_path, n_samples=10, n_probes=100, missing_fraction=1.5)
