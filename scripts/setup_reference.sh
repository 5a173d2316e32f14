#!/usr/bin/env bash
# Optional: the PyTorch environment that benchmark section `reference` runs detectron2 and
# torchvision in (`python scripts/benchmark.py reference ...`), so that our numbers are compared
# with theirs measured in the same run on the same machine. Not needed for anything else.
#
#   bash scripts/setup_reference.sh            -> .venv-reference/ (git-ignored), idempotent
#
# Knobs:
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu   CPU-only PyTorch wheels (~1 GB); the
#                     default is PyPI, whose Linux wheels are CUDA builds (~6 GB with the nvidia
#                     libraries; they run on a CPU all the same)
#   DETECTRON2_SRC=/path/to/detectron2            a detectron2 checkout to install (with its C++
#                     extension). Default: detectron2 0.5 from PyPI's `detectron2-cdo` sdist,
#                     whose Python code is installed without the extension (the sdist lacks its
#                     C++ sources): R50-FPN Mask R-CNN never calls it, detectron2 runs ROIAlign
#                     and NMS through torchvision's kernels. A stub `detectron2/_C.py` says so.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv-reference"
PYTHON="${PYTHON:-python3}"
TORCH_VERSION=2.14.1
TORCHVISION_VERSION=0.29.1
log() { echo "[setup_reference] $*"; }

if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
if ! "$PY" -c "import torch, torchvision; assert torch.__version__.startswith('$TORCH_VERSION')" 2>/dev/null; then
  log "installing torch $TORCH_VERSION, torchvision $TORCHVISION_VERSION"
  "$PY" -m pip install -q ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} \
    "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"
fi
# detectron2 0.5's dependencies; Pillow < 10 and setuptools < 70 for its old imports
# (PIL.Image.LINEAR, pkg_resources); wheel to read the detectron2 sdist
"$PY" -m pip install -q "fvcore>=0.1.5,<0.1.6" "iopath>=0.1.7,<0.1.10" yacs tabulate termcolor \
  cloudpickle tqdm pycocotools omegaconf hydra-core matplotlib wheel "Pillow<10" "setuptools<70"

if ! "$PY" -c "import detectron2" 2>/dev/null; then
  if [ -n "${DETECTRON2_SRC:-}" ]; then
    log "installing detectron2 from $DETECTRON2_SRC"
    "$PY" -m pip install -q --no-build-isolation -e "$DETECTRON2_SRC"
  else
    log "installing detectron2 0.5 (Python code of PyPI's detectron2-cdo sdist, no C++ extension)"
    TMP=$(mktemp -d)
    trap 'rm -rf "$TMP"' EXIT
    "$PY" -m pip download -q --no-deps --no-binary :all: --no-build-isolation \
      -d "$TMP" "detectron2-cdo==0.5"
    tar -xzf "$TMP"/detectron2_cdo-0.5.tar.gz -C "$TMP"
    SITE=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    cp -r "$TMP/detectron2_cdo-0.5/detectron2" "$SITE/"
    cat > "$SITE/detectron2/_C.py" <<'EOF'
"""Stand-in for detectron2's C++ extension, which this install does not build (PyPI's sdist has
no C++ sources). Mask R-CNN with a ResNet-FPN never calls it: detectron2 runs ROIAlign and NMS
through torchvision. Deformable convolutions and rotated boxes need the real extension."""


def __getattr__(name):
    raise ImportError("detectron2._C.%s needs detectron2's C++ extension, not built here "
                      "(scripts/setup_reference.sh: set DETECTRON2_SRC to a checkout)" % name)
EOF
  fi
fi
"$PY" -c "import torch, torchvision, detectron2; print('[setup_reference] ready: torch', \
torch.__version__, 'torchvision', torchvision.__version__, 'detectron2', detectron2.__version__)"
