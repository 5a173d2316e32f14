"""Paste fixed-resolution mask probabilities into the image: detectron2's `paste_masks_in_image`.

Convention (detectron2 ``layers/mask_ops.py``, the "accurate" paste)
-------------------------------------------------------------------
A mask of M x M probabilities covers its box ``(x0, y0, x1, y1)`` in continuous image
coordinates. Image pixel ``(i, j)`` is sampled at its centre ``(j + 0.5, i + 0.5)``, whose
position in mask cells is::

    u = (j + 0.5 - x0) / (x1 - x0) * M - 0.5        (same for v with y, rows)

i.e. ``grid_sample(align_corners=False)`` of the box-relative grid normalised to [-1, 1].
The value is bilinear in the four neighbouring cells, a cell outside the mask contributing 0
(zero padding), and the pixel is foreground when ``value >= threshold``. Only the box's pixel
window is sampled (detectron2's ``floor(x0) - 1 .. ceil(x1) + 1``, clipped to the image,
`paste_windows`); every pixel outside it is background, whatever the threshold.

One implementation, in TF ops (eager, ``tf.function`` and SavedModel graphs alike)
---------------------------------------------------------------------------------
Bilinear sampling on a separable grid is separable: per mask, the two taps of each window
column are blended first (``(w, M)``), then the two taps of each window row (``(w, h)``), all in
float32 with that operation order (``a * wa + b * wb``, no matmul: BLAS or TensorFloat-32 would
round differently and move pixels across the threshold). One loop step per mask touches only its
window. The result comes in two layouts of the same pixels:

* `paste_masks_packed`: the windows and their pixels packed one after another, each window
  column-major (x outer, y inner); `unpack_masks` spreads them into a NumPy ``(R, H, W)`` bool
  array that is column-major per mask (what COCO's RLE encoder reads, so encoding needs no
  transpose) and costs nothing outside the windows. The Python test-time path uses these.
* `paste_masks_in_image`: the ``(R, H, W)`` bool tensor, for graphs that must return whole
  masks (the SavedModel).
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

__all__ = ["paste_windows", "paste_masks_packed", "unpack_masks", "paste_masks_in_image"]


def paste_windows(boxes, image_hw):
    """(R, 4) int32 x0, y0, x1, y1: the pixels a pasted mask may cover.

    detectron2's window ``floor(x0) - 1 .. ceil(x1) + 1`` clipped to the image; a box outside
    the image gets an empty window (x1 == x0 or y1 == y0).

    Args:
        boxes: (R, 4) float32 xyxy in image pixels.
        image_hw: (H, W) of the image.
    """
    boxes = tf.reshape(tf.convert_to_tensor(boxes, tf.float32), [-1, 4])
    image_hw = tf.cast(tf.convert_to_tensor(image_hw), tf.int32)
    size_xy = tf.stack([image_hw[1], image_hw[0]])                          # (2,) W, H
    lo = tf.clip_by_value(tf.cast(tf.floor(boxes[:, :2]), tf.int32) - 1, 0, size_xy)
    hi = tf.minimum(tf.cast(tf.math.ceil(boxes[:, 2:]), tf.int32) + 1, size_xy)
    return tf.concat([lo, tf.maximum(hi, lo)], axis=1)


def _axis_taps(start, end, first_pixel, num_pixels, mask_size):
    """1-D bilinear taps of the pixels ``first_pixel .. first_pixel + num_pixels - 1``.

    Args:
        start, end: float32 scalars, the box extent along this axis (x0, x1 or y0, y1).
        first_pixel, num_pixels: int32 scalars; mask_size: int32 scalar, M.
    Returns:
        (low, high) (L,) int32 mask cells clipped into [0, M), (w_low, w_high) (L,) float32
        weights, 0 for a cell outside the mask (zero padding).
    """
    centres = tf.cast(first_pixel + tf.range(num_pixels), tf.float32) + 0.5
    # detectron2 builds the [-1, 1] grid first and grid_sample un-normalises it; keep that
    # float32 order so that ties at the threshold fall the same way.
    grid = (centres - start) / (end - start) * 2.0 - 1.0
    pos = ((grid + 1.0) * tf.cast(mask_size, tf.float32) - 1.0) / 2.0
    low_f = tf.floor(pos)
    frac = pos - low_f                                  # weight of the upper neighbour
    low = tf.cast(low_f, tf.int32)
    high = low + 1
    w_low = tf.where((low >= 0) & (low < mask_size), 1.0 - frac, 0.0)
    w_high = tf.where((high >= 0) & (high < mask_size), frac, 0.0)
    return (tf.clip_by_value(low, 0, mask_size - 1), tf.clip_by_value(high, 0, mask_size - 1),
            w_low, w_high)


def _paste_window(mask, box, window, threshold):
    """One mask over its window: (w, h) bool, [x, y] (column-major for the window).

    Args:
        mask: (M, M) float32 [y, x]; box: (4,) float32; window: (4,) int32; threshold: scalar.
    """
    mask_size = tf.shape(mask)[0]
    width, height = window[2] - window[0], window[3] - window[1]
    xlo, xhi, wxlo, wxhi = _axis_taps(box[0], box[2], window[0], width, mask_size)   # (w,)
    ylo, yhi, wylo, wyhi = _axis_taps(box[1], box[3], window[1], height, mask_size)  # (h,)
    # gathers of whole rows (fast copies), transposes in between
    cols = (tf.gather(tf.transpose(mask), xlo) * wxlo[:, None]
            + tf.gather(tf.transpose(mask), xhi) * wxhi[:, None])                 # (w, M) [x, y]
    cols_t = tf.transpose(cols)                                                   # (M, w) [y, x]
    window = (tf.gather(cols_t, ylo) * wylo[:, None]
              + tf.gather(cols_t, yhi) * wyhi[:, None])                           # (h, w) [y, x]
    return tf.transpose(window >= threshold)                                      # (w, h) [x, y]


def _inputs(masks, boxes, image_hw, threshold):
    masks = tf.convert_to_tensor(masks, tf.float32)
    boxes = tf.reshape(tf.convert_to_tensor(boxes, tf.float32), [-1, 4])
    windows = paste_windows(boxes, image_hw)
    return masks, boxes, windows, tf.convert_to_tensor(threshold, tf.float32)


def paste_masks_packed(masks, boxes, image_hw, threshold=0.5):
    """Paste R masks, keeping only their windows.

    Args:
        masks: (R, M, M) float mask probabilities.
        boxes: (R, 4) xyxy in image pixels (positive width and height).
        image_hw: (H, W) of the image.
        threshold: foreground when the sampled probability >= threshold.
    Returns:
        windows (R, 4) int32 (`paste_windows`) and packed (P,) bool: the pixels of window 0,
        then window 1, ..., each column-major (x outer, y inner), P = sum of the window areas.
    """
    masks, boxes, windows, threshold = _inputs(masks, boxes, image_hw, threshold)
    packed = tf.map_fn(
        lambda args: tf.reshape(_paste_window(*args, threshold), [-1]), (masks, boxes, windows),
        fn_output_signature=tf.RaggedTensorSpec([None], tf.bool, ragged_rank=0))
    return windows, packed.flat_values


def unpack_masks(windows, packed, image_hw) -> np.ndarray:
    """`paste_masks_packed`'s output -> (R, H, W) bool NumPy masks, column-major per mask.

    The array is the transposed view of an (R, W, H) one; np.zeros leaves the pages outside the
    windows untouched, so this costs about the windows' pixels.
    """
    windows = np.asarray(windows).reshape(-1, 4)
    packed = np.asarray(packed)
    height, width = int(image_hw[0]), int(image_hw[1])
    out_t = np.zeros((len(windows), width, height), bool)
    start = 0
    for r, (x0, y0, x1, y1) in enumerate(windows.tolist()):
        size = (x1 - x0) * (y1 - y0)
        out_t[r, x0:x1, y0:y1] = packed[start:start + size].reshape(x1 - x0, y1 - y0)
        start += size
    return out_t.transpose(0, 2, 1)


def paste_masks_in_image(masks, boxes, image_hw, threshold=0.5):
    """Paste R masks into (R, H, W) bool tensors (graph-compatible; same pixels as packed).

    Args: as `paste_masks_packed`.
    """
    masks, boxes, windows, threshold = _inputs(masks, boxes, image_hw, threshold)
    image_hw = tf.cast(tf.convert_to_tensor(image_hw), tf.int32)

    def whole(args):
        window = args[2]
        padding = [[window[0], image_hw[1] - window[2]], [window[1], image_hw[0] - window[3]]]
        return tf.transpose(tf.pad(_paste_window(*args, threshold), padding))       # (H, W)

    def paste_all():
        return tf.map_fn(whole, (masks, boxes, windows),
                         fn_output_signature=tf.TensorSpec([None, None], tf.bool))

    # map_fn cannot stack zero elements of an unknown shape
    return tf.cond(tf.shape(masks)[0] > 0, paste_all,
                   lambda: tf.zeros([0, image_hw[0], image_hw[1]], tf.bool))
