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

import numpy as np
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


# torchvision's batched_nms (CPU) switches from the coordinate trick to a loop over the groups
# when boxes.numel() > 4000, i.e. for more than this many boxes
TORCHVISION_TRICK_MAX_BOXES = 1000


def _nms_threshold(iou_threshold: float) -> np.float32:
    """The float32 threshold t32 with ``iou > t32`` <=> ``iou > iou_threshold`` for float32 iou.

    torchvision compares its float32 IoU with the threshold as a double; TensorFlow's NMS
    kernels compare with the threshold cast to float32. Where the cast rounds up (0.6, 0.3) an
    IoU equal to the rounded value is suppressed by torchvision but not by TF, so step one float
    down there.
    """
    t32 = np.float32(iou_threshold)
    if float(t32) > float(iou_threshold):
        t32 = np.nextafter(t32, np.float32(-np.inf))
    return t32


def _nms(boxes, scores, max_output_size, iou_threshold: float, pad_to: bool = False):
    """torchvision's CPU ``nms`` kernel, bit for bit, on (N, 4) xyxy boxes.

    TensorFlow's NonMaxSuppressionV3/V4 CPU kernel computes the same float32 IoU (areas
    ``(x1-x0)*(y1-y0)``, intersection ``max(0, w) * max(0, h)``, ``inter / (a_i + a_j - inter)``;
    IoU is symmetric in x and y, so xyxy passes for its yxyx), walks the boxes by decreasing
    score with ties broken by lower index (torchvision's stable sort) and suppresses at
    ``iou > threshold``. Boxes with score -inf are never candidates (score_threshold -inf).
    Returns the kept indices (K,) int32, or with pad_to, (max_output_size,) zero-padded and the
    number of valid entries. Bit-exactness holds for the CPU kernels (detectron2's reference
    runs on CPU); GPU NMS kernels, torchvision's and TF's, are other code.
    """
    thr = _nms_threshold(iou_threshold)
    out = tf.raw_ops.NonMaxSuppressionV4(
        boxes=boxes, scores=scores, max_output_size=max_output_size, iou_threshold=thr,
        score_threshold=np.float32(-np.inf), pad_to_max_output_size=pad_to)
    return out if pad_to else out[0]


def _offset_by_group(boxes, idxs, valid=None):
    """torchvision's coordinate trick, in its float32 arithmetic: ``boxes + idx * (max + 1)``.

    boxes (..., N, 4) float32, idxs (..., N), valid (..., N) bool -> (..., N, 4). ``max`` is the
    largest coordinate of the valid boxes of each row. Groups then lie in disjoint ranges, so
    one NMS over all boxes equals an NMS per group; the additions round the coordinates, which
    is exactly what torchvision's IoUs see.
    """
    if valid is None:
        valid = tf.ones(tf.shape(boxes)[:-1], tf.bool)
    neg_inf = tf.constant(-np.inf, tf.float32)
    hi = tf.reduce_max(tf.where(valid[..., None], boxes, neg_inf), axis=[-2, -1], keepdims=True)
    hi = tf.where(tf.math.is_finite(hi), hi, 0.0)  # a row with no valid box: offsets unused
    offsets = tf.cast(idxs, tf.float32)[..., None] * (hi + 1.0)  # (..., N, 1)
    return boxes + offsets


@tf.autograph.experimental.do_not_convert
def nms_coordinates(boxes, idxs, valid=None):
    """The coordinates torchvision's batched_nms hands to its NMS, per row of (..., N) boxes.

    boxes (..., N, 4) xyxy, idxs (..., N) int groups, valid (..., N) bool -> (..., N, 4)
    float32: the raw boxes where a row has more than TORCHVISION_TRICK_MAX_BOXES valid boxes
    (torchvision then runs one NMS per group on the raw coordinates), else the offset boxes of
    the coordinate trick. Either way an NMS of one group's boxes at these coordinates is
    torchvision's NMS of that group.
    """
    boxes = tf.cast(boxes, tf.float32)
    if valid is None:
        valid = tf.ones(tf.shape(boxes)[:-1], tf.bool)
    count = tf.reduce_sum(tf.cast(valid, tf.int32), axis=-1)[..., None, None]  # (..., 1, 1)
    return tf.where(count > TORCHVISION_TRICK_MAX_BOXES, boxes,
                    _offset_by_group(boxes, idxs, valid))


@tf.autograph.experimental.do_not_convert
def batched_nms(boxes, scores, idxs, iou_threshold: float, max_output_size=None):
    """torchvision.ops.batched_nms (what detectron2's batched_nms calls), bit for bit on CPU.

    boxes (N, 4) xyxy, scores (N,), idxs (N,) int -> keep (K,) int32 indices into the inputs,
    sorted by decreasing score (ties: lower index first), at most max_output_size (None: all).
    A box is suppressed by a higher-scoring box of its group whose IoU with it is
    > iou_threshold. As torchvision does on CPU: for N <= TORCHVISION_TRICK_MAX_BOXES one NMS
    over the offset boxes of the coordinate trick (whose float32 rounding decides near-ties),
    for more an NMS per group on the raw coordinates.
    """
    boxes = tf.cast(boxes, tf.float32)
    scores = tf.cast(scores, tf.float32)
    idxs = tf.cast(idxs, tf.int32)
    n = tf.shape(scores)[0]
    if max_output_size is None:
        max_output_size = n
    max_output_size = tf.cast(max_output_size, tf.int32)
    return tf.cond(
        n > TORCHVISION_TRICK_MAX_BOXES,
        lambda: _nms_per_group(boxes, scores, idxs, iou_threshold, max_output_size),
        lambda: _nms(_offset_by_group(boxes, idxs), scores, max_output_size, iou_threshold))


def _nms_per_group(boxes, scores, idxs, iou_threshold: float, max_output_size):
    # torchvision's _batched_nms_vanilla: (N, 4), (N,), (N,) -> keep (<= max_output_size,) int32
    order = tf.argsort(idxs, stable=True)  # (N,): each group contiguous, by increasing index
    sorted_ids = tf.gather(idxs, order)
    first = tf.concat([[True], tf.not_equal(sorted_ids[1:], sorted_ids[:-1])], 0)  # (N,)
    starts = tf.cast(tf.where(first)[:, 0], tf.int32)  # (G,) first position of every group
    ends = tf.concat([starts[1:], tf.shape(order)], 0)

    def body(g, kept):
        members = order[starts[g]:ends[g]]  # (Ng,) indices of group g
        # a group's survivors past the first max_output_size never reach the overall top
        sel = _nms(tf.gather(boxes, members), tf.gather(scores, members), max_output_size,
                   iou_threshold)
        return g + 1, kept.write(g, tf.gather(members, sel))

    kept = tf.TensorArray(tf.int32, size=tf.size(starts), infer_shape=False,
                          element_shape=tf.TensorShape([None]))
    _, kept = tf.while_loop(lambda g, _: g < tf.size(starts), body, (tf.constant(0), kept))
    kept = tf.sort(kept.concat())  # increasing index, as torchvision's where(keep_mask)
    order = tf.argsort(tf.gather(scores, kept), direction="DESCENDING", stable=True)
    return tf.gather(kept, order)[:max_output_size]


@tf.autograph.experimental.do_not_convert
def nms_rows(boxes, scores, valid, iou_threshold: float,
             max_output_size: int) -> Tuple[tf.Tensor, tf.Tensor]:
    """torchvision's nms on every row of a (R, N) batch, fixed-size output.

    boxes (R, N, 4) xyxy float32 (already through `nms_coordinates` where groups matter),
    scores (R, N), valid (R, N) bool (invalid boxes never suppress nor survive) ->
    keep (R, max_output_size) int32 indices sorted by decreasing score and keep_valid
    (R, max_output_size) bool; padded entries have index 0 and keep_valid False.
    """
    scores = tf.where(valid, tf.cast(scores, tf.float32), -np.inf)

    def one_row(args):
        keep, num = _nms(args[0], args[1], max_output_size, iou_threshold, pad_to=True)
        return keep, tf.range(max_output_size) < num

    return tf.map_fn(one_row, (tf.cast(boxes, tf.float32), scores),
                     fn_output_signature=(tf.TensorSpec([max_output_size], tf.int32),
                                          tf.TensorSpec([max_output_size], tf.bool)))


def smooth_l1_loss(diff, beta: float):
    """fvcore's smooth L1 of a difference, elementwise: 0.5 d^2 / beta below beta, |d| - beta/2
    above; plain |d| (detectron2's L1 box loss) when beta < 1e-5."""
    absdiff = tf.abs(diff)
    if beta < 1e-5:
        return absdiff
    return tf.where(absdiff < beta, 0.5 * tf.square(diff) / beta, absdiff - 0.5 * beta)
