"""detectron2 / Caffe2 checkpoint conversion: complete, exact, loud about anything unexpected."""
import os
import pickle
import sys

import numpy as np
import pytest
import tensorflow as tf

from d2_fakes import fake_d2_state, tiny_cfg, write_d2_pkl, write_d2_yaml
from d2_numpy_reference import torch_conv2d, torch_conv_transpose2d
from tfmrcnn.converter.convert import (
    FROZEN_BN_EPS, ConversionError, convert_checkpoint, export_d2_pkl, read_checkpoint)
from tfmrcnn.converter.d2_names import expected_d2_state_dict_shapes
from tfmrcnn.converter.safe_pickle import UnsafePickleError, safe_load
from tfmrcnn.checkpoint.weights_io import read_weights
from tfmrcnn.cli.convert import main as convert_main
from tfmrcnn.config import load_config

RNG = np.random.default_rng(1)
QUIET = dict(log=lambda line: None)


@pytest.fixture
def d2_pkl(tmp_path):
    """(path, state) of a fake model-zoo file with the tiny architecture and non-weight buffers."""
    state = fake_d2_state(tiny_cfg())
    extras = {"proposal_generator.anchor_generator.cell_anchors.0": np.zeros((3, 4), np.float32),
              "backbone.bottom_up.stem.conv1.norm.num_batches_tracked": np.array(7),
              "pixel_mean": np.array([1.0, 2.0, 3.0]).reshape(3, 1, 1)}
    return write_d2_pkl(tmp_path / "model.pkl", {**state, **extras}), state


def _convert(tmp_path, pkl, config=True, out="out"):
    d2_config = write_d2_yaml(tmp_path) if config else None
    result = convert_checkpoint(pkl, str(tmp_path / out), d2_config=d2_config, **QUIET)
    arrays, meta = read_weights(result.weights_path)
    return result, arrays, meta


@pytest.mark.parametrize("with_config", [True, False])
def test_every_tensor_is_mapped(tmp_path, d2_pkl, with_config):
    pkl, state = d2_pkl
    result, arrays, meta = _convert(tmp_path, pkl, config=with_config)
    assert set(arrays) == set(state) and len(arrays) == 307
    assert meta["source_format"] == "detectron2" and meta["num_tensors"] == 307
    cfg = load_config(result.config_path)
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 3 and cfg.MODEL.FPN.OUT_CHANNELS == 8
    assert cfg.MODEL.WEIGHTS == os.path.abspath(result.weights_path)
    # with the yaml its test threshold is used; without it the checkpoint's pixel_mean is read
    if with_config:
        assert cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST == 0.3
    else:
        assert list(cfg.MODEL.PIXEL_MEAN) == [1.0, 2.0, 3.0]
    for name, value in arrays.items():
        assert value.dtype == np.float32 and value.size == state[name].size


def test_converted_layers_compute_what_detectron2_computes(tmp_path, d2_pkl):
    pkl, state = d2_pkl
    _, ours, _ = _convert(tmp_path, pkl)
    # the 7x7 stride-2 stem conv (PyTorch padding 3)
    name = "backbone.bottom_up.stem.conv1.weight"
    x = RNG.standard_normal((1, 3, 15, 13))
    ref = torch_conv2d(x, state[name].astype(np.float64), np.zeros(8), stride=2, pad=3)
    x_tf = np.pad(x.transpose(0, 2, 3, 1), [(0, 0), (3, 3), (3, 3), (0, 0)])
    got = tf.nn.conv2d(x_tf, ours[name].astype(np.float64), strides=2, padding="VALID")
    np.testing.assert_allclose(got.numpy().transpose(0, 3, 1, 2), ref, rtol=1e-9, atol=1e-9)
    # the mask head deconv (2x2 stride 2)
    w, b = "roi_heads.mask_head.deconv.weight", "roi_heads.mask_head.deconv.bias"
    x = RNG.standard_normal((2, 8, 4, 5))
    ref = torch_conv_transpose2d(x, state[w].astype(np.float64), state[b].astype(np.float64), 2)
    got = tf.nn.conv2d_transpose(x.transpose(0, 2, 3, 1), ours[w].astype(np.float64),
                                 [2, 8, 10, 8], strides=2, padding="VALID") + ours[b]
    np.testing.assert_allclose(got.numpy().transpose(0, 3, 1, 2), ref, rtol=1e-9, atol=1e-9)
    # a linear layer
    w = "roi_heads.box_predictor.cls_score.weight"
    x = RNG.standard_normal((5, 16))
    np.testing.assert_allclose(x @ ours[w], np.einsum("ni,oi->no", x, state[w]), rtol=1e-6)


def test_first_fc_permuted_from_nchw_to_nhwc_flatten(tmp_path, d2_pkl):
    pkl, state = d2_pkl
    _, ours, _ = _convert(tmp_path, pkl)
    w = "roi_heads.box_head.fc1.weight"
    assert state[w].shape == (16, 8 * 7 * 7) and ours[w].shape == (8 * 7 * 7, 16)
    pooled = RNG.standard_normal((3, 8, 7, 7))  # (R, C, 7, 7) as detectron2 pools
    d2_out = pooled.reshape(3, -1) @ state[w].T
    our_out = pooled.transpose(0, 2, 3, 1).reshape(3, -1) @ ours[w]  # (R, 7, 7, C) flattened
    np.testing.assert_allclose(our_out, d2_out, rtol=1e-6, atol=1e-9)


def test_round_trip_export_then_convert_is_identity(tmp_path, d2_pkl):
    pkl, state = d2_pkl
    _, ours, _ = _convert(tmp_path, pkl)
    back = str(tmp_path / "exported.pkl")
    export_d2_pkl(ours, back)  # architecture inferred from the shapes
    exported = safe_load(back)["model"]
    assert set(exported) == set(state)
    for name in state:
        np.testing.assert_array_equal(exported[name], state[name])
    _, again, _ = _convert(tmp_path, back, out="out2")
    for name in ours:
        np.testing.assert_array_equal(again[name], ours[name])


def test_matching_heuristics_accepts_unambiguous_suffixes(tmp_path, d2_pkl):
    # detectron2 marks files with partial names "matching_heuristics": a key may be a '.'-suffix
    _, state = d2_pkl
    short = {k.replace("backbone.bottom_up.", ""): v for k, v in state.items()}
    path = tmp_path / "partial.pkl"
    data = {"model": short, "__author__": "user", "matching_heuristics": True}
    path.write_bytes(pickle.dumps(data))
    _, arrays, _ = _convert(tmp_path, str(path))
    assert set(arrays) == set(state)
    path.write_bytes(pickle.dumps({"model": short, "__author__": "user"}))
    with pytest.raises(ConversionError, match="stem.conv1.weight"):
        _convert(tmp_path, str(path))


def test_malicious_pickle_is_refused(tmp_path):
    target = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {target}",))

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"model": {"x": Evil()}, "__author__": "x"}))
    with pytest.raises(UnsafePickleError, match="system"):
        convert_checkpoint(str(path), str(tmp_path / "out"), **QUIET)
    assert not target.exists() and not (tmp_path / "out").exists()
    assert convert_main([str(path), "--output", str(tmp_path / "out")]) == 1
    assert not target.exists()


def _broken(state, name, how):
    state = dict(state)
    if how == "missing":
        del state[name]
    elif how == "extra":
        state[name] = np.zeros(3, np.float32)
    else:
        state[name] = np.zeros((2,) + state[name].shape[1:], np.float32)
    return state


@pytest.mark.parametrize("how, name, words", [
    ("missing", "backbone.bottom_up.res4.5.conv2.norm.running_var", "missing tensors"),
    ("extra", "roi_heads.mask_head.extra_conv.weight", "unexpected tensors"),
    ("shape", "backbone.fpn_output3.weight", "shape mismatches"),
])
@pytest.mark.parametrize("with_config", [True, False])
def test_bad_state_dict_names_the_key(tmp_path, d2_pkl, how, name, words, with_config):
    _, state = d2_pkl
    pkl = write_d2_pkl(tmp_path / "bad.pkl", _broken(state, name, how))
    with pytest.raises(ConversionError) as err:
        _convert(tmp_path, pkl, config=with_config)
    assert name in str(err.value) and words in str(err.value)


def test_class_count_disagreeing_with_config(tmp_path):
    five = tiny_cfg(**{"MODEL.ROI_HEADS.NUM_CLASSES": 5})
    pkl = write_d2_pkl(tmp_path / "m.pkl", fake_d2_state(five))
    with pytest.raises(ConversionError) as err:
        _convert(tmp_path, pkl)
    msg = str(err.value)
    assert "roi_heads.box_predictor.cls_score.weight" in msg
    assert "checkpoint has 5 classes" in msg and "NUM_CLASSES = 3" in msg


def _c2_name(d2_name):
    """detectron2 backbone key -> MSRA blob name (the inverse naming, written out for the test)."""
    parts = d2_name.split(".")[2:]  # drop backbone.bottom_up
    param = {"weight": "s", "bias": "b"}
    if parts[0] == "stem":
        return "conv1_w" if "norm" not in parts else f"res_conv1_bn_{param[parts[-1]]}"
    stage, block, conv = parts[0], parts[1], parts[2]
    branch = {"shortcut": "branch1", "conv1": "branch2a", "conv2": "branch2b",
              "conv3": "branch2c"}[conv]
    base = f"{stage}_{block}_{branch}"
    return f"{base}_w" if parts[3] == "weight" else f"{base}_bn_{param[parts[-1]]}"


@pytest.mark.parametrize("wrapped", [True, False])
def test_msra_caffe2_backbone(tmp_path, wrapped):
    cfg = tiny_cfg()
    shapes = expected_d2_state_dict_shapes(cfg, backbone_only=True)
    folded = {k: s for k, s in shapes.items() if not k.endswith(("running_mean", "running_var"))}
    blobs = {_c2_name(k): RNG.standard_normal(s).astype(np.float32) for k, s in folded.items()}
    assert {"res2_0_branch1_w", "res_conv1_bn_s", "res5_2_branch2c_bn_b"} <= set(blobs)
    extra = {"res2_0_branch2a_w_momentum": np.zeros(1, np.float32),
             "fc1000_w": np.zeros((2, 2), np.float32), "fc1000_b": np.zeros(2, np.float32)}
    data = {"blobs": {**blobs, **extra}} if wrapped else {**blobs, **extra}
    path = tmp_path / "R-50.pkl"
    path.write_bytes(pickle.dumps(data, protocol=2))
    result = convert_checkpoint(str(path), str(tmp_path / "out"), **QUIET)
    arrays, meta = read_weights(result.weights_path)
    assert meta["backbone_only"] is True and set(arrays) == set(shapes)
    assert result.cfg.MODEL.RESNETS.DEPTH == 50 and result.cfg.MODEL.RESNETS.NORM == "FrozenBN"
    norm = "backbone.bottom_up.res3.1.conv2.norm"
    np.testing.assert_array_equal(arrays[f"{norm}.weight"], blobs["res3_1_branch2b_bn_s"])
    np.testing.assert_array_equal(arrays[f"{norm}.running_mean"], 0.0)
    # FrozenBN's scale weight / sqrt(var + eps) stays exactly bn_s
    np.testing.assert_allclose(arrays[f"{norm}.running_var"], 1.0 - FROZEN_BN_EPS)
    np.testing.assert_array_equal(arrays["backbone.bottom_up.res2.0.shortcut.weight"],
                                  blobs["res2_0_branch1_w"].transpose(2, 3, 1, 0))


def test_torchvision_backbone_converted_by_detectron2_tools(tmp_path):
    # tools/convert-torchvision-to-d2.py: stem./resN. names, BN with statistics, stem.fc classifier
    cfg = tiny_cfg(**{"MODEL.RESNETS.DEPTH": 101})
    state = fake_d2_state(cfg, backbone_only=True)
    short = {k[len("backbone.bottom_up."):]: v for k, v in state.items()}
    short["stem.fc.weight"], short["stem.fc.bias"] = np.zeros((10, 64)), np.zeros(10)
    short["res2.0.conv1.norm.num_batches_tracked"] = np.array(0)
    path = tmp_path / "r101.pkl"
    path.write_bytes(pickle.dumps({"model": short, "__author__": "torchvision",
                                   "matching_heuristics": True}))
    result = convert_checkpoint(str(path), str(tmp_path / "out"), **QUIET)
    arrays, meta = read_weights(result.weights_path)
    assert meta["backbone_only"] is True and set(arrays) == set(state)
    assert result.cfg.MODEL.RESNETS.DEPTH == 101
    np.testing.assert_array_equal(arrays["backbone.bottom_up.res4.22.conv3.norm.running_var"],
                                  state["backbone.bottom_up.res4.22.conv3.norm.running_var"])


def test_unknown_caffe2_blob_is_an_error(tmp_path):
    path = tmp_path / "c2.pkl"
    path.write_bytes(pickle.dumps({"conv1_w": np.zeros((64, 3, 7, 7)),
                                   "head_conv1_w": np.zeros(2)}))
    with pytest.raises(ConversionError, match="head_conv1_w"):
        read_checkpoint(str(path))


def test_pth_without_torch_says_so(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    path = tmp_path / "model.pth"
    path.write_bytes(b"not read")
    with pytest.raises(ConversionError, match="PyTorch"):
        read_checkpoint(str(path))


def test_cli(tmp_path, d2_pkl, capsys):
    pkl, _ = d2_pkl
    out = tmp_path / "cli_out"
    assert convert_main([pkl, "--d2-config", write_d2_yaml(tmp_path), "--output", str(out)]) == 0
    assert sorted(os.listdir(out)) == ["config.yaml", "model_final.npz"]
    assert "wrote 307 tensors" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text('_BASE_: "Base-RCNN-FPN.yaml"\n'
                   'MODEL:\n  ROI_HEADS:\n    NAME: RROIHeads\n')
    assert convert_main([pkl, "--d2-config", str(bad), "--output", str(out)]) == 1
    assert "MODEL.ROI_HEADS.NAME" in capsys.readouterr().err
