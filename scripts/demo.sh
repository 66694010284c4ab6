#!/usr/bin/env bash
# Set up on a fresh machine and run the whole pipeline on the embedded demo series
# (120 GSE13159-shaped samples): ingest, labels, features, split, training fan-out, report.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
rm -rf demo-lake demo-report
.venv/bin/leukspark run \
  --input leukspark/data/demo/GSE13159_family.soft.gz \
  --lake demo-lake --report demo-report "$@"
