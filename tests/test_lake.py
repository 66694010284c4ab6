"""Delta table I/O: real Delta tables (checked with delta-rs itself), atomic commits, history."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from deltalake import DeltaTable
from pyspark.sql import functions as F
from pyspark.sql.types import DoubleType

from leukspark.errors import SchemaMismatchError, TableError
from leukspark.lake import STAGING_PREFIX


def _rows(spark, ids, tag="v1"):
    return (spark.createDataFrame([(i,) for i in ids], "id long")
            .withColumn("tag", F.lit(tag))
            .withColumn("value", F.col("id").cast("double") * 1.5)
            .withColumn("attrs", F.create_map(F.lit("k"), F.col("tag")))
            .withColumn("vector", F.array(F.col("value"), F.lit(None).cast(DoubleType()))))


def _as_dict(df, key="id"):
    return {r[key]: r.asDict() for r in df.collect()}


def test_append_creates_a_delta_table_that_delta_rs_reads(spark, lake):
    lake.append("t", _rows(spark, range(5)))
    lake.append("t", _rows(spark, range(5, 8)))
    table = DeltaTable(lake.path("t"))
    assert table.version() == 1
    frame = table.to_pandas()
    assert sorted(frame["id"]) == list(range(8))
    assert frame.loc[frame["id"] == 3, "value"].item() == 4.5
    assert lake.read("t").count() == 8
    # delta-spark 4.x reads reader 1 / writer 2 tables without table features.
    protocol = table.protocol()
    assert (protocol.min_reader_version, protocol.min_writer_version) == (1, 2)
    assert not protocol.reader_features and not protocol.writer_features
    log_files = sorted(p.name for p in (Path(lake.path("t")) / "_delta_log").glob("*.json"))
    assert log_files == ["00000000000000000000.json", "00000000000000000001.json"]


def test_history_records_each_commit_with_its_operation(spark, lake):
    lake.append("t", _rows(spark, range(3)), operation="ingest")
    lake.merge("t", _rows(spark, [1], tag="v2"), ["id"], operation="relabel")
    lake.overwrite("t", _rows(spark, [9]), operation="rebuild")
    history = lake.history("t")
    assert [h["version"] for h in history] == [2, 1, 0]
    assert [h["operation"] for h in history] == ["rebuild", "relabel", "ingest"]
    # Old versions stay readable through delta-rs time travel.
    old = DeltaTable(lake.path("t"), version=1).to_pandas()
    assert sorted(old["id"]) == [0, 1, 2]
    assert old.loc[old["id"] == 1, "tag"].item() == "v2"


def test_merge_replaces_matching_keys_and_adds_new_ones(spark, lake):
    lake.append("t", _rows(spark, range(6)))
    lake.merge("t", _rows(spark, [2, 3, 10], tag="v2"), ["id"])
    rows = _as_dict(lake.read("t"))
    assert sorted(rows) == [0, 1, 2, 3, 4, 5, 10]
    assert {i for i, r in rows.items() if r["tag"] == "v2"} == {2, 3, 10}


def test_insert_new_is_idempotent(spark, lake):
    lake.insert_new("t", _rows(spark, range(4)), ["id"])
    version = lake.version("t")
    assert lake.insert_new("t", _rows(spark, range(4), tag="other"), ["id"]) is None
    assert lake.version("t") == version
    lake.insert_new("t", _rows(spark, range(2, 7), tag="other"), ["id"])
    rows = _as_dict(lake.read("t"))
    assert sorted(rows) == list(range(7))
    assert rows[2]["tag"] == "v1" and rows[6]["tag"] == "other"


def test_delete_keys_removes_only_those_rows(spark, lake):
    lake.append("t", _rows(spark, range(6)))
    lake.delete_keys("t", spark.createDataFrame([(1,), (4,)], "id long"))
    assert sorted(_as_dict(lake.read("t"))) == [0, 2, 3, 5]


def test_failed_write_leaves_previous_version_readable_and_unchanged(spark, lake):
    lake.append("t", _rows(spark, range(5)))
    before = _as_dict(lake.read("t"))
    version = lake.version("t")

    @F.udf("double")
    def explode_on_three(value):
        if value == 4.5:
            raise ValueError("boom in a task")
        return value

    failing = _rows(spark, range(100)).repartition(4).withColumn("value", explode_on_three("value"))
    with pytest.raises(Exception):
        lake.append("t", failing)
    assert lake.version("t") == version
    assert _as_dict(lake.read("t")) == before
    # No staged file of the failed write is left in the table folder.
    on_disk = {str(p.resolve()) for p in Path(lake.path("t")).rglob("*.parquet")}
    active = {str(Path(u.removeprefix("file://")).resolve()) for u in DeltaTable(lake.path("t")).file_uris()}
    assert on_disk == active


def test_schema_mismatch_is_refused_naming_the_column(spark, lake):
    lake.append("t", _rows(spark, range(3)))
    with pytest.raises(SchemaMismatchError, match="'value'"):
        lake.append("t", _rows(spark, range(3)).withColumn("value", F.col("value").cast("string")))
    assert lake.read("t").count() == 3


def test_reading_a_missing_table_names_it(lake):
    with pytest.raises(TableError, match="'nothing'"):
        lake.read("nothing")


def test_commit_is_one_log_entry_for_many_task_files(spark, lake):
    lake.append("t", _rows(spark, range(1000)).repartition(4))
    entry = (Path(lake.path("t")) / "_delta_log" / "00000000000000000000.json").read_text().splitlines()
    adds = [json.loads(line)["add"] for line in entry if '"add"' in line]
    assert len(adds) == 4
    assert sum(json.loads(a["stats"])["numRecords"] for a in adds) == 1000


def _gene_rows(genes):
    import pandas as pd

    return pd.DataFrame({"position": range(len(genes)), "gene": genes, "n_probes": [2] * len(genes)}).astype(
        {"position": "int32", "n_probes": "int32"})


def test_rows_the_driver_holds_are_committed_without_spark_and_read_back(spark, lake):
    from leukspark import schemas

    lake.append_small("genes", _gene_rows(["CD19", "MPO"]), schemas.GENES, operation="features")
    lake.append_small("genes", _gene_rows(["TP53"]), schemas.GENES, operation="features")
    assert lake.version("genes") == 1
    read = DeltaTable(lake.path("genes")).to_pandas().sort_values(["gene"])
    assert read["gene"].tolist() == ["CD19", "MPO", "TP53"]
    lake.overwrite_small("genes", _gene_rows(["KIT"]), schemas.GENES, operation="features")
    assert [tuple(r) for r in lake.read("genes").collect()] == [(0, "KIT", 2)]
    assert [h["operation"] for h in lake.history("genes")][0] == "features"
    # Every file on disk is an active one: the driver's staging folders are committed, not left.
    on_disk = sorted(str(p.relative_to(lake.path("genes"))) for p in Path(lake.path("genes")).rglob("*.parquet"))
    assert len(on_disk) == 3 and all(p.startswith(STAGING_PREFIX) for p in on_disk)
    assert DeltaTable(lake.path("genes"), version=1).to_pandas().shape[0] == 3


def test_rows_the_driver_holds_in_another_schema_are_refused_naming_the_column(spark, lake):
    from pyspark.sql.types import StringType, StructField, StructType

    from leukspark import schemas

    lake.append_small("genes", _gene_rows(["CD19"]), schemas.GENES)
    wrong = StructType([StructField("position", StringType(), False), *schemas.GENES.fields[1:]])
    with pytest.raises(SchemaMismatchError, match="'position'"):
        lake.overwrite_small("genes", _gene_rows(["MPO"]).astype({"position": str}), wrong)
    assert lake.read("genes").collect()[0]["gene"] == "CD19"
    assert len(list(Path(lake.path("genes")).rglob("*.parquet"))) == 1  # nothing staged for the refused rows


def _stage_vectors(lake, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    staged = lake.new_staging("gene_features")
    if rows:
        table = pa.table({"sample": [s for s, _ in rows], "features": [list(v) for _, v in rows]},
                         schema=pa.schema([("sample", pa.string()), ("features", pa.list_(pa.float64()))]))
        pq.write_table(table, staged.directory / "part-0.parquet")
    return staged


def test_an_overwriting_staged_commit_replaces_every_row_even_with_none(spark, lake):
    from leukspark import schemas

    lake.commit_staged(_stage_vectors(lake, [("S1", [1.0, 2.0]), ("S2", [3.0, 4.0])]), schemas.GENE_FEATURES)
    lake.commit_staged(_stage_vectors(lake, [("S3", [5.0, float("nan")])]), schemas.GENE_FEATURES, overwrite=True)
    rows = lake.read("gene_features").collect()
    assert [r["sample"] for r in rows] == ["S3"] and rows[0]["features"][0] == 5.0
    info = lake.commit_staged(_stage_vectors(lake, []), schemas.GENE_FEATURES, overwrite=True)
    assert info.version == 2 and lake.read("gene_features").count() == 0
    assert sorted(DeltaTable(lake.path("gene_features"), version=1).to_pandas()["sample"]) == ["S3"]
    with pytest.raises(ValueError, match="replace_keys"):
        lake.commit_staged(_stage_vectors(lake, []), schemas.GENE_FEATURES, overwrite=True,
                           replace_keys=spark.createDataFrame([("S1",)], "sample string"))


def test_staged_commits_record_key_ranges_and_a_replace_reads_only_the_files_that_may_hold_its_keys(
        spark, lake, monkeypatch):
    """Each staged file's add action carries the min/max of its text columns (from the Parquet footer,
    checked here against the file's own rows), so replacing keys outside every stored range scans no
    stored file, and a key inside one range scans that file only, and still replaces its row."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    import leukspark.lake as lake_module
    from leukspark import schemas

    lake.commit_staged(_stage_vectors(lake, [("S1", [1.0, 2.0]), ("S3", [3.0, 4.0])]), schemas.GENE_FEATURES)
    lake.commit_staged(_stage_vectors(lake, [("T1", [5.0, 6.0]), ("T2", [7.0, 8.0])]), schemas.GENE_FEATURES)
    actions = pa.table(DeltaTable(lake.path("gene_features")).get_add_actions(flatten=True)).to_pydict()
    for path, low, high, n in zip(actions["path"], actions["min.sample"], actions["max.sample"],
                                  actions["num_records"]):
        samples = pq.read_table(Path(lake.path("gene_features")) / path).column("sample").to_pylist()
        assert (low, high, n) == (min(samples), max(samples), len(samples))
    scanned, real = [], lake_module._files_in_range
    monkeypatch.setattr(lake_module, "_files_in_range", lambda *a: scanned.append(found := real(*a)) or found)
    lake.commit_staged(_stage_vectors(lake, [("U1", [0.0, 0.0])]), schemas.GENE_FEATURES,
                       replace_keys=spark.createDataFrame([("U1",)], "sample string"))
    assert scanned == [[]]   # a new key: no stored file read
    lake.commit_staged(_stage_vectors(lake, [("S2", [9.0, 9.0]), ("S3", [0.5, 0.5])]), schemas.GENE_FEATURES,
                       replace_keys=spark.createDataFrame([("S2",), ("S3",)], "sample string"))
    assert len(scanned[-1]) == 1 and "S1" <= "S2" <= "S3"   # only the file whose range is S1..S3
    rows = {r["sample"]: r["features"] for r in lake.read("gene_features").collect()}
    assert sorted(rows) == ["S1", "S2", "S3", "T1", "T2", "U1"] and rows["S3"] == [0.5, 0.5]


def test_keys_of_another_type_than_the_ranged_column_are_still_replaced(spark, lake):
    """Text keys for a number column: Spark's join casts them; the range test must not crash on them."""
    lake.append("t", _rows(spark, range(4)))
    lake.append("t", _rows(spark, range(10, 14)))
    lake.delete_keys("t", spark.createDataFrame([("2",), ("12",)], "id string"))
    assert sorted(r["id"] for r in lake.read("t").collect()) == [0, 1, 3, 10, 11, 13]


def _dead_owner():
    import socket
    import subprocess
    import sys

    from leukspark.owner import Owner

    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return Owner(socket.gethostname(), process.pid, "gone.t")


def test_staging_of_a_killed_writer_is_swept_when_older_commits_live_only_in_a_checkpoint(spark, lake):
    from leukspark import schemas
    from leukspark.owner import MARKER_NAME, write_marker

    lake.append_small("genes", _gene_rows(["CD19"]), schemas.GENES)
    lake.append_small("genes", _gene_rows(["MPO"]), schemas.GENES)
    table_dir = Path(lake.path("genes"))
    DeltaTable(str(table_dir)).create_checkpoint()
    lake.append_small("genes", _gene_rows(["TP53"]), schemas.GENES)
    # log clean-up: the commits up to the checkpoint are gone, only the checkpoint names their files
    for version in (0, 1):
        (table_dir / "_delta_log" / f"{version:020d}.json").unlink()
    committed = sorted(p for p in table_dir.iterdir() if p.is_dir() and p.name.startswith(STAGING_PREFIX))
    write_marker(committed[0], _dead_owner())       # killed between its commit and removing its marker
    killed = table_dir / f"{STAGING_PREFIX}killed-writer"
    killed.mkdir()
    (killed / "part-0.parquet").write_bytes(b"never committed")
    write_marker(killed, _dead_owner())

    assert lake.remove_orphaned_staging() == [f"genes/{killed.name}"]
    assert not killed.exists() and committed[0].is_dir() and not (committed[0] / MARKER_NAME).exists()
    assert sorted(r["gene"] for r in lake.read("genes").collect()) == ["CD19", "MPO", "TP53"]


def test_files_that_deletion_vectors_hide_rows_of_are_not_read_as_they_are(spark, lake):
    import struct
    import time

    import pandas as pd
    import pyarrow as pa
    from deltalake import write_deltalake

    path = lake.path("dv")
    write_deltalake(path, pd.DataFrame({"id": [1, 2, 3]}), configuration={"delta.enableDeletionVectors": "true"})
    assert [r["id"] for r in lake.read("dv").orderBy("id").collect()] == [1, 2, 3]  # enabled, none yet
    # What delta-spark's DELETE of row 1 commits: the file again, with an inline deletion vector.
    first = [json.loads(x) for x in (Path(path) / "_delta_log" / f"{0:020d}.json").read_text().splitlines()]
    add = next(e["add"] for e in first if "add" in e)
    now = int(time.time() * 1000)
    bitmap = struct.pack("<IIHHIH", 12346, 1, 0, 0, 16, 1)      # portable roaring bitmap {1}
    vector = struct.pack("<iqi", 1681511377, 1, 0) + bitmap       # magic, one 32-bit bucket, key 0
    entries = [{"commitInfo": {"timestamp": now, "operation": "DELETE"}},
               {"remove": {"path": add["path"], "deletionTimestamp": now, "dataChange": True}},
               {"add": {**add, "modificationTime": now, "deletionVector": {
                   "storageType": "i", "pathOrInlineDv": _z85(vector), "sizeInBytes": len(vector),
                   "cardinality": 1}}}]
    (Path(path) / "_delta_log" / f"{1:020d}.json").write_text("\n".join(json.dumps(e) for e in entries) + "\n")
    assert pa.table(DeltaTable(path).deletion_vectors()).column("selection_vector").to_pylist() == [
        [True, False, True]]   # delta-rs itself reads the vector: row 1 is deleted
    with pytest.raises(TableError, match="deletion vectors in 1 file"):
        lake.read("dv")
    with pytest.raises(TableError, match="deletion vectors"):
        lake.active_files("dv")


def _z85(data: bytes) -> str:
    """ZeroMQ's Base85 (the encoding of inline deletion vectors), padded to whole 4-byte words."""
    import struct

    alphabet = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#"
    data += b"\0" * (-len(data) % 4)
    out = []
    for (word,) in struct.iter_unpack(">I", data):
        digits = []
        for _ in range(5):
            word, digit = divmod(word, 85)
            digits.append(alphabet[digit])
        out.append("".join(reversed(digits)))
    return "".join(out)
