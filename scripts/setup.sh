#!/usr/bin/env bash
# Create .venv (if needed) and install the package with its test extras. torch is pinned to 2.13.0 first, so
# pip takes the CPU wheel on machines that have one locally instead of downloading the CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check "torch==2.13.0" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import torch, transformers, vanilla_transformer.modeling; print(f'setup ok: torch {torch.__version__}, transformers {transformers.__version__}')"
