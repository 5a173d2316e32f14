"""tfmrcnn.distributed: launcher world-size detection, the mismatch error, the Horovod handle,
the hang watchdog, core pinning."""
import os
import pathlib
import subprocess
import sys
import time

import pytest

from tfmrcnn.distributed import Watchdog, check_world_size, launcher_world_size

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_launcher_world_size_from_environment():
    assert launcher_world_size({}) is None
    assert launcher_world_size({"OMPI_COMM_WORLD_SIZE": "8"}) == 8
    assert launcher_world_size({"HOROVOD_SIZE": "2", "PMI_SIZE": "4"}) == 2
    assert launcher_world_size({"PMI_SIZE": "3"}) == 3


def test_gloo_only_horovod_under_mpirun_is_stopped_with_a_clear_message():
    check_world_size(8, {"OMPI_COMM_WORLD_SIZE": "8"})     # consistent: nothing happens
    check_world_size(1, {})                                 # no launcher
    with pytest.raises(SystemExit, match="Horovod reports 1 process.*launcher started 2.*MPI"):
        check_world_size(1, {"OMPI_COMM_WORLD_SIZE": "2"})


def test_without_initialised_horovod_a_process_is_rank_0_of_1():
    code = ("from tfmrcnn.distributed import *\n"
            "assert horovod() is None and horovod_if_distributed() is None\n"
            "assert world() == (0, 1)\n"
            "barrier('nobody_else')\n"          # returns at once: a single process
            "import horovod.tensorflow as hvd\n"  # imported but not initialised: still absent
            "assert horovod() is None and world() == (0, 1)\n"
            "hvd.init()\n"
            "assert horovod() is hvd and horovod_if_distributed() is None and world() == (0, 1)\n"
            "print('SINGLE')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert out.returncode == 0 and "SINGLE" in out.stdout, out.stderr


def test_watchdog_ends_a_hung_process():
    code = ("import time\n"
            "from tfmrcnn.distributed import Watchdog\n"
            "w = Watchdog(0.5, rank=3, poll=0.1).start()\n"
            "w.beat(41)\n"
            "time.sleep(30)\n")
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert out.returncode == 3
    assert time.monotonic() - start < 25
    assert "rank 3" in out.stderr and "iteration 41" in out.stderr


def test_watchdog_pause_and_beats_keep_it_quiet():
    w = Watchdog(0.3, poll=0.05).start()
    with w.pause():
        time.sleep(0.6)                 # longer than the timeout, but paused
    for i in range(6):
        w.beat(i)
        time.sleep(0.1)
    w.stop()
    assert w.iteration == 5


def test_cpu_cycle_time_depends_on_sync_bn(monkeypatch):
    """On a CPU host the Horovod cycle is 20 ms, 5 ms with SyncBN; the user's value wins."""
    from tfmrcnn import distributed

    seen = []
    monkeypatch.setattr(distributed, "check_world_size", lambda size: None)
    import horovod.tensorflow as hvd
    monkeypatch.setattr(hvd, "init", lambda: seen.append(os.environ["HOROVOD_CYCLE_TIME"]))
    monkeypatch.setattr(hvd, "size", lambda: 1)
    for sync_bn, user, expected in ((False, None, "20"), (True, None, "5"), (True, "3", "3")):
        monkeypatch.delenv("HOROVOD_CYCLE_TIME", raising=False)
        if user:
            monkeypatch.setenv("HOROVOD_CYCLE_TIME", user)
        distributed.init_horovod(sync_bn=sync_bn)
    assert seen == ["20", "5", "3"]


def test_cpu_cores_for_rank_splits_the_allowed_cores_evenly_and_disjointly():
    from tfmrcnn.distributed import cpu_cores_for_rank

    allowed = {7, 1, 3, 5, 9}
    shares = [cpu_cores_for_rank(allowed, r, 2) for r in range(2)]
    assert shares == [[1, 3], [5, 7]]                  # 2 each, the odd core left over
    assert cpu_cores_for_rank(range(8), 3, 4) == [6, 7]
    assert cpu_cores_for_rank(range(8), 0, 1) is None  # a lone process keeps every core
    assert cpu_cores_for_rank([0], 1, 2) is None       # launcher already bound us to 1 core
    assert cpu_cores_for_rank(range(2), 5, 8) is None  # more processes than cores


def test_set_process_affinity_pins_running_and_later_threads():
    code = ("import os, threading\n"
            "from tfmrcnn.distributed import set_process_affinity\n"
            "core = min(os.sched_getaffinity(0))\n"
            "go = threading.Event()\n"
            "early = threading.Thread(target=go.wait); early.start()\n"
            "set_process_affinity([core])\n"
            "late = threading.Thread(target=go.wait); late.start()\n"
            "masks = [os.sched_getaffinity(t.native_id) for t in (early, late)]\n"
            "go.set()\n"
            "assert masks == [{core}, {core}] and os.sched_getaffinity(0) == {core}, masks\n"
            "print('PINNED', core)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert out.returncode == 0 and "PINNED" in out.stdout, out.stderr
