"""Standalone check of the CUDA ROIAlign kernels on a GPU machine without TensorFlow.

Needs nvcc, g++, NumPy and PyTorch (CUDA) for device memory; torchvision is used when present.
Run from the repository root:  python custom_ops/gpu_harness/run_harness.py [--arch sm_90]

It compiles roi_align_gpu_kernels.cu.h (the exact kernels of the TF op) with nvcc and
roi_align_cpu.h (the CPU op's kernels) with g++, then compares on the test suite's cases
(custom_ops/reference/roi_align_numpy.py: every box kind, aligned true/false, sampling
0/1/2/4, 7x7, 14x14, 5x3, R = 0):
  * GPU float32 forward / backward against the NumPy definition and against the CPU kernel,
  * GPU float16 / bfloat16 against the float32 reference (float32 accumulation),
  * detectron2's golden vectors (roi_align_*.npz of --golden-dir, default the test suite's
    tests/fixtures/d2), outputs and gradients,
  * torchvision.ops.roi_align (NCHW) when torchvision is installed,
and times forward / backward on the benchmark problem (benchmarks/common.py). Exits 1 on any
mismatch. Imports only NumPy-only modules of this repository (the NumPy ROIAlign definition and
the benchmark problem), nothing from tests/.
"""
import argparse
import ctypes
import glob
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, ROOT)

from benchmarks.common import ROI_ALIGN_PROBLEM, roi_align_problem  # noqa: E402
from custom_ops.reference.roi_align_numpy import (boxes_of_every_kind,  # noqa: E402
                                                  roi_align_grad_np, roi_align_np)

import torch  # noqa: E402

# dtype -> (harness code, torch dtype, tolerance against the float64 reference on N(0, 1) data)
DTYPES = {"float32": (0, torch.float32, 1e-4), "float16": (1, torch.float16, 5e-3),
          "bfloat16": (2, torch.bfloat16, 3e-2)}
FAILURES = []


def build(arch):
    out = os.path.join(ROOT, "build", "gpu_harness")
    os.makedirs(out, exist_ok=True)
    gpu_so, cpu_so = os.path.join(out, "harness_gpu.so"), os.path.join(out, "harness_cpu.so")
    subprocess.run(["nvcc", "-O3", "-std=c++17", "-shared", "-Xcompiler", "-fPIC",
                    "-arch=" + arch, os.path.join(HERE, "harness_gpu.cu"), "-o", gpu_so],
                   check=True)
    subprocess.run(["g++", "-O3", "-std=c++17", "-shared", "-fPIC",
                    os.path.join(HERE, "harness_cpu.cc"), "-o", cpu_so], check=True)
    return ctypes.CDLL(gpu_so), ctypes.CDLL(cpu_so)


def _geometry(features_shape, output_size, scale, sampling, aligned):
    n, h, w, c = features_shape
    return [ctypes.c_int(n), ctypes.c_int(h), ctypes.c_int(w), ctypes.c_int(c),
            ctypes.c_int(output_size[0]), ctypes.c_int(output_size[1]), ctypes.c_float(scale),
            ctypes.c_int(sampling), ctypes.c_int(int(aligned))]


def _ptr(t):
    return ctypes.c_void_p(t.data_ptr())


class Kernels:
    def __init__(self, gpu, cpu):
        self.gpu, self.cpu = gpu, cpu
        self.gpu.ra_error.restype = ctypes.c_char_p

    def _check(self, code, what):
        if code != 0:
            raise RuntimeError("%s: %s" % (what, self.gpu.ra_error(code).decode()))

    def launch_forward(self, f, b, i, out, output_size, scale, sampling, aligned):
        """Kernel call on device tensors (f: (N, H, W, C) of any harness dtype)."""
        code = {v[1]: v[0] for v in DTYPES.values()}[f.dtype]
        self._check(self.gpu.ra_forward(code, _ptr(f), _ptr(b), _ptr(i), _ptr(out),
                                        ctypes.c_longlong(b.shape[0]),
                                        *_geometry(tuple(f.shape), output_size, scale, sampling,
                                                   aligned)), "forward")

    def launch_backward(self, g, b, i, acc, output_size, scale, sampling, aligned):
        """Kernel call on device tensors; adds into the float32 `acc` (N, H, W, C)."""
        code = {v[1]: v[0] for v in DTYPES.values()}[g.dtype]
        self._check(self.gpu.ra_backward(code, _ptr(g), _ptr(b), _ptr(i), _ptr(acc),
                                         ctypes.c_longlong(b.shape[0]),
                                         *_geometry(tuple(acc.shape), output_size, scale,
                                                    sampling, aligned)), "backward")

    def gpu_forward(self, features, boxes, indices, output_size, scale, sampling, aligned,
                    dtype="float32"):
        tdtype = DTYPES[dtype][1]
        f = torch.from_numpy(features).cuda().to(tdtype).contiguous()
        b = torch.from_numpy(boxes).cuda()
        i = torch.from_numpy(np.asarray(indices, np.int32)).cuda()
        out = torch.empty((len(boxes), *output_size, features.shape[3]), dtype=tdtype,
                          device="cuda")
        self.launch_forward(f, b, i, out, output_size, scale, sampling, aligned)
        return out.float().cpu().numpy()

    def gpu_backward(self, grad, boxes, indices, features_shape, output_size, scale, sampling,
                     aligned, dtype="float32"):
        code, tdtype, _ = DTYPES[dtype]
        g = torch.from_numpy(grad).cuda().to(tdtype).contiguous()
        b = torch.from_numpy(boxes).cuda()
        i = torch.from_numpy(np.asarray(indices, np.int32)).cuda()
        acc = torch.zeros(tuple(features_shape), dtype=torch.float32, device="cuda")
        self.launch_backward(g, b, i, acc, output_size, scale, sampling, aligned)
        if code != 0:  # the TF op casts the float32 accumulator to the 16-bit output
            out = torch.empty(features_shape, dtype=tdtype, device="cuda")
            self._check(self.gpu.ra_cast(code, ctypes.c_longlong(acc.numel()), _ptr(acc),
                                         _ptr(out)), "cast")
            acc = out
        return acc.float().cpu().numpy()

    def cpu_forward(self, features, boxes, indices, output_size, scale, sampling, aligned):
        features = np.ascontiguousarray(features, np.float32)
        indices = np.ascontiguousarray(indices, np.int32)
        out = np.zeros((len(boxes), *output_size, features.shape[3]), np.float32)
        self.cpu.ra_cpu_forward(features.ctypes.data_as(ctypes.c_void_p),
                                boxes.ctypes.data_as(ctypes.c_void_p),
                                indices.ctypes.data_as(ctypes.c_void_p),
                                out.ctypes.data_as(ctypes.c_void_p),
                                ctypes.c_longlong(len(boxes)),
                                *_geometry(features.shape, output_size, scale, sampling, aligned))
        return out

    def cpu_backward(self, grad, boxes, indices, features_shape, output_size, scale, sampling,
                     aligned):
        grad = np.ascontiguousarray(grad, np.float32)
        indices = np.ascontiguousarray(indices, np.int32)
        out = np.zeros(features_shape, np.float32)
        self.cpu.ra_cpu_backward(grad.ctypes.data_as(ctypes.c_void_p),
                                 boxes.ctypes.data_as(ctypes.c_void_p),
                                 indices.ctypes.data_as(ctypes.c_void_p),
                                 out.ctypes.data_as(ctypes.c_void_p),
                                 ctypes.c_longlong(len(boxes)),
                                 *_geometry(features_shape, output_size, scale, sampling,
                                            aligned))
        return out


def compare(name, got, want, tol):
    err = float(np.abs(got - want).max()) if got.size else 0.0
    ok = got.shape == want.shape and err <= tol
    print("%-4s %-70s max|err| %.3g (tol %.0e)" % ("ok" if ok else "FAIL", name, err, tol))
    if not ok:
        FAILURES.append(name)


def check_random_cases(k):
    maps = [(1, 13, 17, 3, 1 / 8), (3, 10, 12, 5, 1 / 4), (2, 9, 8, 53, 1 / 4)]
    for aligned in (True, False):
        for sampling in (0, 1, 2, 4):
            for output_size in ((7, 7), (14, 14), (5, 3)):
                rng = np.random.default_rng(hash((aligned, sampling, output_size)) % 2**32)
                for n, h, w, c, scale in maps:
                    features = rng.standard_normal((n, h, w, c)).astype(np.float32)
                    boxes = boxes_of_every_kind(rng, h / scale, w / scale)
                    indices = rng.integers(0, n, len(boxes)).astype(np.int32)
                    args = (output_size, scale, sampling, aligned)
                    name = "aligned=%d sampling=%d out=%s map=%s" % (
                        aligned, sampling, output_size, (n, h, w, c))
                    ref = roi_align_np(features, boxes, indices, *args)
                    upstream = rng.standard_normal(ref.shape).astype(np.float32)
                    ref_grad = roi_align_grad_np(upstream, boxes, indices, features.shape, *args)
                    for dtype, (_, _, tol) in DTYPES.items():
                        out = k.gpu_forward(features, boxes, indices, *args, dtype=dtype)
                        compare("fwd %s %s vs numpy" % (dtype, name), out, ref, tol)
                        grad = k.gpu_backward(upstream, boxes, indices, features.shape, *args,
                                              dtype=dtype)
                        compare("bwd %s %s vs numpy" % (dtype, name), grad, ref_grad,
                                tol * max(1.0, float(np.abs(ref_grad).max())))
                    compare("fwd gpu vs cpu kernel " + name,
                            k.gpu_forward(features, boxes, indices, *args),
                            k.cpu_forward(features, boxes, indices, *args), 1e-4)
                    compare("bwd gpu vs cpu kernel " + name,
                            k.gpu_backward(upstream, boxes, indices, features.shape, *args),
                            k.cpu_backward(upstream, boxes, indices, features.shape, *args),
                            1e-4)
    features = np.ones((1, 5, 5, 2), np.float32)
    empty = np.zeros((0, 4), np.float32)
    compare("fwd R=0", k.gpu_forward(features, empty, [], (7, 7), 0.25, 0, True),
            np.zeros((0, 7, 7, 2)), 0)
    compare("bwd R=0", k.gpu_backward(np.zeros((0, 7, 7, 2), np.float32), empty, [],
                                      features.shape, (7, 7), 0.25, 0, True),
            np.zeros(features.shape), 0)


def check_golden(k, golden_dir):
    paths = sorted(glob.glob(os.path.join(golden_dir, "roi_align_*.npz")))
    if not paths:
        FAILURES.append("golden")
        print("FAIL golden: no roi_align_*.npz in %s" % golden_dir)
    for path in paths:
        d = np.load(path)
        args = (tuple(int(s) for s in d["output_size"]), float(d["spatial_scale"]),
                int(d["sampling_ratio"]), bool(d["aligned"]))
        name = os.path.basename(path)
        compare("golden fwd " + name, k.gpu_forward(d["features"], d["boxes"],
                                                    d["box_indices"], *args), d["output"], 1e-4)
        compare("golden bwd " + name,
                k.gpu_backward(d["upstream_grad"], d["boxes"], d["box_indices"],
                               d["features"].shape, *args), d["features_grad"], 1e-4)


def check_torchvision(k):
    try:
        from torchvision.ops import roi_align as tv_roi_align
    except ImportError:
        print("skip torchvision comparison: torchvision not installed")
        return
    rng = np.random.default_rng(7)
    features = rng.standard_normal((2, 25, 42, 16)).astype(np.float32)
    boxes = boxes_of_every_kind(rng, 100, 168)
    indices = rng.integers(0, 2, len(boxes)).astype(np.int32)
    for aligned in (True, False):
        for sampling in (0, 2):
            rois = torch.cat([torch.from_numpy(indices).float()[:, None],
                              torch.from_numpy(boxes)], 1).cuda()
            want = tv_roi_align(torch.from_numpy(features).permute(0, 3, 1, 2).cuda(), rois,
                                (7, 7), 0.25, sampling, aligned).permute(0, 2, 3, 1)
            got = k.gpu_forward(features, boxes, indices, (7, 7), 0.25, sampling, aligned)
            compare("torchvision aligned=%d sampling=%d" % (aligned, sampling), got,
                    want.cpu().numpy(), 1e-4)


def time_benchmark(k, repeats=20):
    """Kernel time (device data, synchronized calls) on the CPU benchmark's problem."""
    features, boxes, scale = roi_align_problem(**ROI_ALIGN_PROBLEM)
    f = torch.from_numpy(features).cuda()
    b = torch.from_numpy(boxes).cuda()
    i = torch.zeros(len(boxes), dtype=torch.int32, device="cuda")
    for output_size in ((7, 7), (14, 14)):
        out = torch.empty((512, *output_size, 256), device="cuda")
        g = torch.randn((512, *output_size, 256), device="cuda")
        acc = torch.zeros_like(f)
        for what, fn in (("fwd", lambda: k.launch_forward(f, b, i, out, output_size, 0.25, 0,
                                                          True)),
                         ("bwd", lambda: (acc.zero_(), k.launch_backward(
                             g, b, i, acc, output_size, 0.25, 0, True)))):
            fn()
            times = []
            for _ in range(repeats):
                torch.cuda.synchronize()
                start = time.perf_counter()
                fn()
                torch.cuda.synchronize()
                times.append(time.perf_counter() - start)
            print("time %s %dx%d (512 ROIs, 1x200x336x256): median %.3f ms"
                  % (what, *output_size, 1e3 * np.median(times)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="native", help="nvcc -arch value (default native)")
    parser.add_argument("--golden-dir", default=os.path.join(ROOT, "tests", "fixtures", "d2"),
                        help="folder of detectron2's roi_align_*.npz golden vectors")
    args = parser.parse_args()
    k = Kernels(*build(args.arch))
    print("GPU:", torch.cuda.get_device_name())
    check_random_cases(k)
    check_golden(k, args.golden_dir)
    check_torchvision(k)
    time_benchmark(k)
    print("%d failures" % len(FAILURES))
    sys.exit(1 if FAILURES else 0)


if __name__ == "__main__":
    main()
