"""benchmarks/allocator.py: the per-step figures, /proc/<pid>/stat parsing, each child's
allocator environment and command (nothing is run or timed)."""
import os

import pytest

from benchmarks import allocator
from tfmrcnn.utils import launch


def test_read_stat_takes_faults_and_cpu_times_after_the_command_name():
    ticks = os.sysconf("SC_CLK_TCK")
    # a command name with spaces and a parenthesis, as the kernel writes it
    fields = ["S", "1", "2", "3", "0", "-1", "4194304", "1234", "0", "5", "0",
              str(3 * ticks), str(ticks), "0", "0", "20", "0", "9"]
    sample = allocator.read_stat("4242 (python3 (x) y) " + " ".join(fields))
    assert sample == {"minflt": 1234, "utime": 3.0, "stime": 1.0}


def test_own_stat_is_readable():
    with open("/proc/self/stat") as f:
        sample = allocator.read_stat(f.read())
    assert sample["minflt"] > 0 and sample["utime"] >= 0


def test_per_step_figures():
    before = {"minflt": 100, "utime": 1.0, "stime": 0.5}
    after = {"minflt": 1100, "utime": 3.0, "stime": 1.5}
    figures = allocator.per_step(before, after, 10, 5.0)
    assert figures["seconds"] == pytest.approx(0.5)
    assert figures["cpu_s"] == pytest.approx(0.3)
    assert figures["minor_faults"] == pytest.approx(100)
    assert figures["sys_share"] == pytest.approx(1 / 3)


def test_each_child_gets_its_allocator_and_nothing_else(monkeypatch):
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


def test_child_is_one_demo_rank_logging_at_the_sampling_points():
    cmd = allocator.train_command("/tmp/out", 20)
    assert cmd[1:3] == ["-m", "tfmrcnn.cli.train"]
    assert cmd[cmd.index("--config-file") + 1].endswith("configs/shapes_demo_cpu.yaml")
    opts = set(cmd)
    assert {"SOLVER.IMS_PER_BATCH=2", "TRAINER.NUM_THREADS=1", "DATASETS.TEST=()",
            f"SOLVER.MAX_ITER={allocator.WARMUP_STEPS + 20}",
            f"TRAINER.LOG_PERIOD={allocator.WARMUP_STEPS}"} <= opts
