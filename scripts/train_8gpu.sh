#!/usr/bin/env bash
# Train Mask R-CNN on one machine with 8 GPUs: one Horovod process per GPU.
#
#   scripts/train_8gpu.sh configs/mask_rcnn_R_50_FPN_1x.yaml [KEY=VALUE ...]
#   LAUNCHER=horovodrun scripts/train_8gpu.sh configs/mask_rcnn_R_50_FPN_1x.yaml OUTPUT_DIR=out/r50
#
# SOLVER.IMS_PER_BATCH is the total over the 8 processes (16 -> 2 per GPU). With another number of
# GPUs set NP; add SOLVER.REFERENCE_WORLD_SIZE=8 to rescale batch, LR and schedule linearly
# (detectron2's auto_scale_workers). Rerunning the same command resumes from OUTPUT_DIR's newest
# checkpoint. Each process sees only its own GPU (pinned by local rank in tfmrcnn.engine).
#
# mpirun needs a Horovod built with MPI (scripts/setup.sh does so when Open MPI is installed);
# a Gloo-only Horovod under mpirun would start 8 independent jobs: tfmrcnn-train detects it and
# stops. horovodrun works with both builds.
#
# Multi-node (2 x 8 GPUs; hosts reachable by password-less ssh, same paths, shared OUTPUT_DIR):
#   mpirun -np 16 -H node1:8,node2:8 -bind-to none -map-by slot \
#       -x NCCL_DEBUG=INFO -x LD_LIBRARY_PATH -x PATH -x PYTHONPATH -x TFMRCNN_DATASETS \
#       -mca pml ob1 -mca btl ^openib -mca btl_tcp_if_exclude lo,docker0 \
#       tfmrcnn-train --config-file configs/mask_rcnn_R_50_FPN_1x.yaml OUTPUT_DIR=/shared/out
#   horovodrun -np 16 -H node1:8,node2:8 \
#       tfmrcnn-train --config-file configs/mask_rcnn_R_50_FPN_1x.yaml OUTPUT_DIR=/shared/out
#   (add NCCL_SOCKET_IFNAME=<interface> / NCCL_IB_DISABLE=1 as the network requires)
#
# Hangs: a rank that dies makes the launcher end the job; a rank that hangs is ended by
# Horovod's stall shutdown (HOROVOD_STALL_SHUTDOWN_TIME_SECONDS, default set to 600 s) or by
# tfmrcnn's watchdog (TFMRCNN_WATCHDOG_SECONDS without a finished step, default 1800 s).
set -euo pipefail
if [ $# -lt 1 ]; then
  sed -n '2,9p' "$0"; exit 2
fi
CONFIG="$1"; shift
NP="${NP:-8}"
LAUNCHER="${LAUNCHER:-mpirun}"
TRAIN="${TRAIN:-tfmrcnn-train}"   # e.g. TRAIN="python -m tfmrcnn.cli.train" without the entry point
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
export HOROVOD_STALL_SHUTDOWN_TIME_SECONDS="${HOROVOD_STALL_SHUTDOWN_TIME_SECONDS:-600}"
# Gradient fusion: R50-FPN has ~44M trainable values = 176 MB of fp32 gradients (88 MB with
# TRAINER.FP16_ALLREDUCE). A 64 MB fusion buffer sends them in 2-3 NCCL calls that overlap the
# backward pass; a 2 ms cycle keeps the first buffer from waiting on the slowest layer.
export HOROVOD_FUSION_THRESHOLD="${HOROVOD_FUSION_THRESHOLD:-67108864}"
export HOROVOD_CYCLE_TIME="${HOROVOD_CYCLE_TIME:-2}"

if [ "$LAUNCHER" = "horovodrun" ]; then
  # shellcheck disable=SC2086  # TRAIN may be a command with arguments
  exec horovodrun -np "$NP" -H "localhost:$NP" \
    $TRAIN --config-file "$CONFIG" "$@"
else
  EXTRA=()
  if [ "$(id -u)" = 0 ]; then EXTRA+=(--allow-run-as-root); fi
  # forward these to every process when they are set (mpirun -x fails on unset names)
  for var in LD_LIBRARY_PATH PYTHONPATH TF_CPP_MIN_LOG_LEVEL HOROVOD_STALL_SHUTDOWN_TIME_SECONDS \
             HOROVOD_FUSION_THRESHOLD HOROVOD_CYCLE_TIME \
             TFMRCNN_DATASETS TFMRCNN_SHAPES_DIR TFMRCNN_WATCHDOG_SECONDS; do
    if [ -n "${!var:-}" ]; then EXTRA+=(-x "$var"); fi
  done
  # shellcheck disable=SC2086
  exec mpirun -np "$NP" "${EXTRA[@]}" -bind-to none -map-by slot \
    -x NCCL_DEBUG=INFO -x PATH -mca pml ob1 -mca btl ^openib \
    $TRAIN --config-file "$CONFIG" "$@"
fi
