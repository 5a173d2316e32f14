"""tfmrcnn's .npz weights file: atomic save, strict load, skip/allow options, no pickle."""
import os

import numpy as np
import pytest
import tensorflow as tf

from tfmrcnn.checkpoint.weights_io import (
    WeightsError, load_weights, read_meta, read_weights, save_weights)
from tfmrcnn.modeling.layers import Conv2D, Linear, named_variables


class _Tiny(tf.Module):
    def __init__(self, classes=3):
        super().__init__()
        self.conv = Conv2D("backbone.conv", 2, 4, 3)
        self.cls = Linear("roi_heads.cls_score", 4, classes + 1)


def _arrays(model, seed=0):
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(v.shape).astype(np.float32)
            for k, v in named_variables(model).items()}


def test_save_and_load_round_trip(tmp_path):
    src = _Tiny()
    arrays = _arrays(src)
    path = str(tmp_path / "w.npz")
    save_weights(path, arrays, meta={"source": "unit"})
    assert read_meta(path)["source"] == "unit" and read_meta(path)["format_version"] == 1
    dst = _Tiny()
    report = load_weights(dst, path)
    assert sorted(report.loaded) == sorted(arrays)
    for key, var in named_variables(dst).items():
        np.testing.assert_array_equal(var.numpy(), arrays[key])
    # saving a model writes its variables under their detectron2 names
    save_weights(str(tmp_path / "m.npz"), dst)
    again, _ = read_weights(str(tmp_path / "m.npz"))
    assert set(again) == set(arrays)
    np.testing.assert_array_equal(again["backbone.conv.weight"], arrays["backbone.conv.weight"])
    assert [f for f in os.listdir(tmp_path) if f.startswith(".tmp")] == []


def test_missing_unexpected_and_shape_errors_list_keys(tmp_path):
    model = _Tiny()
    arrays = _arrays(model)
    del arrays["backbone.conv.bias"]
    arrays["roi_heads.extra.weight"] = np.zeros(2, np.float32)
    arrays["roi_heads.cls_score.weight"] = np.zeros((4, 9), np.float32)
    path = str(tmp_path / "bad.npz")
    save_weights(path, arrays)
    before = model.conv.weight.numpy().copy()
    with pytest.raises(WeightsError) as err:
        load_weights(model, path)
    msg = str(err.value)
    assert "backbone.conv.bias" in msg and "roi_heads.extra.weight" in msg
    assert "roi_heads.cls_score.weight (4, 9) vs (4, 4)" in msg
    np.testing.assert_array_equal(model.conv.weight.numpy(), before)  # nothing assigned


def test_skip_mismatch_for_another_class_count(tmp_path):
    path = str(tmp_path / "coco.npz")
    arrays = _arrays(_Tiny(classes=80))
    save_weights(path, arrays)
    model = _Tiny(classes=3)
    with pytest.raises(WeightsError, match="cls_score"):
        load_weights(model, path)
    report = load_weights(model, path, skip_mismatch=True)
    assert set(report.skipped_shape) == {"roi_heads.cls_score.weight", "roi_heads.cls_score.bias"}
    assert report.skipped_shape["roi_heads.cls_score.bias"] == ((81,), (4,))
    np.testing.assert_array_equal(model.conv.weight.numpy(), arrays["backbone.conv.weight"])
    assert "skipped roi_heads.cls_score.bias" in report.summary()


def test_allow_missing_for_backbone_only_files(tmp_path):
    model = _Tiny()
    arrays = {k: v for k, v in _arrays(model).items() if k.startswith("backbone.")}
    path = str(tmp_path / "backbone.npz")
    save_weights(path, arrays)
    with pytest.raises(WeightsError, match="missing"):
        load_weights(model, path)
    report = load_weights(model, path, allow_missing=True)
    assert report.missing == ["roi_heads.cls_score.bias", "roi_heads.cls_score.weight"]


def test_pickled_npz_is_refused(tmp_path):
    path = str(tmp_path / "obj.npz")
    np.savez(path, **{"a": np.array([{"x": 1}], dtype=object)})
    with pytest.raises(WeightsError, match="pickle"):
        read_weights(path)


def test_truncated_or_corrupted_files_are_a_clear_error_naming_the_file(tmp_path):
    """Every truncation and a byte flip anywhere in a weights file give a WeightsError naming
    the file (it used to escape as zipfile.BadZipFile, caught by no command)."""
    model = _Tiny()
    good = str(tmp_path / "good.npz")
    saved = _arrays(model)
    save_weights(good, saved)
    data = open(good, "rb").read()
    bad = str(tmp_path / "bad.npz")
    damaged = [data[:n] for n in range(0, len(data), max(1, len(data) // 50))]
    for pos in range(0, len(data), max(1, len(data) // 40)):
        damaged.append(data[:pos] + bytes([data[pos] ^ 0xFF]) + data[pos + 1:])
    errors = set()
    for content in damaged:
        with open(bad, "wb") as f:
            f.write(content)
        try:
            read_weights(bad)
        except WeightsError as e:
            assert bad in str(e)
            kind = str(e).split("corrupted?): ", 1)[1].split(":")[0]
            if kind not in errors:      # loading into a model reports it the same way
                errors.add(kind)
                with pytest.raises(WeightsError, match="bad.npz"):
                    load_weights(_Tiny(), bad)
            continue
        # a flip in bytes zipfile never checks (e.g. a name in the central directory) may
        # still read; loading it then either restores exactly or names the file
        target = _Tiny()
        try:
            load_weights(target, bad)
        except WeightsError as e:
            assert bad in str(e)
            continue
        for key, var in named_variables(target).items():
            np.testing.assert_array_equal(var.numpy(), saved[key])
    assert len(errors) > 1      # several kinds of damage were met, all reported the same way


def test_non_finite_weights_are_an_error_at_load_and_never_written(tmp_path):
    """NaN weights used to load silently (predict: exit 0, '0 detections')."""
    model = _Tiny()
    arrays = _arrays(model)
    path = str(tmp_path / "nan.npz")
    with pytest.raises(WeightsError, match="roi_heads.cls_score.bias"):
        save_weights(path, dict(arrays, **{"roi_heads.cls_score.bias": np.full(4, np.nan,
                                                                              np.float32)}))
    assert not os.path.exists(path)
    arrays["backbone.conv.weight"][0, 0, 0, 0] = np.inf
    np.savez(path, **arrays)                       # written by something else
    before = model.conv.weight.numpy().copy()
    with pytest.raises(WeightsError, match=r"nan.npz.*NaN or inf.*backbone.conv.weight"):
        load_weights(model, path)
    np.testing.assert_array_equal(model.conv.weight.numpy(), before)
