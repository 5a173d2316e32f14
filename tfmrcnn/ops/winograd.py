"""3x3 stride-1 convolution by Winograd's minimal filtering F(4x4, 3x3) on CPU.

Why: on a CPU, fp32 convolutions are compute-bound and oneDNN's direct kernels reach ~60 GFLOP/s
per core here; F(4x4, 3x3) does the same convolution with 4x fewer multiplications (36 products
per 4x4 output tile instead of 144), as cuDNN does on GPUs. R50-FPN spends most of its FLOPs in
3x3 stride-1 convolutions (ResNet's bottleneck middle convs, the FPN output convs, the RPN head
and the mask head).

Convention: NHWC input, HWIO kernel, stride 1, zero padding 1 on every side (detectron2's
`Conv2d(kernel_size=3, padding=1)`), float32 (float64 accepted, for gradient checks); a
dilation d with padding d (DC5's res5) is the same conv on the d*d phase images.
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


def transform_kernel(kernel):
    """(3, 3, C, K) HWIO kernel -> (36, C, K): G g G^T for every (C, K) pair.

    Done as one (36, 9) x (9, C*K) matmul with kron(G, G), whose row 6a+b and column 3i+j hold
    G[a, i] G[b, j]: an einsum over the two small axes was ~10x slower.
    """
    c, k = tf.shape(kernel)[2], tf.shape(kernel)[3]
    gg = tf.constant(np.kron(_G, _G), dtype=kernel.dtype)               # (36, 9)
    u = tf.matmul(gg, tf.reshape(kernel, [9, c * k]))                   # (36, C*K)
    return tf.reshape(u, [_ALPHA * _ALPHA, c, k])


def conv3x3(x, kernel, bias=None, relu: bool = False, dilation: int = 1):
    """Same result as ``tf.nn.conv2d(tf.pad(x, d pixels), kernel, 1, 'VALID', dilations=d)``
    with d = `dilation` (+ bias, then ReLU if `relu`; both are applied inside the output
    transform, not as extra passes): detectron2's ``Conv2d(3, padding=d, dilation=d)``.

    x: (N, H, W, C) float32; kernel: (3, 3, C, K); bias: (K,) or None. Returns (N, H, W, K).
    Differentiable with respect to x, kernel and bias. CPU only (the tile transforms have no
    GPU kernel).
    """
    if dilation != 1:
        return _dilated_conv3x3(x, kernel, bias, relu, int(dilation))
    lib = load_library()
    image_shape = tf.shape(x, out_type=tf.int32)[:3]       # [N, H, W]
    tiles = lib.winograd_input_transform(x)                # (36, P, C)
    products = tf.matmul(tiles, transform_kernel(kernel))  # (36, P, K)
    bias = tf.zeros([0], x.dtype) if bias is None else tf.cast(bias, x.dtype)
    return lib.winograd_output_transform(products, image_shape, bias, relu=bool(relu))


def _dilated_conv3x3(x, kernel, bias, relu: bool, d: int):
    """The dilation-d, padding-d 3x3 conv as the padding-1 conv of the d*d phase images.

    Output pixel (d*r + i, d*c + j) only reads input pixels of the same phase (i, j), which
    are the neighbours (r +- 1, c +- 1) of the phase image x[:, i::d, j::d]; space_to_batch
    stacks the phases in the batch (H, W zero-padded to multiples of d, zeros that stand for
    the conv's own padding), batch_to_space puts the outputs back and crops. (DC5's res5.)
    """
    if d < 1:
        raise ValueError(f"dilation must be >= 1, got {d}")
    shape = tf.shape(x)
    pad_h, pad_w = (-shape[1]) % d, (-shape[2]) % d
    pads = [[0, pad_h], [0, pad_w]]
    phases = tf.space_to_batch(x, [d, d], pads)  # (d*d*N, ceil(H/d), ceil(W/d), C)
    y = conv3x3(phases, kernel, bias, relu)       # (d*d*N, ceil(H/d), ceil(W/d), K)
    return tf.batch_to_space(y, [d, d], pads)     # (N, H, W, K)


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
