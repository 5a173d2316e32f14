"""Grouped, strided and dilated convolutions of `layers.Conv2D` (ResNeXt's 3x3 convs, DC5's
dilated res5, with and without Winograd): forward and gradients against a NumPy convolution
written from the definition and against PyTorch's conv2d (tests/fixtures/grouped_conv_golden.npz,
made by tests/fixtures/make_grouped_conv_golden.py), in graph mode, where TensorFlow's remapper
would fuse a grouped Conv2D + BiasAdd + Relu into a kernel that rejects groups. Both the CPU
formulations (one dense conv per group, dilation on phase images) and the GPU ones (TF's
grouped / dilated Conv2D, forward only: no CPU gradient kernels) are run."""
import pathlib

import numpy as np
import pytest
import tensorflow as tf

from tfmrcnn.modeling import layers
from tfmrcnn.modeling.layers import Conv2D
from tfmrcnn.modeling.norm import FrozenBN

GOLDEN = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "grouped_conv_golden.npz"


def np_conv2d(x, w, stride=1, padding=1, dilation=1, groups=1):
    """PyTorch's conv2d on NHWC / HWIO arrays, from the definition:
    y[n, r, c, k] = sum_{i, j, q} xpad[n, r*s + i*d, c*s + j*d, g*Cg + q] * w[i, j, q, k]
    with g = k // (K / groups) the group of output channel k and Cg = C / groups."""
    n, h, wd, cin = x.shape
    kh, kw, cg, cout = w.shape
    assert cg * groups == cin and cout % groups == 0
    kg = cout // groups
    s, d, p = stride, dilation, padding
    xp = np.pad(x.astype(np.float64), [(0, 0), (p, p), (p, p), (0, 0)])
    oh = (h + 2 * p - d * (kh - 1) - 1) // s + 1
    ow = (wd + 2 * p - d * (kw - 1) - 1) // s + 1
    y = np.zeros((n, oh, ow, cout))
    for g in range(groups):
        for i in range(kh):
            for j in range(kw):
                window = xp[:, i * d:i * d + s * (oh - 1) + 1:s, j * d:j * d + s * (ow - 1) + 1:s,
                            g * cg:(g + 1) * cg]
                y[..., g * kg:(g + 1) * kg] += window @ w[i, j, :, g * kg:(g + 1) * kg]
    return y


def np_conv2d_grads(x, w, dy, stride=1, padding=1, dilation=1, groups=1):
    """(dx, dw) of sum(y * dy) for y = np_conv2d(x, w, ...), by the adjoint of the same sum."""
    n, h, wd, cin = x.shape
    kh, kw, cg, cout = w.shape
    kg = cout // groups
    s, d, p = stride, dilation, padding
    xp = np.pad(x.astype(np.float64), [(0, 0), (p, p), (p, p), (0, 0)])
    oh, ow = dy.shape[1:3]
    dxp, dw = np.zeros_like(xp), np.zeros(w.shape)
    for g in range(groups):
        for i in range(kh):
            for j in range(kw):
                window = (slice(None), slice(i * d, i * d + s * (oh - 1) + 1, s),
                          slice(j * d, j * d + s * (ow - 1) + 1, s), slice(g * cg, (g + 1) * cg))
                dyg = dy[..., g * kg:(g + 1) * kg]
                dxp[window] += dyg @ w[i, j, :, g * kg:(g + 1) * kg].T
                dw[i, j, :, g * kg:(g + 1) * kg] = np.einsum("nhwc,nhwk->ck", xp[window], dyg)
    return dxp[:, p:p + h, p:p + wd, :], dw


@pytest.fixture(params=["split", "native"])
def grouped_kind(request, monkeypatch):
    """Run a test with the layers a CPU host builds (per-group dense convs, phase images) and
    with those a GPU host builds (one grouped / dilated Conv2D: its forward also runs on CPU,
    its gradient has no CPU kernel)."""
    monkeypatch.setattr(layers, "gpu_visible", lambda: request.param == "native")
    return request.param


def _layer(cin, cout, k, stride, dilation, groups, winograd, relu, frozen_bn, rng):
    conv = Conv2D("c", cin, cout, k, stride=stride, dilation=dilation, groups=groups,
                  use_bias=not frozen_bn, norm=FrozenBN("c.norm", cout) if frozen_bn else None,
                  activation=tf.nn.relu if relu else None, winograd=winograd)
    for v in conv.variables:
        v.assign(rng.uniform(0.5, 1.5, v.shape).astype(np.float32) if "norm" in v.name
                 else rng.normal(0, 0.5, v.shape).astype(np.float32))
    return conv


def _reference_weight_bias(conv):
    """The layer's effective HWIO weight and bias (a FrozenBN folded) as float64 arrays."""
    w = conv.weight.numpy().astype(np.float64)
    b = np.zeros(w.shape[-1]) if conv.bias is None else conv.bias.numpy().astype(np.float64)
    if conv.norm is not None:
        scale, shift = (t.numpy().astype(np.float64) for t in conv.norm.fixed_affine())
        w, b = w * scale, b * scale + shift
    return w, b


# (cin, cout, k, stride, dilation, groups, winograd): ResNeXt 3x3 (stride 1 and 2), 32 groups
# of 2, a dilated grouped conv, DC5's dilated dense conv with and without Winograd, dilation 3
# (the 9 x 7 inputs are padded to multiples of 3 for the phase images), a grouped 1x1
CASES = [(8, 12, 3, 1, 1, 4, True), (8, 12, 3, 2, 1, 4, True), (64, 64, 3, 1, 1, 32, True),
         (8, 8, 3, 1, 2, 2, False), (6, 5, 3, 1, 2, 1, True), (6, 5, 3, 1, 2, 1, False),
         (70, 4, 3, 1, 3, 1, True), (8, 16, 1, 1, 1, 4, False)]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("relu,frozen_bn", [(True, True), (False, False)])
def test_forward_matches_numpy_in_a_graph(case, relu, frozen_bn, grouped_kind):
    cin, cout, k, stride, dilation, groups, winograd = case
    rng = np.random.default_rng(sum(case))
    conv = _layer(cin, cout, k, stride, dilation, groups, winograd, relu, frozen_bn, rng)
    x = rng.normal(0, 1, (2, 9, 7, cin)).astype(np.float32)
    got = tf.function(conv)(tf.constant(x)).numpy()  # graph mode: the remapper runs
    w, b = _reference_weight_bias(conv)
    want = np_conv2d(x, w, stride, (k // 2) * dilation, dilation, groups) + b
    if relu:
        want = np.maximum(want, 0)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * np.abs(want).max())


@pytest.mark.parametrize("case", CASES)
def test_gradients_match_numpy_in_a_graph(case):
    """Per-group dense convs (the CPU formulation) have gradients on CPU."""
    cin, cout, k, stride, dilation, groups, winograd = case
    rng = np.random.default_rng(sum(case) + 1)
    conv = _layer(cin, cout, k, stride, dilation, groups, winograd, True, True, rng)
    x = tf.constant(rng.normal(0, 1, (2, 9, 7, cin)), tf.float32)
    out_shape = conv(x).shape
    dy = rng.normal(0, 1, out_shape)

    @tf.function
    def grads(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(conv(x) * dy)
        return tape.gradient(loss, [x, conv.weight])

    dx, dw = grads(x)
    w, b = _reference_weight_bias(conv)
    pad = (k // 2) * dilation
    pre = np_conv2d(x.numpy(), w, stride, pad, dilation, groups) + b
    dpre = dy * (pre > 0)  # through the ReLU
    want_dx, want_dw_folded = np_conv2d_grads(x.numpy(), w, dpre, stride, pad, dilation, groups)
    scale = conv.norm.fixed_affine()[0].numpy()  # d(w * scale) / dw = scale per output channel
    np.testing.assert_allclose(dx.numpy(), want_dx, rtol=0, atol=2e-5 * np.abs(want_dx).max())
    np.testing.assert_allclose(dw.numpy(), want_dw_folded * scale, rtol=0,
                               atol=2e-5 * np.abs(want_dw_folded).max())


@pytest.mark.parametrize("name", ["groups4_s1", "groups4_s2", "groups4_d2", "groups32_s1",
                                  "dense_d2"])
def test_matches_pytorch_grouped_conv2d(name, grouped_kind):
    g = np.load(GOLDEN)
    groups, stride, padding, dilation = (int(v) for v in g[f"{name}/config"])
    weight = g[f"{name}/weight"].transpose(2, 3, 1, 0)  # (K, C/groups, 3, 3) -> HWIO
    cin, cout = weight.shape[2] * groups, weight.shape[3]
    assert padding == dilation
    conv = Conv2D("c", cin, cout, 3, stride=stride, dilation=dilation, groups=groups,
                  winograd=True)
    conv.weight.assign(weight.astype(np.float32))
    conv.bias.assign(g[f"{name}/bias"].astype(np.float32))
    x = tf.constant(g[f"{name}/x"].transpose(0, 2, 3, 1), tf.float32)
    dy = g[f"{name}/dy"].transpose(0, 2, 3, 1)
    want = g[f"{name}/y"].transpose(0, 2, 3, 1)
    np.testing.assert_allclose(tf.function(conv)(x).numpy(), want, rtol=0,
                               atol=1e-5 * np.abs(want).max())
    if grouped_kind == "native":
        return  # TF's grouped Conv2D has no gradient kernel on CPU (GPU only)

    @tf.function
    def grads(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(conv(x) * dy)
        return tape.gradient(loss, [x, conv.weight, conv.bias])

    dx, dw, db = grads(x)
    for got, key, perm in ((dx, "grad_x", (0, 2, 3, 1)), (dw, "grad_weight", (2, 3, 1, 0)),
                           (db, "grad_bias", (0,))):
        want = g[f"{name}/{key}"].transpose(perm)
        np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-5 * np.abs(want).max())


def test_grouped_weight_shape_and_msra_fan_out():
    """The weight is TF's grouped HWIO (k, k, C / groups, K), detectron2's (K, C / groups, k, k)
    transposed; c2_msra_fill's std is sqrt(2 / (k * k * K)) as for a dense conv."""
    conv = Conv2D("c", 256, 256, 3, groups=32, use_bias=False)
    assert tuple(conv.weight.shape) == (3, 3, 8, 256)
    assert conv.weight.numpy().std() == pytest.approx(np.sqrt(2.0 / (9 * 256)), rel=0.05)
    with pytest.raises(ValueError, match="groups"):
        Conv2D("c", 30, 64, 3, groups=4)
