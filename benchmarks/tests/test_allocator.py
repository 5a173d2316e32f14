"""benchmarks/allocator.py: the per-step figures and each worker's allocator environment."""
import types

import pytest

from benchmarks import allocator
from tfmrcnn.utils import launch


def _usage(utime, stime, minflt):
    return types.SimpleNamespace(ru_utime=utime, ru_stime=stime, ru_minflt=minflt)


def test_usage_per_step():
    figures = allocator.usage_per_step(_usage(1.0, 0.5, 100), _usage(3.0, 1.5, 1100), 10)
    assert figures["cpu_s"] == pytest.approx(0.3)
    assert figures["minor_faults"] == pytest.approx(100)
    assert figures["sys_share"] == pytest.approx(1 / 3)


def test_each_worker_gets_its_allocator_and_nothing_else(monkeypatch):
    monkeypatch.setenv("LD_PRELOAD", "/opt/libhook.so")
    glibc, notice = allocator.worker_environment("glibc")
    assert glibc["LD_PRELOAD"] == "/opt/libhook.so" and notice is None
    assert glibc["TFMRCNN_ALLOCATOR"] == "glibc"
    tcmalloc, notice = allocator.worker_environment("tcmalloc")
    library = launch.find_allocator("tcmalloc")
    if library is None:
        assert "tcmalloc not found" in notice
    else:
        assert tcmalloc["LD_PRELOAD"].split() == ["/opt/libhook.so", library]
