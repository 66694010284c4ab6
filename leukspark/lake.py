"""All Delta table I/O of leukspark, behind one `Lake` object.

Two engines share one interface:

* ``delta-spark`` when the JVM has the Delta classes (a cluster started with the
  delta-spark package): Spark reads and writes Delta itself.
* ``delta-rs`` otherwise (here, where Maven is unreachable): Spark tasks write the Parquet
  files of a commit into the table folder, and the driver commits them with delta-rs in one
  atomic transaction. Reads go through the table's active files, so a half-written or
  uncommitted file is never seen. Big tables are never collected to the driver.

Every write is one Delta commit: a failure before the commit leaves the previous version
as it was (the staged files are removed and never appear in the log).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence
from urllib.parse import unquote, urlparse

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from .errors import SchemaMismatchError, TableError

log = logging.getLogger(__name__)

STAGING_PREFIX = "part-"
FILE_PATH_COLUMN = "_leukspark_file"


@dataclass(frozen=True)
class StagedFiles:
    """Parquet files written into a table's folder, not yet part of any version."""

    table: str
    name: str          # folder name relative to the table root
    directory: Path


@dataclass(frozen=True)
class CommitInfo:
    version: int
    operation: str
    rows_written: int | None


class Lake:
    """Tables by catalog name under one root folder (a local path or a URI for delta-spark)."""

    def __init__(self, spark: SparkSession, root: str | Path, *, engine: str = "auto",
                 catalog: dict[str, str] | None = None):
        self.spark = spark
        self.root = str(root)
        self.catalog = dict(catalog or {})
        self.engine = choose_engine(spark, engine)
        self._engine_impl = _DeltaSparkEngine(spark) if self.engine == "delta-spark" else _DeltaRsEngine(spark)

    @classmethod
    def from_config(cls, spark: SparkSession, root: str | Path, config: dict) -> "Lake":
        return cls(spark, root, engine=config["lake"]["engine"], catalog=config["tables"])

    # -- naming ---------------------------------------------------------------------------
    def path(self, table: str) -> str:
        name = self.catalog.get(table, table)
        if "://" in self.root:
            return f"{self.root.rstrip('/')}/{name}"
        return str(Path(self.root).resolve() / name)

    def exists(self, table: str) -> bool:
        return self._engine_impl.exists(self.path(table))

    # -- reads ----------------------------------------------------------------------------
    def read(self, table: str) -> DataFrame:
        """The table's current version; TableError naming the table when it does not exist."""
        path = self.path(table)
        if not self.exists(table):
            raise TableError(f"table '{table}' does not exist at {path}")
        return self._engine_impl.read(path)

    def read_or_empty(self, table: str, schema: StructType) -> DataFrame:
        return self.read(table) if self.exists(table) else self.spark.createDataFrame([], schema)

    def version(self, table: str) -> int:
        return self._engine_impl.version(self.path(table))

    def history(self, table: str) -> list[dict]:
        """Commits newest first, each with at least `version`, `timestamp` and `operation`."""
        return self._engine_impl.history(self.path(table))

    def schema(self, table: str) -> StructType:
        return self.read(table).schema

    # -- writes ---------------------------------------------------------------------------
    def append(self, table: str, df: DataFrame, *, operation: str = "append") -> CommitInfo:
        """Add the rows of `df` in one commit (creating the table if needed)."""
        path = self.path(table)
        self._check_schema(table, df)
        return self._engine_impl.append(path, df, operation)

    def overwrite(self, table: str, df: DataFrame, *, operation: str = "overwrite") -> CommitInfo:
        """Replace the table's rows with `df` in one commit; the old version stays in history."""
        path = self.path(table)
        self._check_schema(table, df)
        return self._engine_impl.overwrite(path, df, operation)

    def merge(self, table: str, df: DataFrame, keys: Sequence[str], *, operation: str = "merge") -> CommitInfo:
        """Upsert: rows of `df` replace the stored rows with the same key values; others are added."""
        path = self.path(table)
        if not self.exists(table):
            return self.append(table, df, operation=operation)
        self._check_schema(table, df)
        return self._engine_impl.merge(path, df, list(keys), operation)

    def insert_new(self, table: str, df: DataFrame, keys: Sequence[str], *,
                   operation: str = "insert") -> CommitInfo | None:
        """Append only rows whose key is not stored yet (idempotent ingestion). None if nothing new."""
        if not self.exists(table):
            return self.append(table, df, operation=operation)
        stored_keys = self.read(table).select(*keys).distinct()
        df = df.join(stored_keys, list(keys), "left_anti")
        if df.limit(1).count() == 0:
            return None
        return self.append(table, df, operation=operation)

    def new_staging(self, table: str) -> "StagedFiles":
        """A fresh folder inside the table for Parquet files that Spark tasks write themselves."""
        path = self.path(table)
        name = _staging_name()
        directory = Path(path) / name
        directory.mkdir(parents=True)
        return StagedFiles(table=table, name=name, directory=directory)

    def commit_staged(self, staged: "StagedFiles", schema: StructType, *, replace_keys: DataFrame | None = None,
                      operation: str = "append") -> CommitInfo | None:
        """Commit the staged Parquet files in one transaction; rows matching `replace_keys` are replaced.

        None (and the staging folder removed) when there is nothing to commit.
        """
        table_schema = self.schema(staged.table) if self.exists(staged.table) else None
        if table_schema is not None:
            check_same_schema(table_schema, schema, staged.table)
        return self._engine_impl.commit_staged(self.path(staged.table), staged, schema, replace_keys, operation)

    def discard_staged(self, staged: "StagedFiles") -> None:
        shutil.rmtree(staged.directory, ignore_errors=True)

    def delete_keys(self, table: str, keys_df: DataFrame, *, operation: str = "delete") -> CommitInfo | None:
        """Remove every row whose key matches a row of `keys_df` (columns = key columns)."""
        if not self.exists(table):
            return None
        path = self.path(table)
        return self._engine_impl.delete_keys(path, keys_df, list(keys_df.columns), operation)

    def _check_schema(self, table: str, df: DataFrame) -> None:
        if not self.exists(table):
            return
        check_same_schema(self.schema(table), df.schema, table)


def check_same_schema(stored: StructType, incoming: StructType, table: str) -> None:
    """SchemaMismatchError listing every column that differs (names and types; nullability aside)."""
    stored_fields = {f.name: f.dataType.simpleString() for f in stored.fields}
    incoming_fields = {f.name: f.dataType.simpleString() for f in incoming.fields}
    problems = []
    for name, dtype in stored_fields.items():
        if name not in incoming_fields:
            problems.append(f"missing column '{name}' ({dtype})")
        elif incoming_fields[name] != dtype:
            problems.append(f"column '{name}' is {incoming_fields[name]}, table has {dtype}")
    for name in incoming_fields.keys() - stored_fields.keys():
        problems.append(f"unexpected column '{name}' ({incoming_fields[name]})")
    if problems:
        raise SchemaMismatchError(f"write to table '{table}' does not match its schema: " + "; ".join(problems))


def _staging_name() -> str:
    return f"{STAGING_PREFIX}{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:12]}"


def choose_engine(spark: SparkSession, requested: str) -> str:
    from .spark import jvm_has_delta

    if requested not in {"auto", "delta-spark", "delta-rs"}:
        raise TableError(f"unknown lake engine {requested!r}: use auto, delta-spark or delta-rs")
    if requested == "auto":
        return "delta-spark" if jvm_has_delta(spark) else "delta-rs"
    if requested == "delta-spark" and not jvm_has_delta(spark):
        raise TableError(
            "lake.engine is delta-spark but the JVM has no Delta classes: start Spark with "
            "--packages io.delta:delta-spark_2.13:4.0.0 or set lake.engine to auto"
        )
    return requested


# ---------------------------------------------------------------------------------------
# delta-rs: Spark writes Parquet, the driver commits with delta-rs
# ---------------------------------------------------------------------------------------
class _DeltaRsEngine:
    def __init__(self, spark: SparkSession):
        self.spark = spark

    def exists(self, path: str) -> bool:
        return (Path(path) / "_delta_log").is_dir() and any((Path(path) / "_delta_log").glob("*.json"))

    def _table(self, path: str):
        from deltalake import DeltaTable

        try:
            return DeltaTable(path)
        except Exception as exc:  # deltalake raises TableNotFoundError and friends
            raise TableError(f"cannot open Delta table at {path}: {exc}") from None

    def spark_schema(self, path: str) -> StructType:
        from pyspark.sql.pandas.types import from_arrow_schema

        arrow_schema = _arrow_schema(self._table(path).schema())
        return from_arrow_schema(arrow_schema)

    def read(self, path: str) -> DataFrame:
        table = self._table(path)
        schema = self.spark_schema(path)
        files = table.file_uris()
        if not files:
            return self.spark.createDataFrame([], schema)
        return self.spark.read.schema(schema).parquet(*files)

    def version(self, path: str) -> int:
        return self._table(path).version()

    def history(self, path: str) -> list[dict]:
        entries = []
        for entry in self._table(path).history():
            entries.append({
                "version": entry.get("version"),
                "timestamp": entry.get("timestamp"),
                "operation": entry.get("leukspark.operation") or entry.get("operation"),
                "raw": entry,
            })
        return entries

    # -- writing --------------------------------------------------------------------------
    def _stage(self, path: str, df: DataFrame) -> tuple[str, list]:
        """Spark tasks write the Parquet files of one commit into a fresh folder of the table."""
        Path(path).mkdir(parents=True, exist_ok=True)
        staging_name = _staging_name()
        staging_dir = Path(path) / staging_name
        try:
            df.write.mode("errorifexists").parquet(str(staging_dir))
        except BaseException:
            shutil.rmtree(staging_dir, ignore_errors=True)
            raise
        return staging_name, self._add_actions(path, staging_name)

    @staticmethod
    def _add_actions(path: str, staging_name: str) -> list:
        from deltalake.transaction import AddAction
        import pyarrow.parquet as pq

        staging_dir = Path(path) / staging_name
        actions = []
        now_ms = int(time.time() * 1000)
        for parquet_file in sorted(staging_dir.glob("*.parquet")):
            rows = pq.read_metadata(parquet_file).num_rows
            actions.append(AddAction(
                path=f"{staging_name}/{parquet_file.name}",
                size=parquet_file.stat().st_size,
                partition_values={},
                modification_time=now_ms,
                data_change=True,
                stats=json.dumps({"numRecords": rows}),
            ))
        # Spark's bookkeeping files (_SUCCESS, .crc) are not part of the table.
        for extra in staging_dir.iterdir():
            if not extra.name.endswith(".parquet"):
                extra.unlink()
        return actions

    def _commit(self, path: str, schema: StructType, actions: list, mode: str, operation: str,
                staging_name: str) -> CommitInfo:
        from deltalake import CommitProperties
        from deltalake.transaction import create_table_with_add_actions
        from pyspark.sql.pandas.types import to_arrow_schema

        arrow_schema = to_arrow_schema(schema)
        properties = CommitProperties(custom_metadata={"leukspark.operation": operation})
        try:
            if not self.exists(path):
                create_table_with_add_actions(
                    path, _delta_schema(arrow_schema), [a for a in actions if _is_add(a)],
                    mode="error", commit_properties=properties,
                )
            else:
                table = self._table(path)
                table.create_write_transaction(actions, mode, arrow_schema, commit_properties=properties)
        except BaseException as exc:
            shutil.rmtree(Path(path) / staging_name, ignore_errors=True)
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            raise TableError(f"commit to Delta table {path} failed: {exc}") from exc
        rows = sum(json.loads(a.stats)["numRecords"] for a in actions if _is_add(a))
        return CommitInfo(version=self._table(path).version(), operation=operation, rows_written=rows)

    def append(self, path: str, df: DataFrame, operation: str) -> CommitInfo:
        staging_name, actions = self._stage(path, df)
        return self._commit(path, df.schema, actions, "append", operation, staging_name)

    def overwrite(self, path: str, df: DataFrame, operation: str) -> CommitInfo:
        # Spark reads the old files lazily: stage before the commit removes them from the log.
        staging_name, actions = self._stage(path, df)
        return self._commit(path, df.schema, actions, "overwrite", operation, staging_name)

    def _copy_on_write(self, path: str, keys_df: DataFrame) -> tuple[list[str], DataFrame | None]:
        """The active files holding any of the keys, and their rows without those keys."""
        keys_df = keys_df.distinct()
        touched = self._files_with_keys(path, keys_df)
        if not touched:
            return [], None
        survivors = (self.spark.read.schema(self.spark_schema(path))
                     .parquet(*[self._uri(path, f) for f in touched])
                     .join(keys_df, keys_df.columns, "left_anti"))
        return touched, survivors

    def merge(self, path: str, df: DataFrame, keys: list[str], operation: str) -> CommitInfo:
        touched, survivors = self._copy_on_write(path, df.select(*keys))
        to_write = df if survivors is None else survivors.select(*df.columns).unionByName(df)
        staging_name, actions = self._stage(path, to_write)
        return self._commit(path, df.schema, actions + self._removes(touched), "append", operation, staging_name)

    def commit_staged(self, path: str, staged: StagedFiles, schema: StructType, replace_keys: DataFrame | None,
                      operation: str) -> CommitInfo | None:
        actions = self._add_actions(path, staged.name)
        removes, survivors_name = [], None
        if replace_keys is not None and self.exists(path):
            touched, survivors = self._copy_on_write(path, replace_keys)
            if touched:
                survivors_name, survivor_actions = self._stage(path, survivors)
                actions += survivor_actions
                removes = self._removes(touched)
        if not actions and not removes:
            shutil.rmtree(staged.directory, ignore_errors=True)
            return None
        try:
            return self._commit(path, schema, actions + removes, "append", operation, staged.name)
        except BaseException:
            if survivors_name:
                shutil.rmtree(Path(path) / survivors_name, ignore_errors=True)
            raise

    def delete_keys(self, path: str, keys_df: DataFrame, keys: list[str], operation: str) -> CommitInfo | None:
        touched, survivors = self._copy_on_write(path, keys_df.select(*keys))
        if not touched:
            return None
        staging_name, actions = self._stage(path, survivors)
        return self._commit(path, survivors.schema, actions + self._removes(touched), "append", operation,
                            staging_name)

    def _files_with_keys(self, path: str, keys_df: DataFrame) -> list[str]:
        """Relative paths of the active files holding at least one of the keys (copy-on-write set)."""
        table = self._table(path)
        files = table.file_uris()
        if not files:
            return []
        keys = keys_df.columns
        stored = (self.spark.read.schema(self.spark_schema(path)).parquet(*files)
                  .select(*keys, F.col("_metadata.file_path").alias(FILE_PATH_COLUMN)))
        hits = stored.join(F.broadcast(keys_df), keys, "left_semi").select(FILE_PATH_COLUMN).distinct().collect()
        root = Path(path).resolve()
        return sorted(str(Path(_local_path(row[0])).resolve().relative_to(root)) for row in hits)

    def _removes(self, relative_paths: Iterable[str]) -> list:
        from deltalake.transaction import RemoveAction

        now_ms = int(time.time() * 1000)
        return [RemoveAction(path=p, data_change=True, deletion_timestamp=now_ms) for p in relative_paths]

    @staticmethod
    def _uri(path: str, relative: str) -> str:
        return str(Path(path) / relative)


def _is_add(action) -> bool:
    return hasattr(action, "stats")


def _local_path(uri: str) -> str:
    parsed = urlparse(uri)
    return unquote(parsed.path) if parsed.scheme in {"file", ""} else uri


def _arrow_schema(delta_schema):
    import pyarrow as pa

    exported = delta_schema.to_arrow()
    return pa.schema(exported) if not isinstance(exported, pa.Schema) else exported


def _delta_schema(arrow_schema):
    from deltalake import Schema

    return Schema.from_arrow(arrow_schema)


# ---------------------------------------------------------------------------------------
# delta-spark: the JVM does it all
# ---------------------------------------------------------------------------------------
class _DeltaSparkEngine:
    def __init__(self, spark: SparkSession):
        self.spark = spark

    def _table(self, path: str):
        from delta.tables import DeltaTable

        return DeltaTable.forPath(self.spark, path)

    def exists(self, path: str) -> bool:
        from delta.tables import DeltaTable

        return DeltaTable.isDeltaTable(self.spark, path)

    def read(self, path: str) -> DataFrame:
        return self.spark.read.format("delta").load(path)

    def version(self, path: str) -> int:
        return int(self._table(path).history(1).collect()[0]["version"])

    def history(self, path: str) -> list[dict]:
        rows = self._table(path).history().collect()
        return [{"version": r["version"], "timestamp": r["timestamp"], "operation": r["operation"],
                 "raw": r.asDict(recursive=True)} for r in rows]

    def _write(self, path: str, df: DataFrame, mode: str, operation: str) -> CommitInfo:
        (df.write.format("delta").mode(mode)
         .option("userMetadata", operation).save(path))
        return CommitInfo(version=self.version(path), operation=operation, rows_written=None)

    def append(self, path: str, df: DataFrame, operation: str) -> CommitInfo:
        return self._write(path, df, "append", operation)

    def overwrite(self, path: str, df: DataFrame, operation: str) -> CommitInfo:
        return self._write(path, df, "overwrite", operation)

    def merge(self, path: str, df: DataFrame, keys: list[str], operation: str) -> CommitInfo:
        condition = " AND ".join(f"t.`{k}` <=> s.`{k}`" for k in keys)
        (self._table(path).alias("t").merge(df.alias("s"), condition)
         .whenMatchedUpdateAll().whenNotMatchedInsertAll().execute())
        return CommitInfo(version=self.version(path), operation=operation, rows_written=None)

    def commit_staged(self, path: str, staged: StagedFiles, schema: StructType, replace_keys: DataFrame | None,
                      operation: str) -> CommitInfo | None:
        # delta-spark writes its own files: the staged Parquet is read back and committed through it.
        try:
            if not any(staged.directory.glob("*.parquet")):
                return None
            frame = self.spark.read.schema(schema).parquet(str(staged.directory))
            if replace_keys is not None and self.exists(path):
                keys = replace_keys.columns
                self.delete_keys(path, replace_keys, keys, operation)
            return self.append(path, frame, operation)
        finally:
            shutil.rmtree(staged.directory, ignore_errors=True)

    def delete_keys(self, path: str, keys_df: DataFrame, keys: list[str], operation: str) -> CommitInfo | None:
        condition = " AND ".join(f"t.`{k}` <=> s.`{k}`" for k in keys)
        self._table(path).alias("t").merge(keys_df.distinct().alias("s"), condition).whenMatchedDelete().execute()
        return CommitInfo(version=self.version(path), operation=operation, rows_written=None)
