#!/usr/bin/env bash
# Install leukspark into ./.venv (idempotent): Java 17 through apt when `java` is missing,
# Chromium for the report render test, then the package with its test extras and the mlflow extra (its tests
# run in CI). torch is pinned to the CPU build (2.13.0).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v java >/dev/null 2>&1; then
  echo "java not found: installing OpenJDK 17 (apt)"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq openjdk-17-jre-headless
fi

# The report's render test loads the HTML in headless Chromium (Debian's package).
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  echo "chromium not found: installing it (apt) for the report render test"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq chromium >/dev/null
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# Installing is skipped when this exact setup.py is already installed (fast reruns).
stamp=".venv/.leukspark-installed"
if [ ! -f "$stamp" ] || ! cmp -s setup.py "$stamp"; then
  log=".venv/install.log"
  echo "installing leukspark and its dependencies into .venv (log: $log)"
  {
    .venv/bin/python -m pip install --upgrade pip &&
    .venv/bin/python -m pip install "torch==2.13.0" &&
    .venv/bin/python -m pip install -e ".[dev,mlflow]"
  } >"$log" 2>&1 || { tail -40 "$log"; echo "install failed (full log: $log)"; exit 1; }
  cp setup.py "$stamp"
fi
.venv/bin/python -c "import leukspark, pyspark, deltalake, torch; print('leukspark', leukspark.__version__, '| pyspark', pyspark.__version__, '| deltalake', deltalake.__version__, '| torch', torch.__version__)"
