"""ROIAlign with detectron2's numbers: `ROIAlign(aligned=True)` = ROIAlignV2 = torchvision
`roi_align(aligned=True)`, here on NHWC features.

Convention: boxes are xyxy in input-image pixels; a coordinate v maps to v * spatial_scale - 0.5
on the feature map (no half-pixel shift when aligned=False, which also forces ROI sizes >= 1).
Each of the output_size bins averages a regular grid of bilinear samples, sampling_ratio per
axis, or ceil(roi_size / output_size) when sampling_ratio = 0. Samples beyond [-1, H] x [-1, W]
contribute 0 but still count in the average; others are clamped into the map.

The kernels live in the compiled custom op `_tfmrcnn_ops.so` (custom_ops/), built by
scripts/setup.sh and loaded on first use. It has no XLA kernel: do not jit_compile a function
that calls it.
"""
import tensorflow as tf

from tfmrcnn.ops.library import load_library


def roi_align(features, boxes, box_indices, output_size, spatial_scale, sampling_ratio=0,
              aligned=True):
    """Pool one feature map at the given boxes.

    Args:
      features: (N, H, W, C) float32 (float16/bfloat16 on GPU only).
      boxes: (R, 4) xyxy in input-image pixels; cast to float32.
      box_indices: (R,) image index of each box in [0, N); cast to int32.
      output_size: int or (h, w).
      spatial_scale: 1 / stride of this map relative to the input image.
      sampling_ratio: samples per bin per axis; 0 = adaptive.
      aligned: True = detectron2 ROIAlignV2 (half-pixel shift).
    Returns:
      (R, h, w, C) of features.dtype. Differentiable w.r.t. features only.
    """
    if isinstance(output_size, int):
        output_size = (output_size, output_size)
    output_size = [int(s) for s in output_size]
    boxes = tf.cast(boxes, tf.float32)
    box_indices = tf.cast(box_indices, tf.int32)
    return load_library().roi_align(
        features, boxes, box_indices, output_size=output_size,
        spatial_scale=float(spatial_scale), sampling_ratio=int(sampling_ratio),
        aligned=bool(aligned))


def roi_align_grad(grad, boxes, box_indices, features_shape, output_size, spatial_scale,
                   sampling_ratio=0, aligned=True):
    """Adjoint of roi_align w.r.t. features: (R, h, w, C) grad -> features_shape gradient."""
    return load_library().roi_align_grad(
        grad, tf.cast(boxes, tf.float32), tf.cast(box_indices, tf.int32),
        tf.cast(features_shape, tf.int32), output_size=[int(s) for s in output_size],
        spatial_scale=float(spatial_scale), sampling_ratio=int(sampling_ratio),
        aligned=bool(aligned))


@tf.RegisterGradient("RoiAlign")
def _roi_align_gradient(op, grad):
    # Boxes get no gradient, as in detectron2 (its ROIAlign backward returns None for rois).
    features, boxes, box_indices = op.inputs
    grad_features = roi_align_grad(
        grad, boxes, box_indices, tf.shape(features, out_type=tf.int32),
        output_size=op.get_attr("output_size"), spatial_scale=op.get_attr("spatial_scale"),
        sampling_ratio=op.get_attr("sampling_ratio"), aligned=op.get_attr("aligned"))
    return [grad_features, None, None]
