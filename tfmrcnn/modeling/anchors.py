"""detectron2's DefaultAnchorGenerator.

Convention owned here
---------------------
Cell anchors of a level: for every size s (outer loop) and aspect ratio r = h / w (inner loop),
``w = sqrt(s^2 / r)``, ``h = r * w``, a box ``(-w/2, -h/2, w/2, h/2)`` centred at the origin.
The anchors of a level with feature map (H, W) and stride t are the cell anchors shifted by
``(x * t + offset * t, y * t + offset * t)`` for every cell, flattened in order (y, x, anchor):
the same order as the RPN head's flattened outputs.

Entry points are ``do_not_convert`` (no Python decisions on tensor values; see box_ops).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import List

import numpy as np
import tensorflow as tf


def _per_level(params, num_levels: int, what: str) -> list:
    """detectron2's broadcasting: a flat list applies to every level, one inner list is repeated."""
    if not isinstance(params[0], Sequence):
        return [list(params)] * num_levels
    if len(params) == 1:
        return [list(params[0])] * num_levels
    if len(params) != num_levels:
        raise ValueError(f"{what}: {len(params)} lists for {num_levels} levels")
    return [list(p) for p in params]


def generate_cell_anchors(sizes, aspect_ratios) -> np.ndarray:
    """(len(sizes) * len(aspect_ratios), 4) float32 xyxy anchors centred at (0, 0)."""
    out = []
    for size in sizes:
        area = float(size) ** 2
        for ratio in aspect_ratios:
            w = math.sqrt(area / ratio)
            h = ratio * w
            out.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
    return np.asarray(out, dtype=np.float32).reshape(-1, 4)


class DefaultAnchorGenerator:
    """Anchors for every level of a feature pyramid (see the module docstring for the layout)."""

    def __init__(self, sizes, aspect_ratios, strides: Sequence[int], offset: float = 0.0):
        if not 0.0 <= offset < 1.0:
            raise ValueError(f"offset must be in [0, 1), got {offset}")
        self.strides = [int(s) for s in strides]
        self.offset = float(offset)
        n = len(self.strides)
        sizes = _per_level(sizes, n, "sizes")
        ratios = _per_level(aspect_ratios, n, "aspect_ratios")
        self.cell_anchors: List[np.ndarray] = [generate_cell_anchors(s, r)
                                               for s, r in zip(sizes, ratios)]

    @property
    def num_anchors(self) -> List[int]:
        # anchors per spatial position, per level
        return [len(c) for c in self.cell_anchors]

    def grid_anchors(self, height, width, level: int):
        """(H * W * A, 4) float32 xyxy anchors of one level; height/width ints or scalar tensors."""
        stride = float(self.strides[level])
        shift_x = tf.range(width, dtype=tf.float32) * stride + self.offset * stride  # (W,)
        shift_y = tf.range(height, dtype=tf.float32) * stride + self.offset * stride  # (H,)
        sy, sx = tf.meshgrid(shift_y, shift_x, indexing="ij")  # (H, W)
        sx, sy = tf.reshape(sx, [-1]), tf.reshape(sy, [-1])
        shifts = tf.stack([sx, sy, sx, sy], axis=1)  # (H*W, 4)
        cell = tf.constant(self.cell_anchors[level])  # (A, 4)
        return tf.reshape(shifts[:, None, :] + cell[None, :, :], [-1, 4])

    @tf.autograph.experimental.do_not_convert
    def __call__(self, feature_shapes) -> List[tf.Tensor]:
        """feature_shapes: per level (H, W) -> per level (H * W * A, 4) anchors."""
        if len(feature_shapes) != len(self.strides):
            raise ValueError(f"{len(feature_shapes)} feature maps for {len(self.strides)} strides")
        return [self.grid_anchors(h, w, i) for i, (h, w) in enumerate(feature_shapes)]
