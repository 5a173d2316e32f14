"""ResNet bottom-up: PyTorch conv / max-pool semantics against NumPy, structure as detectron2."""
import numpy as np
import pytest
import tensorflow as tf

from tfmrcnn.modeling.backbone import (BasicBlock, BottleneckBlock, ResNet,
                                       build_resnet_backbone, max_pool_3x3_s2_p1)
from tfmrcnn.modeling.layers import Conv2D, named_variables
from tfmrcnn.modeling.norm import BatchNorm, FrozenBN, GroupNorm, SyncBatchNorm

RNG = np.random.default_rng(1)


def np_conv2d_nchw(x, w, stride, pad):
    """torch.nn.functional.conv2d: x (N, C, H, W), w (O, I, kh, kw), symmetric zero padding."""
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    xp = np.pad(x, [(0, 0), (0, 0), (pad, pad), (pad, pad)])
    oh, ow = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
    out = np.zeros((n, o, oh, ow), np.float64)
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, :, i:i + stride * oh:stride, j:j + stride * ow:stride]  # (N, C, oh, ow)
            out += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j])
    return out


def np_max_pool_nchw(x, k, stride, pad):
    """torch.nn.MaxPool2d(k, stride, pad): padding is ignored by the max."""
    xp = np.pad(x, [(0, 0), (0, 0), (pad, pad), (pad, pad)], constant_values=-np.inf)
    oh = (x.shape[2] + 2 * pad - k) // stride + 1
    ow = (x.shape[3] + 2 * pad - k) // stride + 1
    out = np.full(x.shape[:2] + (oh, ow), -np.inf)
    for i in range(k):
        for j in range(k):
            out = np.maximum(out, xp[:, :, i:i + stride * oh:stride, j:j + stride * ow:stride])
    return out


def nhwc(a):
    return np.transpose(a, (0, 2, 3, 1))


def nchw(a):
    return np.transpose(np.asarray(a), (0, 3, 1, 2))


@pytest.mark.parametrize("h,w", [(7, 9), (8, 8), (5, 6)])
def test_max_pool_equals_pytorch_padding(h, w):
    # all-negative input: zero padding would win the max at the border, -inf never does
    x = -np.abs(RNG.normal(size=(2, 3, h, w))) - 1.0
    got = max_pool_3x3_s2_p1(tf.constant(nhwc(x), tf.float32))
    np.testing.assert_allclose(nchw(got), np_max_pool_nchw(x, 3, 2, 1), rtol=1e-6)


def test_tiny_conv_net_matches_pytorch_semantics():
    # HWIO weights are PyTorch's OIHW transposed; symmetric padding even with stride 2
    x = RNG.normal(size=(2, 3, 13, 10))
    c1 = Conv2D("c1", 3, 4, 7, stride=2, use_bias=True)
    c2 = Conv2D("c2", 4, 5, 3, stride=2, use_bias=False)
    w1 = RNG.normal(size=(4, 3, 7, 7)) * 0.1
    b1 = RNG.normal(size=4)
    w2 = RNG.normal(size=(5, 4, 3, 3)) * 0.1
    c1.weight.assign(np.transpose(w1, (2, 3, 1, 0)).astype(np.float32))
    c1.bias.assign(b1.astype(np.float32))
    c2.weight.assign(np.transpose(w2, (2, 3, 1, 0)).astype(np.float32))
    got = c2(tf.nn.relu(c1(tf.constant(nhwc(x), tf.float32))))
    h1 = np.maximum(np_conv2d_nchw(x, w1, 2, 3) + b1[None, :, None, None], 0)
    want = np_conv2d_nchw(h1, w2, 2, 1)
    assert got.shape == (2, 4, 3, 5)
    np.testing.assert_allclose(nchw(got), want, rtol=1e-4, atol=1e-4)


def _set_frozen_bn(norm, scale, shift):
    norm.weight.assign(scale)
    norm.bias.assign(shift)
    norm.running_mean.assign(np.zeros_like(scale))
    norm.running_var.assign(np.full_like(scale, 1.0 - 1e-5))  # scale == weight exactly


@pytest.mark.parametrize("stride_in_1x1", [True, False])
def test_bottleneck_block_against_numpy(stride_in_1x1):
    blk = BottleneckBlock("b", 8, 16, 2, "FrozenBN", frozen=False, bottleneck_channels=4,
                          stride_in_1x1=stride_in_1x1)
    ws, affine = {}, {}
    for name in ("conv1", "conv2", "conv3", "shortcut"):
        conv = getattr(blk, name)
        kh, kw, cin, cout = conv.weight.shape
        oihw = RNG.normal(size=(cout, cin, kh, kw)) * 0.3
        conv.weight.assign(np.transpose(oihw, (2, 3, 1, 0)).astype(np.float32))
        s, t = RNG.uniform(0.5, 1.5, oihw.shape[0]), RNG.normal(size=oihw.shape[0])
        _set_frozen_bn(conv.norm, s.astype(np.float32), t.astype(np.float32))
        ws[name], affine[name] = oihw, (s[None, :, None, None], t[None, :, None, None])
    x = RNG.normal(size=(1, 8, 6, 7))

    def cn(name, a, stride, pad):
        s, t = affine[name]
        return np_conv2d_nchw(a, ws[name], stride, pad) * s + t

    s1, s3 = (2, 1) if stride_in_1x1 else (1, 2)
    h = np.maximum(cn("conv1", x, s1, 0), 0)
    h = np.maximum(cn("conv2", h, s3, 1), 0)
    want = np.maximum(cn("conv3", h, 1, 0) + cn("shortcut", x, 2, 0), 0)
    got = blk(tf.constant(nhwc(x), tf.float32))
    np.testing.assert_allclose(nchw(got), want, rtol=1e-4, atol=1e-4)
    assert blk.conv1.stride == s1 and blk.conv2.stride == s3


def test_basic_block_structure():
    blk = BasicBlock("r.res3.0", 32, 64, 2, "BN", frozen=False)
    assert blk.conv1.stride == 2 and blk.conv2.stride == 1 and blk.shortcut.stride == 2
    assert blk.conv1.weight.shape == (3, 3, 32, 64) and blk.conv1.bias is None
    assert BasicBlock("r.res2.0", 64, 64, 1, "BN", frozen=False).shortcut is None


def _shape_out(m, h, w):
    out = m(tf.zeros([1, h, w, 3]))
    return {k: tuple(v.shape) for k, v in out.items()}


def test_resnet50_names_shapes_strides():
    m = ResNet(50)
    assert m.strides == {"res2": 4, "res3": 8, "res4": 16, "res5": 32}
    assert m.out_channels == {"res2": 256, "res3": 512, "res4": 1024, "res5": 2048}
    names = set(named_variables(m))
    for key in ("backbone.bottom_up.stem.conv1.weight",
                "backbone.bottom_up.stem.conv1.norm.running_var",
                "backbone.bottom_up.res2.0.shortcut.weight",
                "backbone.bottom_up.res2.0.shortcut.norm.weight",
                "backbone.bottom_up.res4.5.conv3.norm.bias",
                "backbone.bottom_up.res5.2.conv2.weight"):
        assert key in names
    assert "backbone.bottom_up.res2.1.shortcut.weight" not in names
    assert not any(k.endswith("conv1.bias") for k in names)  # no bias with a norm
    assert len(names) == 265
    assert _shape_out(m, 64, 96) == {"res2": (1, 16, 24, 256), "res3": (1, 8, 12, 512),
                                     "res4": (1, 4, 6, 1024), "res5": (1, 2, 3, 2048)}


def test_resnet_freeze_at():
    m = ResNet(50, freeze_at=2, norm="BN")
    nv = named_variables(m)
    frozen = [k for k in nv if ".stem." in k or ".res2." in k]
    assert frozen and not any(nv[k].trainable for k in frozen)
    assert isinstance(m.stem.conv1.norm, FrozenBN)
    assert isinstance(m.stages[0][0].conv1.norm, FrozenBN)
    assert type(m.stages[1][0].conv1.norm) is BatchNorm
    assert nv["backbone.bottom_up.res3.0.conv1.weight"].trainable
    assert nv["backbone.bottom_up.res3.0.conv1.norm.weight"].trainable
    assert not nv["backbone.bottom_up.res3.0.conv1.norm.running_mean"].trainable


def test_resnet_freeze_at_zero_trains_everything_but_statistics():
    m = ResNet(18, norm="GN", freeze_at=0, res2_out_channels=64)
    assert all(v.trainable for v in m.variables)
    g = ResNet(18, norm="GN", freeze_at=5, res2_out_channels=64)
    assert not g.trainable_variables and isinstance(g.stem.conv1.norm, GroupNorm)


def test_resnet18_small_widths_demo():
    m = ResNet(18, norm="SyncBN", freeze_at=0, res2_out_channels=32, stem_out_channels=32)
    assert m.out_channels == {"res2": 32, "res3": 64, "res4": 128, "res5": 256}
    assert isinstance(m.stem.conv1.norm, SyncBatchNorm)
    assert m.stages[0][0].shortcut is None  # 32 -> 32, stride 1: identity as detectron2
    assert _shape_out(m, 64, 32) == {"res2": (1, 16, 8, 32), "res3": (1, 8, 4, 64),
                                     "res4": (1, 4, 2, 128), "res5": (1, 2, 1, 256)}
    assert [len(s) for s in m.stages] == [2, 2, 2, 2]
    m2 = ResNet(18, freeze_at=0, res2_out_channels=64, stem_out_channels=32)
    assert m2.stages[0][0].shortcut is not None  # channel change needs the projection


def test_out_features_limit_built_stages_and_dilation():
    m = ResNet(50, out_features=["res3", "res4"])
    assert m.stage_names == ["res2", "res3", "res4"]
    assert _shape_out(m, 64, 64).keys() == {"res3", "res4"}
    d = ResNet(50, out_features=["res5"], res5_dilation=2)
    assert d.strides["res5"] == 16 and d.stages[3][0].conv2.dilation == 2
    assert _shape_out(d, 64, 64) == {"res5": (1, 4, 4, 2048)}


def test_resnext_groups():
    m = ResNet(50, num_groups=4, width_per_group=8, stride_in_1x1=False,
               out_features=["res2"])
    conv2 = m.stages[0][0].conv2
    assert conv2.weight.shape == (3, 3, 8, 32)  # (k, k, in / groups, out)
    assert _shape_out(m, 32, 32) == {"res2": (1, 8, 8, 256)}


def test_build_from_config_and_msra_init():
    from tfmrcnn.config import get_cfg
    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.BACKBONE.FREEZE_AT = 1
    m = build_resnet_backbone(cfg)
    assert isinstance(m.stem.conv1.norm, FrozenBN) and not m.stem.conv1.weight.trainable
    assert m.stages[0][0].conv1.weight.trainable
    w = m.stages[3][0].conv1.weight.numpy()  # (3, 3, 256, 512); msra: std sqrt(2 / fan_out)
    assert abs(w.std() - np.sqrt(2.0 / (9 * 512))) < 0.02 * np.sqrt(2.0 / (9 * 512))
