"""The training loop in one process (Horovod of size 1) on the toy model."""
import os

import numpy as np
import pytest
import tensorflow as tf

from tfmrcnn.distributed import init_horovod
from tfmrcnn.engine.trainer import Trainer
from engine_toy import ToyModel, toy_batch, toy_cfg, toy_data_fn


@pytest.fixture(scope="module")
def hvd():
    return init_horovod()


def _train(hvd, out, max_iter=20, resume=True, crash_at=None, model_seed=0, **solver):
    cfg = toy_cfg(out, max_iter=max_iter, STEPS=(12,), **solver)
    model = ToyModel(model_seed)
    trainer = Trainer(cfg, model, hvd, toy_data_fn(cfg.SOLVER.IMS_PER_BATCH))
    trainer.resume_or_load(resume=resume)
    if crash_at is not None:
        def crash(tr, done):
            if done == crash_at:
                raise KeyboardInterrupt("simulated crash")
        trainer.after_step_hooks.append(crash)
    metrics = trainer.train()
    return trainer, model, metrics


def test_loss_decreases_and_checkpoints_are_written(hvd, tmp_path):
    cfg = toy_cfg(tmp_path, max_iter=40, STEPS=(30,))
    trainer = Trainer(cfg, ToyModel(0), hvd, toy_data_fn(4))
    trainer.resume_or_load(resume=True)
    first = []
    trainer.after_step_hooks.append(
        lambda tr, done: first.append(tr.history.latest["total_loss"]) if done == 1 else None)
    metrics = trainer.train()
    assert metrics["total_loss"] < first[0] / 5
    files = sorted(f for f in os.listdir(tmp_path) if f.startswith("model_") and f.endswith(".npz")
                   and "train_state" not in f)
    assert files == [f"model_{i:07d}.npz" for i in (4, 9, 14, 19, 24, 29, 34)] + ["model_final.npz"]
    assert int(trainer.iteration.numpy()) == 40


def test_single_step_update_matches_reference(hvd, tmp_path):
    """One iteration = SGD step on the mean gradient with the warmup LR of iteration 0."""
    cfg = toy_cfg(tmp_path, max_iter=1, checkpoint_period=0, WEIGHT_DECAY=0.01, STEPS=(5,))
    model = ToyModel(2)
    w0, b0, g0 = model.w.numpy().copy(), model.b.numpy().copy(), model.g.numpy().copy()
    trainer = Trainer(cfg, model, hvd, toy_data_fn(4))
    trainer.resume_or_load(resume=False)
    trainer.train()
    x, y = toy_batch(0, cfg.SEED, 4)
    ref = ToyModel(2)
    with tf.GradientTape() as tape:
        losses = ref.compute_losses({"images": tf.constant(x), "targets": tf.constant(y)})
        total = tf.add_n(list(losses.values()))
    gw, gb, gg = tape.gradient(total, [ref.w, ref.b, ref.g])
    lr = cfg.SOLVER.BASE_LR * cfg.SOLVER.WARMUP_FACTOR
    np.testing.assert_allclose(model.w.numpy(), w0 - lr * (gw.numpy() + 0.01 * w0), rtol=1e-5)
    np.testing.assert_allclose(model.b.numpy(), b0 - lr * (gb.numpy() + 1e-4 * b0), rtol=1e-5)
    np.testing.assert_allclose(model.g.numpy(), g0 - lr * gg.numpy(), rtol=1e-5)  # norm: no decay
    # the model's metric is logged (from the step's forward pass) but never optimised
    err = ref.predict(tf.constant(x)).numpy() - y
    np.testing.assert_allclose(trainer.history.latest["toy/max_abs_error"], np.abs(err).max(),
                               rtol=1e-5)
    np.testing.assert_allclose(trainer.history.latest["total_loss"], float(total), rtol=1e-5)


def test_resume_after_crash_continues_exactly(hvd, tmp_path):
    _, straight, _ = _train(hvd, tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        _train(hvd, tmp_path / "b", crash_at=13)        # last checkpoint: iteration 10
    trainer, resumed, _ = _train(hvd, tmp_path / "b", model_seed=99)   # other init: overwritten
    assert trainer.start_iter == 10 and trainer.data_positions == [20]
    for a, b in zip(straight.variables, resumed.variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)
    sa = np.load(tmp_path / "a" / "model_final.train_state.npz")
    sb = np.load(tmp_path / "b" / "model_final.train_state.npz")
    assert "optimizer/momentum/head.fc.weight" in sa.files
    for key in sa.files:
        if key != "__meta__":
            np.testing.assert_allclose(sa[key], sb[key], rtol=1e-6, atol=1e-7)


def test_no_resume_starts_from_scratch(hvd, tmp_path):
    _train(hvd, tmp_path, max_iter=5)
    trainer, _, _ = _train(hvd, tmp_path, max_iter=5, resume=False)
    assert trainer.start_iter == 0


def test_nan_loss_stops_with_iteration_and_keeps_weights(hvd, tmp_path):
    cfg = toy_cfg(tmp_path, max_iter=10, checkpoint_period=3)
    model = ToyModel(0)
    base_fn = toy_data_fn(4)

    def data_fn(start, seed):
        def poison(b):
            bad = tf.equal(b["data_position"], 6)          # the batch of iteration 5
            b = dict(b)
            b["targets"] = tf.where(bad, tf.fill(tf.shape(b["targets"]), np.nan), b["targets"])
            return b
        return base_fn(start, seed).map(poison)

    trainer = Trainer(cfg, model, hvd, data_fn)
    trainer.resume_or_load(resume=False)
    snapshot = {}
    trainer.after_step_hooks.append(
        lambda tr, done: snapshot.update({done: [v.numpy().copy() for v in model.variables]}))
    with pytest.raises(FloatingPointError, match="iteration=5"):
        trainer.train()
    for before, now in zip(snapshot[5], model.variables):
        np.testing.assert_array_equal(before, now.numpy())   # the NaN step was not applied
    assert trainer.checkpointer.find_latest()[2]["iteration"] == 3
    assert not (tmp_path / "model_final.npz").exists()


def test_float16_loss_scaling_gives_the_same_update_and_is_checkpointed(hvd, tmp_path):
    """The toy computes in float32, so scaling the loss by a power of two and unscaling the
    gradients must give the fp32 result; the loss scale is part of the checkpoint."""
    _, plain, _ = _train(hvd, tmp_path / "fp32", max_iter=6)
    cfg = toy_cfg(tmp_path / "amp", max_iter=6, STEPS=(12,)).clone()
    cfg.defrost()
    cfg.SOLVER.AMP.ENABLED = True
    cfg.TRAINER.AMP_DTYPE = "float16"
    model = ToyModel(0)
    trainer = Trainer(cfg.freeze(), model, hvd, toy_data_fn(4))
    trainer.resume_or_load(resume=False)
    trainer.train()
    for a, b in zip(plain.variables, model.variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)
    state = np.load(tmp_path / "amp" / "model_final.train_state.npz")
    assert float(state["optimizer/loss_scale"]) == 2.0 ** 15
