"""A `leukspark` command in its own process, for the concurrency tests.

    python tests/writer_process.py [--ready FILE --barrier FILE] [--pause-after TABLE:OP --pause FILE] -- ARGS

* `--ready/--barrier`: start Spark first (the slow, uneven part), write FILE `ready`, then
  wait until the barrier file exists, so that two writers begin their work together.
* `--pause-after TABLE:OP`: after the first commit to TABLE whose operation starts with OP,
  write `<pause>.reached` and wait until `<pause>.go` exists (a test kills the process there,
  or lets another writer run first).

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


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ready")
    parser.add_argument("--barrier")
    parser.add_argument("--pause-after", help="TABLE:OPERATION, or 'staged' for an ingest's staged commit")
    parser.add_argument("--pause")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    options = parser.parse_args()
    args = options.args[1:] if options.args[:1] == ["--"] else options.args

    from leukspark.cli import main as cli_main
    from leukspark.config import load_config
    from leukspark.spark import build_session

    config_path = args[args.index("--config") + 1] if "--config" in args else None
    build_session(load_config(config_path))
    if options.pause_after == "staged":
        pause_before_staged_commit(Path(options.pause))
    elif options.pause_after:
        table, operation = options.pause_after.split(":", 1)
        pause_after(table, operation, Path(options.pause))
    if options.ready:
        Path(options.ready).write_text("ready")
        wait_for(Path(options.barrier))
    return cli_main(args)


if __name__ == "__main__":
    sys.exit(main())
