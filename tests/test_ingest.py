"""Ingest into Delta tables: counts against the files themselves, idempotence, conflicts, recovery."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest
from deltalake import DeltaTable
from pyspark.sql import functions as F

from leukspark.errors import DuplicateSampleError, GeoFormatError, InputError
from leukspark.stages.ingest import ingest_sources


def count_sample_rows(path: Path) -> dict[str, int]:
    """Rows per sample table, read line by line: an oracle independent of the parser."""
    counts, current, inside = {}, None, False
    with gzip.open(path, "rt", newline=None) as handle:
        for line in handle:
            line = line.rstrip("\r\n")
            if line.startswith("^SAMPLE"):
                current = line.split("=", 1)[1].strip()
            elif line.lower() == "!sample_table_begin":
                inside, counts[current] = True, -1  # the header row is not a value
            elif line.lower() == "!sample_table_end":
                inside = False
            elif inside:
                counts[current] += 1
    return counts


def test_two_platform_family_soft_counts_match_the_file(spark, lake, config, geo_data_dir):
    source = geo_data_dir / "GSE781_family.soft.gz"
    report = ingest_sources(spark, lake, [str(source)], config)
    expected = count_sample_rows(source)
    assert sorted(report.new_samples) == sorted(expected)
    per_sample = {r["sample"]: r["count"] for r in lake.read("expression").groupBy("sample").count().collect()}
    assert per_sample == expected
    samples = lake.read("samples")
    assert samples.count() == len(expected)
    platforms = {r["platform"]: r["count"] for r in samples.groupBy("platform").count().collect()}
    assert set(platforms) == {"GPL96", "GPL97"}
    probes = {r["platform"]: r["count"] for r in lake.read("platform_probes").groupBy("platform").count().collect()}
    assert probes == {"GPL96": 22283, "GPL97": 22645}
    series = lake.read("series").collect()
    assert [(r["series"], sorted(r["platforms"]), r["n_samples"]) for r in series] == [
        ("GSE781", ["GPL96", "GPL97"], len(expected))]
    # Every table is a real Delta table that delta-rs opens on its own.
    for table in ("series", "samples", "expression", "platform_probes"):
        assert DeltaTable(lake.path(table)).version() == 0


def test_reingesting_adds_nothing_and_commits_nothing(spark, lake, config, geo_data_dir):
    source = str(geo_data_dir / "GSE781_family.soft.gz")
    ingest_sources(spark, lake, [source], config)
    versions = {t: lake.version(t) for t in ("samples", "expression", "platform_probes", "series")}
    rows = lake.read("expression").count()
    report = ingest_sources(spark, lake, [source], config)
    assert report.new_samples == [] and len(report.unchanged_samples) == 34
    assert {t: lake.version(t) for t in versions} == versions
    assert lake.read("expression").count() == rows


def test_second_series_adds_only_its_own_samples(spark, lake, config, tmp_path):
    from leukspark.synth import write_synthetic_series

    first = write_synthetic_series(tmp_path / "a", n_samples=40, n_probes=300, seed=1, accession="GSE13159")
    second = write_synthetic_series(tmp_path / "b", n_samples=40, n_probes=300, seed=2, accession="GSE99999")
    ingest_sources(spark, lake, [str(first.family_soft)], config)
    before = {r["sample"] for r in lake.read("samples").collect()}
    config_replace = {**config, "ingest": {**config["ingest"], "on_conflict": "replace"}}
    report = ingest_sources(spark, lake, [str(second.family_soft)], config_replace)
    # Both draw real GSM ids from the same table: overlapping ids arrive with other values.
    overlap = set(second.sample_ids) & before
    assert set(report.replaced_samples) == overlap
    assert set(report.new_samples) == set(second.sample_ids) - before
    counts = lake.read("expression").groupBy("sample").count()
    assert counts.where(F.col("count") != 300).count() == 0
    assert counts.count() == len(before | set(second.sample_ids))


def test_changed_sample_fails_by_default_and_writes_nothing(spark, lake, config, tmp_path):
    from leukspark.synth import write_synthetic_series

    first = write_synthetic_series(tmp_path / "a", n_samples=30, n_probes=200, seed=1)
    text = gzip.decompress(first.family_soft.read_bytes()).decode()
    block = text.index("!sample_table_begin")
    sample = text[:block].rsplit("^SAMPLE = ", 1)[1].split("\n", 1)[0].strip()
    header_end = text.index("\n", text.index("\n", block) + 1) + 1
    row_end = text.index("\n", header_end)
    probe = text[header_end:row_end].split("\t")[0]
    changed = tmp_path / "changed_family.soft.gz"
    changed.write_bytes(gzip.compress((text[:header_end] + f"{probe}\t99.5" + text[row_end:]).encode()))

    ingest_sources(spark, lake, [str(first.family_soft)], config)
    versions = {t: lake.version(t) for t in ("samples", "expression")}
    with pytest.raises(DuplicateSampleError, match=sample):
        ingest_sources(spark, lake, [str(changed)], config)
    assert {t: lake.version(t) for t in versions} == versions

    replace = {**config, "ingest": {**config["ingest"], "on_conflict": "replace"}}
    report = ingest_sources(spark, lake, [str(changed)], replace)
    assert report.replaced_samples == [sample]
    stored = lake.read("expression").where((F.col("sample") == sample) & (F.col("probe_id") == probe)).collect()
    assert [r["value"] for r in stored] == [99.5]
    assert lake.read("expression").count() == 30 * 200


def test_missing_values_stay_null_and_are_counted(spark, lake, config, tmp_path, geo_data_dir):
    text = gzip.open(geo_data_dir / "GSM11805.txt.gz", "rt").read().splitlines()
    start = next(i for i, line in enumerate(text) if line.lower() == "!sample_table_begin") + 2
    for offset, token in ((0, "null"), (1, "")):
        probe, _, *rest = text[start + offset].split("\t")
        text[start + offset] = "\t".join([probe, token, *rest])
    path = tmp_path / "GSM11805_missing.txt.gz"
    path.write_bytes(gzip.compress("\n".join(text).encode()))
    report = ingest_sources(spark, lake, [str(path)], config)
    assert report.n_missing == 2
    nulls = lake.read("expression").where(F.col("value").isNull()).count()
    zeros = lake.read("expression").where(F.col("value") == 0).count()
    assert nulls == 2 and zeros == 0
    assert lake.read("samples").first()["n_missing"] == 2


@pytest.mark.parametrize("damage", ["truncated", "bad_value", "missing_end"])
def test_bad_input_is_named_and_nothing_is_committed(spark, lake, config, tmp_path, geo_data_dir, damage):
    source = geo_data_dir / "GSE781_family.soft.gz"
    ingest_sources(spark, lake, [str(geo_data_dir / "GSM11805.txt.gz")], config)
    versions = {t: lake.version(t) for t in ("samples", "expression")}
    raw = gzip.decompress(source.read_bytes())
    if damage == "truncated":
        data = source.read_bytes()[: len(source.read_bytes()) // 2]
    elif damage == "bad_value":
        data = gzip.compress(raw.replace(b"AFFX-BioB-5_at\t953.9", b"AFFX-BioB-5_at\tabc", 1))
    else:
        data = gzip.compress(raw.replace(b"!sample_table_end", b"", 1))
    broken = tmp_path / f"GSE781_{damage}_family.soft.gz"
    broken.write_bytes(data)
    with pytest.raises(GeoFormatError, match=broken.name):
        ingest_sources(spark, lake, [str(broken)], config)
    assert {t: lake.version(t) for t in versions} == versions
    assert not list(Path(lake.path("_spool")).glob("*/*")) if Path(lake.path("_spool")).exists() else True


def test_missing_path_and_bad_accession_are_clear(spark, lake, config):
    from leukspark.errors import GeoDownloadError

    with pytest.raises(InputError, match="no_such_file.soft.gz"):
        ingest_sources(spark, lake, ["no_such_file.soft.gz"], config)
    with pytest.raises(GeoDownloadError, match="GSE12x"):
        ingest_sources(spark, lake, ["GSE12x"], config)


def test_rerun_after_crash_between_commits_leaves_no_duplicates(spark, lake, config, geo_data_dir, monkeypatch):
    source = str(geo_data_dir / "GSE781_family.soft.gz")
    original_merge = type(lake).merge

    def crash_on_samples(self, table, df, keys, **kwargs):
        if table == "samples":
            raise KeyboardInterrupt("killed after the expression commit")
        return original_merge(self, table, df, keys, **kwargs)

    monkeypatch.setattr(type(lake), "merge", crash_on_samples)
    with pytest.raises(KeyboardInterrupt):
        ingest_sources(spark, lake, [source], config)
    monkeypatch.setattr(type(lake), "merge", original_merge)
    assert lake.exists("expression") and not lake.exists("samples")
    ingest_sources(spark, lake, [source], config)
    expected = count_sample_rows(Path(source))
    per_sample = {r["sample"]: r["count"] for r in lake.read("expression").groupBy("sample").count().collect()}
    assert per_sample == expected


def _small_settings(tmp_path) -> str:
    path = tmp_path / "small.yaml"
    path.write_text("spark: {shuffle_partitions: 4, driver_memory: 4g}\n")
    return str(path)


@pytest.mark.parametrize("name, text, expected", [
    ("inf.csv", "gene,S1,S2\nTP53,1,2\nMPO,3,-inf\n", ["sample S2", "line 3", "probe MPO", "'-inf' is infinite"]),
    ("big.tsv", "gene\tS1\tS2\nTP53\t1e400\t2\n", ["sample S1", "line 2", "probe TP53", "'1e400' is infinite"]),
    ("ragged.csv", "gene,S1,S2\nTP53,1,2\nMPO,3\n", ["line 3: 2 fields", "has 3"]),
    ("empty.csv", "", ["the file is empty"]),
    ("twice.csv", "gene,S1,S1\nTP53,1,2\n", ["line 1", "'S1' appears twice"]),
])
def test_the_cli_refuses_a_bad_matrix_in_one_line_and_writes_nothing(spark, tmp_path, capsys, name, text, expected):
    from leukspark.cli import main

    path = tmp_path / name
    path.write_text(text)
    lake = tmp_path / "lake"
    assert main(["ingest", str(path), "--lake", str(lake), "--config", _small_settings(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"leukspark ingest: error: {path}") and error.count("\n") == 1
    assert all(part in error for part in expected), error
    assert not any((lake / table / "_delta_log").exists() for table in ("samples", "expression", "series"))


def test_a_utf16_matrix_with_a_byte_order_mark_is_ingested(spark, lake, config, tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes("gene,S1,S2\nTP53,1.5,2\nMPO,3,NA\n".encode("utf-16"))
    report = ingest_sources(spark, lake, [str(path)], config)
    assert sorted(report.new_samples) == ["S1", "S2"] and report.n_missing == 1
    values = {(r["sample"], r["probe_id"]): r["value"] for r in lake.read("expression").collect()}
    assert values[("S1", "TP53")] == 1.5 and values[("S2", "MPO")] is None


def _lake_rows(lake, table: str, columns: list[str]) -> list[tuple]:
    return sorted(tuple(r) for r in lake.read(table).select(*columns).collect())


def test_a_soft_file_read_in_shares_gives_the_tables_one_reader_gives(spark, config, tmp_path):
    from leukspark.lake import Lake
    from leukspark.synth import write_synthetic_series

    # 110 samples: shares deal blocks of 48 samples, so share 0 reads 48 + 14, share 1 reads 48.
    series = write_synthetic_series(tmp_path / "s", n_samples=110, n_probes=120, seed=3, write_matrix=False)
    tiny = series.family_soft.stat().st_size / 2**20 / 4  # the file counts as 4 "split units"
    lakes = {}
    for name, split in (("whole", 0), ("shares", tiny)):
        lakes[name] = Lake.from_config(spark, tmp_path / name, config)
        report = ingest_sources(spark, lakes[name], [str(series.family_soft)],
                                {**config, "ingest": {**config["ingest"], "split_file_mb": split}})
        assert sorted(report.new_samples) == sorted(series.sample_ids)
    files = {name: {Path(f).name for f in lake.active_files("expression")} for name, lake in lakes.items()}
    assert all("s00" not in f for f in files["whole"]) and any("s01" in f for f in files["shares"])
    expression = ["sample", "series", "platform", "probe_id", "value"]
    assert _lake_rows(lakes["shares"], "expression", expression) == _lake_rows(lakes["whole"], "expression", expression)
    sample_columns = ["sample", "series", "platform", "n_values", "values_checksum", "value_scale"]
    assert _lake_rows(lakes["shares"], "samples", sample_columns) == _lake_rows(lakes["whole"], "samples", sample_columns)
    assert _lake_rows(lakes["shares"], "series", ["series", "n_samples"]) == [("GSE13159", 110)]
    # Re-sent in shares, the stored samples are recognised: nothing new, nothing committed.
    version = lakes["shares"].version("expression")
    again = ingest_sources(spark, lakes["shares"], [str(series.family_soft)],
                           {**config, "ingest": {**config["ingest"], "split_file_mb": tiny}})
    assert again.new_samples == [] and len(again.unchanged_samples) == 110
    assert lakes["shares"].version("expression") == version


def test_a_bad_value_in_the_second_share_names_file_and_sample_and_writes_nothing(spark, config, tmp_path):
    from leukspark.lake import Lake
    from leukspark.synth import write_synthetic_series

    series = write_synthetic_series(tmp_path / "s", n_samples=110, n_probes=120, seed=3, write_matrix=False)
    text = gzip.decompress(series.family_soft.read_bytes()).decode()
    victim = series.sample_ids[60]  # in the second block of 48: share 1 of 2 reads it
    head, _, rest = text.partition(f"^SAMPLE = {victim}\n")
    begin = rest.index("!sample_table_begin\n") + len("!sample_table_begin\n")
    first_row = rest.index("\n", rest.index("\n", begin) + 1)  # the header, then the first data row
    row = rest[rest.index("\n", begin) + 1:first_row]
    broken = rest.replace(row, row.split("\t")[0] + "\tnot-a-number", 1)
    bad = tmp_path / "bad_family.soft.gz"
    bad.write_bytes(gzip.compress((head + f"^SAMPLE = {victim}\n" + broken).encode()))
    lake = Lake.from_config(spark, tmp_path / "lake", config)
    tiny = bad.stat().st_size / 2**20 / 4
    with pytest.raises(GeoFormatError) as caught:
        ingest_sources(spark, lake, [str(bad)], {**config, "ingest": {**config["ingest"], "split_file_mb": tiny}})
    assert str(bad) in str(caught.value) and victim in str(caught.value)
    assert not lake.exists("expression") and not lake.exists("samples")
    left = [p for p in (tmp_path / "lake").rglob("*.parquet")]
    assert left == []  # the staged files of both shares were removed


def test_shares_go_to_big_soft_files_only_while_cores_would_idle():
    from leukspark.stages.ingest import shares_per_file

    mb = 2**20
    assert shares_per_file([776 * mb], 2, 64 * mb, [True]) == [2]
    assert shares_per_file([776 * mb], 16, 64 * mb, [True]) == [12]
    assert shares_per_file([100 * mb], 16, 64 * mb, [True]) == [1]  # not worth a second gunzip
    assert shares_per_file([776 * mb, 776 * mb], 2, 64 * mb, [True, True]) == [1, 1]
    assert shares_per_file([776 * mb, 10 * mb], 8, 64 * mb, [True, True]) == [4, 1]
    assert shares_per_file([776 * mb], 8, 64 * mb, [False]) == [1]  # a matrix or series matrix
    assert shares_per_file([776 * mb], 8, 0, [True]) == [1]
