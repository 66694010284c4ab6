"""The `runs` table: a log of finished runs (`RunLog`) and a ledger of live ones (`RunLedger`).

`RunLog` answers the questions every command asks of past runs (the latest successful run,
a run's record, where its bundles are, whether the features were built from the current
data) from the table alone, with or without a Spark session.

A run writes its row when it starts (status `running`, its owner, a heartbeat) and refreshes
the heartbeat while it lives. Another writer treats a run as incomplete only when its owner
is provably gone (`leukspark.owner`): it first marks the row `abandoned`, then deletes the
run's predictions and results and its bundle folder. A run records success only if its row is
still its own running row and its rows are all still stored, in the same read-modify-write
commit of `runs`; so a run whose rows were discarded fails with RunDiscardedError instead of
recording a success without predictions.
"""

from __future__ import annotations

import logging
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterator

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from . import schemas
from .errors import BundleError, RunDiscardedError, TableError
from .lake import Lake, LakeReader, removed_staging_text, resolve_stored_path, stored_path, with_missing_columns
from .owner import Heartbeat, Owner, current_owner, owner_is_gone, utc_now

log = logging.getLogger(__name__)

RUNNING, SUCCEEDED, FAILED, ABANDONED = "running", "succeeded", "failed", "abandoned"
OUTPUT_TABLES = ("predictions", "results", "class_predictions")


def _plain(row: dict) -> dict:
    """A pandas row as plain Python values (datetimes, ints, None for missing)."""
    import pandas as pd

    plain = {}
    for key, value in row.items():
        if value is None or (not isinstance(value, (list, tuple, dict)) and pd.isna(value)):
            plain[key] = None
        elif isinstance(value, pd.Timestamp):
            plain[key] = value.to_pydatetime()
        elif hasattr(value, "item"):
            plain[key] = value.item()
        else:
            plain[key] = value
    return plain


class RunLog:
    """Past runs as the `runs` table records them; `lake` is a `Lake`, or a `LakeReader` or lake
    folder for a reader without Spark."""

    def __init__(self, lake: Lake | LakeReader | str | Path):
        self.lake = lake if isinstance(lake, Lake) else LakeReader.of(lake)

    def _rows(self):
        import pandas as pd

        if not self.lake.exists("runs"):
            return pd.DataFrame(columns=schemas.RUNS.fieldNames())
        return self.lake.read_small("runs")

    def latest_successful(self) -> dict | None:
        """The record of the run that succeeded last, or None when none has."""
        runs = self._rows()
        runs = runs[runs["status"] == SUCCEEDED]
        return None if runs.empty else _plain(runs.sort_values("finished_at").iloc[-1].to_dict())

    def latest_run_id(self) -> str:
        latest = self.latest_successful()
        if latest is None:
            raise TableError(f"no successful run recorded in the lake at {self.lake.root}: run `leukspark run` first")
        return latest["run"]

    def record(self, run_id: str) -> dict:
        runs = self._rows()
        matching = runs[runs["run"] == run_id]
        if matching.empty:
            known = ", ".join(runs.loc[runs["status"] == SUCCEEDED, "run"]) or "none"
            raise TableError(f"run {run_id} is not in the runs table at {self.lake.path('runs')}; "
                             f"successful runs: {known}")
        return _plain(matching.iloc[-1].to_dict())

    def bundle_folder(self, record: dict) -> Path:
        """Where the run's bundles are in this lake (also when the lake was copied or moved since)."""
        if not record.get("bundle_dir"):
            return Path(self.lake.path("models")) / record["run"]
        return resolve_stored_path(self.lake.root, record["bundle_dir"], in_lake=f"models/{record['run']}")

    def bundle_dir(self, run_id: str | None, model: str | None) -> Path:
        """The bundle of `model` in `run_id` (defaults: the latest successful run, its best model)."""
        record = self.record(run_id) if run_id else self.record(self.latest_run_id())
        if record["status"] != SUCCEEDED:
            raise TableError(f"run {record['run']} did not succeed (status {record['status']}): it has no bundles")
        name = model or record["best_model"]
        from .models import REGISTRY  # imported here: it loads scikit-learn

        if name not in REGISTRY:
            raise BundleError(f"run {record['run']}: model {name!r} is not a registered model "
                              f"({', '.join(sorted(REGISTRY))})")
        directory = self.bundle_folder(record) / name
        if not directory.is_dir():
            raise BundleError(f"{directory}: no model bundle '{name}' in run {record['run']}")
        return self.own_bundle(record, name)

    def own_bundle(self, record: dict, name: str) -> Path:
        """The folder of `name`'s bundle in the run of `record`, refused (BundleError naming the folder)
        unless it is this lake's own: models/<run>/<model> under this root, through no link. A runs
        row may name any folder (a copied lake, an edited row): nothing outside the lake is loaded."""
        directory = self.bundle_folder(record) / name
        own = Path(self.lake.path("models")).resolve() / record["run"] / name
        if directory.resolve() != own:
            raise BundleError(f"{directory}: the bundle of model {name} in run {record['run']} is not this lake's "
                              f"own (expected {own}): copy the run's bundles into the lake's models folder")
        return own

    # -- the features the runs train on ----------------------------------------------------
    def build_of_vectors(self, vectors_version: int) -> dict | None:
        """The `feature_builds` row of the build whose commit made `gene_features` version
        `vectors_version`; None when no finished build did (one stopped after its vectors, or a
        row of an older version without the build columns)."""
        if not self.lake.exists("feature_builds"):
            return None
        builds = self.lake.read_small("feature_builds")
        if "vectors_version" not in builds.columns:
            return None
        matching = builds[builds["vectors_version"] == vectors_version]
        return None if matching.empty else _plain(matching.iloc[-1].to_dict())

    def features_built_from(self) -> str | None:
        """The fingerprint (samples, labels, features settings) of the build that the stored
        `gene_features` and `genes` are; None when they are not one finished build's."""
        build = self.current_build()
        return None if build is None else str(build["fingerprint"])

    def current_build(self) -> dict | None:
        """The `feature_builds` row of the finished build (full or incremental) that the stored
        `gene_features` and `genes` are; None when they are not one finished build's."""
        if not (self.lake.exists("gene_features") and self.lake.exists("genes")):
            return None
        build = self.build_of_vectors(self.lake.version("gene_features"))
        if build is None or build["genes_version"] != self.lake.version("genes"):
            return None
        return build


@dataclass
class LiveRun:
    run_id: str
    started: datetime
    owner: Owner
    heartbeat: Heartbeat | None = None


class RunLedger:
    def __init__(self, lake: Lake, echo: Callable[[str], None] = print):
        self.lake = lake
        self.echo = echo

    # -- a run of this process ------------------------------------------------------------
    def begin(self, run_id: str, started: datetime, record: dict) -> LiveRun:
        """Write the run's `running` row (with `record`'s columns) and start its heartbeat."""
        self._ensure_schema()
        owner = current_owner()
        self.lake.append("runs", self._frame([{
            **record, "run": run_id, "started_at": started, "status": RUNNING, "owner_host": owner.host,
            "owner_pid": owner.pid, "owner_token": owner.token, "heartbeat_at": utc_now()}]),
            operation=f"start {run_id}")
        live = LiveRun(run_id, started, owner)
        live.heartbeat = Heartbeat(lambda: self._beat(live), self.lake.heartbeat_interval_s,
                                   f"leukspark-heartbeat-{run_id}").start()
        return live

    @contextmanager
    def tracked(self, live: LiveRun) -> Iterator[LiveRun]:
        """On any failure the run's row says `failed` (when it is still its own)."""
        try:
            yield live
        except BaseException:
            self._stop(live)
            self._set_own_status(live, FAILED)
            raise
        finally:
            self._stop(live)

    def succeed(self, live: LiveRun, record: dict, expected_rows: dict[str, int]) -> None:
        """Record success, in one commit conditional on the row and the run's rows still being there."""
        self._stop(live)

        def finish(current: DataFrame) -> DataFrame:
            row = self._own_row(current, live)
            if row is None:
                raise RunDiscardedError(
                    f"run {live.run_id}: its row in table 'runs' at {self.lake.path('runs')} was taken over "
                    "by another writer (marked abandoned): not recording success")
            self._check_outputs(live.run_id, expected_rows)
            now = utc_now()
            return self._frame([{**row, **record, "status": SUCCEEDED, "finished_at": now, "heartbeat_at": now}])

        self.lake.update("runs", ["run"], finish, schemas.RUNS, operation=f"run {live.run_id}")

    def _check_outputs(self, run_id: str, expected_rows: dict[str, int]) -> None:
        for table, expected in expected_rows.items():
            found = self.lake.read(table).where(F.col("run") == run_id).count() if self.lake.exists(table) else 0
            if found != expected:
                raise RunDiscardedError(
                    f"run {run_id}: table '{table}' at {self.lake.path(table)} holds {found} of its {expected} "
                    "rows (another writer discarded them): not recording success")

    def _beat(self, live: LiveRun) -> None:
        def refresh(current: DataFrame) -> DataFrame | None:
            row = self._own_row(current, live)
            return None if row is None else self._frame([{**row, "heartbeat_at": utc_now()}])

        self.lake.update("runs", ["run"], refresh, schemas.RUNS, operation=f"heartbeat {live.run_id}")

    def _set_own_status(self, live: LiveRun, status: str) -> None:
        def mark(current: DataFrame) -> DataFrame | None:
            row = self._own_row(current, live)
            return None if row is None else self._frame([{**row, "status": status, "finished_at": utc_now()}])

        try:
            self.lake.update("runs", ["run"], mark, schemas.RUNS, operation=f"{status} {live.run_id}")
        except Exception as exc:  # noqa: BLE001 - the run's own error matters more; the row stays running
            log.warning("could not mark run %s %s: %s", live.run_id, status, exc)

    @staticmethod
    def _stop(live: LiveRun) -> None:
        if live.heartbeat is not None:
            live.heartbeat.stop()

    @staticmethod
    def _own_row(current: DataFrame, live: LiveRun) -> dict | None:
        rows = current.where((F.col("run") == live.run_id) & (F.col("status") == RUNNING)
                             & (F.col("owner_token") == live.owner.token)).collect()
        return rows[0].asDict() if rows else None

    # -- runs of other processes ----------------------------------------------------------
    def discard_incomplete(self) -> list[str]:
        """Remove what runs whose owner is gone left behind; live runs keep everything."""
        staging = self.lake.remove_orphaned_staging()
        if staging:
            self.echo(removed_staging_text(staging))
        self._abandon_gone_owners()
        # Listed before the runs rows are read: a run writes its row before any output or bundle,
        # so whatever is listed here of a live run has its row in what is read next.
        stored = {table: self._run_ids(table) for table in OUTPUT_TABLES}
        bundles = self._bundle_folders()
        keep = self._live_or_succeeded()
        discarded: set[str] = set()
        for table, run_ids in stored.items():
            orphans = sorted(run_ids - keep)
            if orphans:
                keys = self.lake.spark.createDataFrame([(r,) for r in orphans], "run string")
                self.lake.delete_keys(table, keys, operation="discard incomplete runs")
                discarded.update(orphans)
        if discarded:
            self.echo(f"discarded rows of {len(discarded)} incomplete run(s): {', '.join(sorted(discarded))}")
        removed = [folder for run_id, folder in sorted(bundles.items()) if run_id not in keep]
        for folder in removed:
            shutil.rmtree(folder, ignore_errors=True)
        if removed:
            self.echo(f"removed {len(removed)} bundle folder(s) of runs that never finished: "
                      + ", ".join(stored_path(self.lake.root, f) for f in removed))
        return sorted(discarded)

    def _abandon_gone_owners(self) -> None:
        if not self.lake.exists("runs"):
            return
        self._ensure_schema()
        gone: list[dict] = []

        def abandon(current: DataFrame) -> DataFrame | None:
            running = [r.asDict() for r in current.where(F.col("status") == RUNNING).collect()]
            gone[:] = [r for r in running if self._owner_gone(r)]
            now = utc_now()
            return self._frame([{**r, "status": ABANDONED, "finished_at": now} for r in gone]) if gone else None

        self.lake.update("runs", ["run"], abandon, schemas.RUNS, operation="abandon runs of gone owners")
        for row in gone:
            self.echo(f"run {row['run']} was left running by {row['owner_host']}:{row['owner_pid']}, which is "
                      "gone: marked abandoned")

    def _owner_gone(self, row: dict) -> bool:
        owner = None
        if row.get("owner_host") and row.get("owner_pid") is not None:
            owner = Owner(row["owner_host"], int(row["owner_pid"]), row.get("owner_token") or "")
        return owner_is_gone(owner, row.get("heartbeat_at"), self.lake.owner_timeout_s)

    def _live_or_succeeded(self) -> set[str]:
        if not self.lake.exists("runs"):
            return set()
        rows = [r.asDict() for r in self.lake.read("runs").where(F.col("status").isin(SUCCEEDED, RUNNING)).collect()]
        return {r["run"] for r in rows if r["status"] == SUCCEEDED or not self._owner_gone(r)}

    def _run_ids(self, table: str) -> set[str]:
        if not self.lake.exists(table):
            return set()
        return {r["run"] for r in self.lake.read(table).select("run").distinct().collect()}

    def _bundle_folders(self) -> dict[str, Path]:
        models = Path(self.lake.path("models"))
        if "://" in self.lake.root or not models.is_dir():
            return {}
        return {p.name: p for p in models.iterdir() if p.is_dir()}

    # -- rows -----------------------------------------------------------------------------
    def _ensure_schema(self) -> None:
        """A runs table of an older version gets the owner columns (null in its rows), once."""
        if not self.lake.exists("runs"):
            return
        if set(schemas.RUNS.fieldNames()) - set(self.lake.schema("runs").fieldNames()):
            self.lake.rewrite("runs", lambda frame: with_missing_columns(frame, schemas.RUNS),
                              operation="add run owner columns")

    def _frame(self, rows: list[dict]) -> DataFrame:
        names = schemas.RUNS.fieldNames()
        return self.lake.spark.createDataFrame([tuple(row.get(k) for k in names) for row in rows], schemas.RUNS)
