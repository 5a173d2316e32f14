"""Benchmark section: detectron2 and torchvision on this machine, in the same run as ours.

These VMs differ from day to day (session 3 read our fp32 inference at 2.93 s, session 5 at
1.31 s with the same code), so a detectron2 figure from another day says little. This section
times the reference implementations now, on the same problems (benchmarks/common.py) with the
same thread settings, so that the driver's comparison (benchmarks/compare.py) compares like with
like:

  infer      detectron2 mask_rcnn_R_50_FPN_1x, one 800x1333 image, 100 detections: stages and
             end to end; torchvision maskrcnn_resnet50_fpn end to end; detectron2
             mask_rcnn_X_101_32x8d_FPN_3x the same way (group infer --arch x101)
  train      detectron2's training step, batch 1, 800x1333, 512 ROIs, 10 instances
  roi_align  torchvision.ops.roi_align (detectron2's ROIAlign kernel), 7x7 and 14x14

They run in a PyTorch environment of their own (``python -m benchmarks.torch_reference``; made
by ``bash scripts/setup_reference.sh`` as .venv-reference/, or any Python with torch,
torchvision and detectron2 named by TFMRCNN_REFERENCE_PYTHON). Without one the section says so
and the driver prints no comparison.
"""
import os
import sys

from benchmarks.common import ROOT, module_command, run_worker, worker_env, worker_options

GROUPS = ("roi_align", "infer", "train")


def reference_python():
    """The interpreter of the PyTorch environment, or None."""
    path = os.environ.get("TFMRCNN_REFERENCE_PYTHON") or os.path.join(
        ROOT, ".venv-reference", "bin", "python")
    return path if os.path.exists(path) else None


NOT_MEASURED = ("not measured: no PyTorch environment (run `bash scripts/setup_reference.sh` or "
                "set TFMRCNN_REFERENCE_PYTHON)")


def run_group(python, group, args, extra=()):
    """The rows of one worker group, with the same worker options as the model section's."""
    cmd = module_command("torch_reference", "--group", group, *worker_options(args), *extra,
                         python=python)
    return run_worker(cmd, group, env=worker_env(PYTHONWARNINGS="ignore"))


def run(args):
    python = reference_python()
    if python is None:
        return [{"group": "reference", "note": NOT_MEASURED}]
    rows = []
    for group in GROUPS:
        rows += run_group(python, group, args)
    rows += run_group(python, "infer", args, extra=("--arch", "x101"))
    return rows


if __name__ == "__main__":
    sys.exit("run through the driver: python -m benchmarks reference")
