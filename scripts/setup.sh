#!/usr/bin/env bash
# One-stop, idempotent set-up of tfmrcnn on a Debian/Ubuntu machine with Python 3.11:
#   1. a virtualenv at .venv/ (git-ignored) with the pinned stack from requirements.txt
#   2. Horovod 0.28.1 built against TensorFlow 2.21 (header workaround; wheel cached per TF version)
#   3. the ROIAlign custom op (custom_ops/), rebuilt only when its sources or TF change
#   4. tfmrcnn itself, installed editable with its console scripts
# A second run takes seconds. Environment knobs:
#   PYTHON=python3.11            interpreter used to create the venv
#   TFMRCNN_CACHE=~/.cache/tfmrcnn   where the built Horovod wheel is kept
#   TFMRCNN_CUDA=1               also build the CUDA kernel (needs nvcc and the tensorflow GPU wheel)
#   TFMRCNN_SKIP_HOROVOD=1       skip Horovod (single-process use only)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
CACHE="${TFMRCNN_CACHE:-$HOME/.cache/tfmrcnn}"
VENV="$ROOT/.venv"
START=$(date +%s)
log() { echo "[setup $(( $(date +%s) - START ))s] $*"; }

# --- 1. virtualenv + pinned stack -------------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtualenv $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
REQ_STAMP="$VENV/.requirements.sha"
REQ_SHA=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ "$(cat "$REQ_STAMP" 2>/dev/null)" != "$REQ_SHA" ]; then
  log "installing pinned requirements"
  "$PY" -m pip install -q --upgrade pip
  "$PY" -m pip install -q -r requirements.txt
  echo "$REQ_SHA" > "$REQ_STAMP"
else
  log "requirements up to date"
fi
TF_VERSION=$("$PY" -c "import tensorflow as tf; print(tf.__version__)" 2>/dev/null)
log "TensorFlow $TF_VERSION"

# --- 2. Horovod --------------------------------------------------------------------------------
HVD_VERSION=0.28.1
if [ "${TFMRCNN_SKIP_HOROVOD:-0}" != "1" ]; then
  if command -v mpicxx >/dev/null 2>&1 || command -v mpicc >/dev/null 2>&1; then
    HVD_MPI=1; HVD_FLAVOUR=gloo-mpi
  else
    HVD_MPI=0; HVD_FLAVOUR=gloo
  fi
  have_hvd=$("$PY" - <<PYEOF 2>/dev/null || true
import horovod, horovod.tensorflow as hvd
ok = horovod.__version__ == "$HVD_VERSION" and hvd.gloo_built() and (hvd.mpi_built() or $HVD_MPI == 0)
print("yes" if ok else "no")
PYEOF
)
  if [ "$have_hvd" = "yes" ]; then
    log "horovod $HVD_VERSION ($HVD_FLAVOUR) already installed"
  else
    WHEEL_DIR="$CACHE/horovod-$HVD_VERSION-tf$TF_VERSION-py$("$PY" -c 'import sys;print("%d%d"%sys.version_info[:2])')-$HVD_FLAVOUR"
    if ! ls "$WHEEL_DIR"/horovod-*.whl >/dev/null 2>&1; then
      if [ "$HVD_MPI" = 0 ]; then
        log "no MPI found: building Horovod with Gloo only (horovodrun --gloo works; plain mpirun would NOT)."
        log "  to add MPI: apt-get install -y openmpi-bin libopenmpi-dev, then rerun this script."
      fi
      log "building horovod $HVD_VERSION ($HVD_FLAVOUR) against TF $TF_VERSION: takes ~4-5 min on 2 cores"
      TFINC=$("$PY" -c "import tensorflow as tf; print(tf.sysconfig.get_include())")
      # Horovod 0.28.1 compiles horovod/tensorflow/xla_mpi_ops.cc, which needs (a) the
      # highwayhash/farmhash headers that TF 2.21 ships under include/external/ and (b) the old
      # path of xla_builder.h, moved to xla/hlo/builder/ in TF 2.19+. A shim header fixes (b).
      SHIM="$ROOT/build/hvd-shim"
      mkdir -p "$SHIM/tensorflow/compiler/xla/client"
      echo '#include "xla/hlo/builder/xla_builder.h"' > "$SHIM/tensorflow/compiler/xla/client/xla_builder.h"
      mkdir -p "$WHEEL_DIR.tmp"
      CPLUS_INCLUDE_PATH="$SHIM:$TFINC/external/highwayhash:$TFINC/external/farmhash_archive/src" \
      HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1 \
      HOROVOD_WITH_GLOO=1 HOROVOD_WITH_MPI=$HVD_MPI MAKEFLAGS="-j$(nproc)" \
        "$PY" -m pip wheel -q --no-deps --no-build-isolation --no-cache-dir \
          -w "$WHEEL_DIR.tmp" "horovod==$HVD_VERSION"
      rm -rf "$WHEEL_DIR"; mv "$WHEEL_DIR.tmp" "$WHEEL_DIR"     # atomic: no half-built cache
    else
      log "using cached horovod wheel from $WHEEL_DIR"
    fi
    "$PY" -m pip install -q --no-deps --force-reinstall "$WHEEL_DIR"/horovod-*.whl
    "$PY" -m pip install -q cloudpickle psutil packaging pyyaml   # horovod's runtime deps
  fi
fi

# --- 3. custom ops -----------------------------------------------------------------------------
"$PY" custom_ops/build.py

# --- 4. the package ----------------------------------------------------------------------------
if ! "$PY" -c "import tfmrcnn, sys; sys.exit(0 if tfmrcnn.__file__.startswith('$ROOT') else 1)" 2>/dev/null \
   || [ ! -x "$VENV/bin/tfmrcnn-train" ] || [ setup.cfg -nt "$VENV/.tfmrcnn-installed" ]; then
  log "installing tfmrcnn (editable)"
  "$PY" -m pip install -q --no-deps --no-build-isolation -e .
  touch "$VENV/.tfmrcnn-installed"
fi
log "done. Activate with: source .venv/bin/activate"
