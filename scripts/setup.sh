#!/usr/bin/env bash
# Creates .venv from a fresh clone: CPU torch 2.13.0 first (an unpinned torch pulls CUDA wheels),
# then hf_mm with its test extras, then the reference libraries (--no-deps) for parity tests.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.hf_mm_setup
want=$(cat pyproject.toml requirements-references.txt scripts/setup.sh | sha1sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
# the machine's pip config names a local index that may be missing: hide only that warning
pip() { .venv/bin/python -m pip "$@" 2> >(grep -v "is ignored: it is neither" >&2); }
pip install -q torch==2.13.0
pip install -q -e ".[test]"
pip install -q --no-deps -r requirements-references.txt
.venv/bin/python -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
echo "$want" > "$stamp"
