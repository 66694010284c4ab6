#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite. CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
# Two workers (pytest-xdist; tests/conftest.py says which tests share one): the suite is mostly waiting
# on Spark jobs and subprocesses, and two workers fill the 2 CI cores. TEST_WORKERS=0 runs it in one process.
exec .venv/bin/python -m pytest -q -p no:cacheprovider -n "${TEST_WORKERS:-2}" --dist loadfile "$@"
