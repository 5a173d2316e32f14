"""Architecture read back from detectron2 tensor shapes (no yaml)."""
import pytest

from d2_fakes import tiny_cfg
from tfmrcnn.converter.d2_names import expected_d2_state_dict_shapes
from tfmrcnn.converter.infer_config import InferenceError, infer_cfg_from_shapes
from tfmrcnn.config import get_cfg

_READ_BACK = [
    "RESNETS.DEPTH", "RESNETS.NORM", "RESNETS.NUM_GROUPS", "RESNETS.WIDTH_PER_GROUP",
    "RESNETS.RES2_OUT_CHANNELS", "RESNETS.STEM_OUT_CHANNELS", "FPN.OUT_CHANNELS", "FPN.NORM",
    "ROI_HEADS.NUM_CLASSES", "MASK_ON", "ROI_BOX_HEAD.NUM_CONV", "ROI_BOX_HEAD.NUM_FC",
    "ROI_BOX_HEAD.FC_DIM", "ROI_BOX_HEAD.POOLER_RESOLUTION", "ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG",
    "ROI_MASK_HEAD.NUM_CONV", "ROI_MASK_HEAD.CONV_DIM", "ROI_MASK_HEAD.CLS_AGNOSTIC_MASK",
]


def _get(cfg, key):
    node = cfg.MODEL
    for part in key.split("."):
        node = node[part]
    return node


def _check(cfg):
    inferred, notes = infer_cfg_from_shapes(expected_d2_state_dict_shapes(cfg))
    for key in _READ_BACK:
        if key.startswith("ROI_MASK_HEAD") and not cfg.MODEL.MASK_ON:
            continue
        if key == "RESNETS.WIDTH_PER_GROUP" and cfg.MODEL.RESNETS.DEPTH < 50:
            continue  # basic blocks have no bottleneck width
        assert _get(inferred, key) == _get(cfg, key), key
    assert expected_d2_state_dict_shapes(inferred) == expected_d2_state_dict_shapes(cfg)
    return notes


def test_r50_and_r101_defaults():
    notes = _check(get_cfg())
    assert any("STRIDE_IN_1X1 = True assumed" in n for n in notes)
    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = 101
    _check(cfg)


@pytest.mark.parametrize("changes", [
    {"MODEL.RESNETS.NORM": "GN", "MODEL.FPN.NORM": "GN", "MODEL.ROI_BOX_HEAD.NUM_CONV": 4,
     "MODEL.ROI_BOX_HEAD.NUM_FC": 1, "MODEL.ROI_BOX_HEAD.NORM": "GN",
     "MODEL.ROI_MASK_HEAD.NORM": "GN"},
    {"MODEL.MASK_ON": False, "MODEL.ROI_HEADS.NUM_CLASSES": 20},
    {"MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG": True,
     "MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK": True},
    {"MODEL.RESNETS.NUM_GROUPS": 8, "MODEL.RESNETS.WIDTH_PER_GROUP": 2, "MODEL.RESNETS.DEPTH": 152},
    {"MODEL.RESNETS.DEPTH": 34, "MODEL.RESNETS.RES2_OUT_CHANNELS": 64},
    {"MODEL.RESNETS.DEPTH": 18, "MODEL.RESNETS.RES2_OUT_CHANNELS": 16},  # narrow, res2.0 shortcut
    {"MODEL.RESNETS.DEPTH": 18, "MODEL.RESNETS.STEM_OUT_CHANNELS": 16,
     "MODEL.RESNETS.RES2_OUT_CHANNELS": 16},  # narrow, no res2.0 shortcut
    {"MODEL.RESNETS.NORM": "", "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION": 5},
])
def test_variants(changes):
    _check(tiny_cfg(**changes))


def test_nondefault_anchor_count_needs_the_yaml():
    cfg = tiny_cfg(**{"MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS": [[0.5, 1.0, 2.0, 4.0]]})
    with pytest.raises(InferenceError, match="--d2-config"):
        infer_cfg_from_shapes(expected_d2_state_dict_shapes(cfg))


def test_backbone_only():
    cfg101 = tiny_cfg(**{"MODEL.RESNETS.DEPTH": 101})
    shapes = expected_d2_state_dict_shapes(cfg101, backbone_only=True)
    cfg, notes = infer_cfg_from_shapes(shapes, backbone_only=True)
    assert cfg.MODEL.RESNETS.DEPTH == 101 and cfg.MODEL.RESNETS.STEM_OUT_CHANNELS == 8
    assert notes[0].startswith("inferred from the weights: RESNETS.DEPTH=101")
