#!/usr/bin/env bash
# Create .venv, install kdcache with pinned torch, fetch Fashion-MNIST. Idempotent: seconds the second time.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.kdcache-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
  # torch/torchvision pinned to the builds this machine kind has on local disk (no multi-GB download).
  .venv/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1 2>&1 | grep -v "is ignored" || true
  .venv/bin/python -m pip install -q -e ".[test,report,data]" 2>&1 | grep -v "is ignored" || true
  .venv/bin/python -c "import kdcache, torch, h5py, datasets" && touch "$stamp"
fi
PYTHON=.venv/bin/python scripts/get-data.sh
