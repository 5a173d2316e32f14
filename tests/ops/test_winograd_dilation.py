"""Winograd 3x3 convolution with dilation (tfmrcnn.ops.winograd.conv3x3(dilation=d), DC5's
res5): forward and gradients against a NumPy dilated convolution written from the definition,
and against PyTorch's conv2d (tests/fixtures/grouped_conv_golden.npz, case dense_d2)."""
import pathlib

import numpy as np
import pytest
import tensorflow as tf

from tfmrcnn.ops import winograd_conv3x3 as conv3x3

GOLDEN = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "grouped_conv_golden.npz"


def np_dilated_conv3x3(x, w, d):
    """y[n, h, w, k] = sum_{i, j, c} xpad[n, h + d*i, w + d*j, c] * w[i, j, c, k], zero pad d."""
    n, h, wd, _ = x.shape
    xp = np.pad(x, [(0, 0), (d, d), (d, d), (0, 0)])
    y = np.zeros((n, h, wd, w.shape[3]), np.float64)
    for i in range(3):
        for j in range(3):
            y += xp[:, d * i:d * i + h, d * j:d * j + wd, :] @ w[i, j]
    return y


def np_dilated_conv3x3_grads(x, w, d, dy):
    """(dx, dw) of sum(y * dy) for y = np_dilated_conv3x3(x, w, d), from the same sum."""
    n, h, wd, _ = x.shape
    xp = np.pad(x, [(0, 0), (d, d), (d, d), (0, 0)])
    dxp, dw = np.zeros_like(xp), np.zeros_like(w)
    for i in range(3):
        for j in range(3):
            window = (slice(None), slice(d * i, d * i + h), slice(d * j, d * j + wd))
            dxp[window] += dy @ w[i, j].T
            dw[i, j] = np.einsum("nhwc,nhwk->ck", xp[window], dy)
    return dxp[:, d:-d, d:-d, :], dw


# (N, H, W, C, K, dilation): even and odd sizes (odd ones are padded to a multiple of d), a
# map smaller than the dilation, dilation 3
CASES = [(1, 8, 8, 3, 4, 2), (2, 7, 10, 5, 6, 2), (1, 9, 5, 70, 3, 2), (1, 1, 3, 2, 2, 2),
         (2, 11, 7, 4, 5, 3)]


@pytest.mark.parametrize("case", CASES)
def test_dilated_forward_and_gradients_match_numpy(case):
    n, h, w, c, k, d = case
    rng = np.random.default_rng(sum(case))
    x, kernel = rng.normal(0, 1, (n, h, w, c)), rng.normal(0, 1, (3, 3, c, k))
    dy = rng.normal(0, 1, (n, h, w, k))
    tx, tk = tf.constant(x), tf.constant(kernel)
    with tf.GradientTape() as tape:
        tape.watch([tx, tk])
        y = conv3x3(tx, tk, dilation=d)
        loss = tf.reduce_sum(y * dy)
    dx, dk = tape.gradient(loss, [tx, tk])
    want = np_dilated_conv3x3(x, kernel, d)
    want_dx, want_dk = np_dilated_conv3x3_grads(x, kernel, d, dy)
    np.testing.assert_allclose(y.numpy(), want, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dx.numpy(), want_dx, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(dk.numpy(), want_dk, rtol=1e-9, atol=1e-9)


def test_dilated_float32_with_bias_and_relu_matches_tf_dilated_conv_in_a_graph():
    rng = np.random.default_rng(3)
    x = tf.constant(rng.normal(0, 1, (2, 13, 10, 16)), tf.float32)
    kernel = tf.constant(rng.normal(0, 0.3, (3, 3, 16, 8)), tf.float32)
    bias = tf.constant(rng.normal(0, 1, (8,)), tf.float32)

    @tf.function
    def both(x):
        direct = tf.nn.conv2d(tf.pad(x, [[0, 0], [2, 2], [2, 2], [0, 0]]), kernel, 1, "VALID",
                              dilations=2)
        return conv3x3(x, kernel, bias, relu=True, dilation=2), tf.nn.relu(direct + bias)

    got, want = both(x)
    assert 0 < np.mean(want.numpy() > 0) < 1
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=0,
                               atol=1e-5 * np.abs(want.numpy()).max())


def test_dilated_matches_pytorch_golden():
    g = np.load(GOLDEN)
    groups, stride, padding, dilation = g["dense_d2/config"]
    assert (groups, stride, padding, dilation) == (1, 1, 2, 2)
    x = tf.constant(g["dense_d2/x"].transpose(0, 2, 3, 1))  # NCHW -> NHWC
    kernel = tf.constant(g["dense_d2/weight"].transpose(2, 3, 1, 0))  # OIHW -> HWIO
    bias = tf.constant(g["dense_d2/bias"])
    dy = g["dense_d2/dy"].transpose(0, 2, 3, 1)
    with tf.GradientTape() as tape:
        tape.watch([x, kernel, bias])
        y = conv3x3(x, kernel, bias, dilation=2)
        loss = tf.reduce_sum(y * dy)
    dx, dk, db = tape.gradient(loss, [x, kernel, bias])
    np.testing.assert_allclose(y.numpy(), g["dense_d2/y"].transpose(0, 2, 3, 1), rtol=1e-10,
                               atol=1e-10)
    np.testing.assert_allclose(dx.numpy(), g["dense_d2/grad_x"].transpose(0, 2, 3, 1),
                               rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(dk.numpy(), g["dense_d2/grad_weight"].transpose(2, 3, 1, 0),
                               rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(db.numpy(), g["dense_d2/grad_bias"], rtol=1e-10)
