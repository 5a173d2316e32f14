"""detectron2's ResizeShortestEdge, for training and test time: the output shape and the pixels.

Shape (detectron2 ``ResizeShortestEdge.get_output_shape``)
----------------------------------------------------------
``scale = short / min(h, w)``; the short side goes to ``short``, the other to ``scale * side``;
if the long side then exceeds ``max_size`` both are rescaled by ``max_size / long side``; each
side is rounded as ``int(side + 0.5)``, all in Python floats (float64). ``short <= 0`` keeps the
size (detectron2 returns a NoOpTransform). `resize_shortest_edge_shape` (Python) and
`resize_shortest_edge_shape_tf` (graph) are the same rule, tested equal.

Pixels (detectron2 ``ResizeTransform.apply_image`` / ``apply_segmentation``)
------------------------------------------------------------------------------
detectron2 resizes a uint8 image with ``PIL.Image.fromarray(img).resize((new_w, new_h),
Image.BILINEAR)`` (a single channel as mode "L"), and a segmentation bitmask with
``Image.NEAREST``. `resize_image` and `resize_mask` call Pillow exactly so (training, predict,
eval). `resize_image_tf` is Pillow's bilinear resample written in TF ops for graphs (the
SavedModel), equal to Pillow bit for bit (tests/data/test_resize.py), as in Pillow's
``libImaging/Resample.c``:

* Two separable passes, horizontal first, each skipped when that side keeps its size; the
  horizontal pass writes uint8 (rounded and clipped) that the vertical pass reads.
* Per output pixel ``i`` of an axis of ``n_in -> n_out`` pixels, in float64 (C doubles):
  ``scale = n_in / n_out``, ``filterscale = max(scale, 1)`` (antialiasing when shrinking),
  ``support = filterscale``, ``center = (i + 0.5) * scale``, input pixels
  ``xmin = int(center - support + 0.5)`` (>= 0) to ``int(center + support + 0.5)`` (<= n_in,
  exclusive), weights ``max(0, 1 - |(x - center + 0.5) / filterscale|)`` (the bilinear
  triangle, computed as ``* (1 / filterscale)``), normalised by their sum added left to right.
* Fixed point: each weight becomes ``int(0.5 + w * 2**22)``; a pixel is
  ``clip((2**21 + sum(pixel * weight)) >> 22, 0, 255)`` in int32 (exact).
Pillow versions: detectron2 0.5 passes ``Image.LINEAR`` as a default argument, which Pillow 10
removed, so its users run Pillow 9.x. Pillow 9.5, 10.4, 11.x and 12.0-12.1 give identical output
(1500 random cases, extreme aspect ratios included); Pillow 12.2 and later sometimes run the
vertical pass first and then differ by one grey level (35 of those 1500 cases; 13.0 in about
13 % of all cases). `resize_image_tf` follows Pillow 9.5 and requirements pin Pillow 12.1.1.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
import tensorflow as tf
from PIL import Image

__all__ = ["resize_shortest_edge_shape", "resize_shortest_edge_shape_tf", "resize_image",
           "resize_image_tf", "resize_mask"]

_PRECISION_BITS = 32 - 8 - 2      # Pillow's fixed point for 8-bit channels


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


def _pil_image(array: np.ndarray) -> Image.Image:
    """(H, W) or (H, W, 1) uint8 as mode "L" (detectron2's way), (H, W, 3) as "RGB"."""
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise TypeError(f"Pillow's resize needs a uint8 image, got {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    return Image.fromarray(array)


def _resize_with(array, new_h: int, new_w: int, method) -> np.ndarray:
    out = np.asarray(_pil_image(array).resize((int(new_w), int(new_h)), method))
    return out.reshape(int(new_h), int(new_w), *np.shape(array)[2:])


def resize_image(image, new_h: int, new_w: int) -> np.ndarray:
    """(H, W[, C]) uint8 -> (new_h, new_w[, C]) uint8 with Pillow's BILINEAR (detectron2's)."""
    return _resize_with(image, new_h, new_w, Image.Resampling.BILINEAR)


def resize_mask(mask, new_h: int, new_w: int) -> np.ndarray:
    """(H, W) uint8 bitmask -> (new_h, new_w) uint8 with Pillow's NEAREST (detectron2's)."""
    return _resize_with(mask, new_h, new_w, Image.Resampling.NEAREST)


def _bilinear_coefficients(in_size, out_size):
    """Pillow's ``precompute_coeffs`` + ``normalize_coeffs_8bpc`` (bilinear) for one axis.

    Args:
        in_size, out_size: int32 scalars.
    Returns:
        first (out,) int32, the first input pixel of each output pixel, and weights (out, K)
        int32 fixed point for input pixels first .. first + K - 1 (0 past each pixel's own
        count); K = 2 * ceil(support) + 1.
    """
    scale = tf.cast(in_size, tf.float64) / tf.cast(out_size, tf.float64)
    filterscale = tf.maximum(scale, 1.0)
    support = filterscale * 1.0                             # the bilinear filter's support is 1
    num_taps = tf.cast(tf.math.ceil(support), tf.int32) * 2 + 1
    center = (tf.cast(tf.range(out_size), tf.float64) + 0.5) * scale               # (out,)
    # C's (int) cast truncates towards zero, as tf.cast does
    first = tf.maximum(tf.cast(center - support + 0.5, tf.int32), 0)
    count = tf.minimum(tf.cast(center + support + 0.5, tf.int32), in_size) - first
    taps = tf.range(num_taps)                                                       # (K,)
    x = (tf.cast(first[:, None] + taps[None, :], tf.float64) - center[:, None] + 0.5) \
        * (1.0 / filterscale)                                                       # (out, K)
    weights = tf.where(taps[None, :] < count[:, None],
                       tf.maximum(1.0 - tf.abs(x), 0.0), tf.constant(0.0, tf.float64))
    # Pillow adds the weights left to right: the same order keeps the same rounding
    total = tf.foldl(lambda acc, column: acc + column, tf.transpose(weights),
                     initializer=tf.zeros_like(center))                             # (out,)
    weights = tf.where(total[:, None] != 0.0, weights / total[:, None], weights)
    # weights are >= 0 for the bilinear filter: Pillow's (int)(0.5 + w * 2**22)
    fixed = tf.cast(0.5 + weights * float(1 << _PRECISION_BITS), tf.int32)
    return first, fixed


def _resample_rows(image, out_size):
    """One Pillow pass along axis 0: (n, ...) uint8 -> (out_size, ...) uint8."""
    in_size = tf.shape(image)[0]
    first, fixed = _bilinear_coefficients(in_size, out_size)
    pixels = tf.cast(image, tf.int32)
    broadcast = tf.concat([[out_size], tf.ones([tf.rank(image) - 1], tf.int32)], 0)
    acc = tf.fill(tf.concat([[out_size], tf.shape(image)[1:]], 0), 1 << (_PRECISION_BITS - 1))
    for_each_tap = tf.range(tf.shape(fixed)[1])

    def add_tap(acc, k):
        rows = tf.gather(pixels, tf.minimum(first + k, in_size - 1))          # whole rows
        return acc + rows * tf.reshape(fixed[:, k], broadcast)

    acc = tf.foldl(add_tap, for_each_tap, initializer=acc)   # int32: exact in any order
    return tf.cast(tf.clip_by_value(tf.bitwise.right_shift(acc, _PRECISION_BITS), 0, 255),
                   tf.uint8)


def resize_image_tf(image, new_h, new_w) -> tf.Tensor:
    """Pillow's BILINEAR resize in TF ops (module docstring), equal to `resize_image`.

    Args:
        image: (H, W, C) uint8 tensor, C = 1 or 3 (Pillow's modes "L" and "RGB").
        new_h, new_w: int32 scalars.
    Returns:
        (new_h, new_w, C) uint8.
    """
    image = tf.convert_to_tensor(image, tf.uint8)
    new_h, new_w = tf.cast(new_h, tf.int32), tf.cast(new_w, tf.int32)
    shape = tf.shape(image)

    def horizontal():                   # along W: rows of the transposed (W, H, C) image
        return tf.transpose(_resample_rows(tf.transpose(image, [1, 0, 2]), new_w), [1, 0, 2])

    image = tf.cond(tf.equal(new_w, shape[1]), lambda: image, horizontal)
    return tf.cond(tf.equal(new_h, shape[0]), lambda: image,
                   lambda: _resample_rows(image, new_h))
