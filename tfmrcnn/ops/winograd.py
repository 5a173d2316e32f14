"""3x3 stride-1 convolution by Winograd's minimal filtering F(4x4, 3x3) on CPU.

Why: on a CPU, fp32 convolutions are compute-bound and oneDNN's direct kernels reach ~60 GFLOP/s
per core here; F(4x4, 3x3) does the same convolution with 4x fewer multiplications (36 products
per 4x4 output tile instead of 144), as cuDNN does on GPUs. R50-FPN spends most of its FLOPs in
3x3 stride-1 convolutions (ResNet's bottleneck middle convs, the FPN output convs, the RPN head
and the mask head).

Convention: NHWC input, HWIO kernel, stride 1, zero padding 1 on every side (detectron2's
`Conv2d(kernel_size=3, padding=1)`), float32 (float64 accepted, for gradient checks).
Per 4x4 output tile: y = A^T [(G g G^T) (.) (B^T d B)] A with d the 6x6 input tile (Lavin &
Gray 2015, points 0, +-1, +-2, infinity). The tile transforms are custom ops (custom_ops/
winograd_op.cc, CPU only, gradients registered below); the 36 channel products are one batched
matmul. Rounding differs from a direct convolution by ~1e-6 relative to the output's scale.
"""
import numpy as np
import tensorflow as tf

from tfmrcnn.ops.library import load_library

_ALPHA = 6  # transformed tile side
# G (6, 3): the kernel transform (float64 here; cast to the input's dtype when used).
_G = np.array([[1 / 4, 0, 0],
               [-1 / 6, -1 / 6, -1 / 6],
               [-1 / 6, 1 / 6, -1 / 6],
               [1 / 24, 1 / 12, 1 / 6],
               [1 / 24, -1 / 12, 1 / 6],
               [0, 0, 1]])


# Below these output pixel counts per call (N * H * W) the direct convolution is faster: the
# kernel transform writes 36 * C * K values on every call, which only enough tiles pay back, and
# at 256 x 256 channels and more those no longer fit the cache. Measured on the 2-core AVX2 EPYC
# (forward, C = K): break-even ~1000 pixels at 256 and 512 channels (512 at 8 x 10: direct 9 ms,
# Winograd 16 ms; at 25 x 42: 71 against 48 ms), ~300 at 128 and below (docs/PERFORMANCE.md,
# "Winograd F(4x4,3x3) per convolution").
MIN_PIXELS_LARGE_KERNEL = 1024
MIN_PIXELS = 256
LARGE_KERNEL = 256 * 256  # C * K


def min_pixels(in_channels: int, out_channels: int) -> int:
    """Fewest output pixels (N * H * W) of one call for which Winograd beats the direct conv."""
    large = in_channels * out_channels >= LARGE_KERNEL
    return MIN_PIXELS_LARGE_KERNEL if large else MIN_PIXELS


def transform_kernel(kernel):
    """(3, 3, C, K) HWIO kernel -> (36, C, K): G g G^T for every (C, K) pair.

    Done as one (36, 9) x (9, C*K) matmul with kron(G, G), whose row 6a+b and column 3i+j hold
    G[a, i] G[b, j]: an einsum over the two small axes was ~10x slower.
    """
    c, k = tf.shape(kernel)[2], tf.shape(kernel)[3]
    gg = tf.constant(np.kron(_G, _G), dtype=kernel.dtype)               # (36, 9)
    u = tf.matmul(gg, tf.reshape(kernel, [9, c * k]))                   # (36, C*K)
    return tf.reshape(u, [_ALPHA * _ALPHA, c, k])


def conv3x3(x, kernel, bias=None, relu: bool = False):
    """Same result as ``tf.nn.conv2d(tf.pad(x, 1 pixel), kernel, 1, 'VALID')`` (+ bias, then
    ReLU if `relu`; both are applied inside the output transform, not as extra passes).

    x: (N, H, W, C) float32; kernel: (3, 3, C, K); bias: (K,) or None. Returns (N, H, W, K).
    Differentiable with respect to x, kernel and bias. CPU only (the tile transforms have no
    GPU kernel).
    """
    lib = load_library()
    image_shape = tf.shape(x, out_type=tf.int32)[:3]       # [N, H, W]
    tiles = lib.winograd_input_transform(x)                # (36, P, C)
    products = tf.matmul(tiles, transform_kernel(kernel))  # (36, P, K)
    bias = tf.zeros([0], x.dtype) if bias is None else tf.cast(bias, x.dtype)
    return lib.winograd_output_transform(products, image_shape, bias, relu=bool(relu))


@tf.RegisterGradient("WinogradInputTransform")
def _input_transform_gradient(op, grad):
    image_shape = tf.shape(op.inputs[0], out_type=tf.int32)[:3]
    return [load_library().winograd_input_transform_grad(grad, image_shape)]


@tf.RegisterGradient("WinogradOutputTransform")
def _output_transform_gradient(op, grad):
    # grad: (N, H, W, K) of the output y
    if op.get_attr("relu"):
        grad = tf.where(op.outputs[0] > 0, grad, tf.zeros_like(grad))
    bias = op.inputs[2]
    grad_bias = tf.reduce_sum(grad, axis=[0, 1, 2]) if bias.shape[0] != 0 else tf.zeros_like(bias)
    return [load_library().winograd_output_transform_grad(grad), None, grad_bias]
