"""SyncBN over 2 Horovod processes == batch norm over the whole batch in one process (slow)."""
import os
import pathlib
import subprocess
import sys

import pytest

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
BIN = pathlib.Path(sys.executable).parent


@pytest.mark.slow
def test_syncbn_half_batches_equal_whole_batch():
    if not (BIN / "horovodrun").exists():
        pytest.fail("horovodrun missing: Horovod is part of the tested stack (scripts/setup.sh)")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT))
    cmd = [str(BIN / "horovodrun"), "-np", "2", "-H", "localhost:2", "--gloo", sys.executable,
           str(HERE / "hvd_syncbn_job.py")]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert out.stdout.count("OK rank=") == 2 and "size=2" in out.stdout
