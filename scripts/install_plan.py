"""The decisions of scripts/setup.sh, made in one place so that they can be tested without a GPU.

setup.sh stays a thin sequence of commands; everything it has to *choose* comes from here:

* the flavour: ``cuda`` when ``TFMRCNN_CUDA=1`` or (``TFMRCNN_CUDA`` unset) an NVIDIA GPU is
  present, else ``cpu``;
* the requirement files of that flavour (``requirements-cpu.txt`` installs ``tensorflow-cpu``,
  ``requirements-cuda.txt`` installs ``tensorflow[and-cuda]``; both include the common
  ``requirements.txt``), and the TensorFlow package of the *other* flavour to uninstall first:
  ``tensorflow`` and ``tensorflow-cpu`` both write the ``tensorflow/`` folder, so never both;
* Horovod's build environment (Gloo always, MPI when ``mpicxx``/``mpicc`` is found, NCCL for
  GPU operations in the cuda flavour), the name of its wheel cache (Horovod, TF, Python, flavour
  and collective back-ends), and the build flags the installed Horovod must report afterwards
  (``horovod.tensorflow.{gloo,mpi,nccl}_built()``): a mismatch is an error.

Standard library only: it runs with the virtualenv's Python before anything is installed in it.
Commands (run with the virtualenv's Python, from anywhere)::

    python scripts/install_plan.py show               # the whole plan, for reading (dry run)
    python scripts/install_plan.py flavour            # cpu or cuda (error: it cannot be had)
    python scripts/install_plan.py requirements       # requirement files, one per line
    python scripts/install_plan.py remove             # installed TF packages of the other flavour
    python scripts/install_plan.py tf-version         # the installed TensorFlow's version
    python scripts/install_plan.py horovod-requirement  # horovod==0.28.1
    python scripts/install_plan.py horovod-env        # KEY=VALUE lines of Horovod's build
    python scripts/install_plan.py horovod-cache-key  # e.g. horovod-0.28.1-tf2.21.0-py311-cpu-gloo+mpi
    python scripts/install_plan.py horovod-check      # exit 0 if the installed Horovod matches,
                                                      # 1 if its build flags differ, 2 if missing
"""
from __future__ import annotations

import argparse
import dataclasses
import glob
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from typing import Dict, List, Mapping, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOROVOD_VERSION = "0.28.1"
FLAVOURS = ("cpu", "cuda")
# The TensorFlow distribution each flavour installs; both provide the `tensorflow` package.
TF_DISTRIBUTION = {"cpu": "tensorflow-cpu", "cuda": "tensorflow"}
REQUIREMENTS = {"cpu": "requirements-cpu.txt", "cuda": "requirements-cuda.txt"}
DEV_REQUIREMENTS = "requirements-dev.txt"   # test and build tools, both flavours
# Where setup.sh keeps the header shims of the Horovod build (git-ignored).
SHIM_DIR = os.path.join(ROOT, "build", "hvd-shim")


class PlanError(Exception):
    """The machine cannot get the requested flavour; the message says what is missing."""


def _load_op_build():
    """custom_ops/build.py as a module: the CUDA architectures and toolkit lookup live there."""
    spec = importlib.util.spec_from_file_location(
        "tfmrcnn_custom_ops_build", os.path.join(ROOT, "custom_ops", "build.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------ facts
@dataclasses.dataclass(frozen=True)
class Machine:
    """What the plan depends on, gathered by ``detect_machine`` (tests build it by hand)."""
    cuda_env: Optional[str]           # TFMRCNN_CUDA as set ("1", "0") or None when unset
    gpu_count: int                    # NVIDIA GPUs seen by the driver
    has_mpi: bool                     # mpicxx or mpicc on PATH
    python: Tuple[int, int]
    tf_installed: Tuple[str, ...]     # installed TF distributions, e.g. ("tensorflow-cpu",)
    tf_version: Optional[str]         # version of the installed TF, None when none is
    tf_include: Optional[str]         # TF's C++ header folder (site-packages/tensorflow/include)
    cuda_home: Optional[str]          # the CUDA toolkit of nvcc, None without nvcc
    nvcc_release: Optional[str]       # e.g. "12.8"
    nccl: Optional[Tuple[str, str]]   # (include dir, library file) of NCCL, None when not found
    cpus: int = 2


def count_nvidia_gpus(proc_root="/proc/driver/nvidia/gpus", nvidia_smi=None) -> int:
    """GPUs known to the NVIDIA driver: its /proc folder, else ``nvidia-smi -L`` (containers
    that mount the tool but not /proc/driver)."""
    found = glob.glob(os.path.join(proc_root, "*"))
    if found:
        return len(found)
    nvidia_smi = nvidia_smi or shutil.which("nvidia-smi")
    if not nvidia_smi:
        return 0
    try:
        out = subprocess.run([nvidia_smi, "-L"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def _installed_version(distribution: str) -> Optional[str]:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _tf_include() -> Optional[str]:
    """TF's header folder, found without importing TensorFlow (seconds, and its log lines)."""
    spec = importlib.util.find_spec("tensorflow")
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.join(list(spec.submodule_search_locations)[0], "include")


def _nvcc_release(nvcc: str) -> Optional[str]:
    try:
        out = subprocess.run([nvcc, "--version"], stdout=subprocess.PIPE, text=True,
                             timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"release (\d+\.\d+)", out)
    return match.group(1) if match else None


def find_nccl(environ: Mapping[str, str], search_roots: List[str]) -> Optional[Tuple[str, str]]:
    """(include dir, shared library) of NCCL: $HOROVOD_NCCL_HOME/{include,lib}, the
    ``nvidia-nccl-cu12`` wheel that ``tensorflow[and-cuda]`` installs (``nvidia/nccl/`` in
    site-packages), or the system's libnccl-dev."""
    candidates = []
    home = environ.get("HOROVOD_NCCL_HOME")
    if home:
        candidates.append((os.path.join(home, "include"), os.path.join(home, "lib")))
    for root in search_roots:
        candidates.append((os.path.join(root, "nvidia", "nccl", "include"),
                           os.path.join(root, "nvidia", "nccl", "lib")))
    candidates += [("/usr/include", "/usr/lib/x86_64-linux-gnu"), ("/usr/local/include", "/usr/local/lib")]
    for include, lib in candidates:
        libs = sorted(glob.glob(os.path.join(lib, "libnccl.so*")))
        if os.path.exists(os.path.join(include, "nccl.h")) and libs:
            return include, libs[0]
    return None


def detect_machine(environ: Mapping[str, str] = os.environ) -> Machine:
    """The facts of this machine and of the Python running this script (the virtualenv's)."""
    import site
    import sysconfig

    installed = tuple(d for d in sorted(set(TF_DISTRIBUTION.values())) if _installed_version(d))
    nvcc = shutil.which("nvcc")
    cuda_home = _load_op_build().find_cuda_home(nvcc) if nvcc else None
    roots = [sysconfig.get_paths()["purelib"]] + list(getattr(site, "getsitepackages", list)())
    cuda_env = environ.get("TFMRCNN_CUDA")
    return Machine(
        cuda_env=cuda_env if cuda_env not in (None, "") else None,
        gpu_count=count_nvidia_gpus(),
        has_mpi=bool(shutil.which("mpicxx") or shutil.which("mpicc")),
        python=sys.version_info[:2],
        tf_installed=installed,
        tf_version=_installed_version(installed[0]) if installed else None,
        tf_include=_tf_include(),
        cuda_home=cuda_home,
        nvcc_release=_nvcc_release(nvcc) if nvcc else None,
        nccl=find_nccl(environ, roots),
        cpus=len(os.sched_getaffinity(0)),   # what `nproc` says: the cores we may use
    )


# -------------------------------------------------------------------------------- decisions
def choose_flavour(machine: Machine) -> str:
    """``TFMRCNN_CUDA=1`` -> cuda, ``TFMRCNN_CUDA=0`` -> cpu, unset -> cuda iff a GPU is present."""
    if machine.cuda_env is not None:
        if machine.cuda_env not in ("0", "1"):
            raise PlanError(f"TFMRCNN_CUDA must be 0 or 1, not {machine.cuda_env!r}")
        return "cuda" if machine.cuda_env == "1" else "cpu"
    return "cuda" if machine.gpu_count > 0 else "cpu"


def preflight(flavour: str, machine: Machine) -> None:
    """Stop before any download when the flavour cannot be completed on this machine."""
    if flavour == "cuda" and machine.cuda_home is None:
        raise PlanError("the cuda flavour needs the CUDA 12 toolkit with its nvcc on PATH "
                        "(it builds Horovod's NCCL operations and the ROIAlign CUDA kernel); "
                        "TFMRCNN_CUDA=0 selects the CPU stack")


def requirement_files(flavour: str) -> List[str]:
    """What setup.sh installs with ``pip install -r``: the flavour's stack, then the dev tools."""
    return [REQUIREMENTS[flavour], DEV_REQUIREMENTS]


def packages_to_remove(flavour: str, machine: Machine) -> List[str]:
    """Installed TF distributions of the other flavour: they must go before this flavour's TF
    is installed, or both would write the same ``tensorflow/`` folder."""
    return [d for d in machine.tf_installed if d != TF_DISTRIBUTION[flavour]]


def pinned_tf_version(flavour: str, root: str = ROOT) -> str:
    """The TF version the flavour's requirement file pins."""
    path = os.path.join(root, REQUIREMENTS[flavour])
    with open(path) as f:
        for line in f:
            match = re.match(r"\s*tensorflow(?:-cpu)?(?:\[[\w,-]+\])?==([\w.]+)", line)
            if match:
                return match.group(1)
    raise PlanError(f"{path} pins no tensorflow version")


@dataclasses.dataclass(frozen=True)
class HorovodBuild:
    """How Horovod is built for a flavour, and what the result must report."""
    env: Dict[str, str]            # environment of `pip wheel horovod==...`
    expect: Dict[str, bool]        # {"gloo": .., "mpi": .., "nccl": ..}: the *_built() answers
    cache_key: str                 # folder name of the cached wheel
    files: Dict[str, str]          # shim headers, CMake toolchain: path -> text, written first
    symlinks: Dict[str, str]       # symlinks to make before the build: path -> target
    warnings: Tuple[str, ...] = ()


def horovod_build(flavour: str, machine: Machine, tf_version: str, shim_dir: str = SHIM_DIR,
                  cuda_archs: Optional[List[str]] = None) -> HorovodBuild:
    """The environment of Horovod's build for `flavour` on `machine`.

    Both flavours: TensorFlow only, Gloo always, MPI when Open MPI's compiler wrappers are
    there (``HOROVOD_WITHOUT_MPI=1`` otherwise, so that a half-found MPI cannot slip in).
    Horovod 0.28.1 compiles ``xla_mpi_ops.cc``, which needs the highwayhash/farmhash headers
    TF 2.21 ships under ``include/external/`` and the pre-2.19 path of ``xla_builder.h``: a
    shim header in `shim_dir` points there. The cuda flavour adds ``HOROVOD_GPU=CUDA``,
    ``HOROVOD_GPU_OPERATIONS=NCCL`` (all-reduce, all-gather, broadcast on the GPU), the CUDA
    toolkit of nvcc, the op's CUDA architectures, and NCCL linked as a shared library. The
    ``nvidia-nccl-cu12`` wheel has only ``libnccl.so.2``, while CMake looks for ``libnccl.so``:
    a symlink in `shim_dir` gives it that name, and an rpath lets Horovod find it at run time.

    Horovod builds CMake's RelWithDebInfo (``-O3 -g``); a toolchain file (``CMAKE_TOOLCHAIN_FILE``
    in the environment, read by CMake >= 3.21) drops the ``-g``: the same code without debug
    info compiles in ~25 % less CPU time with 20x smaller objects (horovod/common/operations.cc:
    13.4 s -> 10.0 s of CPU, 7.5 MB -> 0.33 MB, on the 2-core AVX2 EPYC).
    """
    if machine.tf_include is None:
        raise PlanError("TensorFlow is not installed in this Python: install the flavour's "
                        "requirements first")
    include_path = [shim_dir, os.path.join(machine.tf_include, "external", "highwayhash"),
                    os.path.join(machine.tf_include, "external", "farmhash_archive", "src")]
    toolchain = os.path.join(shim_dir, "no-debug-info.cmake")
    files = {os.path.join(shim_dir, "tensorflow", "compiler", "xla", "client", "xla_builder.h"):
             "#include \"xla/hlo/builder/xla_builder.h\"\n",
             toolchain: "".join(f'set(CMAKE_{lang}_FLAGS_RELWITHDEBINFO_INIT "-O2 -DNDEBUG")\n'
                                for lang in ("C", "CXX", "CUDA"))}
    symlinks = {}
    env = {"HOROVOD_WITH_TENSORFLOW": "1", "HOROVOD_WITHOUT_PYTORCH": "1",
           "HOROVOD_WITHOUT_MXNET": "1", "HOROVOD_WITH_GLOO": "1",
           "CPLUS_INCLUDE_PATH": ":".join(include_path), "MAKEFLAGS": f"-j{machine.cpus}",
           "CMAKE_TOOLCHAIN_FILE": toolchain}
    env["HOROVOD_WITH_MPI" if machine.has_mpi else "HOROVOD_WITHOUT_MPI"] = "1"
    warnings = []
    if flavour == "cuda":
        preflight(flavour, machine)
        if machine.nccl is None:
            raise PlanError("the cuda flavour needs NCCL: tensorflow[and-cuda] installs it "
                            "(nvidia-nccl-cu12), or apt-get install libnccl-dev, or set "
                            "HOROVOD_NCCL_HOME")
        if machine.nvcc_release and not machine.nvcc_release.startswith("12."):
            warnings.append(f"nvcc is CUDA {machine.nvcc_release}; TensorFlow 2.21's GPU wheel "
                            "uses CUDA 12: a CUDA 12 toolkit avoids a second CUDA runtime")
        nccl_include, nccl_lib = machine.nccl
        nccl_link_dir = os.path.join(shim_dir, "nccl-lib")
        symlinks[os.path.join(nccl_link_dir, "libnccl.so")] = nccl_lib
        archs = cuda_archs if cuda_archs is not None else _load_op_build().CUDA_ARCHS
        env.update({
            "HOROVOD_GPU": "CUDA", "HOROVOD_GPU_OPERATIONS": "NCCL",
            "HOROVOD_CUDA_HOME": machine.cuda_home,
            "HOROVOD_BUILD_CUDA_CC_LIST": ",".join(archs),
            "HOROVOD_NCCL_LINK": "SHARED", "HOROVOD_NCCL_INCLUDE": nccl_include,
            "HOROVOD_NCCL_LIB": nccl_link_dir,
            "LDFLAGS": "-Wl,-rpath," + os.path.dirname(os.path.realpath(nccl_lib)),
        })
    expect = {"gloo": True, "mpi": machine.has_mpi, "nccl": flavour == "cuda"}
    backends = "+".join(name for name in ("gloo", "mpi", "nccl") if expect[name])
    key = (f"horovod-{HOROVOD_VERSION}-tf{tf_version}-py{machine.python[0]}{machine.python[1]}"
           f"-{flavour}-{backends}")
    return HorovodBuild(env=env, expect=expect, cache_key=key, files=files,
                        symlinks=symlinks, warnings=tuple(warnings))


def make_shims(build: HorovodBuild) -> None:
    """Write the build's shim headers, toolchain file and symlinks (idempotent)."""
    for path, text in build.files.items():
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
    for path, target in build.symlinks.items():
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if os.path.islink(path) and os.readlink(path) != target:
            os.remove(path)
        if not os.path.lexists(path):
            os.symlink(target, path)


def horovod_mismatches(expect: Mapping[str, bool], built: Mapping[str, bool],
                       version: str) -> List[str]:
    """What differs between the planned Horovod build and the installed one (empty: none)."""
    problems = []
    if version != HOROVOD_VERSION:
        problems.append(f"version {version}, planned {HOROVOD_VERSION}")
    for name, wanted in expect.items():
        if bool(built.get(name)) != wanted:
            problems.append(f"{name}_built() is {bool(built.get(name))}, planned {wanted}")
    return problems


def installed_horovod() -> Optional[Tuple[str, Dict[str, bool]]]:
    """(version, {"gloo", "mpi", "nccl"} -> built) of the Horovod in this Python, or None."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")   # TensorFlow's start-up lines
    try:
        import horovod
        import horovod.tensorflow as hvd
    except Exception:  # noqa: BLE001 - ImportError, or TF's NotFoundError for a stale build
        return None
    return horovod.__version__, {"gloo": bool(hvd.gloo_built()), "mpi": bool(hvd.mpi_built()),
                                 "nccl": bool(hvd.nccl_built())}


# ---------------------------------------------------------------------------------- commands
def _plan(environ=os.environ):
    machine = detect_machine(environ)
    flavour = choose_flavour(machine)
    return machine, flavour


def _horovod(machine, flavour, dry_run=False):
    # TF's installed version when there is one (the ABI Horovod is compiled against), else the
    # flavour's pin (a dry run before anything is installed).
    tf_version = machine.tf_version or pinned_tf_version(flavour)
    if dry_run and machine.tf_include is None:
        machine = dataclasses.replace(machine, tf_include="<site-packages>/tensorflow/include")
    return horovod_build(flavour, machine, tf_version)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=[
        "show", "flavour", "requirements", "remove", "tf-version", "horovod-requirement",
        "horovod-env", "horovod-cache-key", "horovod-check"])
    parser.add_argument("--quiet", action="store_true", help="horovod-check: no message")
    args = parser.parse_args(argv)
    try:
        machine, flavour = _plan()
        if args.command == "flavour":
            preflight(flavour, machine)
            print(flavour)
        elif args.command == "requirements":
            print("\n".join(requirement_files(flavour)))
        elif args.command == "remove":
            print("\n".join(packages_to_remove(flavour, machine)))
        elif args.command == "tf-version":
            print(machine.tf_version or "none")
        elif args.command == "horovod-requirement":
            print(f"horovod=={HOROVOD_VERSION}")
        elif args.command == "horovod-env":
            build = _horovod(machine, flavour)
            make_shims(build)
            for warning in build.warnings:
                print("install_plan: warning: " + warning, file=sys.stderr)
            print("\n".join(f"{k}={v}" for k, v in sorted(build.env.items())))
        elif args.command == "horovod-cache-key":
            print(_horovod(machine, flavour).cache_key)
        elif args.command == "horovod-check":
            return _check_horovod(_horovod(machine, flavour), args.quiet)
        else:
            _show(machine, flavour)
    except PlanError as e:
        print(f"install_plan: error: {e}", file=sys.stderr)
        return 3
    return 0


def _check_horovod(build: HorovodBuild, quiet: bool) -> int:
    found = installed_horovod()
    if found is None:
        if not quiet:
            print("install_plan: Horovod is not installed in this Python", file=sys.stderr)
        return 2
    problems = horovod_mismatches(build.expect, found[1], found[0])
    if problems and not quiet:
        print("install_plan: the installed Horovod does not match the plan (%s): %s"
              % (build.cache_key, "; ".join(problems)), file=sys.stderr)
    return 1 if problems else 0


def _show(machine: Machine, flavour: str) -> None:
    """The plan as setup.sh would carry it out (nothing is changed)."""
    print(f"flavour:       {flavour}  (TFMRCNN_CUDA={machine.cuda_env or 'unset'}, "
          f"{machine.gpu_count} NVIDIA GPU(s))")
    print(f"requirements:  {' '.join(requirement_files(flavour))}")
    print(f"uninstall:     {' '.join(packages_to_remove(flavour, machine)) or '-'}")
    try:
        build = _horovod(machine, flavour, dry_run=True)
    except PlanError as e:
        print(f"horovod:       cannot be built: {e}")
        return
    print(f"horovod cache: {build.cache_key}")
    print(f"horovod must report: {json.dumps(build.expect)}")
    print("horovod build environment:")
    for key, value in sorted(build.env.items()):
        print(f"  {key}={value}")
    for warning in build.warnings:
        print(f"warning: {warning}")


if __name__ == "__main__":
    sys.exit(main())
