#!/usr/bin/env bash
# One-stop, idempotent set-up of tfmrcnn on a Debian/Ubuntu machine with Python 3.11+, in the
# flavour the machine calls for (scripts/install_plan.py decides; this script carries it out):
#   cpu   no NVIDIA GPU (or TFMRCNN_CUDA=0): tensorflow-cpu, Horovod with Gloo (+ MPI), CPU op
#   cuda  an NVIDIA GPU (or TFMRCNN_CUDA=1): tensorflow[and-cuda], Horovod with NCCL GPU
#         operations (+ Gloo, MPI), the op's CUDA kernel; needs the CUDA 12 toolkit (nvcc)
# Steps:
#   1. a virtualenv at .venv/ (git-ignored) with the flavour's pinned stack
#      (requirements-<flavour>.txt, requirements-dev.txt); the other flavour's TensorFlow
#      package is uninstalled first (both write the same tensorflow/ folder)
#   2. Horovod 0.28.1 built against that TensorFlow (header workaround), the wheel cached per
#      Horovod, TF, Python, flavour and back-ends; after installing it, its build flags
#      (gloo/mpi/nccl_built) are checked against the plan: a mismatch stops the set-up
#   3. the custom ops (custom_ops/build.py), rebuilt only when their sources or TF change; built
#      in the background while Horovod builds
#   4. tfmrcnn itself, editable, with its console scripts (`pip install --no-build-isolation -e
#      .`, whose build step is the same custom_ops/build.py)
#   5. tcmalloc (Debian libtcmalloc-minimal4) when missing and apt-get may be used: every
#      tfmrcnn-* command then runs under it (tfmrcnn/utils/launch.py)
# A second run takes seconds. `bash scripts/setup.sh --dry-run` prints the plan, changes nothing.
# Environment knobs:
#   PYTHON=python3.11            interpreter used to create the venv
#   TFMRCNN_CACHE=~/.cache/tfmrcnn   where the built Horovod wheel is kept
#   TFMRCNN_CUDA=1|0             force the cuda / cpu flavour (default: cuda iff a GPU is seen)
#   TFMRCNN_SKIP_HOROVOD=1       skip Horovod (single-process use only)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
CACHE="${TFMRCNN_CACHE:-$HOME/.cache/tfmrcnn}"
VENV="$ROOT/.venv"
START=$(date +%s)
log() { echo "[setup $(( $(date +%s) - START ))s] $*"; }

if [ "${1:-}" = "--dry-run" ]; then
  if [ -x "$VENV/bin/python" ]; then PYTHON="$VENV/bin/python"; fi
  exec "$PYTHON" scripts/install_plan.py show
fi

# --- 1. virtualenv + the flavour's pinned stack ------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtualenv $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PLAN=("$PY" scripts/install_plan.py)
FLAVOUR=$("${PLAN[@]}" flavour)
REQUIREMENTS=$("${PLAN[@]}" requirements)
log "flavour: $FLAVOUR ($(echo $REQUIREMENTS))"
REQ_STAMP="$VENV/.requirements.sha"
# shellcheck disable=SC2086  # file names without spaces, one per line
REQ_SHA=$( (echo "$FLAVOUR"; cat requirements.txt $REQUIREMENTS) | sha256sum | cut -d' ' -f1)
if [ "$(cat "$REQ_STAMP" 2>/dev/null)" != "$REQ_SHA" ]; then
  REMOVE=$("${PLAN[@]}" remove)
  if [ -n "$REMOVE" ]; then
    log "uninstalling $(echo $REMOVE): the $FLAVOUR flavour installs the other TensorFlow package"
    # shellcheck disable=SC2086
    "$PY" -m pip uninstall -q -y $REMOVE
  fi
  log "installing pinned requirements"
  "$PY" -m pip install -q --upgrade pip
  # shellcheck disable=SC2086
  "$PY" -m pip install -q $(printf -- '-r %s ' $REQUIREMENTS)
  echo "$REQ_SHA" > "$REQ_STAMP"
else
  log "requirements up to date"
fi
TF_VERSION=$("${PLAN[@]}" tf-version)
log "TensorFlow $TF_VERSION"

# --- 2. + 3. Horovod and the custom ops, side by side -----------------------------------------
# Both need only TensorFlow. The op build (two compiler runs, ~50 s on 2 cores) goes to the
# background: it fills the cores that Horovod's build leaves idle in its serial steps (CMake
# configure, link, zipping the wheel).
if [ "$FLAVOUR" = cuda ]; then export TFMRCNN_CUDA=1; else export TFMRCNN_CUDA=0; fi
OPS_LOG="$(mktemp)"
"$PY" custom_ops/build.py > "$OPS_LOG" 2>&1 &
OPS_PID=$!
trap 'kill "$OPS_PID" 2>/dev/null || true; rm -f "$OPS_LOG"' EXIT
if [ "${TFMRCNN_SKIP_HOROVOD:-0}" != "1" ]; then
  if "${PLAN[@]}" horovod-check --quiet; then
    log "horovod $("${PLAN[@]}" horovod-cache-key) already installed"
  else
    KEY=$("${PLAN[@]}" horovod-cache-key)
    WHEEL_DIR="$CACHE/$KEY"
    if ! ls "$WHEEL_DIR"/horovod-*.whl >/dev/null 2>&1; then
      case "$KEY" in *mpi*) ;; *)
        log "no MPI found: building Horovod without it (horovodrun --gloo works; plain mpirun would NOT)."
        log "  to add MPI: apt-get install -y openmpi-bin libopenmpi-dev, then rerun this script." ;;
      esac
      HVD_ENV=$("${PLAN[@]}" horovod-env)   # also writes the build's shims under build/hvd-shim
      log "building $KEY: takes ~5 min on 2 cores"
      rm -rf "$WHEEL_DIR.tmp"; mkdir -p "$WHEEL_DIR.tmp"
      (
        while IFS= read -r assignment; do export "${assignment?}"; done <<< "$HVD_ENV"
        "$PY" -m pip wheel -q --no-deps --no-build-isolation --no-cache-dir \
          -w "$WHEEL_DIR.tmp" "$("${PLAN[@]}" horovod-requirement)"
      )
      rm -rf "$WHEEL_DIR"; mv "$WHEEL_DIR.tmp" "$WHEEL_DIR"     # atomic: no half-built cache
    else
      log "using cached horovod wheel from $WHEEL_DIR"
    fi
    "$PY" -m pip install -q --no-deps --force-reinstall "$WHEEL_DIR"/horovod-*.whl
    "$PY" -m pip install -q cloudpickle psutil packaging pyyaml   # horovod's runtime deps
    if ! "${PLAN[@]}" horovod-check; then
      rm -rf "$WHEEL_DIR"
      log "error: the Horovod just installed lacks what the $FLAVOUR flavour needs (see above);"
      log "  its cached wheel was removed. Check the build's prerequisites and rerun."
      exit 1
    fi
  fi
fi

OPS_STATUS=0; wait "$OPS_PID" || OPS_STATUS=$?
cat "$OPS_LOG"
if [ "$OPS_STATUS" != 0 ]; then
  log "error: building the custom ops failed (above); rerun with: $PY custom_ops/build.py"
  exit 1
fi

# --- 4. the package ----------------------------------------------------------------------------
if ! "$PY" -c "import tfmrcnn, sys; sys.exit(0 if tfmrcnn.__file__.startswith('$ROOT') else 1)" 2>/dev/null \
   || [ ! -x "$VENV/bin/tfmrcnn-train" ] || [ setup.cfg -nt "$VENV/.tfmrcnn-installed" ] \
   || [ setup.py -nt "$VENV/.tfmrcnn-installed" ]; then
  log "installing tfmrcnn (editable)"
  "$PY" -m pip install -q --no-deps --no-build-isolation -e .
  touch "$VENV/.tfmrcnn-installed"
fi

# --- 5. the allocator --------------------------------------------------------------------------
if [ "$(TFMRCNN_ALLOCATOR=tcmalloc "$PY" -m tfmrcnn.utils.launch which 2>/dev/null)" = glibc ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo -n"
  if command -v apt-get >/dev/null 2>&1 && { [ -z "$SUDO" ] || sudo -n true 2>/dev/null; }; then
    log "installing tcmalloc (libtcmalloc-minimal4): glibc's malloc makes TensorFlow on CPU much slower"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get install -y -qq libtcmalloc-minimal4 >/dev/null 2>&1 \
      || { $SUDO apt-get update -qq >/dev/null 2>&1 && $SUDO apt-get install -y -qq libtcmalloc-minimal4 >/dev/null 2>&1; } \
      || log "could not install libtcmalloc-minimal4: tfmrcnn runs with glibc malloc (slower)"
  else
    log "tcmalloc is missing and apt-get cannot be used here: apt-get install libtcmalloc-minimal4 (faster CPU training)"
  fi
fi
log "done ($FLAVOUR). Activate with: source .venv/bin/activate"
