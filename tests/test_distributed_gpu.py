"""The GPU-only paths of tfmrcnn.distributed, with GPUs mocked as far as TensorFlow allows
(``tf.config`` answers; no kernel runs on them): one GPU per local rank, memory growth, no CPU
thread settings, Horovod's cycle left alone, the NCCL check."""
import os
import pathlib
import subprocess
import sys
import types

import pytest
import tensorflow as tf

from tfmrcnn import distributed

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def eight_gpus(monkeypatch):
    """tf.config reports 8 GPUs and records what is asked of them."""
    gpus = [tf.config.PhysicalDevice(name=f"/physical_device:GPU:{i}", device_type="GPU")
            for i in range(8)]
    calls = {"visible": [], "growth": [], "threads": []}
    real_list = tf.config.list_physical_devices
    monkeypatch.setattr(tf.config, "list_physical_devices",
                        lambda kind=None: list(gpus) if kind == "GPU" else real_list(kind))
    monkeypatch.setattr(tf.config, "set_visible_devices",
                        lambda devices, kind=None: calls["visible"].append((devices, kind)))
    monkeypatch.setattr(tf.config.experimental, "set_memory_growth",
                        lambda device, on: calls["growth"].append((device, on)))
    monkeypatch.setattr(tf.config.threading, "set_intra_op_parallelism_threads",
                        lambda n: calls["threads"].append(n))
    return gpus, calls


def test_each_local_rank_sees_only_its_own_gpu(eight_gpus):
    gpus, calls = eight_gpus
    for local_rank in range(8):
        where = distributed.pin_devices(local_rank, num_threads=4, local_size=8,
                                        pin_cpu_cores=True)
        assert where == f"GPU /physical_device:GPU:{local_rank}"
    assert calls["visible"] == [(gpu, "GPU") for gpu in gpus]
    assert calls["growth"] == [(gpu, True) for gpu in gpus]
    assert calls["threads"] == []      # CPU thread and core settings are for CPU-only hosts


def test_all_reduce_library_prefers_nccl_for_gpu_tensors():
    def built(nccl, mpi):
        return types.SimpleNamespace(nccl_built=lambda: nccl, mpi_enabled=lambda: mpi)

    assert distributed.all_reduce_library(built(2183, True), gpu=True) == "NCCL"
    assert distributed.all_reduce_library(built(2183, True), gpu=False) == "MPI"
    assert distributed.all_reduce_library(built(0, False), gpu=True) == "Gloo"


_INIT_ON_A_GPU_HOST = """
import logging, os, sys
logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="%(message)s")
import tfmrcnn.distributed as d
d._has_gpu = lambda: True
hvd = d.init_horovod()
print("cycle", os.environ.get("HOROVOD_CYCLE_TIME"))
print("nccl_built", bool(hvd.nccl_built()))
print("library", d.all_reduce_library(hvd, gpu=True))
"""


def test_init_on_a_gpu_host_keeps_horovods_cycle_and_checks_for_nccl():
    env = {k: v for k, v in os.environ.items() if k != "HOROVOD_CYCLE_TIME"}
    env.update(PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-c", _INIT_ON_A_GPU_HOST], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "cycle None" in lines      # the CPU-host cycle (20 ms) is not applied on GPU hosts
    if "nccl_built False" in lines:   # this host's Horovod (CPU flavour): the warning says so
        assert any("built without NCCL" in line for line in lines), proc.stdout
        assert lines[-1] in ("library MPI", "library Gloo")
    else:
        assert lines[-1] == "library NCCL"
        assert not any("built without NCCL" in line for line in lines)
