"""detectron2's Matcher, vectorised over leading dims (the sampling lives in sampling.py).

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
