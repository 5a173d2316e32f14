"""detectron2's balanced sampling (modeling/sampling.py), batched with fixed-size outputs.

`subsample_labels` draws positives and negatives from every row of a label tensor (anchors for
the RPN, proposals for the ROI heads). `sample_proposals` turns the ROI heads' draw into
`ROISamples`: S = BATCH_SIZE_PER_IMAGE slots per image, foreground first, then background,
then padding (valid False). Since subsample_labels caps the foreground at
F = int(S * POSITIVE_FRACTION), the first F slots hold every foreground ROI.

Entry points are ``do_not_convert`` (no Python decisions on tensor values; see box_ops).
"""
from __future__ import annotations

import contextlib
from typing import NamedTuple, Optional, Tuple

import numpy as np
import tensorflow as tf


@tf.autograph.experimental.do_not_convert
def subsample_labels(labels, num_samples: int, positive_fraction: float, bg_label: int,
                     seed: Optional[int] = None) -> Tuple[tf.Tensor, tf.Tensor]:
    """detectron2's balanced sampling of every row of labels (..., N) int32.

    Positives are labels not in {-1, bg_label}; negatives are labels == bg_label. Per row,
    ``num_pos = min(#pos, int(num_samples * positive_fraction))`` and
    ``num_neg = min(#neg, num_samples - num_pos)``, each chosen uniformly at random (the
    top-k of random keys). A given ``seed`` makes it deterministic (stateless RNG): every call
    then draws the same keys, which suits tests, not training (leave it None there). Without
    it the keys are those of the training step inside `training_draws`, else random.
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

    if seed is not None:
        keys = tf.random.stateless_uniform(tf.shape(flat), seed=[int(seed), 0])
    elif _ACTIVE:
        keys = _ACTIVE[-1].uniform(tf.shape(flat))
    else:
        keys = tf.random.uniform(tf.shape(flat))
    k = tf.minimum(num_samples, n)
    pos_mask = _take_random(positive, num_pos, keys, k)
    neg_mask = _take_random(negative, num_neg, keys, k)
    return tf.reshape(pos_mask, shape), tf.reshape(neg_mask, shape)


# ----------------------------------------------------------------------------- training draws
# Inside `training_draws` (the trainer's step) the keys come from one tf.random.Generator
# re-keyed for that step: key from (seed, rank), counter from the iteration. A step's draws are
# then a function of (seed, rank, iteration) alone, not of what this process drew before, so a
# run resumed from a checkpoint (which holds the seed and the iteration) samples exactly as the
# uninterrupted run, and each rank draws its own keys. Elsewhere ``tf.random.uniform`` is used.
_GENERATOR = []     # created once, outside any graph
_ACTIVE = []        # the generator while a `training_draws` block is traced or run


@contextlib.contextmanager
def training_draws(seed: int, rank: int, iteration):
    """Make the unseeded draws of the block those of training step ``iteration`` (an int or a
    scalar tensor) of rank ``rank``. Philox key: a hash of (seed, rank); 128-bit counter:
    (0, iteration), so the up to 2**64 draws of one step never reach the next step's."""
    if not _GENERATOR:
        with tf.init_scope():
            _GENERATOR.append(tf.random.Generator.from_seed(0))  # always re-keyed before use
    key = int(np.random.SeedSequence([int(seed), int(rank)]).generate_state(1, np.uint64)[0] >> 1)
    counter = tf.stack([tf.constant(0, tf.int64), tf.cast(iteration, tf.int64)])
    _GENERATOR[0].reset_from_key_counter(key, counter)
    _ACTIVE.append(_GENERATOR[0])
    try:
        yield
    finally:
        _ACTIVE.pop()


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


class ROISamples(NamedTuple):
    """Fixed-size per-image training samples of the ROI heads, (B, S, ...) each.

    Slots hold foreground, then background, then padding (see the module docstring).
    """
    boxes: tf.Tensor  # (B, S, 4) sampled boxes; padding rows hold any box, never used
    classes: tf.Tensor  # (B, S) int32: GT class of foreground, K for background and padding
    gt_boxes: tf.Tensor  # (B, S, 4) matched GT box (meaningful for foreground only)
    gt_indices: tf.Tensor  # (B, S) int32 index into G of the matched GT
    valid: tf.Tensor  # (B, S) bool: a sampled ROI (foreground or background)
    foreground: tf.Tensor  # (B, S) bool


@tf.autograph.experimental.do_not_convert
def sample_proposals(boxes, labels, matches, gt_boxes, num_samples: int,
                     positive_fraction: float, num_classes: int,
                     seed: Optional[int] = None) -> ROISamples:
    """detectron2's ROIHeads._sample_proposals, batched into S = num_samples slots per image.

    boxes (B, N, 4) candidates; labels (B, N) int32: class 0..K-1, K = num_classes for
    background, -1 never sampled; matches (B, N) int32 index into G of each candidate's GT;
    gt_boxes (B, G, 4) with G >= 1 (the caller pads one slot so every gather stays in range).
    """
    pos, neg = subsample_labels(labels, num_samples, positive_fraction, num_classes, seed=seed)
    s = num_samples
    # S extra padding candidates make the first S slots exist even with few proposals
    pad = [[0, 0], [0, s]]
    boxes = tf.pad(boxes, pad + [[0, 0]])
    labels = tf.pad(labels, pad, constant_values=-1)
    matches = tf.pad(matches, pad)
    pos, neg = tf.pad(pos, pad), tf.pad(neg, pad)
    rank = tf.where(pos, 0, tf.where(neg, 1, 2))  # (B, N + S)
    order = tf.argsort(rank, axis=1, stable=True)[:, :s]  # (B, S)
    fg = tf.gather(pos, order, batch_dims=1)
    sampled = fg | tf.gather(neg, order, batch_dims=1)
    classes = tf.where(sampled, tf.gather(labels, order, batch_dims=1), num_classes)
    gt_indices = tf.where(fg, tf.gather(matches, order, batch_dims=1), 0)
    return ROISamples(
        boxes=tf.gather(boxes, order, batch_dims=1),
        classes=classes,
        gt_boxes=tf.gather(gt_boxes, gt_indices, batch_dims=1),
        gt_indices=gt_indices,
        valid=sampled,
        foreground=fg)
