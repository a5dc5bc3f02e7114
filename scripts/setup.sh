#!/usr/bin/env bash
# Make .venv/ with Bastion, the embedded model and the test tools. Idempotent: a second run is quick.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
stamp=.venv/.bastion-installed
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing Bastion into .venv (the first build of llama-cpp-python compiles for ~10 min)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[embedded,dev]"
  touch "$stamp"
fi
