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


# --------------------------------------------------------------------------------------
# Real-cohort settings: labs and batch effects, linear scale, ambiguity, signal, presets
# --------------------------------------------------------------------------------------

#: sha256 of the decompressed files of ``write_synthetic_series(out, n_samples=60,
#: n_probes=800, seed=3)`` (the ``small`` fixture), taken before the real-cohort settings
#: were added: the defaults must keep writing exactly these bytes.
DEFAULT_SMALL_SHA256 = {
    "GSE13159_family.soft.gz": "b7deae125c9d01380002cfbe8d3c5305279c72cb50d0357b382c3491ef155db9",
    "GSE13159_series_matrix.txt.gz":
        "fea502013c62f27bd8cbd6bdb6ce87565349b326afc308f1c813fb9780ecd478",
    "GPL570_annotation.csv": "ec4a2f8aa8e7589d228bac62117d74a629f0767d8af65ea90241a0ba6f320b67",
}
N_LAB_SAMPLES, N_LAB_PROBES, N_LABS = 120, 300, 4


def lineage_of_class(mile_class: str) -> str:
    return "ALL" if "ALL" in mile_class else "AML" if mile_class.startswith("AML") else "other"


def sample_classes(soft: dict) -> dict[str, str]:
    return {
        gsm: characteristics(block)[1].split(": ", 1)[1] for gsm, block in soft["samples"].items()
    }


def sample_labs(soft: dict) -> dict[str, str]:
    labs = {}
    for gsm, block in soft["samples"].items():
        lines = [c for c in characteristics(block) if c.startswith("lab: ")]
        assert len(lines) == 1, (gsm, characteristics(block))
        labs[gsm] = lines[0].split(": ", 1)[1]
    return labs


def median_lab_f_statistic(soft: dict) -> float:
    """Median over probes of the one-way ANOVA F statistic of the values by lab."""
    import numpy as np

    labs = sample_labs(soft)
    gsms = list(soft["samples"])
    probes = list(soft["samples"][gsms[0]]["values"])
    values = np.array(
        [[parse_value(soft["samples"][g]["values"][p]) for g in gsms] for p in probes]
    )
    groups = sorted(set(labs.values()))
    member = [np.array([labs[g] == lab for g in gsms]) for lab in groups]
    f_values = []
    for row in values:
        ok = ~np.isnan(row)
        parts = [row[m & ok] for m in member]
        grand = row[ok].mean()
        between = sum(len(x) * (x.mean() - grand) ** 2 for x in parts) / (len(parts) - 1)
        within = sum(((x - x.mean()) ** 2).sum() for x in parts) / (ok.sum() - len(parts))
        f_values.append(between / within)
    return float(np.median(f_values))


@pytest.fixture(scope="module")
def labbed(tmp_path_factory):
    """Four labs with the default batch strength, and the same series with strength 0."""
    out = {}
    for strength in (1.0, 0.0):
        folder = tmp_path_factory.mktemp(f"synth_labs_{strength}")
        result = write_synthetic_series(
            folder, n_samples=N_LAB_SAMPLES, n_probes=N_LAB_PROBES, seed=3, labs=N_LABS,
            batch_strength=strength,
        )
        out[strength] = (result, read_soft(result.family_soft), read_matrix(result.series_matrix))
    return out


def test_defaults_write_the_same_bytes_as_before(small):
    import hashlib

    result = small[0]
    for path in (result.family_soft, result.series_matrix, result.annotation_csv):
        data = path.read_bytes()
        if path.suffix == ".gz":
            data = gzip.decompress(data)
        assert hashlib.sha256(data).hexdigest() == DEFAULT_SMALL_SHA256[path.name], path.name
    assert result.sample_labs == []
    # The default ambiguity is the built-in per-sample draw, and only ALL/AML samples.
    classes = sample_classes(small[1])
    assert all(lineage_of_class(classes[g]) in ("ALL", "AML") for g in result.ambiguous_ids)


def test_explicit_default_settings_change_nothing(small, tmp_path):
    again = write_synthetic_series(
        tmp_path, n_samples=N_SAMPLES, n_probes=N_PROBES, seed=3, labs=1, batch_strength=1.0,
        lab_confounding=0.0, scale="log2", ambiguous_fraction=None, signal=1.0,
    )
    assert again.family_soft.read_bytes() == small[0].family_soft.read_bytes()
    assert again.series_matrix.read_bytes() == small[0].series_matrix.read_bytes()


def test_lab_characteristics_and_count(labbed):
    result, soft, matrix = labbed[1.0]
    labs = sample_labs(soft)
    assert set(labs.values()) == {f"L{k}" for k in range(1, N_LABS + 1)}
    assert [labs[g] for g in result.sample_ids] == result.sample_labs
    for gsm, block in soft["samples"].items():
        tissue, mile_class, lab = characteristics(block)
        assert tissue.startswith("tissue: ") and mile_class.startswith("leukemia class: ")
        description = [line for line in block["meta"] if line.startswith("!Sample_description")]
        assert description == [
            f"!Sample_description = Hybridised at laboratory {labs[gsm]} of {N_LABS} "
            f"(synthetic batch effect)"
        ]
    # The series matrix carries the same lab row and description row, and the same values.
    meta = matrix["meta"]
    tissue_row, class_row, lab_row = meta["!Sample_characteristics_ch1"]
    assert lab_row == [f"lab: {labs[g]}" for g in result.sample_ids]
    assert meta["!Sample_description"] == [[
        f"Hybridised at laboratory {labs[g]} of {N_LABS} (synthetic batch effect)"
        for g in result.sample_ids
    ]]
    for column, gsm in enumerate(result.sample_ids):
        block = soft["samples"][gsm]["values"]
        assert all(row[column] == block[p] for p, row in matrix["values"].items())


def test_lab_means_differ_only_with_batch_effects(labbed):
    # With the batch effects on, the lab explains much more of each probe's variance than
    # chance does (F ~ 1); with strength 0 the same lab assignment explains nothing.
    with_batch = median_lab_f_statistic(labbed[1.0][1])
    without = median_lab_f_statistic(labbed[0.0][1])
    assert with_batch > 4.0, with_batch
    assert without < 1.6, without
    assert sample_labs(labbed[1.0][1]) == sample_labs(labbed[0.0][1])  # same labs, no effect


def test_lab_confounding_skews_the_lab_mix_by_lineage(tmp_path):
    def lab_mix_distance(confounding: float) -> float:
        result = write_synthetic_series(
            tmp_path / str(confounding), n_samples=600, n_probes=40, seed=2, labs=6,
            lab_confounding=confounding, write_matrix=False,
        )
        soft = read_soft(result.family_soft)
        classes, labs = sample_classes(soft), sample_labs(soft)
        mixes = {}
        for lineage in ("ALL", "AML"):
            members = [labs[g] for g in labs if lineage_of_class(classes[g]) == lineage]
            counts = Counter(members)
            mixes[lineage] = {lab: counts[lab] / len(members) for lab in set(labs.values())}
        return 0.5 * sum(abs(mixes["ALL"][lab] - mixes["AML"][lab]) for lab in mixes["ALL"])

    assert lab_mix_distance(0.0) < 0.15
    assert lab_mix_distance(1.0) > 0.4


@pytest.fixture(scope="module")
def linear(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth_linear")
    result = write_synthetic_series(
        out, n_samples=N_SAMPLES, n_probes=N_PROBES, seed=3, scale="linear"
    )
    return result, read_soft(result.family_soft), read_matrix(result.series_matrix)


def test_linear_scale_has_negatives_and_a_mas5_range(linear, small):
    result, soft, matrix = linear
    cells = [v for block in soft["samples"].values() for v in block["values"].values()]
    assert all(re.fullmatch(r"-?\d{1,5}\.\d", v) for v in cells if v != "null")
    numbers = sorted(float(v) for v in cells if v != "null")
    median = numbers[len(numbers) // 2]
    assert numbers[0] < 0 and numbers[0] >= -999.9
    assert 0.0005 < sum(x < 0 for x in numbers) / len(numbers) < 0.05
    assert 30_000 < numbers[-1] <= 65_535.9
    assert 100 < median < 400
    # Same model as the log2 file: high values are 4 * 2**x (the background is negligible).
    log2_soft = small[1]
    compared = 0
    for gsm, block in soft["samples"].items():
        for probe, text in block["values"].items():
            log2_text = log2_soft["samples"][gsm]["values"][probe]
            if text == "null" or log2_text == "null":
                continue
            value = float(text)
            if value > 5_000 and float(log2_text) < 15.9:
                compared += 1
                assert abs(math.log2(value / 4.0) - float(log2_text)) < 0.03
    assert compared > 100
    # The matrix carries the same cells, and both files say what the values are.
    for column, gsm in enumerate(result.sample_ids):
        block = soft["samples"][gsm]["values"]
        assert all(row[column] == block[p] for p, row in matrix["values"].items())
    first = next(iter(soft["samples"].values()))
    assert any("linear scale" in line for line in first["meta"])
    assert "linear scale" in matrix["meta"]["!Sample_data_processing"][0][0]


def test_log2_scale_stays_in_the_log2_range(small):
    numbers = [
        float(v) for block in small[1]["samples"].values() for v in block["values"].values()
        if v != "null"
    ]
    assert min(numbers) >= 0.0 and max(numbers) <= 16.0 and max(numbers) > 10.0


@pytest.mark.parametrize("fraction", [0.0, 0.1])
def test_ambiguous_fraction_gives_an_exact_count_of_mixed_samples(fraction, tmp_path):
    result = write_synthetic_series(
        tmp_path, n_samples=300, n_probes=40, seed=5, ambiguous_fraction=fraction,
        write_matrix=False,
    )
    soft = read_soft(result.family_soft)
    classes = sample_classes(soft)
    eligible = [g for g in result.sample_ids if lineage_of_class(classes[g]) in ("ALL", "AML")]
    assert len(result.ambiguous_ids) == round(fraction * len(eligible))
    assert set(result.ambiguous_ids) <= set(eligible)
    if not fraction:
        return
    # Their expression is between the lineages: B/T-lymphoid minus myeloid marker score,
    # placed on the scale from the clear AML samples (0) to the clear ALL samples (1).
    annotation = read_annotation_file()
    all_probes = marker_probe_ids(annotation, ALL_MARKERS)
    aml_probes = marker_probe_ids(annotation, AML_MARKERS)

    def marker_score(gsm):
        values = soft["samples"][gsm]["values"]
        mean = lambda probes: sum(  # noqa: E731
            parse_value(values[p]) for p in probes if values[p] != "null"
        ) / sum(values[p] != "null" for p in probes)
        return mean(all_probes) - mean(aml_probes)

    clear = {lin: [marker_score(g) for g in eligible if g not in result.ambiguous_ids
                   and lineage_of_class(classes[g]) == lin] for lin in ("ALL", "AML")}
    low, high = sum(clear["AML"]) / len(clear["AML"]), sum(clear["ALL"]) / len(clear["ALL"])
    place = {g: (marker_score(g) - low) / (high - low) for g in result.ambiguous_ids}
    for lineage in ("ALL", "AML"):
        mixed = [p for g, p in place.items() if lineage_of_class(classes[g]) == lineage]
        assert mixed, lineage
        assert 0.2 < sum(mixed) / len(mixed) < 0.8, (lineage, mixed)


def test_weaker_signal_shrinks_the_lineage_difference(tmp_path):
    annotation = read_annotation_file()
    all_probes = marker_probe_ids(annotation, ALL_MARKERS)

    def gap(signal):
        result = write_synthetic_series(
            tmp_path / str(signal), n_samples=200, n_probes=40, seed=5, signal=signal,
            write_matrix=False,
        )
        soft = read_soft(result.family_soft)
        classes = sample_classes(soft)
        means = {}
        for lineage in ("ALL", "AML"):
            values = [parse_value(b["values"][p]) for g, b in soft["samples"].items()
                      if lineage_of_class(classes[g]) == lineage for p in all_probes]
            values = [v for v in values if not math.isnan(v)]
            means[lineage] = sum(values) / len(values)
        return means["ALL"] - means["AML"]

    strong, weak = gap(1.0), gap(0.25)
    assert strong > 1.5
    assert 0.1 < weak < 0.45 * strong


def test_hard_preset_is_deterministic_and_consistent(tmp_path):
    from leukspark.synth import PRESETS, preset_options

    options = preset_options("hard")
    assert options == PRESETS["hard"] and options["labs"] == 11 and options["signal"] < 1
    assert preset_options("hard", signal=0.5, labs=None)["signal"] == 0.5
    first = write_synthetic_series(tmp_path / "a", n_samples=80, n_probes=120, seed=9, **options)
    second = write_synthetic_series(tmp_path / "b", n_samples=80, n_probes=120, seed=9, **options)
    for one, two in [(first.family_soft, second.family_soft),
                     (first.series_matrix, second.series_matrix),
                     (first.annotation_csv, second.annotation_csv)]:
        assert one.read_bytes() == two.read_bytes(), one.name
    assert first.ambiguous_ids == second.ambiguous_ids and first.sample_labs == second.sample_labs
    soft, matrix = read_soft(first.family_soft), read_matrix(first.series_matrix)
    assert [row[0] for row in soft["platform_rows"]] == list(matrix["values"]) == first.probe_ids
    assert matrix["meta"]["!Sample_characteristics_ch1"][2] == [
        f"lab: {lab}" for lab in first.sample_labs
    ]
    summary = matrix["meta"]["!Series_summary"][0][0]
    assert "labs=11" in summary and "ambiguous_fraction=0.03" in summary
    with pytest.raises(ValueError, match="preset"):
        preset_options("impossible")


def test_cli_synth_preset_and_flags(tmp_path, capsys):
    from leukspark.cli import main

    out = tmp_path / "series"
    assert main(["synth", "--samples", "40", "--probes", "40", "--seed", "2", "--out", str(out),
                 "--preset", "hard", "--labs", "3", "--scale", "linear"]) == 0
    soft = read_soft(out / "GSE13159_family.soft.gz")
    assert set(sample_labs(soft).values()) <= {"L1", "L2", "L3"}
    assert any(v.startswith("-") or float(v) > 1000 for b in soft["samples"].values()
               for v in b["values"].values() if v != "null")
    assert "settings:" in capsys.readouterr().out
    assert main(["synth", "--samples", "10", "--probes", "40", "--out", str(out),
                 "--lab-confounding", "2"]) == 2


def test_invalid_cohort_settings_are_rejected(tmp_path):
    for settings, message in [
        ({"labs": 0}, "labs"), ({"labs": 101}, "labs"), ({"scale": "ln"}, "scale"),
        ({"lab_confounding": 1.5}, "lab_confounding"), ({"batch_strength": -1}, "batch_strength"),
        ({"ambiguous_fraction": -0.1}, "ambiguous_fraction"), ({"signal": 0}, "signal"),
    ]:
        with pytest.raises(ValueError, match=message):
            write_synthetic_series(tmp_path, n_samples=10, n_probes=100, **settings)


# --------------------------------------------------------------------------------------
# Several series in one lake (series_index)
# --------------------------------------------------------------------------------------


def test_further_series_have_their_own_ids_accession_labs_and_values(small, tmp_path):
    first, first_soft, _ = small
    second = write_synthetic_series(tmp_path / "s1", n_samples=N_SAMPLES, n_probes=N_PROBES, seed=3, series_index=1)
    third = write_synthetic_series(tmp_path / "s2", n_samples=N_SAMPLES, n_probes=N_PROBES, seed=3, series_index=2)
    soft = read_soft(second.family_soft)
    # ids: disjoint from GSE13159's real ids and from each other; accessions differ
    real_ids = {gsm for gsm, _, _ in read_info_file()}
    assert first.accession == "GSE13159" and second.accession != third.accession != "GSE13159"
    assert second.family_soft.name == f"{second.accession}_family.soft.gz"
    assert not set(second.sample_ids) & set(first.sample_ids) and not set(second.sample_ids) & real_ids
    assert not set(second.sample_ids) & set(third.sample_ids)
    assert soft["series_ids"] == second.sample_ids == list(soft["samples"])
    assert all(f"!Sample_series_id = {second.accession}" in b["meta"] for b in soft["samples"].values())
    # the same platform (probe ids and symbols), the class mix of GSE13159
    assert second.probe_ids == first.probe_ids
    assert second.annotation_csv.read_bytes() == first.annotation_csv.read_bytes()
    assert Counter(sample_classes(soft).values()) == Counter(sample_classes(first_soft).values())
    # values: not copies of series 0's (compare each sample's value column, and all values as a multiset)
    first_columns = {tuple(b["values"].values()) for b in first_soft["samples"].values()}
    assert not first_columns & {tuple(b["values"].values()) for b in soft["samples"].values()}
    first_values = sorted(v for b in first_soft["samples"].values() for v in b["values"].values())
    assert first_values != sorted(v for b in soft["samples"].values() for v in b["values"].values())


def test_further_series_draw_their_own_labs_and_keep_series_zero_unchanged(tmp_path):
    base = write_synthetic_series(tmp_path / "a", n_samples=40, n_probes=200, seed=5, labs=3)
    index0 = write_synthetic_series(tmp_path / "b", n_samples=40, n_probes=200, seed=5, labs=3, series_index=0)
    assert base.family_soft.read_bytes() == index0.family_soft.read_bytes()   # index 0 is GSE13159 as before
    other = write_synthetic_series(tmp_path / "c", n_samples=40, n_probes=200, seed=5, labs=3, series_index=1)
    assert set(other.sample_labs) <= {"L4", "L5", "L6"} and set(base.sample_labs) <= {"L1", "L2", "L3"}
    again = write_synthetic_series(tmp_path / "d", n_samples=40, n_probes=200, seed=5, labs=3, series_index=1)
    assert again.family_soft.read_bytes() == other.family_soft.read_bytes()   # deterministic
    with pytest.raises(ValueError, match="series_index"):
        write_synthetic_series(tmp_path / "e", n_samples=10, n_probes=100, series_index=-1)


def test_cli_synth_writes_several_series(tmp_path, capsys):
    from leukspark.cli import main

    out = tmp_path / "lake_series"
    assert main(["synth", "--samples", "20", "--probes", "60", "--seed", "2", "--out", str(out),
                 "--series", "3", "--no-matrix"]) == 0
    written = sorted(p.name for p in out.glob("*_family.soft.gz"))
    assert written == ["GSE13159_family.soft.gz", "GSE90000001_family.soft.gz", "GSE90000002_family.soft.gz"]
    ids = [set(read_soft(out / name)["samples"]) for name in written]
    assert sum(map(len, ids)) == len(set().union(*ids)) == 60
    assert main(["synth", "--samples", "20", "--probes", "60", "--out", str(out), "--series", "0"]) == 2
