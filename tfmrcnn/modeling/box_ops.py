"""Box arithmetic in detectron2's conventions, batched over any leading dims.

Convention owned here
---------------------
A box is ``(x0, y0, x1, y1)`` in continuous pixel coordinates of the resized image: a pixel
(i, j) spans [j, j+1] x [i, i+1]. Width is ``x1 - x0`` and area ``w * h`` (no +1, unlike
Detectron1/tensorpack). Boxes with ``x1 <= x0`` or ``y1 <= y0`` are empty. All functions take
boxes with arbitrary leading dims ``(..., 4)``.

Nothing here makes Python decisions on tensor values, so the entry points are marked
``tf.autograph.experimental.do_not_convert``: inside a caller's tf.function they trace as plain
graph code instead of being re-parsed by AutoGraph (which cost seconds per trace).
"""
from __future__ import annotations

import math
from typing import Sequence, Tuple

import tensorflow as tf

# detectron2's default clamp for dw/dh: no box grows past 1000/16 times its reference size
DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)


class Box2BoxTransform:
    """detectron2's (dx, dy, dw, dh) box parameterisation with per-coordinate weights.

    Encoding of ``target`` relative to ``src`` (centres ``c = x0 + 0.5 w``)::

        dx = wx * (cx_t - cx_s) / w_s      dw = ww * log(w_t / w_s)
        dy = wy * (cy_t - cy_s) / h_s      dh = wh * log(h_t / h_s)

    Decoding divides by the weights, clamps dw/dh at ``scale_clamp`` before the exp, and
    returns ``x0 = cx - 0.5 w, x1 = cx + 0.5 w``. Decoding runs in float32 whatever the input
    dtype, as detectron2 does.
    """

    def __init__(self, weights: Sequence[float], scale_clamp: float = DEFAULT_SCALE_CLAMP):
        if len(weights) != 4:
            raise ValueError(f"need 4 weights, got {weights}")
        self.weights = tuple(float(w) for w in weights)
        self.scale_clamp = float(scale_clamp)

    @tf.autograph.experimental.do_not_convert
    def get_deltas(self, src_boxes, target_boxes):
        # src_boxes, target_boxes: (..., 4) xyxy -> (..., 4) deltas
        src_boxes = tf.cast(src_boxes, tf.float32)
        target_boxes = tf.cast(target_boxes, tf.float32)
        sx, sy, sw, sh = _centre_size(src_boxes)
        tx, ty, tw, th = _centre_size(target_boxes)
        wx, wy, ww, wh = self.weights
        return tf.stack([wx * (tx - sx) / sw,
                         wy * (ty - sy) / sh,
                         ww * tf.math.log(tw / sw),
                         wh * tf.math.log(th / sh)], axis=-1)

    @tf.autograph.experimental.do_not_convert
    def apply_deltas(self, deltas, boxes):
        """deltas (..., 4k) applied to boxes (..., 4) -> (..., 4k) xyxy float32.

        k > 1 is class-specific regression: every group of 4 deltas decodes the same box.
        """
        deltas = tf.cast(deltas, tf.float32)
        boxes = tf.cast(boxes, tf.float32)
        d = tf.reshape(deltas, tf.concat([tf.shape(deltas)[:-1], [-1, 4]], axis=0))  # (..., k, 4)
        cx, cy, w, h = (t[..., None] for t in _centre_size(boxes))  # (..., 1) each
        wx, wy, ww, wh = self.weights
        dx, dy = d[..., 0] / wx, d[..., 1] / wy
        dw = tf.minimum(d[..., 2] / ww, self.scale_clamp)
        dh = tf.minimum(d[..., 3] / wh, self.scale_clamp)
        pcx, pcy = dx * w + cx, dy * h + cy
        pw, ph = tf.exp(dw) * w, tf.exp(dh) * h
        out = tf.stack([pcx - 0.5 * pw, pcy - 0.5 * ph, pcx + 0.5 * pw, pcy + 0.5 * ph], axis=-1)
        return tf.reshape(out, tf.shape(deltas))


def _centre_size(boxes):
    # (..., 4) xyxy -> centre x, centre y, width, height, each (...)
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    return boxes[..., 0] + 0.5 * w, boxes[..., 1] + 0.5 * h, w, h


@tf.autograph.experimental.do_not_convert
def box_area(boxes):
    # (..., 4) -> (...); may be negative for inverted boxes, like detectron2's Boxes.area
    boxes = tf.convert_to_tensor(boxes)
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def _pairwise_intersection(boxes1, boxes2):
    # (..., N, 4), (..., M, 4) -> (..., N, M) intersection areas (>= 0)
    boxes1, boxes2 = tf.convert_to_tensor(boxes1), tf.convert_to_tensor(boxes2)
    b1 = boxes1[..., :, None, :]
    b2 = boxes2[..., None, :, :]
    iw = tf.minimum(b1[..., 2], b2[..., 2]) - tf.maximum(b1[..., 0], b2[..., 0])
    ih = tf.minimum(b1[..., 3], b2[..., 3]) - tf.maximum(b1[..., 1], b2[..., 1])
    return tf.maximum(iw, 0.0) * tf.maximum(ih, 0.0)


def _safe_ratio(num, den):
    # num / den where num > 0, else 0; the where on the denominator keeps gradients finite
    pos = num > 0
    return tf.where(pos, num / tf.where(pos, den, tf.ones_like(den)), tf.zeros_like(num))


@tf.autograph.experimental.do_not_convert
def pairwise_iou(boxes1, boxes2):
    """IoU of every pair: (..., N, 4) x (..., M, 4) -> (..., N, M); 0 where boxes don't overlap.

    Leading dims broadcast, so (B, G, 4) x (A, 4) gives (B, G, A).
    """
    inter = _pairwise_intersection(boxes1, boxes2)
    union = box_area(boxes1)[..., :, None] + box_area(boxes2)[..., None, :] - inter
    return _safe_ratio(inter, union)


@tf.autograph.experimental.do_not_convert
def pairwise_ioa(boxes1, boxes2):
    """Intersection over the area of boxes2: (..., N, 4) x (..., M, 4) -> (..., N, M).

    With boxes1 = crowd regions and boxes2 = anchors/proposals this is the fraction of each
    anchor that lies inside a crowd region.
    """
    inter = _pairwise_intersection(boxes1, boxes2)
    return _safe_ratio(inter, tf.broadcast_to(box_area(boxes2)[..., None, :], tf.shape(inter)))


@tf.autograph.experimental.do_not_convert
def clip_boxes(boxes, image_sizes):
    """Clamp x to [0, w] and y to [0, h] of boxes (..., 4).

    image_sizes holds (h, w) with leading dims that are a prefix of the boxes' leading dims:
    (2,) for all boxes, (B, 2) for boxes (B, N, 4) or (B, L, N, 4), and so on.
    """
    boxes = tf.convert_to_tensor(boxes)
    sizes = tf.cast(image_sizes, boxes.dtype)
    for _ in range(boxes.shape.rank - sizes.shape.rank):
        sizes = sizes[..., None, :]  # align the batch prefix, broadcast over the rest
    h, w = sizes[..., 0:1], sizes[..., 1:2]  # (..., 1) so they broadcast against (..., 1) columns
    x0 = tf.clip_by_value(boxes[..., 0:1], 0.0, w)
    y0 = tf.clip_by_value(boxes[..., 1:2], 0.0, h)
    x1 = tf.clip_by_value(boxes[..., 2:3], 0.0, w)
    y1 = tf.clip_by_value(boxes[..., 3:4], 0.0, h)
    return tf.concat([x0, y0, x1, y1], axis=-1)


@tf.autograph.experimental.do_not_convert
def nonempty_mask(boxes, threshold: float = 0.0):
    # (..., 4) -> (...) bool: both sides strictly longer than threshold
    boxes = tf.convert_to_tensor(boxes)
    return tf.logical_and(boxes[..., 2] - boxes[..., 0] > threshold,
                          boxes[..., 3] - boxes[..., 1] > threshold)


def _offset_by_group(boxes, idxs, valid=None):
    """detectron2's coordinate trick: move each group so that boxes of different groups never
    overlap; one class-agnostic NMS then equals a per-group NMS.

    boxes (..., N, 4), idxs (..., N) -> (..., N, 4). Boxes are first translated so their minimum
    coordinate is 1 (IoU is translation invariant); the padded NMS treats all-zero boxes as
    absent, so every real box must have a positive coordinate.
    """
    boxes = tf.cast(boxes, tf.float32)
    if valid is None:
        valid = tf.ones(tf.shape(boxes)[:-1], tf.bool)
    big = tf.float32.max
    lo = tf.reduce_min(tf.where(valid[..., None], boxes, big), axis=[-2, -1], keepdims=True)
    lo = tf.where(lo == big, tf.zeros_like(lo), lo)  # no valid box at all
    shifted = boxes - lo + 1.0
    hi = tf.reduce_max(tf.where(valid[..., None], shifted, 0.0), axis=[-2, -1], keepdims=True)
    offsets = tf.cast(idxs, tf.float32)[..., None] * (hi + 1.0)  # (..., N, 1)
    return tf.where(valid[..., None], shifted + offsets, tf.zeros_like(shifted))


@tf.autograph.experimental.do_not_convert
def batched_nms(boxes, scores, idxs, iou_threshold: float, max_output_size=None):
    """Greedy NMS done independently per value of ``idxs`` (detectron2's batched_nms).

    boxes (N, 4) xyxy, scores (N,), idxs (N,) int -> keep (K,) int32 indices into the inputs,
    sorted by decreasing score. A box is suppressed by a higher-scoring box of its group whose
    IoU with it is > iou_threshold. max_output_size None keeps all survivors.
    """
    scores = tf.cast(scores, tf.float32)
    if max_output_size is None:
        max_output_size = tf.shape(scores)[0]
    shifted = _offset_by_group(boxes, idxs)
    # tf's NMS op takes (y0, x0, y1, x1); IoU is symmetric in swapping x and y, so xyxy works
    return tf.image.non_max_suppression(shifted, scores, max_output_size, iou_threshold)


@tf.autograph.experimental.do_not_convert
def batched_nms_padded(boxes, scores, iou_threshold: float, max_output_size: int,
                       idxs=None, valid=None) -> Tuple[tf.Tensor, tf.Tensor]:
    """NMS on every row of a (B, N) batch at once, fixed-size output (XLA-friendly).

    boxes (B, N, 4) xyxy, scores (B, N), optional idxs (B, N) int groups (per-group NMS as in
    `batched_nms`) and valid (B, N) bool (invalid rows never suppress nor survive).
    Returns keep (B, max_output_size) int32 indices sorted by decreasing score and keep_valid
    (B, max_output_size) bool; padded entries have index 0 and keep_valid False.
    Built on tf.image.non_max_suppression_padded, which suppresses at IoU >= iou_threshold
    (detectron2: >); the two differ only on exact ties.
    """
    scores = tf.cast(scores, tf.float32)
    if valid is None:
        valid = tf.ones(tf.shape(scores), tf.bool)
    if idxs is None:
        idxs = tf.zeros(tf.shape(scores), tf.int32)
    shifted = _offset_by_group(boxes, idxs, valid)
    # invalid rows are zero boxes (never selected by the op) with the lowest scores
    scores = tf.where(valid, scores, tf.float32.min)
    keep, num = tf.image.non_max_suppression_padded(
        shifted, scores, max_output_size, iou_threshold=iou_threshold,
        pad_to_max_output_size=True)
    keep_valid = tf.range(max_output_size)[None, :] < num[:, None]
    keep_valid = tf.logical_and(keep_valid, tf.gather(valid, keep, batch_dims=1))
    return tf.where(keep_valid, keep, 0), keep_valid


def smooth_l1_loss(diff, beta: float):
    """fvcore's smooth L1 of a difference, elementwise: 0.5 d^2 / beta below beta, |d| - beta/2
    above; plain |d| (detectron2's L1 box loss) when beta < 1e-5."""
    absdiff = tf.abs(diff)
    if beta < 1e-5:
        return absdiff
    return tf.where(absdiff < beta, 0.5 * tf.square(diff) / beta, absdiff - 0.5 * beta)
