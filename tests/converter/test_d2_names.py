"""detectron2 state-dict names/shapes derived from the config (counts from real model-zoo files)."""
import numpy as np
import pytest

from tfmrcnn.converter.d2_names import expected_d2_state_dict_shapes, norm_suffixes
from tfmrcnn.config import get_cfg


def _counts(shapes):
    total = sum(int(np.prod(s)) for s in shapes.values())
    conv_linear = sum(int(np.prod(s)) for k, s in shapes.items() if ".norm." not in k)
    return len(shapes), total, conv_linear


@pytest.mark.parametrize("depth, tensors, values, conv_linear", [
    (50, 307, 44_449_456, 44_343_216),
    (101, 562, 63_493_808, 63_283_120),
])
def test_mask_rcnn_fpn_counts(depth, tensors, values, conv_linear):
    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = depth
    assert _counts(expected_d2_state_dict_shapes(cfg)) == (tensors, values, conv_linear)


def test_r50_named_shapes():
    s = expected_d2_state_dict_shapes(get_cfg())
    assert s["backbone.bottom_up.stem.conv1.weight"] == (64, 3, 7, 7)
    assert "backbone.bottom_up.stem.conv1.bias" not in s  # ResNet convs have no bias
    assert s["backbone.bottom_up.res2.0.shortcut.weight"] == (256, 64, 1, 1)
    assert "backbone.bottom_up.res2.1.shortcut.weight" not in s
    assert s["backbone.bottom_up.res5.0.conv2.weight"] == (512, 512, 3, 3)
    assert s["backbone.bottom_up.res5.2.conv3.norm.running_var"] == (2048,)
    assert s["backbone.fpn_lateral2.weight"] == (256, 256, 1, 1)
    assert s["backbone.fpn_lateral5.weight"] == (256, 2048, 1, 1)
    assert s["backbone.fpn_output3.bias"] == (256,)
    assert s["proposal_generator.rpn_head.objectness_logits.weight"] == (3, 256, 1, 1)
    assert s["proposal_generator.rpn_head.anchor_deltas.weight"] == (12, 256, 1, 1)
    assert s["roi_heads.box_head.fc1.weight"] == (1024, 256 * 7 * 7)
    assert s["roi_heads.box_predictor.cls_score.weight"] == (81, 1024)
    assert s["roi_heads.box_predictor.bbox_pred.weight"] == (320, 1024)
    assert s["roi_heads.mask_head.deconv.weight"] == (256, 256, 2, 2)  # (in, out, kh, kw)
    assert s["roi_heads.mask_head.predictor.weight"] == (80, 256, 1, 1)


def test_norm_variants_and_agnostic_heads():
    cfg = get_cfg()
    cfg.merge_from_list([
        "MODEL.RESNETS.NORM=GN", "MODEL.FPN.NORM=GN", "MODEL.ROI_BOX_HEAD.NUM_CONV=4",
        "MODEL.ROI_BOX_HEAD.NUM_FC=1", "MODEL.ROI_BOX_HEAD.NORM=GN", "MODEL.ROI_MASK_HEAD.NORM=GN",
        "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG=True",
        "MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK=True",
        "MODEL.RESNETS.NUM_GROUPS=32", "MODEL.RESNETS.WIDTH_PER_GROUP=8"])
    s = expected_d2_state_dict_shapes(cfg)
    assert "backbone.bottom_up.stem.conv1.norm.running_mean" not in s
    assert s["backbone.bottom_up.stem.conv1.norm.weight"] == (64,)
    # GN convs in FPN/heads lose their bias; ResNeXt 3x3 conv has in/groups input channels
    assert "backbone.fpn_lateral2.bias" not in s and "backbone.fpn_lateral2.norm.bias" in s
    assert "roi_heads.box_head.conv4.bias" not in s and "roi_heads.box_head.fc2.weight" not in s
    assert "roi_heads.mask_head.mask_fcn1.bias" not in s
    assert s["backbone.bottom_up.res2.0.conv2.weight"] == (256, 8, 3, 3)
    assert s["roi_heads.box_predictor.bbox_pred.weight"] == (4, 1024)
    assert s["roi_heads.mask_head.predictor.weight"] == (1, 256, 1, 1)


def test_faster_rcnn_has_no_mask_head():
    cfg = get_cfg()
    cfg.MODEL.MASK_ON = False
    s = expected_d2_state_dict_shapes(cfg)
    assert not [k for k in s if k.startswith("roi_heads.mask_head")]
    assert len(s) == 307 - 12


def test_norm_suffixes():
    assert norm_suffixes("FrozenBN") == ("weight", "bias", "running_mean", "running_var")
    assert norm_suffixes("GN") == ("weight", "bias")
    assert norm_suffixes("") == ()
    with pytest.raises(ValueError, match="LN"):
        norm_suffixes("LN")


@pytest.mark.parametrize("stem, res2, shortcut", [(64, 64, False), (32, 32, False),
                                                  (32, 64, True), (16, 32, True)])
def test_basic_block_widths_follow_the_config(stem, res2, shortcut):
    # detectron2's BasicBlock: a 1x1 projection shortcut iff in_channels != out_channels
    cfg = get_cfg()
    cfg.merge_from_list(["MODEL.RESNETS.DEPTH=18", f"MODEL.RESNETS.STEM_OUT_CHANNELS={stem}",
                         f"MODEL.RESNETS.RES2_OUT_CHANNELS={res2}"])
    s = expected_d2_state_dict_shapes(cfg)
    p = "backbone.bottom_up"
    assert s[f"{p}.stem.conv1.weight"] == (stem, 3, 7, 7)
    assert s[f"{p}.res2.0.conv1.weight"] == (res2, stem, 3, 3)
    assert (f"{p}.res2.0.shortcut.weight" in s) == shortcut
    if shortcut:
        assert s[f"{p}.res2.0.shortcut.weight"] == (res2, stem, 1, 1)
    for stage, width in zip((3, 4, 5), (2 * res2, 4 * res2, 8 * res2)):
        assert s[f"{p}.res{stage}.0.shortcut.weight"] == (width, width // 2, 1, 1)
        assert s[f"{p}.res{stage}.1.conv2.weight"] == (width, width, 3, 3)
        assert f"{p}.res{stage}.1.shortcut.weight" not in s
    assert s["backbone.fpn_lateral5.weight"] == (256, 8 * res2, 1, 1)


def test_r18_count_matches_torchvision_resnet18():
    # torchvision's resnet18 has 11,689,512 parameters; without its fc (512 x 1000 + 1000) that is
    # 11,176,512, and the BN running mean/var buffers add 2 x 4,800 (BN channels of R18)
    cfg = get_cfg()
    cfg.merge_from_list(["MODEL.RESNETS.DEPTH=18", "MODEL.RESNETS.RES2_OUT_CHANNELS=64"])
    s = expected_d2_state_dict_shapes(cfg, backbone_only=True)
    assert sum(int(np.prod(v)) for v in s.values()) == 11_689_512 - 513_000 + 2 * 4_800
