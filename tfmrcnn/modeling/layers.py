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
    activation after the norm. Padding is explicit and symmetric (PyTorch's `padding=k//2`
    times the dilation), not TF's 'SAME', which pads asymmetrically for stride 2 and would
    shift every feature. `norm` is a `norm.Norm`; a fixed affine one (FrozenBN) is folded into
    the weights per call. The algorithm is chosen per layer, once, at construction:

    - Winograd: with `winograd`, a dense 3x3 stride-1 layer (padding = dilation) computes
      float32 inputs with Winograd F(4x4, 3x3) (tfmrcnn.ops.winograd, a CPU custom op; other
      dtypes use tf.nn.conv2d); the flag is ignored by every other layer.
    - Dilation (DC5's res5) where TF sees no GPU: a stride-1 conv with dilation d and padding
      d * (k // 2) is the undilated conv of the d*d phase images (`conv_on_phases`). TF's CPU
      kernels have no filter gradient for a dilated conv, and Winograd needs dilation 1.
    - Groups (`groups` > 1, ResNeXt's 3x3): the weight is TF's grouped HWIO
      (k, k, in_channels / groups, out_channels), detectron2's (out, in / groups, k, k)
      transposed; output channel o belongs to group o // (out_channels / groups), as in PyTorch.
      TF cannot differentiate a grouped Conv2D on CPU, and its remapper fuses a grouped Conv2D +
      BiasAdd + Relu into a kernel that rejects groups. So where TF sees no GPU each group runs
      as its own dense conv (bias and ReLU fused per group by oneDNN; on this CPU as fast as
      TF's grouped forward, and faster than Winograd per group at ResNeXt's 8..64 channels per
      group: NOTES.md); with a GPU (cuDNN has grouped and dilated kernels, forward and backward)
      it is one grouped Conv2D whose bias is added with AddV2, which the remapper fuses only on
      CPUs.
    """

    def __init__(self, prefix: str, in_channels: int, out_channels: int, kernel_size: int,
                 stride: int = 1, padding: Optional[int] = None, use_bias: bool = True,
                 norm: Optional[tf.Module] = None, activation: Optional[Callable] = None,
                 init: str = "msra", dilation: int = 1, winograd: bool = False,
                 groups: int = 1):
        super().__init__(prefix)
        if groups < 1 or in_channels % groups or out_channels % groups:
            raise ValueError(f"{prefix}: {in_channels} input and {out_channels} output channels "
                             f"cannot be split into groups={groups}")
        k = kernel_size
        self.stride = stride
        self.dilation = dilation
        self.groups = groups
        self.padding = (k // 2) * dilation if padding is None else padding
        shape = (k, k, in_channels // groups, out_channels)
        if init == "msra":  # PyTorch's fan_out of a (out, in / groups, k, k) weight
            w = _kaiming_normal_fan_out(shape, k * k * out_channels)
        elif init == "xavier":
            w = _xavier_uniform_a1(shape, k * k * in_channels // groups)
        elif init.startswith("normal:"):
            w = tf.random.normal(shape, stddev=float(init.split(":")[1]))
        else:
            raise ValueError(f"unknown init {init!r}")
        self.weight = self._param("weight", w)
        self.bias = self._param("bias", tf.zeros([out_channels])) if use_bias else None
        self.norm = norm
        self.activation = activation
        on_gpu = gpu_visible()
        self.split_groups = groups > 1 and not on_gpu
        self.phases = (dilation if not on_gpu and dilation > 1 and stride == 1
                       and self.padding == dilation * (k // 2) else 1)
        # Winograd on the layer's input, or on its phase images (then undilated)
        self.winograd = (bool(winograd) and groups == 1 and k == 3 and stride == 1
                         and self.padding == dilation and self.phases == dilation)

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
        # the ReLU goes into the conv with the bias (Winograd's output transform, oneDNN's
        # fused conv) when no norm sits between them
        relu = norm is None and activation is tf.nn.relu

        def conv(images):
            return self._conv(images, weight, bias, relu)

        x = conv_on_phases(x, self.phases, conv) if self.phases > 1 else conv(x)
        if norm is not None:
            x = norm(x, training=training)
        if activation is not None and not relu:
            x = activation(x)
        return x

    def _conv(self, x, weight, bias, relu: bool):
        """The convolution + bias (+ ReLU), by the algorithm chosen at construction."""
        if self.groups == 1:
            return self._dense(x, weight, bias, relu)
        if self.split_groups:
            g = self.groups
            biases = [None] * g if bias is None else tf.split(bias, g)
            return tf.concat([self._dense(xg, wg, bg, relu) for xg, wg, bg in zip(
                tf.split(x, g, axis=-1), tf.split(weight, g, axis=-1), biases)], axis=-1)
        # TF's grouped Conv2D (groups = Cin of x / Cin of weight), the bias by AddV2 (above)
        x = self._conv2d(x, weight)
        if bias is not None:
            x = tf.math.add(x, tf.cast(bias, x.dtype))
        return tf.nn.relu(x) if relu else x

    def _dense(self, x, weight, bias, relu: bool):
        """conv(x, weight) + bias (+ ReLU) for a weight (k, k, Cin of x, K).

        A Winograd layer still runs the direct conv on calls with fewer output pixels than
        `winograd.min_pixels` (small images' res5, the coarse FPN levels): decided per call, on
        the shape it gets (a tf.cond when the shape is only known at run time).
        """
        if self.winograd and x.dtype == tf.float32:
            from tfmrcnn.ops import winograd  # needs the compiled op library

            def fast():
                return winograd.conv3x3(x, weight, bias, relu=relu)

            def direct():
                return self._direct(x, weight, bias, relu)

            min_pixels = winograd.min_pixels(*weight.shape[2:])
            if x.shape[:3].is_fully_defined():
                return fast() if x.shape[:3].num_elements() >= min_pixels else direct()
            return tf.cond(tf.reduce_prod(tf.shape(x)[:3]) >= min_pixels, fast, direct)
        return self._direct(x, weight, bias, relu)

    def _direct(self, x, weight, bias, relu: bool):
        x = self._conv2d(x, weight)
        if bias is not None:
            x = tf.nn.bias_add(x, tf.cast(bias, x.dtype))
        return tf.nn.relu(x) if relu else x

    def _conv2d(self, x, weight):
        """tf.nn.conv2d with the layer's padding, stride and dilation, divided by the phase
        count when `x` holds phase images."""
        p, d = self.padding // self.phases, self.dilation // self.phases
        if p:
            x = tf.pad(x, [[0, 0], [p, p], [p, p], [0, 0]])
        return tf.nn.conv2d(x, tf.cast(weight, x.dtype), strides=self.stride, padding="VALID",
                            dilations=d)


def conv_on_phases(x, d: int, conv: Callable):
    """A stride-1 conv with dilation d and padding d * (k // 2), computed by `conv`, the same
    conv without dilation (padding k // 2), on the d*d phase images x[:, i::d, j::d].

    Output pixel (d*r + i, d*c + j) reads only input pixels of its own phase (i, j), the
    neighbours of (r, c) in that phase image. space_to_batch stacks the phases in the batch (H
    and W zero-padded to multiples of d: zeros that stand for the conv's own padding), and
    batch_to_space puts the outputs back and crops. x: (N, H, W, C) -> (N, H, W, K).
    """
    shape = tf.shape(x)
    pads = [[0, (-shape[1]) % d], [0, (-shape[2]) % d]]
    phases = tf.space_to_batch(x, [d, d], pads)  # (d*d*N, ceil(H / d), ceil(W / d), C)
    return tf.batch_to_space(conv(phases), [d, d], pads)


def gpu_visible() -> bool:
    """Whether TensorFlow sees a GPU (see `Conv2D`: grouped and dilated convs)."""
    return bool(tf.config.list_logical_devices("GPU"))


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
        # With kernel == stride every input pixel writes its own k x k output block: one
        # matmul gives all blocks' values, depth_to_space puts them in place. Same sums as
        # tf.nn.conv2d_transpose, whose CPU kernel (Conv2DBackpropInput) took 41 ms of a
        # 100-ROI mask head where this takes a few (2-core AVX2 EPYC).
        k, cin = self.k, self.weight.shape[3]
        shape = tf.shape(x)
        weight = tf.cast(self.weight, x.dtype)  # (k, k, Cout, Cin)
        weight = tf.reshape(tf.transpose(weight, [3, 0, 1, 2]), [cin, k * k * self.out_channels])
        y = tf.matmul(tf.reshape(x, [-1, cin]), weight)  # (N*H*W, k*k*Cout), (a, b, o) order
        # bias and activation (pointwise) before the move: fused into the matmul by TF
        y = tf.nn.bias_add(y, tf.tile(tf.cast(self.bias, x.dtype), [k * k]))
        if self.activation is not None:
            y = self.activation(y)
        return tf.nn.depth_to_space(tf.reshape(y, tf.concat([shape[:3], [-1]], 0)), k)


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
