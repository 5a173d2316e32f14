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
# one intra-op thread per process: 2 processes x 1 thread fill the 2 cores without contention
.venv/bin/horovodrun -np "$NP" -H "localhost:$NP" --gloo \
  .venv/bin/tfmrcnn-train --config-file configs/shapes_demo_cpu.yaml --no-resume \
  OUTPUT_DIR=output/shapes_demo TRAINER.NUM_THREADS=1 "$@"
echo "[demo] pictures: output/shapes_demo/vis/   metrics: output/shapes_demo/inference/shapes_val/metrics.json"
