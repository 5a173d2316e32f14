"""PyTorch layouts -> TF layouts compute the same function (NumPy references of the definitions)."""
import numpy as np
import pytest
import tensorflow as tf

from tfmrcnn.converter.d2_names import TensorSpec
from d2_numpy_reference import torch_conv2d, torch_conv_transpose2d
from tfmrcnn.converter.layouts import tf_shape, to_d2, to_tf

RNG = np.random.default_rng(0)


@pytest.mark.parametrize("k, stride, pad", [(3, 1, 1), (3, 2, 1), (1, 2, 0), (7, 2, 3)])
def test_conv(k, stride, pad):
    x = RNG.standard_normal((2, 5, 11, 9))
    w = RNG.standard_normal((4, 5, k, k))
    b = RNG.standard_normal(4)
    ref = torch_conv2d(x, w, b, stride, pad)
    w_tf = to_tf(w, TensorSpec(w.shape, "conv"))
    assert w_tf.shape == (k, k, 5, 4) == tf_shape(TensorSpec(w.shape, "conv"))
    x_tf = np.pad(x.transpose(0, 2, 3, 1), [(0, 0), (pad, pad), (pad, pad), (0, 0)])
    got = tf.nn.conv2d(x_tf, w_tf, strides=stride, padding="VALID") + b
    np.testing.assert_allclose(got.numpy().transpose(0, 3, 1, 2), ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("k, stride", [(2, 2), (3, 2)])
def test_deconv(k, stride):
    x = RNG.standard_normal((2, 6, 5, 4))
    w = RNG.standard_normal((6, 3, k, k))  # (in, out, kh, kw)
    b = RNG.standard_normal(3)
    ref = torch_conv_transpose2d(x, w, b, stride)
    w_tf = to_tf(w, TensorSpec(w.shape, "deconv"))
    assert w_tf.shape == (k, k, 3, 6)  # (kh, kw, out, in) for conv2d_transpose
    out_shape = [2, ref.shape[2], ref.shape[3], 3]
    got = tf.nn.conv2d_transpose(x.transpose(0, 2, 3, 1), w_tf, out_shape, strides=stride,
                                 padding="VALID") + b
    np.testing.assert_allclose(got.numpy().transpose(0, 3, 1, 2), ref, rtol=1e-10, atol=1e-10)


def test_linear():
    x = RNG.standard_normal((5, 7))
    w = RNG.standard_normal((3, 7))  # (out, in)
    b = RNG.standard_normal(3)
    w_tf = to_tf(w, TensorSpec(w.shape, "linear"))
    np.testing.assert_allclose(x @ w_tf + b, np.einsum("ni,oi->no", x, w) + b, rtol=1e-12)


def test_first_fc_takes_nhwc_flatten():
    c, h, wd, out = 4, 3, 5, 6
    feats = RNG.standard_normal((2, c, h, wd))  # NCHW as detectron2 pools them
    w = RNG.standard_normal((out, c * h * wd))
    spec = TensorSpec(w.shape, "linear", nchw_input=(c, h, wd))
    d2_out = feats.reshape(2, -1) @ w.T  # torch.flatten(x, 1) on NCHW
    ours = feats.transpose(0, 2, 3, 1).reshape(2, -1) @ to_tf(w, spec)  # tf.reshape on NHWC
    np.testing.assert_allclose(ours, d2_out, rtol=1e-12)


@pytest.mark.parametrize("spec", [
    TensorSpec((4, 2, 3, 3), "conv"), TensorSpec((4, 2, 2, 2), "deconv"),
    TensorSpec((3, 8), "linear"),
    TensorSpec((3, 24), "linear", nchw_input=(6, 2, 2)), TensorSpec((5,), "vector"),
])
def test_round_trip_is_identity(spec):
    value = RNG.standard_normal(spec.shape).astype(np.float32)
    np.testing.assert_array_equal(to_d2(to_tf(value, spec), spec), value)


def test_wrong_shape_rejected():
    with pytest.raises(ValueError, match="expected"):
        to_tf(np.zeros((3, 3)), TensorSpec((3, 4), "linear"))
