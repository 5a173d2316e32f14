"""Weight-holding building blocks: Conv2D, ConvTranspose2D and Linear as `tf.Module`s.

Naming convention (the converter and checkpoints rely on it)
-----------------------------------------------------------
Every `tf.Variable` is named with its detectron2 state-dict key, e.g.
``backbone.bottom_up.res2.0.conv1.weight``; `named_variables(model)` returns that mapping.
Values are kept in TensorFlow layouts, not PyTorch's:

=====================  ======================  ==========================
tensor                 detectron2 (PyTorch)    tfmrcnn (TensorFlow)
=====================  ======================  ==========================
conv weight            (out, in, kh, kw)       (kh, kw, in, out)  HWIO
deconv weight          (in, out, kh, kw)       (kh, kw, out, in)  for conv2d_transpose
linear weight          (out, in)               (in, out)
bias / norm tensors    (C,)                    (C,)
=====================  ======================  ==========================

Activations are NHWC everywhere.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Optional

import tensorflow as tf

def _kaiming_normal_fan_out(shape, fan_out):
    # detectron2's c2_msra_fill: kaiming normal, fan_out, relu gain
    std = math.sqrt(2.0 / max(fan_out, 1))
    return tf.random.normal(shape, stddev=std)


def _xavier_uniform_a1(shape, fan_in):
    # detectron2's c2_xavier_fill: kaiming_uniform with a=1 -> U(-sqrt(3/fan_in), sqrt(3/fan_in))
    bound = math.sqrt(3.0 / max(fan_in, 1))
    return tf.random.uniform(shape, -bound, bound)


class NamedModule(tf.Module):
    """A `tf.Module` whose variables carry detectron2 names under a common `prefix`."""

    def __init__(self, prefix: str):
        super().__init__(name=None)
        self.prefix = prefix

    def _param(self, suffix: str, initial_value, trainable: bool = True) -> tf.Variable:
        return tf.Variable(initial_value, trainable=trainable, name=f"{self.prefix}.{suffix}",
                           dtype=tf.float32)


class Conv2D(NamedModule):
    """2-D convolution (NHWC, HWIO weight) + optional norm + optional activation.

    Mirrors detectron2's `layers.Conv2d`: the norm is applied after the convolution and the
    activation after the norm. Padding is explicit and symmetric (PyTorch's `padding=k//2`),
    not TF's 'SAME', which pads asymmetrically for stride 2 and would shift every feature.
    `norm` is a `norm.Norm`; a fixed affine one (FrozenBN) is folded into the weights per call.
    With `winograd`, a 3x3, stride-1, padding-1 layer computes float32 inputs with Winograd
    F(4x4, 3x3) (tfmrcnn.ops.winograd, a CPU custom op; other dtypes use tf.nn.conv2d); the
    flag is ignored by every other shape.
    """

    def __init__(self, prefix: str, in_channels: int, out_channels: int, kernel_size: int,
                 stride: int = 1, padding: Optional[int] = None, use_bias: bool = True,
                 norm: Optional[tf.Module] = None, activation: Optional[Callable] = None,
                 init: str = "msra", dilation: int = 1, winograd: bool = False):
        super().__init__(prefix)
        k = kernel_size
        self.stride = stride
        self.dilation = dilation
        self.padding = (k // 2) * dilation if padding is None else padding
        shape = (k, k, in_channels, out_channels)
        if init == "msra":
            w = _kaiming_normal_fan_out(shape, k * k * out_channels)
        elif init == "xavier":
            w = _xavier_uniform_a1(shape, k * k * in_channels)
        elif init.startswith("normal:"):
            w = tf.random.normal(shape, stddev=float(init.split(":")[1]))
        else:
            raise ValueError(f"unknown init {init!r}")
        self.weight = self._param("weight", w)
        self.bias = self._param("bias", tf.zeros([out_channels])) if use_bias else None
        self.norm = norm
        self.activation = activation
        self.winograd = (bool(winograd) and k == 3 and stride == 1 and dilation == 1
                         and self.padding == 1)

    def __call__(self, x, training: bool = False):
        # x: (N, H, W, Cin) -> (N, H', W', Cout)
        weight, bias, norm = self.weight, self.bias, self.norm
        affine = _frozen_affine(norm)
        if affine is not None:
            # conv(x, w) * scale + shift == conv(x, w * scale) + shift: a fixed affine norm
            # folds into the weights (computed in float32, per call, so the variables and
            # checkpoints stay detectron2's), leaving Conv2D + BiasAdd + Relu for oneDNN to fuse
            scale, shift = affine  # (Cout,) each
            weight = weight * scale  # HWIO: scales the output channels
            bias = shift if bias is None else shift + bias * scale
            norm = None
        activation = self.activation
        if self.winograd and x.dtype == tf.float32:
            from tfmrcnn.ops.winograd import conv3x3  # needs the compiled op library
            # the bias, and the ReLU when no norm sits between, go into the output transform
            fuse_relu = norm is None and activation is tf.nn.relu
            x = conv3x3(x, weight, bias, relu=fuse_relu)
            bias = None
            activation = None if fuse_relu else activation
        else:
            if self.padding:
                p = self.padding
                x = tf.pad(x, [[0, 0], [p, p], [p, p], [0, 0]])
            x = tf.nn.conv2d(x, tf.cast(weight, x.dtype), strides=self.stride, padding="VALID",
                             dilations=self.dilation)
        if bias is not None:
            x = tf.nn.bias_add(x, tf.cast(bias, x.dtype))
        if norm is not None:
            x = norm(x, training=training)
        if activation is not None:
            x = activation(x)
        return x


def _frozen_affine(norm):
    """(scale, shift) float32 (C,) of a norm that is a fixed affine map x * scale + shift
    (FrozenBN, see `norm.Norm.fixed_affine`); None for any other norm (batch statistics or GN
    cannot be folded into a conv) or none."""
    return None if norm is None else norm.fixed_affine()


class ConvTranspose2D(NamedModule):
    """Transposed convolution with kernel == stride (the mask head's 2x2/2 deconv), NHWC."""

    def __init__(self, prefix: str, in_channels: int, out_channels: int, kernel_size: int = 2,
                 stride: int = 2, activation: Optional[Callable] = None):
        super().__init__(prefix)
        if kernel_size != stride:
            raise ValueError("only kernel_size == stride (no overlap, no padding) is supported")
        self.k = kernel_size
        self.out_channels = out_channels
        shape = (kernel_size, kernel_size, out_channels, in_channels)
        self.weight = self._param("weight", _kaiming_normal_fan_out(shape, kernel_size ** 2 * out_channels))
        self.bias = self._param("bias", tf.zeros([out_channels]))
        self.activation = activation

    def __call__(self, x, training: bool = False):
        # x: (N, H, W, Cin) -> (N, kH, kW, Cout)
        n, h, w = tf.shape(x)[0], tf.shape(x)[1], tf.shape(x)[2]
        y = tf.nn.conv2d_transpose(x, tf.cast(self.weight, x.dtype),
                                   output_shape=tf.stack([n, h * self.k, w * self.k, self.out_channels]),
                                   strides=self.k, padding="VALID")
        y = tf.nn.bias_add(y, tf.cast(self.bias, x.dtype))
        return self.activation(y) if self.activation is not None else y


class Linear(NamedModule):
    """Fully connected layer, weight (in, out)."""

    def __init__(self, prefix: str, in_features: int, out_features: int,
                 activation: Optional[Callable] = None, init: str = "xavier"):
        super().__init__(prefix)
        shape = (in_features, out_features)
        if init == "xavier":
            w = _xavier_uniform_a1(shape, in_features)
        elif init.startswith("normal:"):
            w = tf.random.normal(shape, stddev=float(init.split(":")[1]))
        else:
            raise ValueError(f"unknown init {init!r}")
        self.weight = self._param("weight", w)
        self.bias = self._param("bias", tf.zeros([out_features]))
        self.activation = activation

    def __call__(self, x):
        # x: (R, in) -> (R, out)
        y = tf.matmul(x, tf.cast(self.weight, x.dtype)) + tf.cast(self.bias, x.dtype)
        return self.activation(y) if self.activation is not None else y


def variable_key(v: tf.Variable) -> str:
    """The detectron2-style key of a variable (its name without TF's ':0')."""
    name = v.name
    return name[:-2] if name.endswith(":0") else name


def named_variables(module: tf.Module) -> Dict[str, tf.Variable]:
    """All variables of `module` keyed by detectron2 name; duplicate names are an error."""
    out: Dict[str, tf.Variable] = {}
    for v in module.variables:
        key = variable_key(v)
        if key in out and out[key] is not v:
            raise ValueError(f"two variables share the name {key!r}")
        out[key] = v
    return out
