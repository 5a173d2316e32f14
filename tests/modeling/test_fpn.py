"""FPN: top-down arithmetic against NumPy, names, strides, and detectron2's parameter counts."""
import numpy as np
import pytest
import tensorflow as tf

from tfmrcnn.modeling.backbone import ResNet
from tfmrcnn.modeling.fpn import FPN, build_resnet_fpn_backbone, upsample_nearest_2x
from tfmrcnn.modeling.layers import named_variables
from tfmrcnn.modeling.norm import GroupNorm, is_norm_variable

RNG = np.random.default_rng(2)
IN_FEATURES = ["res2", "res3", "res4", "res5"]

# detectron2 mask_rcnn_R_{50,101}_FPN (80 classes), measured on detectron2's state dicts:
# (conv/linear weights + biases, of which trainable with FREEZE_AT=2, tensors, all values)
D2_MEASURED = {50: (44_343_216, 44_120_816, 307, 44_449_456),
               101: (63_283_120, 63_060_720, 562, 63_493_808)}


def d2_backbone_fpn_counts(depth, fpn_channels=256, freeze_at=2):
    """(weights, trainable weights, tensors, values incl. FrozenBN) of detectron2's ResNet-FPN,
    from the architecture's definition (bottleneck ResNet, 1x1 lateral + 3x3 output convs)."""
    blocks = {50: [3, 4, 6, 3], 101: [3, 4, 23, 3]}[depth]
    convs = [(7 * 7 * 3 * 64, 64, 1)]  # (weights, norm channels, stage)
    cin, cout, mid = 64, 256, 64
    for stage, n in zip(range(2, 6), blocks):
        for i in range(n):
            if i == 0:
                convs.append((cin * cout, cout, stage))  # shortcut
            convs += [(cin * mid, mid, stage), (9 * mid * mid, mid, stage),
                      (mid * cout, cout, stage)]
            cin = cout
        cout, mid = cout * 2, mid * 2
    weights = sum(c[0] for c in convs)
    frozen = sum(c[0] for c in convs if c[2] <= freeze_at)
    norm_values = sum(4 * c[1] for c in convs)
    tensors = 5 * len(convs)  # weight + 4 FrozenBN tensors
    for c in (256, 512, 1024, 2048):
        weights += c * fpn_channels + fpn_channels + 9 * fpn_channels ** 2 + fpn_channels
        tensors += 4
    return weights, weights - frozen, tensors, weights + norm_values


def d2_mask_rcnn_head_counts(num_classes=80, ch=256, num_anchors=3):
    """(weights, tensors) of detectron2's RPN + box head (2 fc 1024) + mask head."""
    a = num_anchors
    rpn = (9 * ch * ch + ch) + (ch * a + a) + (ch * 4 * a + 4 * a)
    k = num_classes
    box = (ch * 49 * 1024 + 1024) + (1024 * 1024 + 1024) + (1024 * (k + 1) + k + 1) \
        + (1024 * 4 * k + 4 * k)
    mask = 4 * (9 * ch * ch + ch) + (4 * ch * ch + ch) + (ch * num_classes + num_classes)
    return rpn + box + mask, 6 + 8 + 12


@pytest.mark.parametrize("depth", [50, 101])
def test_reference_counts_reproduce_detectron2_measurements(depth):
    # validates the reference itself: backbone+FPN + heads == detectron2's measured totals
    w, t, n, v = d2_backbone_fpn_counts(depth)
    hw, hn = d2_mask_rcnn_head_counts()
    assert (w + hw, t + hw, n + hn, v + hw) == D2_MEASURED[depth]


@pytest.mark.parametrize("depth", [50, pytest.param(101, marks=pytest.mark.slow)])
def test_backbone_fpn_parameter_counts(depth):
    m = FPN(ResNet(depth, freeze_at=2), IN_FEATURES)
    nv = named_variables(m)
    size = {k: int(np.prod(v.shape)) for k, v in nv.items()}
    weights = sum(s for k, s in size.items() if not is_norm_variable(nv[k]))
    trainable = sum(int(np.prod(v.shape)) for v in m.trainable_variables)
    assert (weights, trainable, len(nv), sum(size.values())) == d2_backbone_fpn_counts(depth)


def test_fpn_names_shapes_strides():
    m = FPN(ResNet(18, res2_out_channels=64, freeze_at=0), IN_FEATURES, out_channels=32)
    names = set(named_variables(m))
    for s in range(2, 6):
        assert {f"backbone.fpn_lateral{s}.weight", f"backbone.fpn_lateral{s}.bias",
                f"backbone.fpn_output{s}.weight", f"backbone.fpn_output{s}.bias"} <= names
    assert "backbone.bottom_up.stem.conv1.weight" in names
    assert m.strides == {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}
    out = m(tf.zeros([2, 96, 64, 3]))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "p2": (2, 24, 16, 32), "p3": (2, 12, 8, 32), "p4": (2, 6, 4, 32), "p5": (2, 3, 2, 32),
        "p6": (2, 2, 1, 32)}


def test_fpn_norm_replaces_bias():
    m = FPN(ResNet(18, res2_out_channels=64, freeze_at=0), IN_FEATURES, out_channels=32,
            norm="GN")
    names = set(named_variables(m))
    assert "backbone.fpn_lateral3.norm.weight" in names
    assert "backbone.fpn_lateral3.bias" not in names
    assert isinstance(m.output_convs[0].norm, GroupNorm)


class _StubBottomUp(tf.Module):
    """Returns fixed features, so the FPN arithmetic can be checked alone."""

    def __init__(self, feats):
        super().__init__()
        self.feats = feats
        self.strides = {f"res{i}": 2 ** i for i in range(2, 6)}
        self.out_channels = {k: v.shape[-1] for k, v in feats.items()}

    def __call__(self, x, training=False):
        return {k: tf.constant(v) for k, v in self.feats.items()}


@pytest.mark.parametrize("fuse_type", ["sum", "avg"])
def test_top_down_against_numpy(fuse_type):
    c = 4
    shapes = {"res2": (1, 8, 24, 3), "res3": (1, 4, 12, 5), "res4": (1, 2, 6, 6),
              "res5": (1, 1, 3, 7)}
    feats = {k: RNG.normal(size=s).astype(np.float32) for k, s in shapes.items()}
    m = FPN(_StubBottomUp(feats), IN_FEATURES, out_channels=c, fuse_type=fuse_type)
    lat_w, lat_b, out_b = {}, {}, {}
    for f, lat, out in zip(IN_FEATURES, m.lateral_convs, m.output_convs):
        lat_w[f] = RNG.normal(size=(shapes[f][-1], c)).astype(np.float32)
        lat_b[f] = RNG.normal(size=c).astype(np.float32)
        out_b[f] = RNG.normal(size=c).astype(np.float32)
        lat.weight.assign(lat_w[f][None, None])
        lat.bias.assign(lat_b[f])
        ident = np.zeros((3, 3, c, c), np.float32)
        ident[1, 1] = np.eye(c)  # output conv = identity + bias, isolates the top-down sum
        out.weight.assign(ident)
        out.bias.assign(out_b[f])
    got = m(tf.zeros([1, 32, 96, 3]))

    prev, want = None, {}
    for f in reversed(IN_FEATURES):
        lateral = feats[f] @ lat_w[f] + lat_b[f]
        if prev is not None:
            lateral = lateral + prev.repeat(2, axis=1).repeat(2, axis=2)
            if fuse_type == "avg":
                lateral = lateral / 2
        prev = lateral
        want["p" + f[3:]] = lateral + out_b[f]
    want["p6"] = want["p5"][:, ::2, ::2]
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-5, err_msg=k)


def test_upsample_nearest_2x():
    x = RNG.normal(size=(2, 3, 5, 4)).astype(np.float32)
    np.testing.assert_array_equal(upsample_nearest_2x(tf.constant(x)),
                                  x.repeat(2, axis=1).repeat(2, axis=2))


def test_xavier_init_and_config_build():
    from tfmrcnn.config import get_cfg
    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.FPN.OUT_CHANNELS = 64
    m = build_resnet_fpn_backbone(cfg)
    w = m.output_convs[0].weight.numpy()  # c2_xavier_fill: U(-sqrt(3 / fan_in), +)
    bound = np.sqrt(3.0 / (9 * 64))
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.95 * bound
    assert not m.output_convs[0].bias.numpy().any()
