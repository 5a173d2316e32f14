"""tfmrcnn-convert --to-detectron2: our model directory -> detectron2 .pkl -> back, unchanged.

For every architecture configs/ trains: the CPU demo's narrow R18 (its model built, random
weights) and, slow, the full-size R50/R101 configs.
"""
import os

import numpy as np
import pytest

from tfmrcnn.checkpoint.model_dir import write_model_dir
from tfmrcnn.checkpoint.weights_io import read_weights
from tfmrcnn.cli.convert import main as convert_main
from tfmrcnn.config import load_config
from tfmrcnn.converter.d2_names import expected_d2_state_dict_shapes, expected_d2_tensors
from tfmrcnn.converter.layouts import tf_shape
from tfmrcnn.converter.safe_pickle import safe_load

QUIET = dict(log=lambda line: None)


def _demo_model_dir(repo_root, directory):
    """configs/shapes_demo_cpu.yaml's model with its random initial weights, as training
    writes its OUTPUT_DIR (config.yaml + model_final.npz)."""
    from tfmrcnn.modeling.layers import named_variables
    from tfmrcnn.modeling.meta_arch import GeneralizedRCNN

    cfg = load_config(str(repo_root / "configs" / "shapes_demo_cpu.yaml"))
    arrays = {k: v.numpy() for k, v in named_variables(GeneralizedRCNN(cfg)).items()}
    write_model_dir(str(directory), arrays, cfg.dump())
    return cfg, arrays


def _random_model_dir(cfg, directory, seed=0):
    """A model directory with random weights in tfmrcnn's shapes (no model build: fast)."""
    rng = np.random.default_rng(seed)
    arrays = {k: rng.standard_normal(tf_shape(spec)).astype(np.float32)
              for k, spec in expected_d2_tensors(cfg).items()}
    write_model_dir(str(directory), arrays, cfg.dump())
    return arrays


def _round_trip(cfg, arrays, model_dir, tmp_path):
    pkl = str(tmp_path / "exported.pkl")
    assert convert_main(["--to-detectron2", str(model_dir), pkl]) == 0
    data = safe_load(pkl)
    assert data["__author__"] == "tfmrcnn"
    state = data["model"]
    # exactly the tensors detectron2's state dict has for this config, in PyTorch shapes
    assert {k: v.shape for k, v in state.items()} == expected_d2_state_dict_shapes(cfg)
    # back, with the architecture read from the tensors alone
    assert convert_main([pkl, "--output", str(tmp_path / "back")]) == 0
    back, _ = read_weights(str(tmp_path / "back" / "model_final.npz"))
    assert sorted(back) == sorted(arrays)
    for key in arrays:
        np.testing.assert_array_equal(back[key], arrays[key])
    back_cfg = load_config(str(tmp_path / "back" / "config.yaml"))
    for key in ("DEPTH", "NORM", "STEM_OUT_CHANNELS", "RES2_OUT_CHANNELS", "NUM_GROUPS"):
        assert back_cfg.MODEL.RESNETS[key] == cfg.MODEL.RESNETS[key], key
    return state


def test_demo_r18_round_trip(repo_root, tmp_path):
    cfg, ours = _demo_model_dir(repo_root, tmp_path / "model")
    state = _round_trip(cfg, ours, tmp_path / "model", tmp_path)
    # the demo's res2 is as wide as its stem: no res2.0 shortcut (what used to fail)
    assert "backbone.bottom_up.res2.0.shortcut.weight" not in state
    assert state["backbone.bottom_up.res3.0.shortcut.weight"].shape == (64, 32, 1, 1)
    # layouts, written from their definitions: conv (kh, kw, in, out) -> (out, in, kh, kw)
    w = "backbone.bottom_up.res4.1.conv2.weight"
    np.testing.assert_array_equal(state[w], ours[w].transpose(3, 2, 0, 1))
    # first box fc: our input rows are (h, w, c) flattened, detectron2's (c, h, w)
    fc1 = "roi_heads.box_head.fc1.weight"
    c, r = cfg.MODEL.FPN.OUT_CHANNELS, cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION
    ours_fc1 = ours[fc1].reshape(r, r, c, -1)
    for (ch, y, x) in [(0, 0, 0), (5, 3, 6), (c - 1, r - 1, r - 1)]:
        np.testing.assert_array_equal(state[fc1][:, ch * r * r + y * r + x], ours_fc1[y, x, ch])
    deconv = "roi_heads.mask_head.deconv.weight"  # ours (kh, kw, out, in), detectron2 (in, out, ..)
    np.testing.assert_array_equal(state[deconv], ours[deconv].transpose(3, 2, 0, 1))


def test_checkpoint_file_in_an_output_dir(repo_root, tmp_path):
    cfg = load_config(str(repo_root / "configs" / "shapes_demo_cpu.yaml"))
    arrays = _random_model_dir(cfg, tmp_path / "run")
    os.rename(tmp_path / "run" / "model_final.npz", tmp_path / "run" / "model_0000299.npz")
    pkl = str(tmp_path / "ckpt.pkl")
    assert convert_main(["--to-detectron2", str(tmp_path / "run" / "model_0000299.npz"), pkl]) == 0
    state = safe_load(pkl)["model"]
    np.testing.assert_array_equal(state["roi_heads.box_predictor.cls_score.weight"],
                                  arrays["roi_heads.box_predictor.cls_score.weight"].T)


def test_errors_name_the_folder_or_tensor(repo_root, tmp_path, capsys):
    out = str(tmp_path / "x.pkl")
    assert convert_main(["--to-detectron2", str(tmp_path / "nowhere"), out]) == 1
    assert "nowhere" in capsys.readouterr().err
    cfg = load_config(str(repo_root / "configs" / "shapes_demo_cpu.yaml"))
    _random_model_dir(cfg, tmp_path / "model")
    weights, _ = read_weights(str(tmp_path / "model" / "model_final.npz"))
    write_model_dir(str(tmp_path / "model"), weights,
                    cfg.dump().replace("DEPTH: 18", "DEPTH: 34"))  # config and weights disagree
    assert convert_main(["--to-detectron2", str(tmp_path / "model"), out]) == 1
    assert "res2.2.conv1.weight" in capsys.readouterr().err  # R34 has a third res2 block
    assert not os.path.exists(tmp_path / "x.pkl")


def test_cli_argument_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        convert_main([])
    assert "MODEL is required" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        convert_main(["m.pkl", "--to-detectron2", "dir", "out.pkl"])
    assert "takes no MODEL" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("config", ["mask_rcnn_R_50_FPN_1x.yaml",  # = 3x's architecture
                                    "mask_rcnn_R_101_FPN_3x.yaml"])
def test_full_size_configs_round_trip(repo_root, tmp_path, config):
    cfg = load_config(str(repo_root / "configs" / config))
    arrays = _random_model_dir(cfg, tmp_path / "model")
    _round_trip(cfg, arrays, tmp_path / "model", tmp_path)
