"""detectron2's ResizeShortestEdge, for training and test time: the output shape and the pixels.

Shape (detectron2 ``ResizeShortestEdge.get_output_shape``)
----------------------------------------------------------
``scale = short / min(h, w)``; the short side goes to ``short``, the other to ``scale * side``;
if the long side then exceeds ``max_size`` both are rescaled by ``max_size / long side``; each
side is rounded as ``int(side + 0.5)``, all in Python floats (float64). ``short <= 0`` keeps the
size (detectron2 returns a NoOpTransform). `resize_shortest_edge_shape` (Python) and
`resize_shortest_edge_shape_tf` (graph) are the same rule, tested equal.

Pixels
------
uint8 images are resized with bilinear interpolation that antialiases when shrinking (PIL's
behaviour), which ``tf.image.resize(bilinear, antialias=True)`` followed by rounding reproduces
within one grey level (measured, see the conventions doc).
"""
from __future__ import annotations

from typing import Tuple

import tensorflow as tf

__all__ = ["resize_shortest_edge_shape", "resize_shortest_edge_shape_tf", "resize_image"]


def resize_shortest_edge_shape(h: int, w: int, short: int, max_size: int) -> Tuple[int, int]:
    """(new_h, new_w) of detectron2's ResizeShortestEdge for an (h, w) image."""
    h, w = int(h), int(w)
    if short <= 0:
        return h, w
    scale = float(short) / min(h, w)
    if h < w:
        newh, neww = float(short), scale * w
    else:
        newh, neww = scale * h, float(short)
    if max(newh, neww) > max_size:
        rescale = float(max_size) / max(newh, neww)
        newh, neww = newh * rescale, neww * rescale
    return int(newh + 0.5), int(neww + 0.5)


def resize_shortest_edge_shape_tf(height, width, short: int, max_size: int):
    """Graph form of `resize_shortest_edge_shape`: (new_h, new_w) int32 tensors.

    height, width: int tensors of any (equal) shape; short, max_size: Python ints.
    """
    height, width = tf.cast(height, tf.int32), tf.cast(width, tf.int32)
    if short <= 0:
        return height, width
    # float64, as detectron2 computes with Python floats: same rounding at .5 boundaries
    h, w = tf.cast(height, tf.float64), tf.cast(width, tf.float64)
    short_f = tf.constant(float(short), tf.float64)
    scale = short_f / tf.minimum(h, w)
    new_h = tf.where(h < w, short_f, scale * h)
    new_w = tf.where(h < w, scale * w, short_f)
    longest = tf.maximum(new_h, new_w)
    rescale = tf.where(longest > float(max_size), float(max_size) / longest,
                       tf.constant(1.0, tf.float64))
    new_h, new_w = new_h * rescale, new_w * rescale
    return (tf.cast(tf.floor(new_h + 0.5), tf.int32), tf.cast(tf.floor(new_w + 0.5), tf.int32))


def resize_image(image, new_h, new_w) -> tf.Tensor:
    """(H, W, 3) uint8 -> (new_h, new_w, 3) uint8, antialiased bilinear, rounded (PIL-like)."""
    out = tf.image.resize(tf.cast(image, tf.float32), tf.stack([new_h, new_w]),
                          method="bilinear", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(out), 0.0, 255.0), tf.uint8)
