#!/usr/bin/env bash
# Build dist/leukspark-<version>.zip: the leukspark package (modules, conf/*.yaml, reference data)
# for `spark-submit --py-files`. The demo series is left out. Extra arguments go to
# `python -m leukspark.packaging` (--out DIR, --list).
#
#   bash scripts/build_pyfiles.sh
#   spark-submit --py-files dist/leukspark-*.zip jobs/run_pipeline.py --input ... --lake ...
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python3
# Import the package from this checkout (not from an installed copy elsewhere).
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" exec "$PYTHON" -m leukspark.packaging "$@"
