"""ResNeXt, DC5 and norms everywhere detectron2 puts them, at the model level (issue 21 items
1, 3, 4): block structure and feature shapes against detectron2's rules, and for small models
of each kind the variables (names, shapes in tfmrcnn's layouts) against the converter's map of
detectron2's state dict (tests/converter/test_d2_names_zoo.py checks that map against
detectron2 itself), the norm modules where detectron2 has them, and a forward/backward pass.
Conv numerics are in tests/modeling/test_grouped_conv.py."""
import numpy as np
import pytest
import tensorflow as tf

from tfmrcnn.config import get_cfg
from tfmrcnn.converter.d2_names import expected_d2_tensors
from tfmrcnn.converter.layouts import tf_shape
from tfmrcnn.modeling.backbone import ResNet
from tfmrcnn.modeling.meta_arch import GeneralizedRCNN
from tfmrcnn.modeling.norm import BatchNorm, FrozenBN, GroupNorm, SyncBatchNorm


def _d2_out(size: int, stride: int) -> int:
    """detectron2's output side of a (k = 2p + 1, stride s, padding p) conv or max-pool."""
    return (size - 1) // stride + 1


@pytest.mark.parametrize("hw", [(97, 130), (64, 96)])
def test_dc5_res5_is_stride_16_with_dilated_3x3(hw):
    net = ResNet(depth=50, out_features=["res5"], res5_dilation=2, res2_out_channels=32,
                 width_per_group=8, stem_out_channels=16, prefix="backbone")
    assert net.strides == {"res2": 4, "res3": 8, "res4": 16, "res5": 16}
    assert net.out_channels["res5"] == 256
    res5 = net.stages[net.stage_names.index("res5")]
    first = res5[0]
    assert first.shortcut is not None and first.shortcut.stride == 1  # no stride in res5
    for block in res5:
        assert (block.conv2.dilation, block.conv2.padding, block.conv2.stride) == (2, 2, 1)
        assert block.conv1.dilation == block.conv3.dilation == 1
    h, w = hw
    for _ in range(4):  # stem conv, max-pool, res3, res4 halve; res5 keeps res4's size
        h, w = _d2_out(h, 2), _d2_out(w, 2)
    out = net(tf.zeros([1, *hw, 3]))
    assert list(out) == ["res5"] and out["res5"].shape == (1, h, w, 256)


def test_resnext_blocks_group_the_3x3_with_the_stride_in_it():
    """X-101-32x8d style (here 4 groups x 8): STRIDE_IN_1X1 False puts the stride in the grouped
    3x3; bottleneck widths double per stage (groups x width per group x 2^(stage - 2))."""
    net = ResNet(depth=50, num_groups=4, width_per_group=8, stride_in_1x1=False,
                 res2_out_channels=64, stem_out_channels=16)
    for stage, width in zip(("res2", "res3", "res4", "res5"), (32, 64, 128, 256)):
        block = net.stages[net.stage_names.index(stage)][0]
        assert block.conv2.groups == 4
        assert tuple(block.conv2.weight.shape) == (3, 3, width // 4, width)
        assert block.conv1.stride == 1
        assert block.conv2.stride == (1 if stage == "res2" else 2)


def _small_cfg(arch: str, norm: str = "FrozenBN"):
    """Small models of each kind: widths divisible by GN's 32 groups, 3 classes."""
    cfg = get_cfg()
    cfg.merge_from_list([
        "MODEL.RESNETS.DEPTH", 50, "MODEL.RESNETS.STEM_OUT_CHANNELS", 32,
        "MODEL.RESNETS.RES2_OUT_CHANNELS", 64, "MODEL.RESNETS.WIDTH_PER_GROUP", 32,
        "MODEL.FPN.OUT_CHANNELS", 32, "MODEL.ROI_HEADS.NUM_CLASSES", 3,
        "MODEL.ROI_BOX_HEAD.FC_DIM", 32, "MODEL.ROI_BOX_HEAD.CONV_DIM", 32,
        "MODEL.ROI_MASK_HEAD.CONV_DIM", 32, "MODEL.RPN.PRE_NMS_TOPK_TEST", 200,
        "MODEL.RPN.POST_NMS_TOPK_TEST", 50, "MODEL.RPN.PRE_NMS_TOPK_TRAIN", 200,
        "MODEL.RPN.POST_NMS_TOPK_TRAIN", 50, "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 32])
    if arch == "X":  # mask_rcnn_X_101_32x8d_FPN_3x's kind: groups, stride in the 3x3, std
        cfg.merge_from_list(["MODEL.RESNETS.NUM_GROUPS", 4, "MODEL.RESNETS.WIDTH_PER_GROUP", 8,
                             "MODEL.RESNETS.STRIDE_IN_1X1", False,
                             "MODEL.PIXEL_STD", [57.375, 57.120, 58.395]])
    elif arch == "DC5":  # configs/Base-RCNN-DilatedC5.yaml's layout
        cfg.merge_from_list([
            "MODEL.BACKBONE.NAME", "build_resnet_backbone", "MODEL.RESNETS.OUT_FEATURES",
            ["res5"], "MODEL.RESNETS.RES5_DILATION", 2, "MODEL.RPN.IN_FEATURES", ["res5"],
            "MODEL.ROI_HEADS.IN_FEATURES", ["res5"],
            "MODEL.ANCHOR_GENERATOR.SIZES", [[32, 64, 128, 256, 512]],
            "INPUT.SIZE_DIVISIBILITY", 1])
    elif arch == "4conv1fc":  # mask_rcnn_R_50_FPN_3x_gn / _syncbn's heads, with `norm`
        cfg.merge_from_list(["MODEL.RESNETS.NORM", norm, "MODEL.FPN.NORM", norm,
                             "MODEL.ROI_BOX_HEAD.NUM_CONV", 4, "MODEL.ROI_BOX_HEAD.NUM_FC", 1,
                             "MODEL.ROI_BOX_HEAD.NORM", norm, "MODEL.ROI_MASK_HEAD.NORM", norm])
    return cfg


def _assert_variables_are_detectron2s(model, cfg):
    specs = expected_d2_tensors(cfg)
    ours = {k: tuple(v.shape) for k, v in model.named_variables().items()}
    assert sorted(ours) == sorted(specs)
    assert {k: tf_shape(s) for k, s in specs.items()} == ours


@pytest.mark.parametrize("arch,norm", [("X", "FrozenBN"), ("DC5", "FrozenBN"),
                                       ("4conv1fc", "GN"), ("4conv1fc", "SyncBN"),
                                       ("4conv1fc", "BN"), ("4conv1fc", "FrozenBN")])
def test_variables_are_detectron2s(arch, norm):
    cfg = _small_cfg(arch, norm)
    model = GeneralizedRCNN(cfg)
    _assert_variables_are_detectron2s(model, cfg)


_NORM_TYPES = {"GN": GroupNorm, "SyncBN": SyncBatchNorm, "BN": BatchNorm, "FrozenBN": FrozenBN}


@pytest.mark.parametrize("norm", ["GN", "SyncBN", "BN"])
@pytest.mark.parametrize("freeze_at", [2, 0])
def test_norm_modules_where_detectron2_puts_them(norm, freeze_at):
    """Every conv of the ResNet, the FPN (lateral and output), the box head's 4 convs and the
    mask head's convs carries `norm`; frozen ResNet stages turn batch norms into FrozenBN (GN
    stays GN, untrainable), as detectron2's freeze(); FREEZE_AT 0 (scratch_* configs) freezes
    nothing. The RPN head and the predictors have none."""
    cfg = _small_cfg("4conv1fc", norm)
    cfg.MODEL.BACKBONE.FREEZE_AT = freeze_at
    model = GeneralizedRCNN(cfg)
    convs = {m.prefix: m for m in model.submodules if hasattr(m, "weight") and
             hasattr(m, "norm") and m.weight.shape.rank == 4}
    frozen_prefixes = ("backbone.bottom_up.stem.", "backbone.bottom_up.res2.")[:freeze_at]
    for prefix, conv in convs.items():
        if prefix.startswith(("proposal_generator.", "roi_heads.mask_head.predictor",
                              "roi_heads.mask_head.deconv")):
            assert conv.norm is None, prefix
            continue
        frozen = prefix.startswith(frozen_prefixes) if freeze_at else False
        want = FrozenBN if frozen and norm != "GN" else _NORM_TYPES[norm]
        assert type(conv.norm) is want, prefix
        assert conv.bias is None, prefix  # detectron2: bias=not norm
        assert all(v.trainable != frozen for v in (conv.norm.weight, conv.weight)), prefix
    assert {p for p in convs if p.startswith("roi_heads.box_head.conv")} == {
        f"roi_heads.box_head.conv{i}" for i in (1, 2, 3, 4)}
    assert {p for p in convs if ".fpn_" in p} == {
        f"backbone.fpn_{kind}{s}" for kind in ("lateral", "output") for s in (2, 3, 4, 5)}


def _batch(hw=(96, 128)):
    rng = np.random.default_rng(0)
    h, w = hw
    masks = np.zeros((1, 2, h, w), np.uint8)
    masks[0, 0, 10:50, 20:60] = 1
    masks[0, 1, 30:70, 50:100] = 1
    return {"images": tf.constant(rng.uniform(0, 255, (1, h, w, 3)), tf.float32),
            "image_sizes": tf.constant([[h, w]], tf.int32),
            "gt_boxes": tf.constant([[[20, 10, 60, 50], [50, 30, 100, 70]]], tf.float32),
            "gt_classes": tf.constant([[0, 2]], tf.int32),
            "gt_masks": tf.constant(masks)}


@pytest.mark.slow  # tracing a training step and inference: ~40 s per model on 2 idle cores
@pytest.mark.parametrize("arch,norm", [("X", "FrozenBN"), ("DC5", "FrozenBN"),
                                       ("4conv1fc", "GN")])
def test_forward_backward_and_inference(arch, norm):
    """Losses finite with a gradient for every trainable variable (the grouped 3x3s, the
    dilated res5, GN everywhere), and inference on an image whose sides are not multiples of
    32 (DC5 does not round them: SIZE_DIVISIBILITY 1, as detectron2's plain ResNet)."""
    cfg = _small_cfg(arch, norm)
    model = GeneralizedRCNN(cfg)
    batch = _batch()

    @tf.function(autograph=False)
    def step(batch):
        with tf.GradientTape() as tape:
            losses = model.compute_losses(batch)
            total = tf.add_n(list(losses.values()))
        return losses, tape.gradient(total, model.trainable_variables)

    losses, grads = step(batch)
    assert all(np.isfinite(v.numpy()) for v in losses.values()), losses
    missing = [v.name for v, g in zip(model.trainable_variables, grads) if g is None]
    assert missing == []
    grouped = [v for v, g in zip(model.trainable_variables, grads)
               if arch == "X" and v.name.endswith("res3.0.conv2.weight:0")]
    if grouped:  # the strided grouped conv of res3's first block learns
        assert float(tf.reduce_max(tf.abs(grads[model.trainable_variables.index(
            grouped[0])]))) > 0
    div = max(cfg.INPUT.SIZE_DIVISIBILITY, 1)  # the FPN needs multiples of 32
    padded = [-(-side // div) * div for side in (75, 101)]
    image = np.zeros((1, *padded, 3), np.float32)
    image[0, :75, :101] = np.random.default_rng(1).uniform(0, 255, (75, 101, 3))
    out = model.make_inference_fn()(tf.constant(image), tf.constant([[75, 101]], tf.int32))
    n = int(out["num_detections"][0])
    assert 0 <= n <= cfg.TEST.DETECTIONS_PER_IMAGE
    assert np.isfinite(out["boxes"].numpy()).all() and out["masks"].shape[-2:] == (28, 28)


@pytest.mark.parametrize("kwargs", [{"res5_dilation": 2}, {"num_groups": 2}])
def test_basic_blocks_refuse_dilation_and_groups(kwargs):
    with pytest.raises(ValueError, match="RES5_DILATION 1 and NUM_GROUPS 1"):
        ResNet(depth=18, **kwargs)
