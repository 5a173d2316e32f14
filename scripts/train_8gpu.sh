#!/usr/bin/env bash
# Train Mask R-CNN on one machine with 8 GPUs: one Horovod process per GPU.
#
#   scripts/train_8gpu.sh configs/mask_rcnn_R_50_FPN_1x.yaml [KEY=VALUE ...]
#   LAUNCHER=horovodrun scripts/train_8gpu.sh configs/mask_rcnn_R_50_FPN_1x.yaml OUTPUT_DIR=out/r50
#   scripts/train_8gpu.sh --dry-run configs/...yaml ...   # print the exact launch command, run nothing
#
# SOLVER.IMS_PER_BATCH is the total over the 8 processes (16 -> 2 per GPU). With another number of
# GPUs set NP; add SOLVER.REFERENCE_WORLD_SIZE=8 to rescale batch, LR and schedule linearly
# (detectron2's auto_scale_workers). Rerunning the same command resumes from OUTPUT_DIR's newest
# checkpoint. Each process sees only its own GPU (local rank r -> GPU r, tfmrcnn.distributed).
#
# Gradients are all-reduced by NCCL when Horovod was built with it (scripts/setup.sh does so on a
# GPU host: `python -c "import horovod.tensorflow as h; print(h.nccl_built())"`). This script
# passes NCCL what it needs: every NCCL_*, HOROVOD_* and TFMRCNN_* variable that is set, the
# library path and the allocator (LD_PRELOAD), no core binding (-bind-to none: NCCL and TF
# place their own threads), and NCCL_DEBUG=INFO unless set (one line per rank names the
# transport NCCL chose). Network choice: set NCCL_SOCKET_IFNAME=<interface>, NCCL_IB_DISABLE=1 or
# NCCL_IB_HCA=... in the environment and they are forwarded.
#
# mpirun needs a Horovod built with MPI (scripts/setup.sh does so when Open MPI is installed);
# a Gloo-only Horovod under mpirun would start 8 independent jobs: tfmrcnn-train detects it and
# stops. horovodrun works with both builds and forwards the whole environment.
#
# Multi-node (2 x 8 GPUs; hosts reachable by password-less ssh, same paths, shared OUTPUT_DIR):
# HOSTS=node1:8,node2:8 NP=16 scripts/train_8gpu.sh configs/...yaml OUTPUT_DIR=/shared/out
# (add NCCL_SOCKET_IFNAME=<interface> / NCCL_IB_DISABLE=1 as the network requires).
#
# Hangs: a rank that dies makes the launcher end the job; a rank that hangs is ended by
# Horovod's stall shutdown (HOROVOD_STALL_SHUTDOWN_TIME_SECONDS, default set to 600 s) or by
# tfmrcnn's watchdog (TFMRCNN_WATCHDOG_SECONDS without a finished step, default 1800 s).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DRY_RUN=0
if [ "${1:-}" = "--dry-run" ]; then DRY_RUN=1; shift; fi
if [ $# -lt 1 ]; then
  sed -n '2,11p' "$0"; exit 2
fi
CONFIG="$1"; shift
NP="${NP:-8}"
HOSTS="${HOSTS:-localhost:$NP}"
LAUNCHER="${LAUNCHER:-mpirun}"
TRAIN="${TRAIN:-tfmrcnn-train}"   # e.g. TRAIN="python -m tfmrcnn.cli.train" without the entry point
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
export NCCL_DEBUG="${NCCL_DEBUG:-INFO}"
export HOROVOD_STALL_SHUTDOWN_TIME_SECONDS="${HOROVOD_STALL_SHUTDOWN_TIME_SECONDS:-600}"
# Gradient fusion: R50-FPN has ~44M trainable values = 176 MB of fp32 gradients (88 MB with
# TRAINER.FP16_ALLREDUCE). A 64 MB fusion buffer sends them in 2-3 NCCL calls that overlap the
# backward pass; a 2 ms cycle keeps the first buffer from waiting on the slowest layer.
export HOROVOD_FUSION_THRESHOLD="${HOROVOD_FUSION_THRESHOLD:-67108864}"
export HOROVOD_CYCLE_TIME="${HOROVOD_CYCLE_TIME:-2}"
# The allocator (tcmalloc when installed, TFMRCNN_ALLOCATOR overrides): exported here so that
# the ranks start with it (tfmrcnn.utils.launch).
eval "$(PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m tfmrcnn.utils.launch env)"

# what every rank must see, when set (mpirun -x fails on unset names)
FORWARD=()
for var in LD_LIBRARY_PATH LD_PRELOAD PYTHONPATH TF_CPP_MIN_LOG_LEVEL \
           $(compgen -e | grep -E '^(NCCL|HOROVOD|TFMRCNN)_' | grep -v '^TFMRCNN_ALLOCATOR_REEXEC$' | sort); do
  if [ -n "${!var:-}" ]; then FORWARD+=("$var"); fi
done
if [ "$LAUNCHER" = "horovodrun" ]; then   # forwards the whole environment itself
  # shellcheck disable=SC2206  # TRAIN may be a command with arguments
  CMD=(horovodrun -np "$NP" -H "$HOSTS" $TRAIN --config-file "$CONFIG" "$@")
else
  CMD=(mpirun -np "$NP" -H "$HOSTS" -bind-to none -map-by slot -mca pml ob1 -mca btl ^openib)
  if [ "$(id -u)" = 0 ]; then CMD+=(--allow-run-as-root); fi
  CMD+=(-x PATH)
  for var in "${FORWARD[@]}"; do CMD+=(-x "$var"); done
  # shellcheck disable=SC2206
  CMD+=($TRAIN --config-file "$CONFIG" "$@")
fi
if [ "$DRY_RUN" = 1 ]; then   # a runnable script: the forwarded variables, then the command
  for var in "${FORWARD[@]}"; do printf 'export %s=%q\n' "$var" "${!var}"; done
  printf '%q ' "${CMD[@]}"; echo
  exit 0
fi
exec "${CMD[@]}"
