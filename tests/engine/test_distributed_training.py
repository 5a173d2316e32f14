"""Multi-process and crash tests of the training loop (subprocesses; slow)."""
import ast
import os
import statistics
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

HERE = pathlib.Path(__file__).resolve().parent
# the synthetic shapes set is generated once (file-locked) and shared by these tests
SHAPES_DIR = os.path.join(tempfile.gettempdir(), "tfmrcnn_test_shapes")
ROOT = HERE.parents[1]
BIN = pathlib.Path(sys.executable).parent


def _env(**extra):
    extra.setdefault("TFMRCNN_SHAPES_DIR", os.environ.get("TFMRCNN_SHAPES_DIR", SHAPES_DIR))
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT),
                OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", **extra)


def _horovodrun(np_, args, timeout=600, **env):
    if not (BIN / "horovodrun").exists():
        pytest.fail("horovodrun missing: Horovod is part of the tested stack (scripts/setup.sh)")
    cmd = [str(BIN / "horovodrun"), "-np", str(np_), "-H", f"localhost:{np_}", "--gloo",
           sys.executable] + [str(a) for a in args]
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(**env), timeout=timeout)


def _run(args, timeout=300, **env):
    return subprocess.run([sys.executable] + [str(a) for a in args], capture_output=True,
                          text=True, env=_env(**env), timeout=timeout)


@pytest.mark.slow
def test_two_processes_average_gradients_and_share_weights(tmp_path):
    out = _horovodrun(2, [HERE / "hvd_train_job.py", tmp_path])
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert out.stdout.count("OK rank=") == 2 and "size=2" in out.stdout


@pytest.mark.slow
def test_resume_after_sigkill_continues_iteration_weights_and_optimizer(tmp_path):
    straight = _run([HERE / "toy_train_job.py", tmp_path / "a", 20])
    assert straight.returncode == 0, straight.stderr[-3000:]
    killed = _run([HERE / "toy_train_job.py", tmp_path / "b", 20, 13])
    assert killed.returncode == -9, killed.stderr[-3000:]       # SIGKILL after the checkpoint at 10
    assert not (tmp_path / "b" / "model_final.npz").exists()
    # a different initialisation proves the weights come from the checkpoint
    resumed = _run([HERE / "toy_train_job.py", tmp_path / "b", 20], TOY_SEED="5")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "DONE start=10" in resumed.stdout
    for name in ("model_final.npz", "model_final.train_state.npz"):
        a, b = np.load(tmp_path / "a" / name), np.load(tmp_path / "b" / name)
        assert a.files == b.files
        for key in a.files:
            if key == "__meta__":
                continue
            np.testing.assert_allclose(a[key], b[key], rtol=1e-6, atol=1e-7, err_msg=key)


@pytest.mark.slow
def test_a_dying_rank_ends_the_job(tmp_path):
    """Rank 1 exits abruptly after iteration 3; rank 0 would wait in the next allreduce
    forever: the launcher must end the whole job (quickly, with a failure code)."""
    start = time.monotonic()
    out = _horovodrun(2, [HERE / "toy_train_job.py", tmp_path, 1000], timeout=600,
                      TOY_DIE_AT="3", TFMRCNN_WATCHDOG_SECONDS="60")
    elapsed = time.monotonic() - start
    assert out.returncode != 0
    assert "DONE" not in out.stdout
    assert elapsed < 400, elapsed


@pytest.mark.slow
def test_eight_processes_tiny_config(tmp_path):
    """8 CPU processes, a few iterations of a tiny real Mask R-CNN config via tfmrcnn-train."""
    out = _horovodrun(8, ["-m", "tfmrcnn.cli.train", "--config-file",
                          ROOT / "configs" / "shapes_demo_cpu.yaml", "--num-vis", "0",
                          f"OUTPUT_DIR={tmp_path}", "SOLVER.IMS_PER_BATCH=8", "SOLVER.MAX_ITER=3",
                          "SOLVER.CHECKPOINT_PERIOD=2", "TRAINER.LOG_PERIOD=1",
                          "TRAINER.NUM_THREADS=1", "DATASETS.TEST=()", "MODEL.RESNETS.NORM=BN"],
                      timeout=1200)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    log = (tmp_path / "log.txt").read_text()
    assert "(8 processes, 8 images per iteration)" in log and "iter: 2" in log
    assert (tmp_path / "model_final.npz").exists() and (tmp_path / "model_0000001.npz").exists()
    meta = np.load(tmp_path / "model_final.train_state.npz")["__meta__"]
    assert '"world_size": 8' in str(meta)


@pytest.mark.slow
def test_scaling_benchmark_runs_its_four_phases_in_one_launch():
    """benchmarks/scaling.py --quick: one 2-process horovodrun launch, every phase timed
    (rank 1 waits during "single"), efficiency = median over rounds of t_single / t_phase."""
    proc = _run(["-m", "benchmarks.scaling", "--norms", "GN", "--quick"], timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [ast.literal_eval(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert not [r for r in rows if "FAILED" in str(r.get("note"))], rows
    rounds = {r["case"].replace("demo GN ", ""): [float(v) for v in r["note"].split(": ")[1].split()]
              for r in rows if "step_s" in r}
    assert set(rounds) == {"horovod", "horovod pinned", "single", "independent"}
    assert all(len(v) == 4 and all(0 < t < 30 for t in v) for v in rounds.values()), rounds
    eff = {r["case"].replace("demo GN ", ""): r["efficiency"] for r in rows if "efficiency" in r}
    for case, phase in (("weak scaling", "horovod"),
                        ("weak scaling, ranks pinned to cores", "horovod pinned"),
                        ("ceiling (independent processes)", "independent")):
        expected = statistics.median(s / t for s, t in zip(rounds["single"], rounds[phase]))
        assert eff[case] == pytest.approx(expected, abs=5e-3), (case, eff, rounds)
