#!/usr/bin/env bash
# The README's main command: set up, then train the small shapes model with 2 Horovod processes
# on this CPU, evaluate it on the shapes val split (COCO AP table) and write pictures of
# predictions to output/shapes_demo/vis/. Extra arguments are config overrides (KEY=VALUE).
# Each run trains afresh (--no-resume); `tfmrcnn-train` itself resumes by default.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
export TF_CPP_MIN_LOG_LEVEL=2 PYTHONUNBUFFERED=1
# tcmalloc for horovodrun and its ranks (TFMRCNN_ALLOCATOR=glibc to compare): on 2 cores glibc's
# malloc costs ~40 % of the training time in page faults (tfmrcnn/utils/launch.py)
eval "$(.venv/bin/python -m tfmrcnn.utils.launch env)"
NP="${NP:-2}"
# CONFIG=configs/shapes_demo_cascade_cpu.yaml OUT=output/shapes_demo_cascade: the same demo with
# Cascade R-CNN heads
CONFIG="${CONFIG:-configs/shapes_demo_cpu.yaml}"
OUT="${OUT:-output/shapes_demo}"
# one intra-op thread per process: 2 processes x 1 thread fill the 2 cores without contention
.venv/bin/horovodrun -np "$NP" -H "localhost:$NP" --gloo \
  .venv/bin/tfmrcnn-train --config-file "$CONFIG" --no-resume \
  OUTPUT_DIR="$OUT" TRAINER.NUM_THREADS=1 "$@"
echo "[demo] pictures: $OUT/vis/   metrics: $OUT/inference/shapes_val/metrics.json"
