"""Divergence (issue 20): only healthy states become checkpoints, so --resume with a lower LR
recovers with nothing to delete; LossHealth's criterion."""
import math
import os

import numpy as np
import pytest

from tfmrcnn.checkpoint.weights_io import read_weights
from tfmrcnn.distributed import init_horovod
from tfmrcnn.engine.trainer import LossHealth, Trainer
from engine_toy import ToyModel, toy_cfg, toy_data_fn


@pytest.fixture(scope="module")
def hvd():
    return init_horovod()


def _trainer(hvd, out, base_lr, max_iter=12):
    # LR 0.01 for 4 iterations (constant warmup), then base_lr
    cfg = toy_cfg(out, max_iter=max_iter, checkpoint_period=1, BASE_LR=base_lr,
                  WARMUP_METHOD="constant", WARMUP_FACTOR=0.01 / base_lr, WARMUP_ITERS=4,
                  STEPS=(max_iter + 1,))
    trainer = Trainer(cfg, ToyModel(0), hvd, toy_data_fn(4))
    trainer.resume_or_load(resume=True)
    return trainer


def _checkpoint_iterations(folder):
    return sorted(int(f[6:13]) + 1 for f in os.listdir(folder)
                  if f.startswith("model_0") and f.endswith(".npz") and "train_state" not in f)


def test_divergence_names_the_last_good_checkpoint_and_resume_recovers(hvd, tmp_path):
    """SOLVER.BASE_LR=1000 used to write checkpoints after a loss of ~1e18 until NaN came; a
    resume, even at LR 0.001, then restarted from that poisoned state and got NaN again."""
    trainer = _trainer(hvd, tmp_path, base_lr=1000.0)
    totals = {}
    trainer.after_step_hooks.append(
        lambda tr, done: totals.update({done - 1: tr.history.latest["total_loss"]}))
    with pytest.raises(FloatingPointError) as err:
        trainer.train()
    message = str(err.value)
    # iterations 0-3 at LR 0.01 and 4 (the first at LR 1000) use healthy weights; the update
    # of iteration 4 explodes them, so the state after 4 iterations is the last one written
    written = _checkpoint_iterations(tmp_path)
    assert written == [1, 2, 3, 4]
    start = np.median([totals[i] for i in range(4)])
    for it in written:                  # the weights of each gave a finite, modest loss
        assert totals[it] < 100 * start
    assert not totals.get(5, math.inf) < 100 * start
    last_good = os.path.join(str(tmp_path), f"model_{written[-1] - 1:07d}.npz")
    assert f"The last good checkpoint is {last_good}" in message
    assert "resumes from the newest checkpoint" in message and "SOLVER.BASE_LR=100 " in message
    for it in written:                  # every checkpoint on disk is finite and readable
        read_weights(os.path.join(str(tmp_path), f"model_{it - 1:07d}.npz"))
    # resuming at a lower LR with nothing deleted continues from the last good state
    resumed = _trainer(hvd, tmp_path, base_lr=0.001)
    assert resumed.start_iter == written[-1]
    metrics = resumed.train()
    assert math.isfinite(metrics["total_loss"]) and metrics["total_loss"] < 100 * start
    assert os.path.exists(tmp_path / "model_final.npz")


def test_loss_health_criterion():
    health = LossHealth(window=3)
    assert health.judge({"loss_a": 3.0, "total_loss": 3.0}) is None     # first: finite is enough
    assert "non-finite loss_a=nan" in health.judge({"loss_a": math.nan, "total_loss": math.nan})
    for total in (2.0, 1.0):
        assert health.judge({"total_loss": total}) is None
    # reference: median of the last 3 healthy totals (3, 2, 1) = 2
    assert health.judge({"total_loss": 199.0}) is None
    # (2, 1, 199) -> 2: more than 100 times is exploding, and does not join the reference
    assert "exploding" in health.judge({"total_loss": 201.0})
    assert "exploding" in health.judge({"total_loss": 250.0})
    assert health.judge({"total_loss": 1.5}) is None
