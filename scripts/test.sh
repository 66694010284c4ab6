#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite. CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
# Two workers (pytest-xdist), each taking whole test modules, the longest first (tests/conftest.py):
# 27 min instead of 34 on the 2 CI cores (README, Development). TEST_WORKERS=0 runs it in one process.
exec .venv/bin/python -m pytest -q -p no:cacheprovider -n "${TEST_WORKERS:-2}" --dist loadfile "$@"
