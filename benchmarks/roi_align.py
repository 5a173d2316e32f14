"""Benchmark section: ROIAlign forward and forward+backward, ours against two TF-only versions.

Problem (benchmarks/common.py, also timed for torchvision by section `reference`): 512 ROIs with
sides log-uniform in 16..400 px, pooled from a (1, 200, 336, 256) float32 map at stride 4,
output 7x7 and 14x14.
  ours        tfmrcnn.ops.roi_align, detectron2 ROIAlignV2 (adaptive sampling; sampling 2 too)
  tensorpack  crop_and_resize at twice the resolution + 2x2 average pool, with tensorpack's
              one-pixel border padding (its roi_align; about sampling 2, not exact ROIAlign)
  tf-gather   ROIAlignV2 with sampling 2 written with tf.gather (4 corner gathers per sample)
"""
import tensorflow as tf

from benchmarks.common import (ROI_ALIGN_PROBLEM, ROI_ALIGN_QUICK, roi_align_problem,
                               roi_align_upstream)
# the exact ROIAlignV2's row: the one compared with torchvision's
from benchmarks.compare import OURS_ROI_ALIGN
from tfmrcnn.ops import roi_align


def make_problem(**problem):
    """common.roi_align_problem as tensors, with the box indices (all image 0)."""
    features, boxes, scale = roi_align_problem(**problem)
    return (tf.constant(features), tf.constant(boxes), tf.zeros((len(boxes),), tf.int32), scale)


def tensorpack_roi_align(features, boxes, box_indices, output_size, spatial_scale):
    """tensorpack's FPN roi_align: crop_and_resize to 2x the size, then 2x2 average pooling.
    crop_and_resize samples at the box corners, so boxes are shifted to put the 2x grid's
    samples at bin-centre positions (tensorpack's transform_fpcoor_for_tf)."""
    oh, ow = output_size
    features = tf.pad(features, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="SYMMETRIC")
    boxes = boxes * spatial_scale + 1.0  # (R, 4) xyxy on the padded map
    x0, y0, x1, y1 = tf.unstack(boxes, axis=1)
    crop_h, crop_w = 2 * oh, 2 * ow
    spacing_w = (x1 - x0) / crop_w
    spacing_h = (y1 - y0) / crop_h
    h = tf.cast(tf.shape(features)[1] - 1, tf.float32)
    w = tf.cast(tf.shape(features)[2] - 1, tf.float32)
    nx0 = (x0 + spacing_w / 2 - 0.5) / w
    ny0 = (y0 + spacing_h / 2 - 0.5) / h
    nw = spacing_w * (crop_w - 1) / w
    nh = spacing_h * (crop_h - 1) / h
    norm_boxes = tf.stack([ny0, nx0, ny0 + nh, nx0 + nw], axis=1)
    crops = tf.image.crop_and_resize(features, norm_boxes, box_indices, [crop_h, crop_w])
    return tf.nn.avg_pool2d(crops, 2, 2, "VALID")


def _axis_taps(lo, hi, pooled, sampling, size):
    """(R, pooled*sampling) lower/upper indices and weights of the aligned ROIAlign samples."""
    start = lo - 0.5
    bin_size = (hi - lo) / pooled
    offs = (tf.range(pooled * sampling, dtype=tf.float32) + 0.5) / sampling
    v = start[:, None] + offs[None, :] * bin_size[:, None]
    size_f = tf.cast(size, tf.float32)
    valid = tf.cast((v >= -1.0) & (v <= size_f), tf.float32)
    v = tf.clip_by_value(v, 0.0, size_f - 1.0)
    low = tf.minimum(tf.floor(v), size_f - 1.0)
    frac = v - low
    high = tf.minimum(low + 1.0, size_f - 1.0)
    return (tf.cast(low, tf.int32), tf.cast(high, tf.int32), (1.0 - frac) * valid, frac * valid)


def gather_roi_align(features, boxes, box_indices, output_size, spatial_scale, sampling=2):
    """ROIAlignV2 with a fixed sampling ratio from tf.gather on the flattened map."""
    oh, ow = output_size
    shape = tf.shape(features)
    n, h, w, c = shape[0], shape[1], shape[2], shape[3]
    boxes = boxes * spatial_scale  # (R, 4)
    ylo, yhi, wylo, wyhi = _axis_taps(boxes[:, 1], boxes[:, 3], oh, sampling, h)  # (R, Sy)
    xlo, xhi, wxlo, wxhi = _axis_taps(boxes[:, 0], boxes[:, 2], ow, sampling, w)  # (R, Sx)
    flat = tf.reshape(features, [n * h * w, c])
    base = (box_indices * h * w)[:, None, None]
    out = 0.0
    for ys, wy in ((ylo, wylo), (yhi, wyhi)):
        for xs, wx in ((xlo, wxlo), (xhi, wxhi)):
            idx = base + ys[:, :, None] * w + xs[:, None, :]  # (R, Sy, Sx)
            out += tf.gather(flat, idx) * (wy[:, :, None] * wx[:, None, :])[..., None]
    r = tf.shape(boxes)[0]
    out = tf.reshape(out, [r, oh, sampling, ow, sampling, c])
    return tf.reduce_mean(out, axis=[2, 4])


def _implementations(output_size):
    return {
        OURS_ROI_ALIGN: lambda f, b, i, s: roi_align(f, b, i, output_size, s),
        "ours (sampling 2)": lambda f, b, i, s: roi_align(f, b, i, output_size, s,
                                                          sampling_ratio=2),
        "tensorpack c&r": lambda f, b, i, s: tensorpack_roi_align(f, b, i, output_size, s),
        "tf-gather (sampling 2)": lambda f, b, i, s: gather_roi_align(f, b, i, output_size, s),
    }


def run(args):
    problem = ROI_ALIGN_QUICK if getattr(args, "quick", False) else ROI_ALIGN_PROBLEM
    features, boxes, indices, scale = make_problem(**problem)
    rows = []
    for output_size in [(7, 7), (14, 14)]:
        upstream = tf.constant(roi_align_upstream(boxes.shape[0], output_size, features.shape[-1]))
        for name, impl in _implementations(output_size).items():
            fwd = tf.function(lambda: impl(features, boxes, indices, scale), autograph=False)

            @tf.function(autograph=False)
            def fwd_bwd(impl=impl):
                with tf.GradientTape() as tape:
                    tape.watch(features)
                    loss = tf.reduce_sum(impl(features, boxes, indices, scale) * upstream)
                return tape.gradient(loss, features)

            rows.append({
                "case": "%dx%d" % output_size,
                "impl": name,
                "fwd s": args.time(fwd),
                "fwd+bwd s": args.time(fwd_bwd),
            })
    return rows
