#!/usr/bin/env bash
# The test command of the README and CI: set everything up (idempotent), then run the whole
# suite, fast unit tests first, then the slow ones (multi-process Horovod, training to an AP).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k roi_align`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
export TF_CPP_MIN_LOG_LEVEL=2 PYTHONUNBUFFERED=1
# Open MPI refuses root unless told; CI containers run as root.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
PY=.venv/bin/python
start=$(date +%s)
"$PY" -m pytest -q -m "not slow" "$@"
"$PY" -m pytest -q -m "slow" --durations=15 "$@"
echo "[test.sh] all tests passed in $(( $(date +%s) - start ))s"
