#!/usr/bin/env bash
# On a machine with a CUDA GPU (< 5 minutes): a cache dumped on the GPU (fp32, TF32 off) against the same
# dump on the CPU, within `kdcache verify`'s float32 tolerance, and a teacher-cnn epoch at fp32 vs bf16
# autocast. Prints two lines; exit status 1 if a row is outside the tolerance. Details: benchmarks/gpu_check.py.
#
#   bash scripts/gpu-check.sh [--out runs/gpu-check.json] [--compare-rows 10000] [--train-rows N]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python
exec "$PYTHON" -m benchmarks.gpu_check "$@"
