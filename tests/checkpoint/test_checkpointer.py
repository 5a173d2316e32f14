"""Checkpoints: round trip, atomicity (temp leftovers, truncated newest), initial weights."""
import json
import logging
import os
import re

import numpy as np
import pytest
import tensorflow as tf

from tfmrcnn.checkpoint.weights_io import META_KEY, WeightsError, read_weights, save_weights
from tfmrcnn.modeling.layers import named_variables
from tfmrcnn.checkpoint.checkpointer import POINTER_FILE, Checkpointer, checkpoint_name
from engine_toy import ToyModel


def _ckpt(tmp_path, seed=0):
    model = ToyModel(seed)
    slot = tf.Variable(np.arange(4, dtype=np.float32), name="momentum/head.fc.weight")
    return model, slot, Checkpointer(str(tmp_path), model, {"momentum/head.fc.weight": slot})


def test_round_trip_and_pointer(tmp_path):
    model, slot, ck = _ckpt(tmp_path)
    path = ck.save(10, [10, 12], seed=5, config_text="SEED: 5\n")
    assert os.path.basename(path) == checkpoint_name(10) == "model_0000009.npz"
    assert open(tmp_path / POINTER_FILE).read() == "model_0000009.npz"
    saved_w = model.w.numpy().copy()
    model.w.assign(tf.zeros_like(model.w))
    slot.assign(tf.zeros_like(slot))
    found = ck.find_latest()
    assert found is not None
    p, state, meta = found
    assert p == path and meta["iteration"] == 10 and meta["data_positions"] == [10, 12]
    assert meta["seed"] == 5 and meta["world_size"] == 2
    ck.restore(p, state)
    np.testing.assert_array_equal(model.w.numpy(), saved_w)
    np.testing.assert_array_equal(slot.numpy(), np.arange(4))
    # the weights file is a plain weights file (usable as MODEL.WEIGHTS) carrying the config
    arrays, wmeta = read_weights(path)
    assert set(arrays) == {"head.fc.weight", "head.fc.bias", "head.norm.weight", "head.frozen"}
    assert wmeta["iteration"] == 10 and wmeta["config"] == "SEED: 5\n"


def test_final_checkpoint_name(tmp_path):
    _, _, ck = _ckpt(tmp_path)
    assert os.path.basename(ck.save(20, [20], 1, final=True)) == "model_final.npz"
    assert ck.find_latest()[2]["iteration"] == 20


@pytest.mark.parametrize("broken", ["weights", "state"])
def test_truncated_newest_and_temp_leftovers_are_ignored(tmp_path, broken, caplog):
    model, slot, ck = _ckpt(tmp_path)
    good = ck.save(5, [5], seed=1)
    newest = ck.save(10, [10], seed=1)
    target = newest if broken == "weights" else newest.replace(".npz", ".train_state.npz")
    data = open(target, "rb").read()
    open(target, "wb").write(data[:len(data) // 2])                 # interrupted write
    (tmp_path / ".tmp-abc123model_0000014.npz").write_bytes(data[:100])  # leftover temp file
    with caplog.at_level(logging.WARNING, logger="tfmrcnn.checkpoint.checkpointer"):
        path, state, meta = ck.find_latest()
    assert path == good and meta["iteration"] == 5
    assert "Ignoring checkpoint" in caplog.text and "model_0000009" in caplog.text


def test_no_checkpoint(tmp_path):
    _, _, ck = _ckpt(tmp_path / "empty")
    assert ck.find_latest() is None and not ck.has_checkpoint()


def test_initial_weights_skip_mismatched_shapes_by_name(tmp_path, caplog):
    model, _, ck = _ckpt(tmp_path)
    src = ToyModel(seed=3)
    arrays = {"head.fc.weight": src.w.numpy(), "head.fc.bias": np.zeros(7, np.float32)}
    save_weights(str(tmp_path / "init.npz"), arrays)
    bias_before = model.b.numpy().copy()
    with caplog.at_level(logging.INFO, logger="tfmrcnn.checkpoint.checkpointer"):
        ck.load_initial_weights(str(tmp_path / "init.npz"))
    np.testing.assert_array_equal(model.w.numpy(), src.w.numpy())
    np.testing.assert_array_equal(model.b.numpy(), bias_before)
    assert "head.fc.bias" in caplog.text and "(7,)" in caplog.text


def test_non_finite_checkpoints_are_never_written_nor_resumed(tmp_path, caplog):
    model, slot, ck = _ckpt(tmp_path)
    good = ck.save(5, [5], seed=1)
    model.w.assign(tf.fill(model.w.shape, np.nan))
    with pytest.raises(WeightsError, match="NaN or inf in head.fc.weight"):
        ck.save(10, [10], seed=1)
    assert sorted(os.listdir(tmp_path)) == sorted(
        [POINTER_FILE, "model_0000004.npz", "model_0000004.train_state.npz"])
    # a poisoned newest checkpoint left by an older tfmrcnn: skipped, with the reason
    arrays, meta = read_weights(good)
    arrays["head.fc.weight"] = np.full_like(arrays["head.fc.weight"], np.nan)
    poisoned = str(tmp_path / "model_0000009.npz")
    np.savez(poisoned, **arrays, **{META_KEY: np.array(json.dumps(meta))})
    os.link(good.replace(".npz", ".train_state.npz"), poisoned.replace(".npz", ".train_state.npz"))
    (tmp_path / POINTER_FILE).write_text("model_0000009.npz")
    with caplog.at_level(logging.WARNING, logger="tfmrcnn.checkpoint.checkpointer"):
        path, _, _ = ck.find_latest()
    assert path == good
    assert "Ignoring checkpoint" in caplog.text and "NaN or inf" in caplog.text


@pytest.mark.parametrize("how", ["truncated", "nan"])
def test_broken_initial_weights_are_an_error_naming_the_file(tmp_path, how):
    """MODEL.WEIGHTS: a truncated file was a BadZipFile traceback, NaN weights loaded silently."""
    _, _, ck = _ckpt(tmp_path)
    path = str(tmp_path / "init.npz")
    arrays = {k: v.numpy() for k, v in named_variables(ToyModel(seed=3)).items()}
    if how == "nan":
        arrays["head.fc.bias"] = np.full_like(arrays["head.fc.bias"], np.nan)
        np.savez(path, **arrays)
    else:
        save_weights(path, arrays)
        data = open(path, "rb").read()
        open(path, "wb").write(data[:len(data) - 40])
    with pytest.raises(WeightsError, match=re.escape(path)):
        ck.load_initial_weights(path)


def test_checkpoint_files_get_the_umask_mode(tmp_path):
    """They were 0600 (mkstemp) whatever the umask, unreadable to a group sharing the run."""
    _, _, ck = _ckpt(tmp_path)
    old = os.umask(0o022)
    try:
        ck.save(5, [5], seed=1)
    finally:
        os.umask(old)
    for name in os.listdir(tmp_path):
        assert os.stat(tmp_path / name).st_mode & 0o777 == 0o644, name
