"""Build tfmrcnn/ops/_tfmrcnn_ops.so (ROIAlign and Winograd custom ops) against the installed TF.

Run from anywhere with the project's Python: ``.venv/bin/python custom_ops/build.py [--force]``.
Idempotent: it skips the build when the library is newer than every source and was built for the
same TensorFlow version and CUDA choice (recorded in build/custom_ops/stamp.json), and prints one
line either way.

The CUDA kernel is added when TFMRCNN_CUDA=1, or when nvcc is found and TensorFlow is a CUDA
build. TFMRCNN_CUDA=0 forces a CPU-only build. TF 2.21's GPU wheel is built with CUDA 12.x: use
a CUDA 12 nvcc for GPU builds (an nvcc 13 build links libcudart.so.13, a second CUDA runtime). The tensorflow-cpu wheel lacks
third_party/gpus/cuda/include, which TF's GPU helpers include; a shim directory pointing at the
CUDA toolkit's include dir is added so that a forced CUDA build still compiles.
Flags: the TF compile/link flags (C++17, the ABI flag TF reports), -O3, no -march: the .so may
be copied to another machine.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC_DIR = os.path.join(ROOT, "custom_ops")
TARGET = os.path.join(ROOT, "tfmrcnn", "ops", "_tfmrcnn_ops.so")
WORK_DIR = os.path.join(ROOT, "build", "custom_ops")
STAMP = os.path.join(WORK_DIR, "stamp.json")
CC_SOURCES = ["roi_align_op.cc", "winograd_op.cc"]
CU_SOURCES = ["roi_align_op_gpu.cu.cc"]
HEADERS = ["roi_align_kernel.h", "roi_align_cpu.h", "roi_align_op.h", "roi_align_gpu_kernels.cu.h",
           "winograd_cpu.h", "cpu_workers.h"]
WARNINGS = ["-Wno-deprecated-declarations", "-Wno-interference-size"]
# SASS for these GPUs plus PTX of the last one (JIT-compiled on newer GPUs); override with e.g.
# TFMRCNN_CUDA_ARCHS="80;90".
CUDA_ARCHS = os.environ.get("TFMRCNN_CUDA_ARCHS", "75;80;86;89;90").split(";")


def _tf_flags():
    """(version, compile flags, link flags, is CUDA build), asked in a child process so that
    TensorFlow's start-up log lines stay out of our one-line output."""
    code = ("import json, tensorflow as tf; print(json.dumps([tf.__version__, "
            "tf.sysconfig.get_compile_flags(), tf.sysconfig.get_link_flags(), "
            "tf.test.is_built_with_cuda()]))")
    proc = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        sys.exit("custom_ops/build.py: cannot import tensorflow with %s" % sys.executable)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _want_cuda(tf_has_cuda):
    env = os.environ.get("TFMRCNN_CUDA")
    if env is not None and env != "":
        return env == "1"
    return shutil.which("nvcc") is not None and tf_has_cuda


def _up_to_date(stamp):
    if not os.path.exists(TARGET) or not os.path.exists(STAMP):
        return False
    with open(STAMP) as f:
        if json.load(f) != stamp:
            return False
    newest = max(os.path.getmtime(os.path.join(SRC_DIR, s))
                 for s in CC_SOURCES + CU_SOURCES + HEADERS + ["build.py"]
                 if os.path.exists(os.path.join(SRC_DIR, s)))
    return os.path.getmtime(TARGET) > newest


def _run(cmd, what):
    proc = subprocess.run(cmd, cwd=SRC_DIR, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout)
        sys.exit("custom_ops/build.py: compiling %s failed (command: %s)" % (what, " ".join(cmd)))


def _cuda_home(nvcc):
    """The CUDA toolkit directory (include/, lib64/) that goes with `nvcc`."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"),
                  os.path.dirname(os.path.dirname(os.path.realpath(nvcc))), "/usr/local/cuda"]
    for home in candidates:
        if home and os.path.exists(os.path.join(home, "include", "cuda_runtime.h")):
            return home
    sys.exit("custom_ops/build.py: cannot find the CUDA toolkit of %s; set CUDA_HOME" % nvcc)


def _cuda_shim(tf_include, cuda_home):
    """Include dir providing third_party/gpus/cuda/include when the TF wheel lacks it (the
    tensorflow-cpu wheel does; the GPU wheel ships it)."""
    if os.path.isdir(os.path.join(tf_include, "third_party", "gpus", "cuda", "include")):
        return []
    cuda_inc = os.path.join(cuda_home, "include")
    shim = os.path.join(WORK_DIR, "cuda_shim")
    link = os.path.join(shim, "third_party", "gpus", "cuda", "include")
    os.makedirs(os.path.dirname(link), exist_ok=True)
    if os.path.islink(link) and os.readlink(link) != cuda_inc:
        os.remove(link)
    if not os.path.exists(link):
        os.symlink(cuda_inc, link)
    return ["-I" + shim]


def build(force=False, out=None):
    """Build the library (to `out` instead of the package, without the up-to-date check and
    the stamp, when given: used to compile-check a CUDA build without replacing the op)."""
    tf_version, cflags, lflags, tf_has_cuda = _tf_flags()
    cuda = _want_cuda(tf_has_cuda)
    stamp = {"tf_version": tf_version, "cuda": cuda}
    target = os.path.abspath(out) if out else TARGET
    rel = os.path.relpath(target, ROOT)
    if not out and not force and _up_to_date(stamp):
        print("custom ops: %s up to date (TF %s%s)" % (rel, tf_version, ", CUDA" if cuda else ""))
        return
    os.makedirs(WORK_DIR, exist_ok=True)
    objects, extra_link, defines = [], [], []
    if cuda:
        nvcc = shutil.which("nvcc")
        if nvcc is None:
            sys.exit("custom_ops/build.py: TFMRCNN_CUDA=1 but nvcc is not on PATH")
        tf_include = next(f[2:] for f in cflags if f.startswith("-I"))
        cuda_home = _cuda_home(nvcc)
        gencode = []
        for a in CUDA_ARCHS:
            gencode += ["-gencode", "arch=compute_%s,code=sm_%s" % (a, a)]
        gencode += ["-gencode", "arch=compute_{0},code=compute_{0}".format(CUDA_ARCHS[-1])]
        for src in CU_SOURCES:
            obj = os.path.join(WORK_DIR, src.replace(".cu.cc", ".cu.o"))
            _run([nvcc, "-std=c++17", "-O3", "-c", src, "-o", obj, "-x", "cu",
                  "-DGOOGLE_CUDA=1", "-DNDEBUG", "--expt-relaxed-constexpr",
                  "-Xcompiler", "-fPIC"]
                 + gencode + [f for f in cflags if f != "--std=c++17"] + _cuda_shim(tf_include, cuda_home)
                 + ["-Xcompiler", ",".join(WARNINGS)], src)
            objects.append(obj)
        extra_link = ["-L" + os.path.join(cuda_home, "lib64"), "-lcudart"]
        defines = ["-DGOOGLE_CUDA=1"]
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=os.path.dirname(target))
    os.close(fd)
    try:
        _run(["g++", "-std=c++17", "-shared", "-fPIC", "-O3", "-DNDEBUG"] + WARNINGS + defines
             + CC_SOURCES + objects + ["-o", tmp] + cflags + lflags + extra_link, "the CPU op")
        os.replace(tmp, target)  # atomic: a process loading the op never sees half a file
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    if not out:
        with open(STAMP, "w") as f:
            json.dump(stamp, f)
    print("custom ops: built %s (TF %s%s)" % (rel, tf_version, ", CUDA" if cuda else ", CPU only"))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    parser.add_argument("--out", help="build this file instead of %s (no stamp)"
                        % os.path.relpath(TARGET, ROOT))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = parser.parse_args()
    build(args.force, args.out)
