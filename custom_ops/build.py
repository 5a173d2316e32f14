"""Build tfmrcnn/ops/_tfmrcnn_ops.so (ROIAlign and Winograd custom ops) against the installed TF.

Run from anywhere with the project's Python: ``.venv/bin/python custom_ops/build.py [--force]``.
Idempotent: it skips the build when the library is newer than every source and was built for the
same TensorFlow and CUDA choice, and prints one line either way. ``pip install .`` (setup.py) and
scripts/setup.sh call the same ``build()``.

Next to the library it writes ``_build_info.json``: the TensorFlow version and distribution it
was compiled against and whether it has the CUDA kernel. tfmrcnn/ops/library.py reads it at load
time: a library built for another TensorFlow is refused with both versions and the rebuild
command (a custom op only loads with the C++ ABI of the TF it was built for).

The CUDA kernel is added when TFMRCNN_CUDA=1, or when nvcc is found and TensorFlow is a CUDA
build. TFMRCNN_CUDA=0 forces a CPU-only build. TF 2.21's GPU wheel is built with CUDA 12.x: use
a CUDA 12 nvcc for GPU builds (an nvcc 13 build links libcudart.so.13, a second CUDA runtime). The
tensorflow-cpu wheel lacks third_party/gpus/cuda/include, which TF's GPU helpers include; a shim
directory pointing at the CUDA toolkit's include dir is added so that a forced CUDA build still
compiles.
Flags: the TF compile/link flags (C++17, the ABI flag TF reports), -O3, no -march: the .so may
be copied to another machine. The C++ compiler is $CXX, else g++.
"""
import argparse
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC_DIR = os.path.join(ROOT, "custom_ops")
LIBRARY_NAME = "_tfmrcnn_ops.so"
BUILD_INFO_NAME = "_build_info.json"   # read by tfmrcnn/ops/library.py
TARGET = os.path.join(ROOT, "tfmrcnn", "ops", LIBRARY_NAME)
WORK_DIR = os.path.join(ROOT, "build", "custom_ops")
# The two TensorFlow distributions that provide the `tensorflow` package (CPU / CUDA flavour).
TF_DISTRIBUTIONS = ("tensorflow-cpu", "tensorflow")
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
        sys.stderr.write(proc.stderr[-2000:])
        sys.exit("custom_ops/build.py: cannot import tensorflow with %s. The op is compiled "
                 "against the TensorFlow of the environment it is installed into: install it "
                 "first (pip install -r requirements-cpu.txt, or requirements-cuda.txt), and "
                 "run pip with --no-build-isolation so that the build sees it."
                 % sys.executable)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def installed_tf_distribution():
    """The installed TensorFlow distribution's name, e.g. "tensorflow-cpu" (None if none)."""
    for name in TF_DISTRIBUTIONS:
        try:
            importlib.metadata.version(name)
            return name
        except importlib.metadata.PackageNotFoundError:
            pass
    return None


def find_compiler(environ=os.environ):
    """The C++ compiler ($CXX, else g++); exits with what to install when there is none."""
    cxx = environ.get("CXX") or "g++"
    path = shutil.which(cxx)
    if path is None:
        sys.exit("custom_ops/build.py: no C++ compiler: %r not found on PATH. The op is "
                 "compiled at install time: apt-get install g++ (or set CXX)." % cxx)
    return path


def check_tf_headers(cflags):
    """Exit with a clear message when TensorFlow's C++ headers are not where TF says."""
    includes = [f[2:] for f in cflags if f.startswith("-I")]
    header = os.path.join("tensorflow", "core", "framework", "op_kernel.h")
    if not any(os.path.exists(os.path.join(d, header)) for d in includes):
        sys.exit("custom_ops/build.py: TensorFlow's C++ headers are missing (%s not found in %s);"
                 " reinstall the TensorFlow wheel (it ships them under tensorflow/include)."
                 % (header, " ".join(includes) or "no include directory"))


def _want_cuda(tf_has_cuda):
    env = os.environ.get("TFMRCNN_CUDA")
    if env is not None and env != "":
        return env == "1"
    return shutil.which("nvcc") is not None and tf_has_cuda


def build_info_path(library):
    return os.path.join(os.path.dirname(library), BUILD_INFO_NAME)


def _up_to_date(target, info):
    """True when `target` was built with the same `info` after the last source change."""
    info_path = build_info_path(target)
    if not os.path.exists(target) or not os.path.exists(info_path):
        return False
    with open(info_path) as f:
        if json.load(f) != info:
            return False
    newest = max(os.path.getmtime(os.path.join(SRC_DIR, s))
                 for s in CC_SOURCES + CU_SOURCES + HEADERS + ["build.py"]
                 if os.path.exists(os.path.join(SRC_DIR, s)))
    return os.path.getmtime(target) > newest


def _run(cmd, what):
    proc = subprocess.run(cmd, cwd=SRC_DIR, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout)
        sys.exit("custom_ops/build.py: compiling %s failed (command: %s)" % (what, " ".join(cmd)))


def find_cuda_home(nvcc):
    """The CUDA toolkit directory (include/, lib64/) that goes with `nvcc`, or None."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"),
                  os.path.dirname(os.path.dirname(os.path.realpath(nvcc))), "/usr/local/cuda"]
    for home in candidates:
        if home and os.path.exists(os.path.join(home, "include", "cuda_runtime.h")):
            return home
    return None


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


def build(force=False, out=None, sources=None):
    """Build the library and its _build_info.json into the source tree's tfmrcnn/ops/ (skipped
    when up to date), or to `out` (always built: a wheel's build folder, a compile check).
    sources: the C++ files of the CPU ops (default CC_SOURCES, every op), e.g.
    ["roi_align_op.cc"] for the RoiAlign op alone, all an exported SavedModel needs."""
    if sources is not None and not out:
        sys.exit("custom_ops/build.py: --sources needs --out (the package's library has every op)")
    cxx = find_compiler()
    tf_version, cflags, lflags, tf_has_cuda = _tf_flags()
    check_tf_headers(cflags)
    cuda = _want_cuda(tf_has_cuda)
    info = {"tf_version": tf_version, "tf_distribution": installed_tf_distribution(),
            "cuda": cuda}
    target = os.path.abspath(out) if out else TARGET
    rel = os.path.relpath(target, ROOT) if target.startswith(ROOT + os.sep) else target
    if not out and not force and _up_to_date(target, info):
        print("custom ops: %s up to date (TF %s%s)" % (rel, tf_version, ", CUDA" if cuda else ""))
        return
    os.makedirs(WORK_DIR, exist_ok=True)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    objects, extra_link, defines = [], [], []
    if cuda:
        nvcc = shutil.which("nvcc")
        if nvcc is None:
            sys.exit("custom_ops/build.py: TFMRCNN_CUDA=1 but nvcc is not on PATH")
        tf_include = next(f[2:] for f in cflags if f.startswith("-I"))
        cuda_home = find_cuda_home(nvcc)
        if cuda_home is None:
            sys.exit("custom_ops/build.py: cannot find the CUDA toolkit of %s; set CUDA_HOME"
                     % nvcc)
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
        _run([cxx, "-std=c++17", "-shared", "-fPIC", "-O3", "-DNDEBUG"] + WARNINGS + defines
             + list(sources or CC_SOURCES) + objects + ["-o", tmp] + cflags + lflags + extra_link,
             "the CPU op")
        os.replace(tmp, target)  # atomic: a process loading the op never sees half a file
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    with open(build_info_path(target), "w") as f:
        json.dump(info, f)
    print("custom ops: built %s (TF %s%s)" % (rel, tf_version, ", CUDA" if cuda else ", CPU only"))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    parser.add_argument("--out", help="build this file (and its %s) instead of %s"
                        % (BUILD_INFO_NAME, os.path.relpath(TARGET, ROOT)))
    parser.add_argument("--sources", nargs="+", choices=CC_SOURCES,
                        help="with --out: only these ops' C++ files (e.g. roi_align_op.cc)")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = parser.parse_args()
    build(args.force, args.out, args.sources)
