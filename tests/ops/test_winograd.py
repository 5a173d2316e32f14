"""Winograd F(4x4, 3x3) convolution (tfmrcnn.ops.winograd and its four tile-transform ops)
against a NumPy convolution written from the definition, its gradients, and the transforms'
adjoint identities."""
import numpy as np
import pytest
import tensorflow as tf

from tfmrcnn.modeling.layers import Conv2D
from tfmrcnn.modeling.norm import FrozenBN
from tfmrcnn.ops import load_library, winograd_conv3x3 as conv3x3


def np_conv3x3(x, w):
    """y[n, h, w, k] = sum_{i, j, c} xpad[n, h + i, w + j, c] * w[i, j, c, k], zero pad 1."""
    n, h, wd, _ = x.shape
    xp = np.pad(x, [(0, 0), (1, 1), (1, 1), (0, 0)])
    y = np.zeros((n, h, wd, w.shape[3]), np.float64)
    for i in range(3):
        for j in range(3):
            y += xp[:, i:i + h, j:j + wd, :] @ w[i, j]
    return y


def np_conv3x3_grads(x, w, dy):
    """(dx, dw) of sum(y * dy) for y = np_conv3x3(x, w), from the same sum."""
    n, h, wd, _ = x.shape
    xp = np.pad(x, [(0, 0), (1, 1), (1, 1), (0, 0)])
    dxp = np.zeros_like(xp, dtype=np.float64)
    dw = np.zeros_like(w, dtype=np.float64)
    for i in range(3):
        for j in range(3):
            dxp[:, i:i + h, j:j + wd, :] += dy @ w[i, j].T
            dw[i, j] = np.einsum("nhwc,nhwk->ck", xp[:, i:i + h, j:j + wd, :], dy)
    return dxp[:, 1:-1, 1:-1, :], dw


# (N, H, W, C, K): sizes that are and are not multiples of the 4-pixel tile, single-pixel and
# single-tile images, channel counts below, at and across the 64-channel block
SHAPES = [(1, 8, 8, 3, 4), (2, 7, 10, 5, 6), (1, 1, 1, 2, 3), (1, 2, 3, 1, 1),
          (3, 5, 4, 70, 9), (1, 13, 9, 64, 128), (2, 9, 17, 130, 2)]


@pytest.mark.parametrize("shape", SHAPES)
def test_forward_matches_numpy_convolution(shape):
    n, h, w, c, k = shape
    rng = np.random.default_rng(sum(shape))
    x = rng.normal(0, 1, (n, h, w, c))
    kernel = rng.normal(0, 1, (3, 3, c, k))
    want = np_conv3x3(x, kernel)
    got64 = conv3x3(tf.constant(x), tf.constant(kernel)).numpy()
    np.testing.assert_allclose(got64, want, rtol=1e-10, atol=1e-10 * np.abs(want).max())
    got32 = conv3x3(tf.constant(x, tf.float32), tf.constant(kernel, tf.float32)).numpy()
    assert got32.dtype == np.float32
    np.testing.assert_allclose(got32, want, rtol=0, atol=1e-5 * max(np.abs(want).max(), 1))


@pytest.mark.parametrize("shape", [(2, 7, 10, 5, 6), (1, 13, 9, 70, 3), (3, 9, 6, 2, 2)])
def test_gradients_match_numpy(shape):
    n, h, w, c, k = shape
    rng = np.random.default_rng(sum(shape) + 1)
    x, kernel = rng.normal(0, 1, (n, h, w, c)), rng.normal(0, 1, (3, 3, c, k))
    dy = rng.normal(0, 1, (n, h, w, k))
    tx, tk = tf.constant(x), tf.constant(kernel)
    with tf.GradientTape() as tape:
        tape.watch([tx, tk])
        loss = tf.reduce_sum(conv3x3(tx, tk) * dy)
    dx, dk = tape.gradient(loss, [tx, tk])
    want_dx, want_dk = np_conv3x3_grads(x, kernel, dy)
    np.testing.assert_allclose(dx.numpy(), want_dx, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(dk.numpy(), want_dk, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("relu", [False, True])
def test_fused_bias_and_relu_match_numpy_with_gradients(relu):
    rng = np.random.default_rng(7)
    x, kernel = rng.normal(0, 1, (2, 6, 9, 3)), rng.normal(0, 1, (3, 3, 3, 4))
    bias, dy = rng.normal(0, 1, (4,)), rng.normal(0, 1, (2, 6, 9, 4))
    pre = np_conv3x3(x, kernel) + bias
    want = np.maximum(pre, 0) if relu else pre
    assert (pre < 0).any() and (pre > 0).any()
    tx, tk, tb = tf.constant(x), tf.constant(kernel), tf.constant(bias)
    with tf.GradientTape() as tape:
        tape.watch([tx, tk, tb])
        y = conv3x3(tx, tk, tb, relu=relu)
        loss = tf.reduce_sum(y * dy)
    np.testing.assert_allclose(y.numpy(), want, rtol=1e-10, atol=1e-10)
    dx, dk, db = tape.gradient(loss, [tx, tk, tb])
    dpre = dy * (pre > 0) if relu else dy
    want_dx, want_dk = np_conv3x3_grads(x, kernel, dpre)
    np.testing.assert_allclose(dx.numpy(), want_dx, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(dk.numpy(), want_dk, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(db.numpy(), dpre.sum(axis=(0, 1, 2)), rtol=1e-9, atol=1e-9)


def test_numerical_jacobian():
    rng = np.random.default_rng(3)
    x, kernel = rng.normal(0, 1, (1, 5, 6, 2)), rng.normal(0, 1, (3, 3, 2, 2))
    theoretical, numerical = tf.test.compute_gradient(conv3x3, [x, kernel])
    for t, nu in zip(theoretical, numerical):
        np.testing.assert_allclose(t, nu, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("n,h,w,c", [(1, 4, 4, 1), (2, 11, 6, 3), (1, 17, 13, 66)])
def test_transform_gradients_are_adjoints(n, h, w, c):
    """<T x, v> = <x, T* v> for both transforms: the gradient kernels (overlapping input tiles
    summed row-parity by row-parity, cropped output tiles) are exact transposes."""
    lib = load_library()
    rng = np.random.default_rng(h * w + c)
    image_shape = tf.constant([n, h, w], tf.int32)
    tiles = n * -(-h // 4) * -(-w // 4)
    x = rng.normal(0, 1, (n, h, w, c))
    v = rng.normal(0, 1, (36, tiles, c))
    tx = lib.winograd_input_transform(x).numpy()
    assert tx.shape == (36, tiles, c)
    np.testing.assert_allclose(np.vdot(tx, v),
                               np.vdot(x, lib.winograd_input_transform_grad(v, image_shape)),
                               rtol=1e-10)
    y = lib.winograd_output_transform(v, image_shape, tf.zeros([0], tf.float64)).numpy()
    assert y.shape == (n, h, w, c)
    np.testing.assert_allclose(np.vdot(y, x),
                               np.vdot(v, lib.winograd_output_transform_grad(x)), rtol=1e-10)


def test_mismatched_tiles_and_image_shape_is_a_clear_error():
    lib = load_library()
    with pytest.raises(tf.errors.InvalidArgumentError, match="P = 3 but image_shape"):
        lib.winograd_output_transform(tf.zeros((36, 3, 2)), tf.constant([1, 8, 8]), tf.zeros([0]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="bias must be"):
        lib.winograd_output_transform(tf.zeros((36, 4, 2)), tf.constant([1, 8, 8]), tf.zeros([3]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="rank 4"):
        lib.winograd_input_transform(tf.zeros((3, 8, 8)))


def _conv_pair(rng, k, stride, norm):
    """The same Conv2D twice: built without and with winograd=True."""
    layers = []
    for winograd in (False, True):
        layers.append(Conv2D("c", 16, 8, k, stride=stride, use_bias=not norm,
                             norm=FrozenBN("c.norm", 8) if norm else None,
                             activation=tf.nn.relu, winograd=winograd))
    for v_direct, v_wino in zip(layers[0].variables, layers[1].variables):
        value = rng.uniform(0.5, 2.0, v_direct.shape).astype(np.float32)
        v_direct.assign(value)
        v_wino.assign(value)
    return layers


@pytest.mark.parametrize("norm", [False, True])
def test_conv2d_layer_uses_winograd_for_3x3_stride_1_only(norm):
    rng = np.random.default_rng(5)
    direct, wino = _conv_pair(rng, 3, 1, norm)
    assert wino.winograd and not direct.winograd
    x = tf.constant(rng.normal(0, 1, (2, 12, 14, 16)).astype(np.float32))  # >= min_pixels
    ref = direct(x).numpy()
    np.testing.assert_allclose(wino(x).numpy(), ref, rtol=0, atol=2e-5 * np.abs(ref).max())
    # bfloat16 inputs keep the direct path (same dtype out)
    assert wino(tf.cast(x, tf.bfloat16)).dtype == tf.bfloat16
    for k, stride in ((1, 1), (3, 2)):
        assert not _conv_pair(rng, k, stride, norm)[1].winograd


def test_conv2d_layer_gradients_through_the_fused_epilogue():
    rng = np.random.default_rng(6)
    direct, wino = _conv_pair(rng, 3, 1, norm=False)  # bias + ReLU, both fused
    direct.bias.assign(rng.normal(0, 3, 8).astype(np.float32))
    wino.bias.assign(direct.bias)
    x = tf.constant(rng.normal(0, 1, (1, 17, 15, 16)).astype(np.float32))  # >= min_pixels
    grads = []
    for layer in (direct, wino):
        with tf.GradientTape() as tape:
            y = layer(x)
            loss = tf.reduce_sum(y * y)
        grads.append([g.numpy() for g in tape.gradient(loss, [layer.weight, layer.bias])])
    assert (direct(x).numpy() == 0).any()
    for g_direct, g_wino in zip(*grads):
        np.testing.assert_allclose(g_wino, g_direct, rtol=0, atol=1e-4 * np.abs(g_direct).max())


def _op_types(fn, spec):
    graph = tf.function(fn).get_concrete_function(spec).graph
    types = {op.type for op in graph.get_operations()}
    for f in graph.as_graph_def().library.function:  # tf.cond branches
        types |= {node.op for node in f.node_def}
    return types


def test_conv2d_layer_runs_the_direct_conv_below_min_pixels():
    """Few output pixels per call: the kernel transform would cost more than Winograd saves,
    so the layer runs the direct conv there (bit-identical to a layer without Winograd)."""
    from tfmrcnn.ops.winograd import MIN_PIXELS, MIN_PIXELS_LARGE_KERNEL, min_pixels
    assert min_pixels(16, 8) == MIN_PIXELS and min_pixels(256, 256) == MIN_PIXELS_LARGE_KERNEL
    rng = np.random.default_rng(7)
    direct, wino = _conv_pair(rng, 3, 1, norm=False)
    small = tf.TensorSpec((2, 9, 14, 16), tf.float32)  # 252 pixels
    large = tf.TensorSpec((2, 12, 14, 16), tf.float32)  # 336 pixels
    assert "WinogradInputTransform" not in _op_types(wino, small)
    assert "WinogradInputTransform" in _op_types(wino, large)
    # shape known only at run time: both in the graph, chosen per call
    dynamic = tf.function(wino, input_signature=[tf.TensorSpec((None, None, None, 16))])
    for shape in ((2, 9, 14, 16), (1, 3, 5, 16)):
        x = tf.constant(rng.normal(0, 1, shape).astype(np.float32))
        np.testing.assert_array_equal(dynamic(x).numpy(), direct(x).numpy())
    x = tf.constant(rng.normal(0, 1, (2, 12, 14, 16)).astype(np.float32))
    np.testing.assert_array_equal(dynamic(x).numpy(), wino(x).numpy())
    ref = direct(x).numpy()
    np.testing.assert_allclose(dynamic(x).numpy(), ref, rtol=0, atol=2e-5 * np.abs(ref).max())
