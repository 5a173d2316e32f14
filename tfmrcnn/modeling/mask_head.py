"""Mask R-CNN mask head: detectron2's MaskRCNNConvUpsampleHead, mask targets, loss, inference.

Conventions
-----------
- Input: (R, 14, 14, C) ROIAlignV2 features (NHWC); output: (R, 28, 28, K) logits, one channel
  per foreground class 0..K-1 (1 channel with CLS_AGNOSTIC_MASK). No background channel.
- Variables ``roi_heads.mask_head.mask_fcn{1..N}`` (3x3 convs), ``.deconv`` (2x2 stride 2),
  ``.predictor`` (1x1), as in detectron2's state dict.
- Targets follow detectron2's BitMasks.crop_and_resize: aligned ROIAlign (sampling 0, scale 1)
  of the matched instance's full-image 0/1 mask at the proposal box, then ``>= 0.5``.
- Loss: sigmoid BCE with logits on the GT class's channel, averaged over foreground ROIs x M x M
  (all images together); 0, not NaN, without foreground.
"""
from __future__ import annotations

import tensorflow as tf

from tfmrcnn.modeling.layers import Conv2D, ConvTranspose2D
from tfmrcnn.modeling.norm import get_norm

PREFIX = "roi_heads.mask_head"


def _roi_align(*args, **kwargs):
    # imported at call time: the custom op library is loaded lazily by tfmrcnn.ops
    from tfmrcnn import ops
    return ops.roi_align(*args, **kwargs)


class MaskRCNNConvUpsampleHead(tf.Module):
    """NUM_CONV x (conv 3x3 CONV_DIM [+ norm] + ReLU) -> deconv 2x2/2 + ReLU -> 1x1 predictor.

    Convs and deconv use detectron2's c2_msra_fill, the predictor normal(std 0.001); biases 0.
    A conv has no bias when it has a norm (detectron2: ``bias=not conv_norm``). `winograd` lets
    the 3x3 convs use Winograd (see `layers.Conv2D`).
    """

    def __init__(self, cfg, in_channels: int, winograd: bool = False):
        super().__init__(name="mask_head")
        mcfg = cfg.MODEL.ROI_MASK_HEAD
        num_classes = 1 if mcfg.CLS_AGNOSTIC_MASK else cfg.MODEL.ROI_HEADS.NUM_CLASSES
        dim, norm = mcfg.CONV_DIM, mcfg.NORM
        self.convs = []
        c = in_channels
        for i in range(mcfg.NUM_CONV):
            prefix = f"{PREFIX}.mask_fcn{i + 1}"
            self.convs.append(Conv2D(prefix, c, dim, 3, use_bias=not norm,
                                     norm=get_norm(norm, dim, f"{prefix}.norm"),
                                     activation=tf.nn.relu, init="msra", winograd=winograd))
            c = dim
        # detectron2: the deconv always outputs CONV_DIM channels, even without convs
        self.deconv = ConvTranspose2D(f"{PREFIX}.deconv", c, dim, 2, 2, activation=tf.nn.relu)
        self.predictor = Conv2D(f"{PREFIX}.predictor", dim, num_classes, 1,
                                init="normal:0.001")

    def __call__(self, x, training: bool = False):
        # x: (R, 14, 14, C) -> (R, 28, 28, K) logits
        for conv in self.convs:
            x = conv(x, training=training)
        return self.predictor(self.deconv(x))


def select_class_channel(mask_logits, classes):
    """The channel of each ROI's class: (R, M, M, K) x (R,) -> (R, M, M).

    A single-channel (class-agnostic) prediction is returned as is; classes outside [0, K) are
    clamped (their rows are padding and must be masked by the caller).
    """
    k = tf.shape(mask_logits)[-1]
    classes = tf.clip_by_value(tf.cast(classes, tf.int32), 0, k - 1)  # agnostic: k - 1 = 0
    per_roi = tf.transpose(mask_logits, [0, 3, 1, 2])  # (R, K, M, M)
    return tf.gather(per_roi, classes, axis=1, batch_dims=1)  # (R, M, M)


def mask_rcnn_targets(gt_masks, boxes, gt_indices, mask_size: int):
    """detectron2's bitmask targets: ROIAlign of the matched instance mask, then >= 0.5.

    gt_masks: (B, G, Hp, Wp) 0/1 full-image masks; boxes: (B, R, 4) xyxy proposal boxes in image
    pixels; gt_indices: (B, R) int index into G of the matched instance. Returns (B, R, M, M)
    float32 in {0, 1}, no gradient. Rows whose image has no instance slot (G == 0) are 0.
    """
    shape = tf.shape(gt_masks)
    b, g = shape[0], shape[1]
    r = tf.shape(boxes)[1]
    flat_boxes = tf.reshape(tf.stop_gradient(tf.cast(boxes, tf.float32)), [-1, 4])  # (B*R, 4)
    stack_index = (tf.range(b)[:, None] * g + tf.cast(gt_indices, tf.int32))  # (B, R)
    stack_index = tf.reshape(stack_index, [-1])  # (B*R,) into the (B*G) stack

    def crop():
        stack = tf.reshape(tf.cast(gt_masks, tf.float32),
                           tf.stack([b * g, shape[2], shape[3], 1]))  # (B*G, Hp, Wp, 1)
        out = _roi_align(stack, flat_boxes, stack_index, (mask_size, mask_size), 1.0,
                         sampling_ratio=0, aligned=True)  # (B*R, M, M, 1)
        return tf.cast(out[..., 0] >= 0.5, tf.float32)

    def empty():
        return tf.zeros(tf.stack([b * r, mask_size, mask_size]), tf.float32)

    targets = tf.cond(b * g > 0, crop, empty)
    return tf.stop_gradient(tf.reshape(targets, tf.stack([b, r, mask_size, mask_size])))


def mask_rcnn_loss(mask_logits, classes, targets, weights):
    """detectron2's mask_rcnn_loss on a fixed-size set of ROIs.

    mask_logits: (R, M, M, K); classes: (R,) GT class; targets: (R, M, M) in {0, 1};
    weights: (R,) 1 for foreground ROIs, 0 for padding. Mean BCE over foreground x M x M.
    """
    logits = select_class_channel(mask_logits, classes)  # (R, M, M)
    bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.cast(targets, tf.float32),
                                                  logits=tf.cast(logits, tf.float32))
    weights = tf.cast(weights, tf.float32)
    total = tf.reduce_sum(tf.reduce_sum(bce, axis=[1, 2]) * weights)
    count = tf.reduce_sum(weights) * tf.cast(tf.shape(bce)[1] * tf.shape(bce)[2], tf.float32)
    return tf.math.divide_no_nan(total, count)


def mask_rcnn_inference(mask_logits, classes):
    """Probabilities of the predicted class: (R, M, M, K) x (R,) -> (R, M, M) sigmoid."""
    return tf.sigmoid(tf.cast(select_class_channel(mask_logits, classes), tf.float32))
