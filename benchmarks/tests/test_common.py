"""benchmarks/common.py: the shared problems, the timing loop, memory readings, worker starts."""
import subprocess
import sys

import numpy as np

from benchmarks import common


def test_shared_problems_are_deterministic_and_shaped():
    f1, b1, scale = common.roi_align_problem(**common.ROI_ALIGN_QUICK)
    f2, b2, _ = common.roi_align_problem(**common.ROI_ALIGN_QUICK)
    np.testing.assert_array_equal(b1, b2)
    np.testing.assert_array_equal(f1, f2)
    assert f1.shape == (1, 50, 84, 32) and b1.shape == (64, 4) and scale == 0.25
    sides = b1[:, 2:] - b1[:, :2]
    assert sides.min() >= 16 - 1e-3 and sides.max() <= 400 + 1e-3
    assert common.roi_align_upstream(64, (7, 7), 32).shape == (64, 7, 7, 32)
    batch = common.synthetic_batch(2, (100, 130), 3, 80, seed=1)
    assert batch["images"].shape == (2, 128, 160, 3)  # padded to 32
    assert np.all(batch["images"][:, 100:] == 0) and np.all(batch["images"][:, :, 130:] == 0)
    assert batch["gt_masks"].shape == (2, 3, 128, 160)
    # each mask is its box's rectangle
    x0, y0, x1, y1 = batch["gt_boxes"][0, 0].astype(int)
    assert batch["gt_masks"][0, 0].sum() == (x1 - x0) * (y1 - y0)


def test_time_calls_counts_repeats_and_waits():
    calls, waited = [], []
    wall, cpu = common.time_calls(lambda: calls.append(1) or len(calls), repeats=3, warmup=2,
                                  wait=waited.append)
    assert len(calls) == 5 and waited == [1, 2, 3, 4, 5]
    assert wall >= 0 and cpu >= 0


def test_peak_rss_is_the_process_own_not_its_parents():
    """A child of a process holding ~300 MB must not report the parent's memory as its peak
    (getrusage's ru_maxrss does, after fork + exec). The child is started as the workers are
    (module_command's interpreter, worker_env), from another directory."""
    ballast = np.ones(300 * 2 ** 20, np.uint8)  # resident in this process
    code = "from benchmarks.common import peak_rss_mb; print(peak_rss_mb())"
    child = float(subprocess.run([sys.executable, "-c", code], env=common.worker_env(),
                                 cwd="/", capture_output=True, text=True, check=True).stdout)
    assert ballast.sum() == ballast.size
    assert child < 250, child  # numpy + the interpreter, far below the parent's 300 MB ballast
    assert common.peak_rss_mb() > 300  # this process holds the ballast


def test_worker_rows_and_failures_are_read_back():
    """run_worker reads the BENCH_ROW lines of a `python -m benchmarks.<module>`-style child and
    adds a FAILED row with the end of stderr when it exits with an error."""
    code = ("from benchmarks.common import print_row; print('noise'); "
            "print_row(group='g', seconds=0.5); import sys; sys.exit('boom')")
    rows = common.run_worker([sys.executable, "-c", code], "g", env=common.worker_env(),
                             timeout=60)
    assert rows[0] == {"group": "g", "seconds": 0.5}
    assert rows[1]["stage"] == "FAILED" and rows[1]["note"].endswith("boom")
    assert common.module_command("model", "--worker", 3, python="py") == [
        "py", "-m", "benchmarks.model", "--worker", "3"]
