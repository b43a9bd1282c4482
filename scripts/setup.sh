#!/usr/bin/env bash
# Make a virtual environment (.venv) and install the package with its test extras, at the versions CI tested
# (scripts/constraints.txt): a new upstream release cannot break the README's two commands. torch is pinned to
# 2.13.0, so pip takes the CPU wheel on machines that have one locally instead of downloading the CUDA build.
#
#   CONSTRAINTS=tested (default) | newest | lowest   which versions: CI's tested set; the newest releases pip
#                                                     resolves; the lowest that pyproject.toml declares
#   VENV=.venv (default)                              where the environment goes
#   PYTHON=python3 (default)                          the interpreter that makes it
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
CONSTRAINTS=${CONSTRAINTS:-tested}
case "$CONSTRAINTS" in
  tested) versions=(-c scripts/constraints.txt) ;;
  lowest) versions=(-c scripts/constraints-lowest.txt) ;;
  newest) versions=(--upgrade --upgrade-strategy eager) ;;  # move an existing environment forward too
  *) echo "setup.sh: CONSTRAINTS=$CONSTRAINTS; use tested, newest or lowest" >&2; exit 2 ;;
esac
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi

install() {  # pip install, quiet, without the warnings about this machine's unreachable local indexes; a failed
  # install stops the script (pipefail: the pipeline fails with pip)
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$@" 2>&1 | { grep -v "^WARNING: Location" || true; }
}
install "torch==2.13.0"
install -e ".[test]" "torch==2.13.0" "${versions[@]}"
"$VENV/bin/python" -c "import torch, transformers, vanilla_transformer.modeling; print(f'setup ok ($CONSTRAINTS): torch {torch.__version__}, transformers {transformers.__version__}')"
