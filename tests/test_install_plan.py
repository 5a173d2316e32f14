"""scripts/install_plan.py: the setup's decisions for both flavours, checked without a GPU."""
import dataclasses
import importlib.util
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("install_plan", ROOT / "scripts" / "install_plan.py")
plan = importlib.util.module_from_spec(_spec)
sys.modules["install_plan"] = plan   # dataclasses look their module up there
_spec.loader.exec_module(plan)

CPU_HOST = plan.Machine(cuda_env=None, gpu_count=0, has_mpi=True, python=(3, 11),
                        tf_installed=("tensorflow-cpu",), tf_version="2.21.0",
                        tf_include="/venv/site-packages/tensorflow/include", cuda_home=None,
                        nvcc_release=None, nccl=None, cpus=2)
# what detect_machine reports on an 8-GPU host after `tensorflow[and-cuda]` went in
GPU_HOST = dataclasses.replace(
    CPU_HOST, gpu_count=8, tf_installed=("tensorflow",), cuda_home="/usr/local/cuda-12.8",
    nvcc_release="12.8", cpus=96,
    nccl=("/venv/site-packages/nvidia/nccl/include",
          "/venv/site-packages/nvidia/nccl/lib/libnccl.so.2"))


@pytest.mark.parametrize("cuda_env,gpus,expected", [
    (None, 0, "cpu"), (None, 8, "cuda"), ("1", 0, "cuda"), ("0", 8, "cpu")])
def test_flavour_follows_the_machine_unless_told(cuda_env, gpus, expected):
    machine = dataclasses.replace(CPU_HOST, cuda_env=cuda_env, gpu_count=gpus)
    assert plan.choose_flavour(machine) == expected


def test_bad_tfmrcnn_cuda_value_is_an_error():
    with pytest.raises(plan.PlanError, match="TFMRCNN_CUDA must be 0 or 1"):
        plan.choose_flavour(dataclasses.replace(CPU_HOST, cuda_env="yes"))


def test_gpu_count_from_the_driver_or_nvidia_smi(tmp_path):
    proc_root = tmp_path / "gpus"
    (proc_root / "0000:17:00.0").mkdir(parents=True)
    (proc_root / "0000:65:00.0").mkdir()
    assert plan.count_nvidia_gpus(str(proc_root), nvidia_smi="/nonexistent") == 2
    smi = tmp_path / "nvidia-smi"   # stands in for the driver's tool: what it prints with -L
    smi.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 (UUID: GPU-1)'\n"
                   "echo 'GPU 1: NVIDIA H100 (UUID: GPU-2)'\n")
    smi.chmod(0o755)
    assert plan.count_nvidia_gpus(str(tmp_path / "none"), nvidia_smi=str(smi)) == 2
    assert plan.count_nvidia_gpus(str(tmp_path / "none"), nvidia_smi=str(tmp_path / "no")) == 0


def _requirements(path):
    """Package names a requirement file installs, following -r includes."""
    names = []
    for line in (ROOT / path).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line.startswith("-r "):
            names += _requirements(line[3:].strip())
        elif line:
            names.append(re.match(r"[A-Za-z0-9_.-]+(\[[\w,-]+\])?", line).group(0).lower())
    return names


def test_each_flavour_installs_exactly_one_tensorflow_at_the_same_version():
    cpu = _requirements(plan.requirement_files("cpu")[0])
    cuda = _requirements(plan.requirement_files("cuda")[0])
    tf_names = {"tensorflow", "tensorflow-cpu", "tensorflow[and-cuda]", "tensorflow-gpu"}
    assert [n for n in cpu if n in tf_names] == ["tensorflow-cpu"]
    assert [n for n in cuda if n in tf_names] == ["tensorflow[and-cuda]"]
    assert not any(n in tf_names for n in _requirements("requirements.txt"))
    assert not any(n in tf_names for n in _requirements(plan.DEV_REQUIREMENTS))
    assert [n for n in cpu if n not in tf_names] == [n for n in cuda if n not in tf_names]
    assert plan.pinned_tf_version("cpu") == plan.pinned_tf_version("cuda")
    for flavour in plan.FLAVOURS:
        assert plan.requirement_files(flavour)[-1] == plan.DEV_REQUIREMENTS


def test_the_other_flavours_tensorflow_is_removed_first():
    assert plan.packages_to_remove("cuda", CPU_HOST) == ["tensorflow-cpu"]
    assert plan.packages_to_remove("cpu", CPU_HOST) == []
    assert plan.packages_to_remove("cpu", GPU_HOST) == ["tensorflow"]
    both = dataclasses.replace(CPU_HOST, tf_installed=("tensorflow", "tensorflow-cpu"))
    assert plan.packages_to_remove("cuda", both) == ["tensorflow-cpu"]


def test_cpu_horovod_build_gloo_and_mpi_without_gpu_operations(tmp_path):
    build = plan.horovod_build("cpu", CPU_HOST, "2.21.0", shim_dir=str(tmp_path))
    assert build.env["HOROVOD_WITH_TENSORFLOW"] == "1" and build.env["HOROVOD_WITH_GLOO"] == "1"
    assert build.env["HOROVOD_WITH_MPI"] == "1" and "HOROVOD_WITHOUT_MPI" not in build.env
    assert not any(k.startswith(("HOROVOD_GPU", "HOROVOD_NCCL", "HOROVOD_CUDA")) for k in build.env)
    assert build.env["CPLUS_INCLUDE_PATH"].split(":") == [
        str(tmp_path), "/venv/site-packages/tensorflow/include/external/highwayhash",
        "/venv/site-packages/tensorflow/include/external/farmhash_archive/src"]
    assert build.expect == {"gloo": True, "mpi": True, "nccl": False}
    assert build.cache_key == "horovod-0.28.1-tf2.21.0-py311-cpu-gloo+mpi"
    # RelWithDebInfo without -g: the toolchain file CMake reads from the environment
    toolchain = build.env["CMAKE_TOOLCHAIN_FILE"]
    assert os.path.dirname(toolchain) == str(tmp_path)
    flags = dict(re.findall(r'set\((CMAKE_\w+_FLAGS_RELWITHDEBINFO_INIT) "([^"]*)"\)',
                            build.files[toolchain]))
    assert set(flags) == {f"CMAKE_{lang}_FLAGS_RELWITHDEBINFO_INIT" for lang in ("C", "CXX", "CUDA")}
    assert all(f.split() == ["-O2", "-DNDEBUG"] for f in flags.values())
    plan.make_shims(build)
    with open(toolchain) as f:
        assert f.read() == build.files[toolchain]
    no_mpi = plan.horovod_build("cpu", dataclasses.replace(CPU_HOST, has_mpi=False), "2.21.0",
                                shim_dir=str(tmp_path))
    assert no_mpi.env["HOROVOD_WITHOUT_MPI"] == "1" and "HOROVOD_WITH_MPI" not in no_mpi.env
    assert no_mpi.cache_key == "horovod-0.28.1-tf2.21.0-py311-cpu-gloo"
    assert no_mpi.expect["mpi"] is False


def test_cuda_horovod_build_asks_for_nccl(tmp_path):
    build = plan.horovod_build("cuda", GPU_HOST, "2.21.0", shim_dir=str(tmp_path),
                               cuda_archs=["80", "90"])
    env = build.env
    assert env["HOROVOD_GPU"] == "CUDA" and env["HOROVOD_GPU_OPERATIONS"] == "NCCL"
    assert env["HOROVOD_CUDA_HOME"] == "/usr/local/cuda-12.8"
    assert env["HOROVOD_BUILD_CUDA_CC_LIST"] == "80,90"
    assert env["HOROVOD_NCCL_LINK"] == "SHARED"
    assert env["HOROVOD_NCCL_INCLUDE"] == "/venv/site-packages/nvidia/nccl/include"
    # the wheel's libnccl.so.2 under the name CMake looks for, and found again at run time
    link_dir = env["HOROVOD_NCCL_LIB"]
    assert build.symlinks == {os.path.join(link_dir, "libnccl.so"):
                              "/venv/site-packages/nvidia/nccl/lib/libnccl.so.2"}
    assert env["LDFLAGS"] == "-Wl,-rpath,/venv/site-packages/nvidia/nccl/lib"
    assert env["MAKEFLAGS"] == "-j96"
    assert build.expect == {"gloo": True, "mpi": True, "nccl": True}
    assert build.cache_key == "horovod-0.28.1-tf2.21.0-py311-cuda-gloo+mpi+nccl"
    assert build.warnings == ()


def test_cuda_build_uses_the_ops_cuda_architectures_by_default(tmp_path):
    build = plan.horovod_build("cuda", GPU_HOST, "2.21.0", shim_dir=str(tmp_path))
    op_build = plan._load_op_build()
    assert build.env["HOROVOD_BUILD_CUDA_CC_LIST"] == ",".join(op_build.CUDA_ARCHS)


def test_cuda_flavour_without_nvcc_stops_before_any_download():
    with pytest.raises(plan.PlanError, match="nvcc on PATH"):
        plan.preflight("cuda", dataclasses.replace(GPU_HOST, cuda_home=None))
    plan.preflight("cpu", CPU_HOST)
    plan.preflight("cuda", GPU_HOST)


def test_cuda_flavour_without_toolkit_or_nccl_says_what_is_missing(tmp_path):
    with pytest.raises(plan.PlanError, match="nvcc"):
        plan.horovod_build("cuda", dataclasses.replace(GPU_HOST, cuda_home=None), "2.21.0",
                           shim_dir=str(tmp_path))
    with pytest.raises(plan.PlanError, match="NCCL"):
        plan.horovod_build("cuda", dataclasses.replace(GPU_HOST, nccl=None), "2.21.0",
                           shim_dir=str(tmp_path))
    cuda13 = plan.horovod_build("cuda", dataclasses.replace(GPU_HOST, nvcc_release="13.0"),
                                "2.21.0", shim_dir=str(tmp_path))
    assert "CUDA 13.0" in cuda13.warnings[0]


def test_cache_key_separates_every_input(tmp_path):
    keys = {plan.horovod_build(f, dataclasses.replace(m, python=py), tf, str(tmp_path)).cache_key
            for f, m in (("cpu", CPU_HOST), ("cuda", GPU_HOST))
            for py in ((3, 11), (3, 12)) for tf in ("2.21.0", "2.22.0")}
    assert len(keys) == 8


def test_nccl_found_in_the_pip_wheel_layout(tmp_path):
    nccl = tmp_path / "site" / "nvidia" / "nccl"
    (nccl / "include").mkdir(parents=True)
    (nccl / "include" / "nccl.h").write_text("#define NCCL_MAJOR 2\n")
    (nccl / "lib").mkdir()
    (nccl / "lib" / "libnccl.so.2").write_bytes(b"")
    assert plan.find_nccl({}, [str(tmp_path / "site")]) == (str(nccl / "include"),
                                                            str(nccl / "lib" / "libnccl.so.2"))


def test_shims_are_written_and_linked(tmp_path):
    target = tmp_path / "libnccl.so.2"
    target.write_bytes(b"")
    build = plan.horovod_build("cuda", dataclasses.replace(
        GPU_HOST, nccl=(str(tmp_path), str(target))), "2.21.0", shim_dir=str(tmp_path / "shim"))
    plan.make_shims(build)
    plan.make_shims(build)   # idempotent
    header = tmp_path / "shim" / "tensorflow" / "compiler" / "xla" / "client" / "xla_builder.h"
    assert header.read_text() == '#include "xla/hlo/builder/xla_builder.h"\n'
    assert os.readlink(tmp_path / "shim" / "nccl-lib" / "libnccl.so") == str(target)


def test_horovod_mismatches_name_each_flag():
    expect = {"gloo": True, "mpi": True, "nccl": True}
    assert plan.horovod_mismatches(expect, {"gloo": True, "mpi": True, "nccl": True}, "0.28.1") == []
    problems = plan.horovod_mismatches(expect, {"gloo": True, "mpi": True, "nccl": False}, "0.28.0")
    assert problems == ["version 0.28.0, planned 0.28.1", "nccl_built() is False, planned True"]


def _cli(*args, **env):
    full = dict(os.environ, **env)
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "install_plan.py"), *args],
                          capture_output=True, text=True, env=full, timeout=120)


def test_dry_run_of_the_cuda_flavour_on_this_machine():
    proc = _cli("show", TFMRCNN_CUDA="1")
    assert proc.returncode == 0, proc.stderr
    assert "flavour:       cuda" in proc.stdout
    assert "requirements:  requirements-cuda.txt requirements-dev.txt" in proc.stdout
    proc = _cli("requirements", TFMRCNN_CUDA="0")
    assert proc.stdout.split() == ["requirements-cpu.txt", "requirements-dev.txt"]


def test_setup_dry_run_prints_the_plan():
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "setup.sh"), "--dry-run"],
                          capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, TFMRCNN_CUDA="0"))
    assert proc.returncode == 0, proc.stderr
    assert "flavour:       cpu" in proc.stdout and "horovod cache: horovod-0.28.1-tf" in proc.stdout
