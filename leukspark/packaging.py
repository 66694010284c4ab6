"""Build what a cluster user ships with spark-submit: the `leukspark` package as one zip.

    python -m leukspark.packaging [--out dist]      # or: bash scripts/build_pyfiles.sh

writes ``dist/leukspark-<version>.zip`` for ``spark-submit --py-files``. The zip holds the
package's Python modules and its package data: the configuration files (``conf/*.yaml``,
through the ``leukspark/conf`` symlink, stored as plain files) and the reference tables in
``leukspark/data`` (``*.info``, ``*.csv``, with their provenance notes). The demo series
(``leukspark/data/demo``) is left out: it is for the local demo only.

The zip is reproducible: entries are sorted, carry a fixed time stamp and fixed permissions,
so the same sources give byte-identical zips. The zip is written next to its final name and
renamed into place, so a reader never sees a half-written file.

The third-party dependencies (pyspark, pandas, scikit-learn, torch, ...) are not in the zip:
every node needs a Python interpreter that has them (see docs/cluster.md).
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import sys
import zipfile
from pathlib import Path

from . import __version__

PACKAGE_DIR = Path(__file__).resolve().parent

#: Files of the package that go into the zip, as glob patterns relative to the package folder.
INCLUDE = ("*.py", "conf/*.yaml", "data/*.info", "data/*.csv", "data/*.md", "*.html", "py.typed")
#: Left out even when they match INCLUDE.
EXCLUDE = ("data/demo/*", "*/__pycache__/*", "__pycache__/*")

_FIXED_TIME = (1980, 1, 1, 0, 0, 0)


def package_files(package_dir: Path = PACKAGE_DIR) -> list[tuple[str, Path]]:
    """(name in the zip, file on disk) for every file that ships, sorted by name.

    Symbolic links (``leukspark/conf`` -> ``../conf``) are followed, so the zip holds the
    files they point to under the package's own names.
    """
    package_dir = Path(package_dir)
    found = []
    for folder, subfolders, files in os.walk(package_dir, followlinks=True):
        subfolders[:] = sorted(d for d in subfolders if d != "__pycache__")
        for name in files:
            path = Path(folder) / name
            relative = path.relative_to(package_dir).as_posix()
            if any(fnmatch.fnmatch(relative, p) for p in EXCLUDE):
                continue
            if any(fnmatch.fnmatch(relative, p) for p in INCLUDE) and path.is_file():
                found.append((f"{package_dir.name}/{relative}", path.resolve()))
    return sorted(found)


def zip_name(version: str = __version__) -> str:
    return f"leukspark-{version}.zip"


def build_pyfiles(out_dir: str | Path = "dist", package_dir: Path = PACKAGE_DIR) -> Path:
    """Write ``<out_dir>/leukspark-<version>.zip`` and return its path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = out / zip_name()
    partial = out / f".{target.name}.{os.getpid()}.partial"
    entries = package_files(package_dir)
    if not any(name.endswith("/conf/default.yaml") for name, _ in entries):
        raise FileNotFoundError(f"{package_dir}/conf/default.yaml is missing: the zip would not load its configuration")
    try:
        with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name, path in entries:
                info = zipfile.ZipInfo(name, date_time=_FIXED_TIME)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                archive.writestr(info, path.read_bytes())
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m leukspark.packaging",
        description="Build dist/leukspark-<version>.zip, the package for spark-submit --py-files.")
    parser.add_argument("--out", default="dist", help="output folder (default: dist)")
    parser.add_argument("--list", action="store_true", help="print the files that go into the zip")
    args = parser.parse_args(argv)
    target = build_pyfiles(args.out)
    entries = package_files()
    if args.list:
        for name, _ in entries:
            print(name)
    print(f"wrote {target} ({len(entries)} files, {target.stat().st_size / 1e6:.1f} MB)")
    print(f"ship it with: spark-submit --py-files {target} jobs/run_pipeline.py ...")
    return 0


if __name__ == "__main__":
    sys.exit(main())
