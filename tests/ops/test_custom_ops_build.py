"""custom_ops/build.py: idempotent, one line of output, library loadable."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _build(*args):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "custom_ops", "build.py"), *args],
                          cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=dict(os.environ, TFMRCNN_CUDA="0"))
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()


@pytest.mark.slow  # two child processes importing TensorFlow
def test_second_build_is_a_one_line_no_op():
    _build()  # builds only if sources or TF changed
    lines = _build()
    assert len(lines) == 1
    assert "up to date" in lines[0] and "_tfmrcnn_ops.so" in lines[0]


@pytest.mark.slow
def test_benchmark_driver_runs_the_custom_op_sections():
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "benchmark.py"),
                           "roi_align", "conv3x3", "--quick", "--repeats", "1", "--warmup", "0"],
                          cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("# ") and "load average" in lines[0]
    rows = [line for line in lines if line.startswith("roi_align ")]
    assert len(rows) == 8  # 2 sizes x 4 implementations
    conv_rows = [line.split() for line in lines if line.startswith("conv3x3 ")]
    assert [r[3] for r in conv_rows] == ["direct", "winograd"]
    assert float(conv_rows[1][-1]) < 1e-4  # the Winograd result's error against direct
    assert conv_rows[1][-2] == "winograd"  # what Conv2D picks at 1x24x40 (>= min_pixels)
