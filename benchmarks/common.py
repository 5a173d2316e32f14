"""What the TensorFlow sections and the PyTorch reference worker (benchmarks/torch_reference.py)
share, so that both time the same inputs the same way: the benchmark problems as NumPy arrays,
the timing loop, the memory readings and how worker processes are started and read.

NumPy and the standard library only: this module is imported in both environments (and by
custom_ops/gpu_harness, for the ROIAlign problem).
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

# the repository root: workers import `benchmarks` (and `tfmrcnn`) from it
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (resized h, w) of the problem sizes; quick = smoke-test sizes
FULL_HW, QUICK_HW = (800, 1333), (320, 512)
DEMO_HW = (192, 256)
# the ROIAlign problem: 512 ROIs (detectron2's training ROIs per image), sides log-uniform in
# 16..400 px, the (1, 200, 336, 256) float32 P2 map of an 800x1333 image (stride 4)
ROI_ALIGN_PROBLEM = dict(num_rois=512, shape=(1, 200, 336, 256), stride=4)
ROI_ALIGN_QUICK = dict(num_rois=64, shape=(1, 50, 84, 32), stride=4)


def padded(hw, div=32):
    return tuple(-(-int(s) // div) * div for s in hw)


def synthetic_batch(batch: int, hw, num_gt: int, num_classes: int, seed: int = 0,
                    masks: bool = True):
    """A training batch in NOTES.md's format: noise images (BGR 0..255, zero-padded to a
    multiple of 32), rectangular instances with their masks (B, G, Hp, Wp) uint8."""
    rng = np.random.default_rng(seed)
    h, w = hw
    hp, wp = padded(hw)
    images = np.zeros((batch, hp, wp, 3), np.float32)
    images[:, :h, :w] = rng.uniform(0, 255, (batch, h, w, 3))
    side = rng.uniform(0.1, 0.5, (batch, num_gt, 2)) * [w, h]  # (B, G, 2) w, h
    x0 = rng.uniform(0, 1, (batch, num_gt)) * (w - side[..., 0])
    y0 = rng.uniform(0, 1, (batch, num_gt)) * (h - side[..., 1])
    boxes = np.stack([x0, y0, x0 + side[..., 0], y0 + side[..., 1]], -1).astype(np.float32)
    out = {"images": images,
           "image_sizes": np.tile(np.array([[h, w]], np.int32), (batch, 1)),
           "gt_boxes": boxes,
           "gt_classes": rng.integers(0, num_classes, (batch, num_gt)).astype(np.int32),
           "crowd_boxes": np.zeros((batch, 0, 4), np.float32)}
    if masks:
        m = np.zeros((batch, num_gt, hp, wp), np.uint8)
        for b in range(batch):
            for g, (bx0, by0, bx1, by1) in enumerate(boxes[b].astype(int)):
                m[b, g, by0:by1, bx0:bx1] = 1
        out["gt_masks"] = m
    return out


def roi_align_problem(num_rois=512, shape=(1, 200, 336, 256), stride=4, seed=0):
    """features (N, H, W, C) float32 NHWC, boxes (R, 4) xyxy in image pixels, spatial scale."""
    rng = np.random.default_rng(seed)
    features = rng.standard_normal(shape).astype(np.float32)
    img_h, img_w = shape[1] * stride, shape[2] * stride
    sides = np.exp(rng.uniform(np.log(16), np.log(400), (num_rois, 2)))  # (R, 2) w, h
    x0 = rng.uniform(0, np.maximum(img_w - sides[:, 0], 1))
    y0 = rng.uniform(0, np.maximum(img_h - sides[:, 1], 1))
    boxes = np.stack([x0, y0, x0 + sides[:, 0], y0 + sides[:, 1]], 1).astype(np.float32)
    return features, boxes, 1.0 / stride


def roi_align_upstream(num_rois, output_size, channels, seed=1):
    """The fixed upstream gradient (R, h, w, C) of the fwd+bwd timing."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((num_rois, *output_size, channels)).astype(np.float32)


def time_calls(fn, repeats: int, warmup: int, wait=lambda result: result):
    """Median (wall, cpu) seconds of ``wait(fn())`` over `repeats` calls after `warmup` calls;
    cpu = CPU time of the whole process (all threads), steadier on a shared machine. `wait`
    blocks until asynchronous results are computed (TensorFlow tensors)."""
    for _ in range(warmup):
        wait(fn())
    walls, cpus = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        wait(fn())
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return statistics.median(walls), statistics.median(cpus)


def peak_rss_mb() -> float:
    """Peak resident set of this process in MB: Linux's VmHWM (the high-water mark of this
    process's own memory map).

    Not getrusage's ru_maxrss: Linux carries that across fork + exec, so a worker started by a
    driver that holds 1.5 GB reports at least 1.5 GB however little it uses itself (the
    benchmark did until session 5: the demo training step read 1520-1557 MB, its own peak is
    below 1 GB)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


# ---------------------------------------------------------------------- worker processes
ROW_MARKER = "BENCH_ROW "


def worker_options(args):
    """The options the driver gives every worker process, from its own `args`: at most 3 repeats
    after at most 1 warm-up call (the first, tracing call of our inference workers comes before
    these), and --quick."""
    options = ["--repeats", str(min(args.repeats, 3)), "--warmup", str(min(args.warmup, 1))]
    return options + (["--quick"] if getattr(args, "quick", False) else [])


def add_worker_arguments(parser):
    """The options every worker process takes (problem size, repeats, threads)."""
    parser.add_argument("--quick", action="store_true", help="smoke-test sizes")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads")
    parser.add_argument("--inter-threads", type=int, default=1, help="inter-op threads")
    return parser


def print_row(**values):
    """One measurement of a worker, read back by `run_worker`."""
    print(ROW_MARKER + json.dumps(values), flush=True)


def module_command(module: str, *args, python: str = sys.executable):
    """The command line that runs ``benchmarks.<module>`` as a script in a worker process
    (with `worker_env`, from any directory)."""
    return [python, "-m", "benchmarks." + module, *[str(a) for a in args]]


def worker_env(**extra):
    """This process's environment with the repository root first on PYTHONPATH."""
    path = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)
    return dict(os.environ, PYTHONPATH=path, **extra)


def run_worker(cmd, group, env=None, timeout=3600):
    """Run a worker process; returns its rows, plus a FAILED row with the end of its stderr if
    it exited with an error."""
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    rows = [json.loads(line[len(ROW_MARKER):]) for line in proc.stdout.splitlines()
            if line.startswith(ROW_MARKER)]
    if proc.returncode != 0:
        rows.append({"group": group, "stage": "FAILED", "note": proc.stderr.strip()[-300:]})
    return rows
