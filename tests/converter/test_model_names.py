"""GeneralizedRCNN's variables are exactly detectron2's state dict, in TF layouts, and load."""
import numpy as np
import pytest

from d2_fakes import fake_d2_state, tiny_cfg, write_d2_pkl, write_d2_yaml
from tfmrcnn.converter.convert import convert_checkpoint
from tfmrcnn.converter.d2_names import expected_d2_tensors
from tfmrcnn.converter.layouts import tf_shape
from tfmrcnn.checkpoint.weights_io import load_weights, read_weights
from tfmrcnn.cli.convert import main as convert_main
from tfmrcnn.config import get_cfg, load_config
from tfmrcnn.modeling.layers import named_variables
from tfmrcnn.modeling.meta_arch import GeneralizedRCNN


def _assert_matches_detectron2(cfg):
    variables = named_variables(GeneralizedRCNN(cfg))
    specs = expected_d2_tensors(cfg)
    assert sorted(variables) == sorted(specs)
    wrong = {k: (tuple(v.shape), tf_shape(specs[k])) for k, v in variables.items()
             if tuple(v.shape) != tf_shape(specs[k])}
    assert wrong == {}


def test_tiny_widths_names_and_shapes():
    # every name of R50-FPN Mask R-CNN, tiny widths (fast)
    _assert_matches_detectron2(tiny_cfg())


@pytest.mark.slow
def test_r50_fpn_mask_rcnn_names_and_shapes():
    _assert_matches_detectron2(get_cfg())


@pytest.mark.slow
def test_r101_fpn_names_and_shapes():
    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = 101
    _assert_matches_detectron2(cfg)


def test_variants_names_and_shapes():
    # GN everywhere, a 4conv1fc box head, agnostic heads, no bias next to a norm
    _assert_matches_detectron2(tiny_cfg(**{
        "MODEL.RESNETS.NORM": "GN", "MODEL.FPN.NORM": "GN", "MODEL.ROI_BOX_HEAD.NUM_CONV": 4,
        "MODEL.ROI_BOX_HEAD.CONV_DIM": 32, "MODEL.ROI_BOX_HEAD.NUM_FC": 1,
        "MODEL.ROI_BOX_HEAD.NORM": "GN", "MODEL.ROI_MASK_HEAD.NORM": "GN",
        "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG": True,
        "MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK": True,
        "MODEL.RESNETS.WIDTH_PER_GROUP": 32, "MODEL.RESNETS.STEM_OUT_CHANNELS": 32,
        "MODEL.RESNETS.RES2_OUT_CHANNELS": 32, "MODEL.FPN.OUT_CHANNELS": 32,
        "MODEL.ROI_MASK_HEAD.CONV_DIM": 32}))


@pytest.mark.slow
def test_full_size_r50_model_zoo_file_through_the_cli(tmp_path):
    state = fake_d2_state(get_cfg())
    pkl = write_d2_pkl(tmp_path / "model_final_f10217.pkl", state)
    assert convert_main([pkl, "--output", str(tmp_path / "out")]) == 0
    model = GeneralizedRCNN(load_config(str(tmp_path / "out" / "config.yaml")))
    report = load_weights(model, str(tmp_path / "out" / "model_final.npz"))
    assert len(report.loaded) == 307
    fc1 = named_variables(model)["roi_heads.box_head.fc1.weight"].numpy()  # (7*7*256, 1024)
    pooled = np.random.default_rng(0).standard_normal((2, 256, 7, 7)).astype(np.float32)
    d2_out = pooled.reshape(2, -1) @ state["roi_heads.box_head.fc1.weight"].T
    np.testing.assert_allclose(pooled.transpose(0, 2, 3, 1).reshape(2, -1) @ fc1, d2_out,
                               rtol=1e-4, atol=1e-3)


def test_converted_file_loads_into_the_model(tmp_path):
    state = fake_d2_state(tiny_cfg())
    pkl = write_d2_pkl(tmp_path / "m.pkl", state)
    result = convert_checkpoint(pkl, str(tmp_path / "out"), d2_config=write_d2_yaml(tmp_path),
                                log=lambda line: None)
    model = GeneralizedRCNN(result.cfg)
    report = load_weights(model, result.weights_path)
    assert len(report.loaded) == 307 and not report.skipped_shape and not report.missing
    arrays, _ = read_weights(result.weights_path)
    for key, var in named_variables(model).items():
        np.testing.assert_array_equal(var.numpy(), arrays[key])


def test_narrow_r18_of_the_cpu_demo_names_and_shapes(repo_root):
    # configs/shapes_demo_cpu.yaml: R18, stem and res2 32 wide (no res2.0 shortcut), GN
    _assert_matches_detectron2(load_config(str(repo_root / "configs" / "shapes_demo_cpu.yaml")))
    _assert_matches_detectron2(tiny_cfg(**{"MODEL.RESNETS.DEPTH": 18,
                                           "MODEL.RESNETS.STEM_OUT_CHANNELS": 8,
                                           "MODEL.RESNETS.RES2_OUT_CHANNELS": 16}))
