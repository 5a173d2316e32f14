"""Benchmark section: 3x3 stride-1 float32 convolutions of R50-FPN, direct against Winograd.

  direct    tf.nn.conv2d on the padded input (oneDNN's direct kernel, what MODEL.WINOGRAD=False
            runs)
  winograd  tfmrcnn.ops.winograd.conv3x3: F(4x4, 3x3) tile transforms (custom ops) + one
            batched matmul (the default on hosts without a GPU)
Shapes are those of an 800x1333 image (padded 800x1344): the ResNet middle conv of each stage,
the FPN output / RPN head conv at P2 and P4, and the mask head conv on 100 ROIs (inference);
then res4 / res5 of a 256x320 image (the demo's sizes), where the kernel transform outweighs
the saving. The kernel is a tf.Variable, as in the model (a constant would let TF fold the
kernel transform away). ``layer runs``: what `layers.Conv2D` with Winograd picks for that call
(`winograd.min_pixels`).
fwd+bwd = gradients with respect to input and kernel. GFLOP/s counts the direct convolution's
2*H*W*C*K*9 multiply-adds for both, so the column shows the effective rate.
"""
import numpy as np
import tensorflow as tf

from tfmrcnn.ops.winograd import conv3x3, min_pixels

SHAPES = [  # (label, (N, H, W, C), K)
    ("res2 middle conv", (1, 200, 336, 64), 64),
    ("res3 middle conv", (1, 100, 168, 128), 128),
    ("res4 middle conv", (1, 50, 84, 256), 256),
    ("res5 middle conv", (1, 25, 42, 512), 512),
    ("FPN output / RPN conv P2", (1, 200, 336, 256), 256),
    ("FPN output / RPN conv P4", (1, 50, 84, 256), 256),
    ("mask head conv, 100 ROIs", (100, 14, 14, 256), 256),
    ("res4 middle conv, 256x320 image", (1, 16, 20, 256), 256),
    ("res5 middle conv, 256x320 image", (1, 8, 10, 512), 512),
]
QUICK_SHAPES = [("quick", (1, 24, 40, 32), 32)]


def _direct(x, kernel):
    return tf.nn.conv2d(tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]]), kernel, 1, "VALID")


def _fwd_bwd(conv, x, kernel, upstream):
    @tf.function(autograph=False)
    def step():
        with tf.GradientTape() as tape:
            tape.watch([x, kernel])
            loss = tf.reduce_sum(conv(x, kernel) * upstream)
        return tape.gradient(loss, [x, kernel])
    return step


def run(args):
    rows = []
    for label, shape, k in (QUICK_SHAPES if getattr(args, "quick", False) else SHAPES):
        rng = np.random.default_rng(0)
        x = tf.constant(rng.standard_normal(shape, np.float32))
        kernel = tf.Variable(rng.standard_normal((3, 3, shape[3], k), np.float32) * 0.05)
        layer_runs = "winograd" if np.prod(shape[:3]) >= min_pixels(shape[3], k) else "direct"
        upstream = tf.constant(rng.standard_normal((*shape[:3], k), np.float32))
        gflop = 2.0 * np.prod(shape) * k * 9 / 1e9
        ref = _direct(x, kernel).numpy()
        for name, conv in (("direct", _direct), ("winograd", conv3x3)):
            fwd = tf.function(lambda conv=conv: conv(x, kernel), autograph=False)
            err = np.abs(fwd().numpy() - ref).max() / np.abs(ref).max()
            fwd_s = args.time(fwd)
            rows.append({"case": "%s %s->%d" % (label, "x".join(map(str, shape)), k),
                         "impl": name, "fwd s": fwd_s, "GFLOP/s": gflop / fwd_s,
                         "fwd+bwd s": args.time(_fwd_bwd(conv, x, kernel, upstream)),
                         "layer runs": layer_runs, "max err / max |y|": float(err)})
    return rows
