"""A `leukspark` command in its own process, for the concurrency tests.

    python tests/writer_process.py [--sync-commit TABLE | --pause-after TABLE:OP | --pause-after staged]
                                   --pause FILE -- ARGS

* `--sync-commit TABLE`: just before its first delta-rs commit call for TABLE (planned, about
  to be written), the writer writes `<pause>.reached` and waits until `<pause>.go` exists. Two writers released together
  from there have both planned on the same table version: one of them commits on a stale one.
* `--pause-after TABLE:OP`: the same after the first write to TABLE whose operation starts
  with OP (a test kills the process there, or lets another writer run first).
* `--pause-after staged`: the same before an ingest commits its staged files.

Then runs `leukspark ARGS` (which joins the session already started) and exits with its status.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def wait_for(path: Path, timeout_s: float = 300.0) -> None:
    deadline = time.time() + timeout_s
    while not path.exists():
        if time.time() > deadline:
            raise SystemExit(f"writer_process: {path} never appeared")
        time.sleep(0.02)


def pause_after(table: str, operation: str, pause: Path) -> None:
    from leukspark.lake import Lake

    paused = []

    def wrap(method_name: str):
        original = getattr(Lake, method_name)

        def wrapper(self, name, *args, **kwargs):
            result = original(self, name, *args, **kwargs)
            if name == table and str(kwargs.get("operation", "")).startswith(operation) and not paused:
                paused.append(True)
                Path(f"{pause}.reached").write_text(str(os.getpid()))
                wait_for(Path(f"{pause}.go"), timeout_s=600)
            return result

        setattr(Lake, method_name, wrapper)

    for method in ("append", "merge", "overwrite", "update", "insert_new"):
        if hasattr(Lake, method):
            wrap(method)


def pause_before_staged_commit(pause: Path) -> None:
    """Stop an ingest whose files are staged, just before it commits them."""
    from leukspark.lake import Lake

    original = Lake.commit_staged

    def wrapper(self, staged, *args, **kwargs):
        Path(f"{pause}.reached").write_text(str(os.getpid()))
        wait_for(Path(f"{pause}.go"), timeout_s=600)
        return original(self, staged, *args, **kwargs)

    Lake.commit_staged = wrapper


def sync_commit(table: str, pause: Path) -> None:
    """Pause at the first delta-rs commit call (create or transaction) for `table`."""
    import deltalake.transaction as transaction
    from deltalake import DeltaTable

    synced = []

    def hold(uri: str) -> None:
        if str(uri).rstrip("/").rsplit("/", 1)[-1] == table and not synced:
            synced.append(True)
            Path(f"{pause}.reached").write_text(str(os.getpid()))
            wait_for(Path(f"{pause}.go"), timeout_s=600)

    create, transact = transaction.create_table_with_add_actions, DeltaTable.create_write_transaction

    def create_held(table_uri, *args, **kwargs):
        hold(table_uri)
        return create(table_uri, *args, **kwargs)

    def transact_held(self, *args, **kwargs):
        hold(self.table_uri)
        return transact(self, *args, **kwargs)

    transaction.create_table_with_add_actions = create_held
    DeltaTable.create_write_transaction = transact_held


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sync-commit", metavar="TABLE")
    parser.add_argument("--pause-after", help="TABLE:OPERATION, or 'staged' for an ingest's staged commit")
    parser.add_argument("--pause")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    options = parser.parse_args()
    args = options.args[1:] if options.args[:1] == ["--"] else options.args

    from leukspark.cli import main as cli_main
    from leukspark.config import load_config
    from leukspark.spark import build_session

    config_path = args[args.index("--config") + 1] if "--config" in args else None
    build_session(load_config(config_path))  # Spark's start is the slow part: done before any pause
    if options.sync_commit:
        sync_commit(options.sync_commit, Path(options.pause))
    if options.pause_after == "staged":
        pause_before_staged_commit(Path(options.pause))
    elif options.pause_after:
        table, operation = options.pause_after.split(":", 1)
        pause_after(table, operation, Path(options.pause))
    return cli_main(args)


if __name__ == "__main__":
    sys.exit(main())
