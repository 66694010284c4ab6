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

Writers may run at the same time (two ingests, two runs, a run and a `predict --write`).
delta-rs writes are optimistic: a write reads version V, plans its actions on it (which
files to rewrite, which keys are new) and commits as V+1 only if no other writer committed
since; otherwise it is planned again on the new version, a bounded number of times.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence
from urllib.parse import unquote, urlparse

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from .checks import relative_folder_problem
from .errors import (ConcurrentWriteError, LakePathError, SchemaMismatchError, StaleBaseError, TableError,
                     describe_os_error, one_line, storage_error)
from .owner import MARKER_NAME, MarkerKeeper, owner_is_gone, read_marker

log = logging.getLogger(__name__)

STAGING_PREFIX = "part-"
FILE_PATH_COLUMN = "_leukspark_file"


# delta-rs (its kernel) percent-decodes a local table path once more when it reads the log, so a
# folder named `my%20lake` is looked for as `my lake`; a bare `%` is left alone.
PERCENT_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")


def check_delta_rs_root(root: str | Path) -> None:
    """LakePathError when delta-rs would open a local lake root as another folder."""
    root = str(root)
    if "://" in root:
        return
    resolved = str(Path(root).resolve())
    escape = PERCENT_ESCAPE.search(resolved)
    if escape:
        raise LakePathError(
            f"lake path {resolved!r} holds {escape.group()!r}, which delta-rs reads as a percent escape: it would "
            f"look for the tables under {unquote(resolved)!r}. Use a folder whose name has no '%' followed by two "
            f"hex digits (a '%' alone is fine), or lake.engine: delta-spark")


def table_path(root: str, catalog: dict[str, str], table: str) -> str:
    """Where the catalog puts `table` under `root` (a local folder or a URI); never outside it."""
    name = catalog.get(table, table)
    if (problem := relative_folder_problem(name)) is not None:  # config load refuses these first
        raise LakePathError(f"table {table}: {problem}")
    if "://" in root:
        return f"{root.rstrip('/')}/{name}"
    return str(Path(root).resolve() / name)


def local_table_exists(path: str | Path) -> bool:
    """Whether a local folder holds a Delta table (a commit in its log). A log that cannot be
    listed is a TableError saying so: taking it for "no table" would read as an empty lake."""
    log_folder = Path(path) / "_delta_log"
    try:
        with os.scandir(log_folder) as entries:
            return any(entry.name.endswith(".json") for entry in entries)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as error:
        raise TableError(f"the Delta table at {path} cannot be read: {describe_os_error(error)}") from None


class LakeReader:
    """Reads of a lake's small tables (runs, annotations, one series) on the driver, without Spark.

    `predict` scores a file in milliseconds because it never starts a session; it reads
    through this, with the same catalog as `Lake`, so both find the same tables.
    """

    def __init__(self, root: str | Path, catalog: dict[str, str] | None = None):
        check_delta_rs_root(root)
        self.root = str(root)
        self.catalog = dict(catalog or {})

    @classmethod
    def of(cls, lake: "str | Path | LakeReader", config: dict | None = None) -> "LakeReader":
        if isinstance(lake, LakeReader):
            return lake
        return cls(lake, (config or {}).get("tables"))

    def path(self, table: str) -> str:
        return table_path(self.root, self.catalog, table)

    def exists(self, table: str) -> bool:
        path = self.path(table)
        if "://" in path:
            from deltalake import DeltaTable

            return DeltaTable.is_deltatable(path)
        return local_table_exists(path)

    def read_small(self, table: str, columns: list[str] | None = None, filters: list | None = None):
        """The table as pandas; `filters` is [(column, allowed values), ...], pushed down to the files."""
        import pyarrow.compute as pc
        from deltalake import DeltaTable

        if not self.exists(table):
            raise TableError(f"table '{table}' does not exist at {self.path(table)}")
        expression = None
        for column, values in filters or []:
            condition = pc.field(column).isin(list(values))
            expression = condition if expression is None else expression & condition
        try:
            dataset = DeltaTable(self.path(table)).to_pyarrow_dataset()
            return dataset.to_table(columns=columns, filter=expression).to_pandas()
        except OSError as error:  # delta-rs: a log or data file it may not read (several lines)
            raise TableError(f"table {table} at {self.path(table)} cannot be read: {one_line(error)}") from None


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
                 catalog: dict[str, str] | None = None, commit_attempts: int = 8,
                 heartbeat_interval_s: float = 60.0, owner_timeout_s: float = 900.0):
        self.spark = spark
        self.root = str(root)
        self.catalog = dict(catalog or {})
        self.engine = choose_engine(spark, engine)
        if self.engine == "delta-rs":
            check_delta_rs_root(root)
        self.heartbeat_interval_s = float(heartbeat_interval_s)
        self.owner_timeout_s = float(owner_timeout_s)
        self.keeper = MarkerKeeper(self.heartbeat_interval_s)
        self._engine_impl = (_DeltaSparkEngine(spark) if self.engine == "delta-spark"
                             else _DeltaRsEngine(spark, self.keeper, max(int(commit_attempts), 1)))

    @classmethod
    def from_config(cls, spark: SparkSession, root: str | Path, config: dict) -> "Lake":
        settings = config["lake"]
        return cls(spark, root, engine=settings["engine"], catalog=config["tables"],
                   commit_attempts=settings.get("commit_attempts", 8),
                   heartbeat_interval_s=settings.get("heartbeat_interval_s", 60.0),
                   owner_timeout_s=settings.get("owner_timeout_s", 900.0))

    @property
    def commit_retries(self) -> int:
        """Writes planned again in this process because another writer committed first."""
        return getattr(self._engine_impl, "retries", 0)

    # -- naming ---------------------------------------------------------------------------
    def path(self, table: str) -> str:
        return table_path(self.root, self.catalog, table)

    def exists(self, table: str) -> bool:
        return self._engine_impl.exists(self.path(table))

    # -- reads ----------------------------------------------------------------------------
    def read(self, table: str) -> DataFrame:
        """The table's current version; TableError naming the table when it does not exist."""
        path = self.path(table)
        if not self.exists(table):
            raise TableError(f"table '{table}' does not exist at {path}")
        return self._engine_impl.read(path)

    def active_files(self, table: str) -> tuple[str, ...]:
        """The data files of the table's current version, for tasks that read them directly."""
        if not self.exists(table):
            raise TableError(f"table '{table}' does not exist at {self.path(table)}")
        return tuple(self._engine_impl.active_files(self.path(table)))

    def snapshot_files(self, table: str) -> tuple[int, tuple[str, ...]]:
        """(version, data files of that version), read from one snapshot: what tasks read is known
        to be exactly that version."""
        if not self.exists(table):
            raise TableError(f"table '{table}' does not exist at {self.path(table)}")
        version, files = self._engine_impl.snapshot_files(self.path(table))
        return version, tuple(files)

    def read_small_versioned(self, table: str):
        """(version, the rows of that version as pandas) for a small table, from one snapshot."""
        if not self.exists(table):
            raise TableError(f"table '{table}' does not exist at {self.path(table)}")
        return self._engine_impl.read_small_versioned(self.path(table))

    def read_small(self, table: str, columns: list[str] | None = None, filters: list | None = None):
        """A small table (or a filtered slice) as pandas on the driver, as `LakeReader` reads it."""
        if self.engine == "delta-rs":
            return LakeReader(self.root, self.catalog).read_small(table, columns, filters)
        frame = self.read(table)
        for column, values in filters or []:
            frame = frame.where(F.col(column).isin(list(values)))
        return (frame.select(*columns) if columns else frame).toPandas()

    def read_or_empty(self, table: str, schema: StructType) -> DataFrame:
        return self.read(table) if self.exists(table) else self.spark.createDataFrame([], schema)

    def version(self, table: str) -> int:
        return self._engine_impl.version(self.path(table))

    def history(self, table: str) -> list[dict]:
        """Commits newest first, each with at least `version`, `timestamp` and `operation`."""
        return self._engine_impl.history(self.path(table))

    def schema(self, table: str) -> StructType:
        """The table's schema as its log declares it (no Spark job lists its files)."""
        if not self.exists(table):
            raise TableError(f"table '{table}' does not exist at {self.path(table)}")
        return self._engine_impl.spark_schema(self.path(table))

    # -- writes ---------------------------------------------------------------------------
    def append(self, table: str, df: DataFrame, *, operation: str = "append") -> CommitInfo:
        """Add the rows of `df` in one commit (creating the table if needed)."""
        path = self.path(table)
        self._check_schema(table, df.schema)
        return self._engine_impl.append(path, df, operation)

    def overwrite(self, table: str, df: DataFrame, *, operation: str = "overwrite") -> CommitInfo:
        """Replace the table's rows with `df` in one commit; the old version stays in history."""
        path = self.path(table)
        self._check_schema(table, df.schema)
        return self._engine_impl.overwrite(path, df, operation)

    def append_small(self, table: str, rows, schema: StructType, *, operation: str = "append") -> CommitInfo:
        """`append` for rows already on the driver (a pandas DataFrame in `schema`'s columns): with
        delta-rs the driver writes their one Parquet file itself, with no Spark job to start."""
        self._check_schema(table, schema)
        return self._engine_impl.append_small(self.path(table), rows, schema, operation)

    def overwrite_small(self, table: str, rows, schema: StructType, *, operation: str = "overwrite") -> CommitInfo:
        """`overwrite` for rows already on the driver, as `append_small` writes them."""
        self._check_schema(table, schema)
        return self._engine_impl.overwrite_small(self.path(table), rows, schema, operation)

    def merge(self, table: str, df: DataFrame, keys: Sequence[str], *, operation: str = "merge") -> CommitInfo:
        """Upsert: rows of `df` replace the stored rows with the same key values; others are added."""
        self._check_schema(table, df.schema)
        return self._engine_impl.update(self.path(table), list(keys), lambda _current: df, df.schema, operation)

    def update(self, table: str, keys: Sequence[str], change: Callable[[DataFrame], DataFrame | None],
               schema: StructType, *, operation: str = "update") -> CommitInfo | None:
        """Read-modify-write: `change(current rows)` gives rows to upsert by `keys` (None: no commit).

        `change` sees the version the commit is based on and is called again when another writer
        commits first, so a decision it takes (or an error it raises) holds for what is committed.
        """
        if self.exists(table):
            check_same_schema(self.schema(table), schema, table)
        return self._engine_impl.update(self.path(table), list(keys), change, schema, operation)

    def rewrite(self, table: str, transform: Callable[[DataFrame], DataFrame], *,
                operation: str = "rewrite") -> CommitInfo:
        """Overwrite the table with `transform(its rows)`; the schema may change (adding columns)."""
        if not self.exists(table):
            raise TableError(f"table '{table}' does not exist at {self.path(table)}")
        return self._engine_impl.rewrite(self.path(table), transform, operation)

    def insert_new(self, table: str, df: DataFrame, keys: Sequence[str], *,
                   operation: str = "insert") -> CommitInfo | None:
        """Append only rows whose key is not stored yet (idempotent ingestion). None if nothing new."""
        self._check_schema(table, df.schema)
        return self._engine_impl.insert_new(self.path(table), df, list(keys), operation)

    def new_staging(self, table: str) -> "StagedFiles":
        """A fresh folder inside the table for Parquet files that Spark tasks write themselves.

        It carries this process's owner marker until it is committed or discarded, so a folder
        left by a killed writer can be told from one still being written.
        """
        path = self.path(table)
        name = _staging_name()
        directory = Path(path) / name
        try:
            directory.mkdir(parents=True)
        except OSError as error:  # no permission, a read-only mount, a full disk
            raise storage_error(error, f"cannot write table {table}") from None
        self.keeper.add(directory)
        return StagedFiles(table=table, name=name, directory=directory)

    def commit_staged(self, staged: "StagedFiles", schema: StructType, *, replace_keys: DataFrame | None = None,
                      overwrite: bool = False, operation: str = "append", based_on: int | None = None
                      ) -> CommitInfo | None:
        """Commit the staged Parquet files in one transaction; rows matching `replace_keys` are
        replaced, or with `overwrite` every stored row is (even by no rows at all).

        None (and the staging folder removed) when an append has nothing to commit. With `based_on`
        (delta-rs) an append commits only on top of that table version: StaleBaseError, nothing
        committed, when another writer committed since (an append that extends what it read).
        """
        if overwrite and replace_keys is not None:
            raise ValueError("commit_staged: overwrite replaces every row; replace_keys would be ignored")
        table_schema = self.schema(staged.table) if self.exists(staged.table) else None
        if table_schema is not None:
            check_same_schema(table_schema, schema, staged.table)
        try:
            if based_on is not None:
                return self._engine_impl.commit_staged(self.path(staged.table), staged, schema, replace_keys,
                                                       operation, overwrite, based_on=based_on)
            return self._engine_impl.commit_staged(self.path(staged.table), staged, schema, replace_keys, operation,
                                                   overwrite)
        finally:
            self.keeper.release(staged.directory)

    def discard_staged(self, staged: "StagedFiles") -> None:
        shutil.rmtree(staged.directory, ignore_errors=True)
        self.keeper.release(staged.directory)

    def delete_keys(self, table: str, keys_df: DataFrame, *, operation: str = "delete") -> CommitInfo | None:
        """Remove every row whose key matches a row of `keys_df` (columns = key columns)."""
        if not self.exists(table):
            return None
        path = self.path(table)
        return self._engine_impl.delete_keys(path, keys_df, list(keys_df.columns), operation)

    def _check_schema(self, table: str, incoming: StructType) -> None:
        if self.exists(table):
            check_same_schema(self._engine_impl.spark_schema(self.path(table)), incoming, table)

    # -- leftovers of killed writers ------------------------------------------------------
    def remove_orphaned_staging(self) -> list[str]:
        """Remove staging folders whose writer is provably gone and that no commit refers to.

        Returns them relative to the lake root. A folder of a live writer, or one without an
        owner marker (committed), is left alone.
        """
        if "://" in self.root or not Path(self.root).is_dir():
            return []
        root = Path(self.root).resolve()
        folders = {Path(self.path(t)) for t in self.catalog} | {p for p in root.iterdir() if p.is_dir()}
        removed = []
        for folder in sorted(folders):
            for directory in sorted(folder.glob(f"{STAGING_PREFIX}*")):
                if directory.is_dir() and self._staging_orphaned(folder, directory):
                    shutil.rmtree(directory, ignore_errors=True)
                    removed.append(stored_path(root, directory))
        return removed

    def _staging_orphaned(self, table_folder: Path, directory: Path) -> bool:
        marker = read_marker(directory)
        if marker is None:
            return False
        owner, heartbeat = marker
        if not owner_is_gone(owner, heartbeat, self.owner_timeout_s):
            return False
        if _referenced_by_log(table_folder, directory.name):
            # Killed between its commit and removing the marker: the files are the table's.
            (directory / MARKER_NAME).unlink(missing_ok=True)
            return False
        return True


def removed_staging_text(removed: list[str]) -> str:
    return f"removed {len(removed)} staging folder(s) left by killed writers: " + ", ".join(removed)


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


def with_missing_columns(frame: DataFrame, schema: StructType) -> DataFrame:
    """`frame` in `schema`'s column order, columns it lacks added as nulls (rows of an older schema)."""
    present = set(frame.columns)
    return frame.select(*[F.col(f.name) if f.name in present else F.lit(None).cast(f.dataType).alias(f.name)
                          for f in schema.fields])


def stored_path(root: str | Path, path: str | Path) -> str:
    """A path as a table stores it: relative to the lake root when inside it, so the lake can move."""
    resolved, base = Path(path).resolve(), Path(root).resolve()
    try:
        return resolved.relative_to(base).as_posix()
    except ValueError:
        return str(resolved)


def resolve_stored_path(root: str | Path, stored: str, *, in_lake: str) -> Path:
    """A stored path back to a folder. Relative: under `root`. Absolute (rows written before
    paths were stored relative): its place `in_lake` in this lake when that exists, so a moved
    or copied lake uses its own files and not the old lake's."""
    if not Path(stored).is_absolute():
        return Path(root).resolve() / stored
    own = Path(root).resolve() / in_lake
    return own if own.is_dir() else Path(stored)


def local_path(uri: str) -> str:
    """A local file as a plain path: delta-rs and Spark give percent-encoded URIs
    (`my%20lake`), which neither Spark nor pyarrow opens as a path."""
    parsed = urlparse(uri)
    if parsed.scheme in {"file", ""}:
        return unquote(parsed.path)
    return uri


def _add_paths(table) -> list[str]:
    """Paths of the snapshot's active files as its log stores them (relative to the table)."""
    import pyarrow as pa

    return pa.table(table.get_add_actions(flatten=True)).column("path").to_pylist()


def refuse_deletion_vectors(table, path: str) -> None:
    """TableError when rows of the snapshot's files are hidden by deletion vectors (a table that
    delta-spark wrote with them on): its files cannot then be read as they are."""
    if "deletionVectors" not in (table.protocol().reader_features or []):
        return
    import pyarrow as pa

    try:
        hidden = pa.table(table.deletion_vectors()).num_rows
    except Exception as exc:  # an unreadable vector hides rows just the same
        raise TableError(f"table at {path}: cannot read its deletion vectors ({exc})") from None
    if hidden:
        raise TableError(
            f"table at {path} has deletion vectors in {hidden} file(s) (rows deleted by delta-spark without "
            f"rewriting files); the delta-rs engine reads files as they are and would see those rows: use "
            f"lake.engine: delta-spark, or rewrite the table without them (REORG TABLE ... APPLY (PURGE))")


def _referenced_by_log(table_folder: Path, staging_name: str) -> bool:
    log_dir = table_folder / "_delta_log"
    if not log_dir.is_dir():
        return False
    needle = f'"{staging_name}/'
    for entry in log_dir.glob("*.json"):
        try:
            if needle in entry.read_text():
                return True
        except OSError:
            return True  # cannot tell: keep the files
    # Older commits may live only in a checkpoint; the active files cover what matters there.
    if any(log_dir.glob("*.checkpoint*.parquet")):
        from deltalake import DeltaTable

        return any(unquote(p).startswith(f"{staging_name}/") for p in _add_paths(DeltaTable(str(table_folder))))
    return False


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
@dataclass
class Plan:
    """What a write plans on one version: its actions, the staging folders written for them
    (dropped when the plan loses to another writer), and the schema when it changes it."""

    actions: list
    scratch: list[str] = field(default_factory=list)
    schema: StructType | None = None


class _DeltaRsEngine:
    def __init__(self, spark: SparkSession, keeper: MarkerKeeper, attempts: int):
        self.spark = spark
        self.keeper = keeper
        self.attempts = attempts
        self.retries = 0

    def exists(self, path: str) -> bool:
        return local_table_exists(path)

    def _table(self, path: str):
        from deltalake import DeltaTable

        try:
            return DeltaTable(path)
        except Exception as exc:  # deltalake raises TableNotFoundError and friends
            raise TableError(f"cannot open Delta table at {path}: {exc}") from None

    def _snapshot(self, path: str):
        """The version a write plans on (None: no table yet)."""
        return self._table(path) if self.exists(path) else None

    @staticmethod
    def _spark_schema(snapshot) -> StructType:
        from pyspark.sql.pandas.types import from_arrow_schema

        return from_arrow_schema(_arrow_schema(snapshot.schema()))

    def spark_schema(self, path: str) -> StructType:
        return self._spark_schema(self._table(path))

    def _frame(self, snapshot) -> DataFrame:
        """The rows of exactly that version."""
        refuse_deletion_vectors(snapshot, snapshot.table_uri)
        schema = self._spark_schema(snapshot)
        files = [local_path(uri) for uri in snapshot.file_uris()]
        if not files:
            return self.spark.createDataFrame([], schema)
        return self.spark.read.schema(schema).parquet(*files)

    def read(self, path: str) -> DataFrame:
        return self._frame(self._table(path))

    def active_files(self, path: str) -> list[str]:
        table = self._table(path)
        refuse_deletion_vectors(table, path)
        return list(table.file_uris())

    def snapshot_files(self, path: str) -> tuple[int, list[str]]:
        table = self._table(path)
        refuse_deletion_vectors(table, path)
        return table.version(), list(table.file_uris())

    def read_small_versioned(self, path: str):
        table = self._table(path)
        return table.version(), table.to_pyarrow_dataset().to_table().to_pandas()

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
        staging_name = _staging_name()
        staging_dir = Path(path) / staging_name
        staging_dir.mkdir(parents=True)
        self.keeper.add(staging_dir)
        try:
            df.write.mode("append").parquet(str(staging_dir))
            return staging_name, self._add_actions(path, staging_name)
        except BaseException:
            self._drop(path, [staging_name])
            raise

    def _stage_rows(self, path: str, rows, schema: StructType) -> tuple[str, list]:
        """The driver writes rows it holds (pandas) as the one Parquet file of a fresh staging folder."""
        import pyarrow as pa
        import pyarrow.parquet as pq
        from pyspark.sql.pandas.types import to_arrow_schema

        staging_name = _staging_name()
        staging_dir = Path(path) / staging_name
        staging_dir.mkdir(parents=True)
        self.keeper.add(staging_dir)
        try:
            table = pa.Table.from_pandas(rows[schema.fieldNames()], schema=to_arrow_schema(schema),
                                         preserve_index=False)
            pq.write_table(table, staging_dir / "part-00000.parquet", compression="snappy")
            return staging_name, self._add_actions(path, staging_name)
        except BaseException:
            self._drop(path, [staging_name])
            raise

    @staticmethod
    def _add_actions(path: str, staging_name: str) -> list:
        from deltalake.transaction import AddAction
        import pyarrow.parquet as pq

        staging_dir = Path(path) / staging_name
        actions = []
        now_ms = int(time.time() * 1000)
        for parquet_file in sorted(staging_dir.glob("*.parquet")):
            metadata = pq.read_metadata(parquet_file)
            actions.append(AddAction(
                path=f"{staging_name}/{parquet_file.name}",
                size=parquet_file.stat().st_size,
                partition_values={},
                modification_time=now_ms,
                data_change=True,
                stats=json.dumps(file_stats(metadata)),
            ))
        # Spark's bookkeeping files (_SUCCESS, .crc) are not part of the table; the owner marker
        # stays until the commit, to keep the folder from being swept as orphaned.
        for extra in staging_dir.iterdir():
            if not extra.name.endswith(".parquet") and extra.name != MARKER_NAME:
                extra.unlink()
        return actions

    def _drop(self, path: str, staging_names: Iterable[str]) -> None:
        for name in staging_names:
            shutil.rmtree(Path(path) / name, ignore_errors=True)
            self.keeper.release(Path(path) / name)

    def _write(self, path: str, schema: StructType | None, operation: str,
               plan: Callable[[object], Plan | None], *, mode: str = "append",
               staged: Sequence[str] = ()) -> CommitInfo | None:
        """Commit what `plan(snapshot)` returns in one transaction based on that snapshot.

        When another writer commits first, delta-rs refuses the stale commit; the write is then
        planned again on the new version (its attempt's staging folders dropped), at most
        `attempts` times. `staged` folders were written before planning and serve every attempt.
        """
        for attempt in range(1, self.attempts + 1):
            snapshot, scratch = self._snapshot(path), []
            try:
                planned = plan(snapshot)
                if planned is None:
                    self._drop(path, staged)
                    return None
                scratch = planned.scratch
                info = self._commit(path, planned.schema or schema, snapshot, planned.actions, mode, operation)
            except ConcurrentWriteError as conflict:
                self._drop(path, scratch)
                if attempt == self.attempts:
                    self._drop(path, staged)
                    raise ConcurrentWriteError(f"{conflict}; gave up after {self.attempts} attempts") from None
                self.retries += 1
                log.warning("%s: planning the write again (attempt %d of %d)", conflict, attempt + 1, self.attempts)
                time.sleep(random.uniform(0.05, 0.3) * attempt)
                continue
            except BaseException:
                self._drop(path, [*scratch, *staged])
                raise
            for name in [*staged, *scratch]:
                self.keeper.release(Path(path) / name)
            return info
        raise AssertionError("unreachable")

    def _commit(self, path: str, schema: StructType | None, snapshot, actions: list, mode: str,
                operation: str) -> CommitInfo:
        from deltalake import CommitProperties
        from deltalake.transaction import create_table_with_add_actions
        from pyspark.sql.pandas.types import to_arrow_schema

        arrow_schema = to_arrow_schema(schema) if schema is not None else _arrow_schema(snapshot.schema())
        # No retries inside delta-rs: it would rebase the commit onto versions this plan never saw.
        properties = CommitProperties(custom_metadata={"leukspark.operation": operation}, max_commit_retries=0)
        try:
            if snapshot is None:
                create_table_with_add_actions(
                    path, _delta_schema(arrow_schema), [a for a in actions if _is_add(a)],
                    mode="error", commit_properties=properties,
                )
            else:
                snapshot.create_write_transaction(actions, mode, arrow_schema, commit_properties=properties)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:
            read = "no table" if snapshot is None else f"version {snapshot.version()}"
            # A stale commit fails (CommitFailedError) because the log moved on; any failure then
            # counts as losing to that writer, and the write is planned again.
            if self._moved_since(path, snapshot):
                raise ConcurrentWriteError(
                    f"table {Path(path).name} at {path}: another writer committed after this write read "
                    f"{read} ({operation})") from exc
            raise TableError(f"commit to Delta table {path} failed: {exc}") from exc
        rows = sum(json.loads(a.stats)["numRecords"] for a in actions if _is_add(a))
        # Committed without retries: exactly the version after the one planned on (the table's
        # latest version may already be another writer's).
        version = 0 if snapshot is None else snapshot.version() + 1
        return CommitInfo(version=version, operation=operation, rows_written=rows)

    def _moved_since(self, path: str, snapshot) -> bool:
        if snapshot is None:
            return self.exists(path)
        return self.exists(path) and self._table(path).version() > snapshot.version()

    def append(self, path: str, df: DataFrame, operation: str) -> CommitInfo:
        # A blind append depends on no stored row: the same files are valid on any version.
        staging_name, actions = self._stage(path, df)
        return self._write(path, df.schema, operation, lambda _snapshot: Plan(actions), staged=[staging_name])

    def overwrite(self, path: str, df: DataFrame, operation: str) -> CommitInfo:
        # Spark reads the old files lazily: stage before the commit removes them from the log.
        staging_name, actions = self._stage(path, df)
        return self._write(path, df.schema, operation, lambda _snapshot: Plan(actions), mode="overwrite",
                           staged=[staging_name])

    def append_small(self, path: str, rows, schema: StructType, operation: str) -> CommitInfo:
        staging_name, actions = self._stage_rows(path, rows, schema)
        return self._write(path, schema, operation, lambda _snapshot: Plan(actions), staged=[staging_name])

    def overwrite_small(self, path: str, rows, schema: StructType, operation: str) -> CommitInfo:
        staging_name, actions = self._stage_rows(path, rows, schema)
        return self._write(path, schema, operation, lambda _snapshot: Plan(actions), mode="overwrite",
                           staged=[staging_name])

    def rewrite(self, path: str, transform: Callable[[DataFrame], DataFrame], operation: str) -> CommitInfo:
        def plan(snapshot) -> Plan:
            frame = transform(self._frame(snapshot))
            name, actions = self._stage(path, frame)
            return Plan(actions, [name], frame.schema)

        return self._write(path, None, operation, plan, mode="overwrite")

    def _copy_on_write(self, path: str, snapshot, keys_df: DataFrame) -> tuple[list[str], DataFrame | None]:
        """The snapshot's files holding any of the keys, and their rows without those keys."""
        if snapshot is None:
            return [], None
        keys_df = keys_df.distinct()
        touched = self._files_with_keys(path, snapshot, keys_df)
        if not touched:
            return [], None
        survivors = (self.spark.read.schema(self._spark_schema(snapshot))
                     .parquet(*[str(Path(path) / f) for f in touched])
                     .join(keys_df, keys_df.columns, "left_anti"))
        return touched, survivors

    def update(self, path: str, keys: list[str], change: Callable[[DataFrame], DataFrame | None],
               schema: StructType, operation: str) -> CommitInfo | None:
        def plan(snapshot) -> Plan | None:
            current = self._frame(snapshot) if snapshot is not None else self.spark.createDataFrame([], schema)
            rows = change(current)
            if rows is None:
                return None
            touched, survivors = self._copy_on_write(path, snapshot, rows.select(*keys))
            to_write = rows if survivors is None else survivors.select(*rows.columns).unionByName(rows)
            name, actions = self._stage(path, to_write)
            return Plan(actions + self._removes(touched), [name])

        return self._write(path, schema, operation, plan)

    def insert_new(self, path: str, df: DataFrame, keys: list[str], operation: str) -> CommitInfo | None:
        def plan(snapshot) -> Plan | None:
            new = df
            if snapshot is not None:
                new = df.join(self._frame(snapshot).select(*keys).distinct(), keys, "left_anti")
                if new.limit(1).count() == 0:
                    return None
            name, actions = self._stage(path, new)
            return Plan(actions, [name])

        return self._write(path, df.schema, operation, plan)

    def commit_staged(self, path: str, staged: StagedFiles, schema: StructType, replace_keys: DataFrame | None,
                      operation: str, overwrite: bool = False, based_on: int | None = None) -> CommitInfo | None:
        adds = self._add_actions(path, staged.name)
        if overwrite:
            return self._write(path, schema, operation, lambda _snapshot: Plan(adds), mode="overwrite",
                               staged=[staged.name])

        def plan(snapshot) -> Plan | None:
            if based_on is not None and (snapshot is None or snapshot.version() != based_on):
                raise StaleBaseError(f"table {Path(path).name} at {path} moved from version {based_on} to "
                                     f"{'none' if snapshot is None else snapshot.version()} while {operation} "
                                     "was written on it: nothing committed; run again")
            touched, survivors = ([], None) if replace_keys is None else self._copy_on_write(path, snapshot,
                                                                                           replace_keys)
            if not adds and not touched:
                return None
            if not touched:
                return Plan(adds)
            name, survivor_adds = self._stage(path, survivors)
            return Plan(adds + survivor_adds + self._removes(touched), [name])

        return self._write(path, schema, operation, plan, staged=[staged.name])

    def delete_keys(self, path: str, keys_df: DataFrame, keys: list[str], operation: str) -> CommitInfo | None:
        def plan(snapshot) -> Plan | None:
            touched, survivors = self._copy_on_write(path, snapshot, keys_df.select(*keys))
            if not touched:
                return None
            name, actions = self._stage(path, survivors)
            return Plan(actions + self._removes(touched), [name])

        return self._write(path, None, operation, plan)

    def _files_with_keys(self, path: str, snapshot, keys_df: DataFrame) -> list[str]:
        """Relative paths of the snapshot's files holding at least one of the keys (copy-on-write set)."""
        files = [local_path(uri) for uri in snapshot.file_uris()]
        if not files:
            return []
        keys = keys_df.columns
        if len(keys) == 1:   # skip the files whose recorded range holds none of the keys
            files = _files_in_range(snapshot, Path(path), files, keys[0],
                                    sorted(r[0] for r in keys_df.collect() if r[0] is not None))
            if not files:
                return []
        stored = (self.spark.read.schema(self._spark_schema(snapshot)).parquet(*files)
                  .select(*keys, F.col("_metadata.file_path").alias(FILE_PATH_COLUMN)))
        hits = stored.join(F.broadcast(keys_df), keys, "left_semi").select(FILE_PATH_COLUMN).distinct().collect()
        root = Path(path).resolve()
        return sorted(Path(local_path(row[0])).resolve().relative_to(root).as_posix() for row in hits)

    def _removes(self, relative_paths: Iterable[str]) -> list:
        from deltalake.transaction import RemoveAction

        now_ms = int(time.time() * 1000)
        return [RemoveAction(path=p, data_change=True, deletion_timestamp=now_ms) for p in relative_paths]


# Delta file statistics (numRecords, and min/max of the short text and integer columns) taken from the
# Parquet footer the writer already made: readers skip the files whose range excludes what they look
# for (delta-spark's data skipping; `_files_with_keys` here), so replacing the rows of a new series'
# samples reads none of the stored series' files. Doubles are left out (NaN has no place in a range),
# and so is text longer than STATS_MAX_TEXT (a Parquet writer may drop or truncate its statistics).
STATS_MAX_TEXT = 64


def file_stats(metadata) -> dict:
    """The Delta `stats` of one Parquet file from its footer: numRecords, and minValues / maxValues /
    nullCount of every top-level text or integer column that every row group has statistics for."""
    stats: dict = {"numRecords": metadata.num_rows}
    if metadata.num_row_groups == 0:
        return stats
    low, high, nulls = {}, {}, {}
    for i in range(metadata.num_columns):
        column = metadata.schema.column(i)
        name = column.path
        if "." in name or column.physical_type not in ("BYTE_ARRAY", "INT32", "INT64"):
            continue
        wanted_logical = ("STRING",) if column.physical_type == "BYTE_ARRAY" else ("NONE", "INT")
        if column.logical_type.type not in wanted_logical:   # timestamps, dates, decimals, bytes: no stats
            continue
        chunks = [metadata.row_group(g).column(i).statistics for g in range(metadata.num_row_groups)]
        if any(c is None or not c.has_min_max or not c.has_null_count for c in chunks):
            continue
        lo, hi = min(c.min for c in chunks), max(c.max for c in chunks)
        if isinstance(lo, str) and max(len(lo), len(hi)) > STATS_MAX_TEXT:
            continue
        low[name], high[name], nulls[name] = lo, hi, sum(c.null_count for c in chunks)
    if low:
        stats.update(minValues=low, maxValues=high, nullCount=nulls)
    return stats


def _files_in_range(snapshot, table_dir: Path, files: list[str], key: str, keys: list) -> list[str]:
    """The files of `files` whose min/max statistics of `key` may hold one of the sorted `keys`
    (every file without statistics for it is kept)."""
    import bisect

    import pyarrow as pa

    actions = pa.table(snapshot.get_add_actions(flatten=True))
    if f"min.{key}" not in actions.column_names:
        return files
    ranges = {}
    for relative, low, high in zip(actions.column("path").to_pylist(), actions.column(f"min.{key}").to_pylist(),
                                   actions.column(f"max.{key}").to_pylist()):
        ranges[str((table_dir / relative).resolve())] = (low, high)
    kept = []
    for file in files:
        low, high = ranges.get(str(Path(file).resolve()), (None, None))
        try:
            if low is None or high is None or bisect.bisect_left(keys, low) < bisect.bisect_right(keys, high):
                kept.append(file)
        except TypeError:   # keys of another type than the column (text keys of a number column): Spark's
            return files    # join casts them, a Python range test cannot, so every file is read as before
    return kept


def _is_add(action) -> bool:
    return hasattr(action, "stats")


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

    def spark_schema(self, path: str) -> StructType:
        return self.read(path).schema

    def active_files(self, path: str) -> list[str]:
        # The JVM's Delta log is the one to ask; a Delta read's input files are exactly its active files.
        return list(self.read(path).inputFiles())

    def version(self, path: str) -> int:
        return int(self._table(path).history(1).collect()[0]["version"])

    def _at(self, path: str, version: int) -> DataFrame:
        return self.spark.read.format("delta").option("versionAsOf", version).load(path)

    def snapshot_files(self, path: str) -> tuple[int, list[str]]:
        version = self.version(path)
        return version, list(self._at(path, version).inputFiles())

    def read_small_versioned(self, path: str):
        version = self.version(path)
        return version, self._at(path, version).toPandas()

    def _version_of(self, path: str, operation: str) -> int:
        """The newest version this operation text committed (delta-spark may have rebased the
        commit past other writers' ones, so the latest version need not be it)."""
        rows = self._table(path).history(50).select("version", "userMetadata").collect()
        own = [int(r["version"]) for r in rows if r["userMetadata"] == operation]
        return max(own) if own else int(rows[0]["version"])

    def history(self, path: str) -> list[dict]:
        rows = self._table(path).history().collect()
        return [{"version": r["version"], "timestamp": r["timestamp"], "operation": r["operation"],
                 "raw": r.asDict(recursive=True)} for r in rows]

    def _write(self, path: str, df: DataFrame, mode: str, operation: str) -> CommitInfo:
        (df.write.format("delta").mode(mode)
         .option("userMetadata", operation).save(path))
        return CommitInfo(version=self._version_of(path, operation), operation=operation, rows_written=None)

    def append(self, path: str, df: DataFrame, operation: str) -> CommitInfo:
        return self._write(path, df, "append", operation)

    def overwrite(self, path: str, df: DataFrame, operation: str) -> CommitInfo:
        return self._write(path, df, "overwrite", operation)

    def append_small(self, path: str, rows, schema: StructType, operation: str) -> CommitInfo:
        return self.append(path, self.spark.createDataFrame(rows[schema.fieldNames()], schema), operation)

    def overwrite_small(self, path: str, rows, schema: StructType, operation: str) -> CommitInfo:
        return self.overwrite(path, self.spark.createDataFrame(rows[schema.fieldNames()], schema), operation)

    def merge(self, path: str, df: DataFrame, keys: list[str], operation: str) -> CommitInfo:
        if not self.exists(path):
            return self.append(path, df, operation)
        condition = " AND ".join(f"t.`{k}` <=> s.`{k}`" for k in keys)
        (self._table(path).alias("t").merge(df.alias("s"), condition)
         .whenMatchedUpdateAll().whenNotMatchedInsertAll().execute())
        return CommitInfo(version=self.version(path), operation=operation, rows_written=None)

    # delta-spark checks conflicts of its own commits (ConcurrentAppendException and friends);
    # a decision taken on rows read before a merge is not covered by them.
    def update(self, path: str, keys: list[str], change, schema: StructType, operation: str) -> CommitInfo | None:
        current = self.read(path) if self.exists(path) else self.spark.createDataFrame([], schema)
        rows = change(current)
        return None if rows is None else self.merge(path, rows, keys, operation)

    def insert_new(self, path: str, df: DataFrame, keys: list[str], operation: str) -> CommitInfo | None:
        if not self.exists(path):
            return self.append(path, df, operation)
        condition = " AND ".join(f"t.`{k}` <=> s.`{k}`" for k in keys)
        self._table(path).alias("t").merge(df.alias("s"), condition).whenNotMatchedInsertAll().execute()
        return CommitInfo(version=self.version(path), operation=operation, rows_written=None)

    def rewrite(self, path: str, transform, operation: str) -> CommitInfo:
        frame = transform(self.read(path)).localCheckpoint()
        (frame.write.format("delta").mode("overwrite").option("overwriteSchema", "true")
         .option("userMetadata", operation).save(path))
        return CommitInfo(version=self.version(path), operation=operation, rows_written=None)

    def commit_staged(self, path: str, staged: StagedFiles, schema: StructType, replace_keys: DataFrame | None,
                      operation: str, overwrite: bool = False) -> CommitInfo | None:
        # delta-spark writes its own files: the staged Parquet is read back and committed through it.
        try:
            files = [str(f) for f in sorted(staged.directory.glob("*.parquet"))]
            if overwrite:
                frame = (self.spark.read.schema(schema).parquet(*files) if files
                         else self.spark.createDataFrame([], schema))
                # Spark reads the staged files lazily: they go once delta-spark has written its own.
                return self._write(path, frame, "overwrite", operation)
            if not files:
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
