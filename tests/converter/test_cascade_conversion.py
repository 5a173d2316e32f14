"""detectron2 Cascade R-CNN checkpoints and configs: the stage-indexed names, the config mapping,
the architecture read from the weights alone, and a conversion that loads every tensor."""
import numpy as np
import pytest
import yaml

from d2_fakes import D2_TINY_YAML, fake_d2_state, tiny_cfg, write_d2_pkl, write_d2_yaml
from tfmrcnn.checkpoint.weights_io import read_weights
from tfmrcnn.config import load_config
from tfmrcnn.converter.convert import convert_checkpoint
from tfmrcnn.converter.d2_config import D2ConfigError, cfg_from_d2_config
from tfmrcnn.converter.d2_names import expected_d2_state_dict_shapes, expected_d2_tensors
from tfmrcnn.converter.infer_config import InferenceError, infer_cfg_from_shapes
from tfmrcnn.converter.layouts import tf_shape
from tfmrcnn.modeling.layers import named_variables
from tfmrcnn.modeling.meta_arch import GeneralizedRCNN

# detectron2's Misc/cascade_mask_rcnn_R_50_FPN_1x.yaml on the tiny widths of D2_TINY_YAML
D2_CASCADE_YAML = D2_TINY_YAML + """\
  RPN:
    POST_NMS_TOPK_TRAIN: 2000
"""


def cascade_yaml(**cascade_head):
    data = yaml.safe_load(D2_CASCADE_YAML)
    data["MODEL"]["ROI_HEADS"]["NAME"] = "CascadeROIHeads"
    data["MODEL"]["ROI_BOX_HEAD"]["CLS_AGNOSTIC_BBOX_REG"] = True
    if cascade_head:
        data["MODEL"]["ROI_BOX_CASCADE_HEAD"] = cascade_head
    return yaml.safe_dump(data)


def cascade_cfg(**changes):
    return tiny_cfg(**{"MODEL.ROI_HEADS.NAME": "CascadeROIHeads",
                       "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG": True, **changes})


def test_model_variables_are_detectron2s_stage_names_and_shapes():
    cfg = cascade_cfg()
    variables = named_variables(GeneralizedRCNN(cfg))
    specs = expected_d2_tensors(cfg)
    assert sorted(variables) == sorted(specs)
    assert all(tuple(v.shape) == tf_shape(specs[k]) for k, v in variables.items())
    heads = [k for k in specs if k.startswith("roi_heads.box_")]
    assert heads[0] == "roi_heads.box_head.0.fc1.weight"
    assert heads[-1] == "roi_heads.box_predictor.2.bbox_pred.bias"
    assert specs["roi_heads.box_predictor.1.bbox_pred.weight"].shape == (4, 16)  # agnostic
    assert specs["roi_heads.box_head.2.fc1.weight"].nchw_input == (8, 7, 7)


def test_d2_config_selects_the_cascade_and_maps_its_keys(tmp_path):
    cfg, report = cfg_from_d2_config(write_d2_yaml(tmp_path, cascade_yaml()))
    assert cfg.MODEL.ROI_HEADS.NAME == "CascadeROIHeads"
    # absent: detectron2's defaults
    assert list(cfg.MODEL.ROI_BOX_CASCADE_HEAD.IOUS) == [0.5, 0.6, 0.7]
    assert [list(w) for w in cfg.MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS] == [
        [10, 10, 5, 5], [20, 20, 10, 10], [30, 30, 15, 15]]
    assert "MODEL.ROI_BOX_CASCADE_HEAD.IOUS" in report.defaulted
    cfg, report = cfg_from_d2_config(write_d2_yaml(tmp_path, cascade_yaml(
        IOUS=[0.5, 0.7], BBOX_REG_WEIGHTS=[[10, 10, 5, 5], [25, 25, 12, 12]])))
    assert list(cfg.MODEL.ROI_BOX_CASCADE_HEAD.IOUS) == [0.5, 0.7]
    assert report.mapped["MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS"][1] == [25, 25, 12, 12]
    assert len([k for k in expected_d2_tensors(cfg) if k.endswith("cls_score.weight")]) == 2


def test_deformable_cascade_is_refused_naming_the_key(tmp_path):
    data = yaml.safe_load(cascade_yaml())
    data["MODEL"]["RESNETS"]["DEFORM_ON_PER_STAGE"] = [False, True, True, True]
    with pytest.raises(D2ConfigError, match="DEFORM_ON_PER_STAGE.*deformable"):
        cfg_from_d2_config(write_d2_yaml(tmp_path, yaml.safe_dump(data)))


def test_cascade_read_from_the_weights_alone():
    cfg, notes = infer_cfg_from_shapes(expected_d2_state_dict_shapes(cascade_cfg()))
    assert cfg.MODEL.ROI_HEADS.NAME == "CascadeROIHeads"
    assert cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG and cfg.MODEL.ROI_HEADS.NUM_CLASSES == 3
    assert any("ROI_BOX_CASCADE_HEAD" in n and "assumed" in n for n in notes)
    # one class: a cascade is still class-agnostic (4 outputs either way)
    cfg, _ = infer_cfg_from_shapes(expected_d2_state_dict_shapes(
        cascade_cfg(**{"MODEL.ROI_HEADS.NUM_CLASSES": 1})))
    assert cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG
    two = cascade_cfg(**{"MODEL.ROI_BOX_CASCADE_HEAD.IOUS": "(0.5, 0.6)",
                         "MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS":
                             "((10, 10, 5, 5), (20, 20, 10, 10))"})
    with pytest.raises(InferenceError, match="2 cascade stages.*--d2-config"):
        infer_cfg_from_shapes(expected_d2_state_dict_shapes(two))


@pytest.mark.parametrize("with_config", [False, True])
def test_conversion_loads_every_stage(tmp_path, with_config):
    state = fake_d2_state(cascade_cfg(), seed=3)
    pkl = write_d2_pkl(tmp_path / "model.pkl", state)
    d2_config = write_d2_yaml(tmp_path, cascade_yaml()) if with_config else None
    result = convert_checkpoint(pkl, str(tmp_path / "out"), d2_config, log=lambda _: None)
    cfg = load_config(result.config_path)
    assert cfg.MODEL.ROI_HEADS.NAME == "CascadeROIHeads"
    arrays, _ = read_weights(result.weights_path)
    model = GeneralizedRCNN(cfg)
    assert sorted(named_variables(model)) == sorted(arrays) == sorted(state)
    # linear layers are stored transposed; each stage keeps its own tensors
    for s in range(3):
        key = f"roi_heads.box_predictor.{s}.cls_score.weight"
        np.testing.assert_array_equal(arrays[key], state[key].T)
