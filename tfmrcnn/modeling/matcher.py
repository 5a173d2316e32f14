"""detectron2's Matcher and balanced positive/negative sampling, vectorised over leading dims.

Convention owned here
---------------------
A match-quality matrix is (..., G, N): G ground-truth rows, N prediction (anchor/proposal)
columns, higher = better (IoU). Each prediction gets the index of its best ground truth and a
label from the threshold intervals: with thresholds [t1, ..., tk] and labels [l0, ..., lk],
quality q gets li when t_i <= q < t_{i+1} (t0 = -inf, t_{k+1} = +inf). Labels are -1 (ignore),
0 (negative) or 1 (positive). Padded ground-truth rows (``gt_valid`` False) never match.

Entry points are ``do_not_convert`` (no Python decisions on tensor values; see box_ops).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import tensorflow as tf


class Matcher:
    """Assigns every prediction to its best ground truth and labels it by quality thresholds.

    With ``allow_low_quality_matches``, for every (valid) ground truth each prediction whose
    quality equals that ground truth's best quality is labelled 1, ties included and even when
    the best quality is below every threshold (detectron2's behaviour; Faster R-CNN's rule that
    every ground truth gets at least one anchor). Its ``matches`` stay the argmax over ground
    truths. With no valid ground truth, matches are 0 and labels are labels[0].
    """

    def __init__(self, thresholds: Sequence[float], labels: Sequence[int],
                 allow_low_quality_matches: bool = False):
        thresholds = [float(t) for t in thresholds]
        if any(a > b for a, b in zip(thresholds[:-1], thresholds[1:])):
            raise ValueError(f"thresholds must be sorted: {thresholds}")
        if len(labels) != len(thresholds) + 1:
            raise ValueError("need one more label than thresholds")
        if any(l not in (-1, 0, 1) for l in labels):
            raise ValueError(f"labels must be in {{-1, 0, 1}}: {labels}")
        self.thresholds = thresholds
        self.labels = [int(l) for l in labels]
        self.allow_low_quality_matches = allow_low_quality_matches

    @tf.autograph.experimental.do_not_convert
    def __call__(self, match_quality_matrix, gt_valid: Optional[tf.Tensor] = None
                 ) -> Tuple[tf.Tensor, tf.Tensor]:
        """(..., G, N) quality, optional (..., G) bool -> matches, labels: (..., N) int32."""
        q = tf.cast(match_quality_matrix, tf.float32)
        if gt_valid is None:
            gt_valid = tf.ones(tf.shape(q)[:-1], tf.bool)
        # Padded rows get quality -1 (below any IoU) so they can't win the argmax when a real
        # row exists. One extra -1 row at the end makes G = 0 well defined; argmax prefers the
        # first maximum, so with no valid row at all the match is row 0.
        q = tf.where(gt_valid[..., None], q, -1.0)
        pad = tf.fill(tf.concat([tf.shape(q)[:-2], [1], tf.shape(q)[-1:]], axis=0), -1.0)
        q_padded = tf.concat([q, pad], axis=-2)  # (..., G+1, N)
        matched_vals = tf.reduce_max(q_padded, axis=-2)  # (..., N)
        matches = tf.cast(tf.argmax(q_padded, axis=-2, output_type=tf.int32), tf.int32)
        any_valid = tf.reduce_any(gt_valid, axis=-1, keepdims=True)  # (..., 1)
        matches = tf.where(any_valid, matches, 0)

        bounds = [float("-inf")] + self.thresholds + [float("inf")]
        match_labels = tf.zeros(tf.shape(matches), tf.int32)
        for label, low, high in zip(self.labels, bounds[:-1], bounds[1:]):
            in_range = tf.logical_and(matched_vals >= low, matched_vals < high)
            match_labels = tf.where(in_range, label, match_labels)
        # the whole row is invalid -> labels[0] (matched_vals -1 already falls in the first bin)
        match_labels = tf.where(any_valid, match_labels, self.labels[0])

        if self.allow_low_quality_matches:
            best_per_gt = tf.reduce_max(q, axis=-1, keepdims=True)  # (..., G, 1)
            is_best = tf.logical_and(tf.equal(q, best_per_gt), gt_valid[..., None])
            match_labels = tf.where(tf.reduce_any(is_best, axis=-2), 1, match_labels)
        return matches, match_labels


@tf.autograph.experimental.do_not_convert
def subsample_labels(labels, num_samples: int, positive_fraction: float, bg_label: int,
                     seed: Optional[int] = None) -> Tuple[tf.Tensor, tf.Tensor]:
    """detectron2's balanced sampling of every row of labels (..., N) int32.

    Positives are labels not in {-1, bg_label}; negatives are labels == bg_label. Per row,
    ``num_pos = min(#pos, int(num_samples * positive_fraction))`` and
    ``num_neg = min(#neg, num_samples - num_pos)``, each chosen uniformly at random (the
    top-k of random keys). A given ``seed`` makes it deterministic (stateless RNG): every call
    then draws the same keys, which suits tests, not training (leave it None there).
    Returns (pos_mask, neg_mask), bool, same shape as labels, disjoint.
    """
    labels = tf.convert_to_tensor(labels)
    shape = tf.shape(labels)
    n = shape[-1]
    flat = tf.reshape(labels, [-1, n])  # (R, N)
    positive = tf.logical_and(tf.not_equal(flat, -1), tf.not_equal(flat, bg_label))
    negative = tf.equal(flat, bg_label)

    max_pos = int(num_samples * positive_fraction)
    num_pos = tf.minimum(_count(positive), max_pos)  # (R,)
    num_neg = tf.minimum(_count(negative), num_samples - num_pos)

    if seed is None:
        keys = tf.random.uniform(tf.shape(flat))
    else:
        keys = tf.random.stateless_uniform(tf.shape(flat), seed=[int(seed), 0])
    k = tf.minimum(num_samples, n)
    pos_mask = _take_random(positive, num_pos, keys, k)
    neg_mask = _take_random(negative, num_neg, keys, k)
    return tf.reshape(pos_mask, shape), tf.reshape(neg_mask, shape)


def _count(mask):
    # (R, N) bool -> (R,) int32
    return tf.reduce_sum(tf.cast(mask, tf.int32), axis=-1)


def _take_random(candidates, count, keys, k):
    """Mark `count` (R,) entries of each row of `candidates` (R, N): those with the largest keys.

    k >= max(count) bounds the top-k; keys are in [0, 1) so non-candidates (-1) come last.
    """
    masked = tf.where(candidates, keys, -1.0)
    _, idx = tf.math.top_k(masked, k=k)  # (R, k) distinct columns per row
    take = tf.range(k)[None, :] < count[:, None]  # (R, k)
    rows = tf.broadcast_to(tf.range(tf.shape(idx)[0])[:, None], tf.shape(idx))
    hits = tf.scatter_nd(tf.stack([rows, idx], axis=-1), tf.cast(take, tf.int32),
                         tf.shape(candidates))
    return hits > 0
