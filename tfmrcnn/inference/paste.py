"""Paste fixed-resolution mask probabilities into the image: detectron2's `paste_masks_in_image`.

Convention (detectron2 ``layers/mask_ops.py``, the "accurate" paste)
-------------------------------------------------------------------
A mask of M x M probabilities covers its box ``(x0, y0, x1, y1)`` in continuous image
coordinates. Image pixel ``(i, j)`` is sampled at its centre ``(j + 0.5, i + 0.5)``, whose
position in mask cells is::

    u = (j + 0.5 - x0) / (x1 - x0) * M - 0.5        (same for v with y, rows)

i.e. ``grid_sample(align_corners=False)`` of the box-relative grid normalised to [-1, 1].
The value is bilinear in the four neighbouring cells, a cell outside the mask contributing 0
(zero padding), and the pixel is foreground when ``value >= threshold``.

Bilinear sampling on a separable grid is separable: the pasted probabilities of one mask are
``Wy @ mask @ Wx.T`` where ``Wy`` (H, M) and ``Wx`` (W, M) hold the 1-D interpolation weights
of each pixel row / column (at most two non-zero entries per row). The NumPy version applies the
two taps per row with gathers, only over each box's pixel window (detectron2's window
``floor(x0) - 1 .. ceil(x1) + 1``: pixels beyond it sample zero padding only); the TF version
does the same with batched gathers over the whole image.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

__all__ = ["paste_masks_in_image", "paste_masks_in_image_tf", "paste_windows", "axis_taps"]


def axis_taps(start, end, first_pixel, num_pixels, mask_size):
    """1-D bilinear taps of the pixel windows of R boxes along one axis.

    Args:
        start, end: (R,) float, the box extents along this axis (x0, x1 or y0, y1).
        first_pixel: (R,) int, first pixel of each window; num_pixels: int, window length L
            (the longest window; shorter windows just ignore their tail).
        mask_size: int, M.
    Returns:
        (low, high, w_low, w_high), each (R, L): the two mask cells each pixel reads (clipped
        into [0, M)) and their float32 weights (0 for a cell outside the mask: zero padding).
    """
    start = np.asarray(start, np.float32)[:, None]
    end = np.asarray(end, np.float32)[:, None]
    pixels = np.asarray(first_pixel)[:, None] + np.arange(num_pixels)              # (R, L)
    centres = pixels.astype(np.float32) + np.float32(0.5)
    # detectron2 builds the [-1, 1] grid first and grid_sample un-normalises it; keep that
    # float32 order so ties at the threshold fall the same way.
    grid = (centres - start) / (end - start) * np.float32(2) - np.float32(1)
    pos = ((grid + np.float32(1)) * np.float32(mask_size) - np.float32(1)) / np.float32(2)
    low_f = np.floor(pos)
    frac = pos - low_f                                  # weight of the upper neighbour
    low = low_f.astype(np.int64)
    high = low + 1
    w_low = np.where((low >= 0) & (low < mask_size), np.float32(1) - frac, np.float32(0))
    w_high = np.where((high >= 0) & (high < mask_size), frac, np.float32(0))
    return (np.clip(low, 0, mask_size - 1), np.clip(high, 0, mask_size - 1),
            w_low.astype(np.float32), w_high.astype(np.float32))


def paste_windows(boxes, image_shape):
    """(R, 4) int x0, y0, x1, y1: the pixels a pasted mask may cover (detectron2's window
    floor(x0) - 1 .. ceil(x1) + 1, clipped to the image); pixels beyond it are always False.

    An empty window (x1 <= x0 or y1 <= y0) means the box is outside the image.
    """
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    image_h, image_w = int(image_shape[0]), int(image_shape[1])
    lo = np.maximum(np.floor(boxes[:, :2]).astype(np.int64) - 1, 0)
    hi = np.minimum(np.ceil(boxes[:, 2:]).astype(np.int64) + 1, [image_w, image_h])
    return np.concatenate([lo, hi], axis=1)


def paste_masks_in_image(masks, boxes, image_shape, threshold=0.5):
    """NumPy paste of R masks into an (H, W) image (see the module docstring for the convention).

    Args:
        masks: (R, M, M) float mask probabilities.
        boxes: (R, 4) xyxy in output-image pixels; boxes must have positive width and height.
        image_shape: (H, W) of the output image.
        threshold: foreground when the sampled probability >= threshold.
    Returns:
        (R, H, W) bool, column-major within each mask (a transposed view of an (R, W, H) array).
    """
    masks = np.asarray(masks, np.float32)
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    image_h, image_w = int(image_shape[0]), int(image_shape[1])
    assert masks.ndim == 3 and masks.shape[1] == masks.shape[2], masks.shape
    assert len(masks) == len(boxes), (masks.shape, boxes.shape)
    mask_size = masks.shape[1]
    # Filled as (R, W, H) and returned as its (R, H, W) transposed view: each mask is then
    # column-major, the order COCO's RLE encoder reads, so encoding needs no 100 MB transpose.
    out_t = np.zeros((len(masks), image_w, image_h), bool)
    if len(masks) == 0:
        return out_t.transpose(0, 2, 1)
    windows = paste_windows(boxes, (image_h, image_w))                   # (R, 4) x0 y0 x1 y1
    sizes = np.maximum(windows[:, 2:] - windows[:, :2], 0)               # (R, 2) w, h
    xlo, xhi, wxlo, wxhi = axis_taps(boxes[:, 0], boxes[:, 2], windows[:, 0],
                                     int(sizes[:, 0].max()), mask_size)  # each (R, Wmax)
    ylo, yhi, wylo, wyhi = axis_taps(boxes[:, 1], boxes[:, 3], windows[:, 1],
                                     int(sizes[:, 1].max()), mask_size)  # each (R, Hmax)
    for r in range(len(masks)):
        (x0, y0, _, _), (w, h) = windows[r], sizes[r]
        if w == 0 or h == 0:
            continue                                     # box entirely outside the image
        # (Wy @ mask @ Wx.T).T with two taps per pixel row and column: gathers, not BLAS,
        # whose threads make these small products ten times slower on a loaded machine
        mask_t = masks[r].T                                                       # (M, M) [x, y]
        cols = (mask_t.take(xlo[r, :w], axis=0) * wxlo[r, :w, None]
                + mask_t.take(xhi[r, :w], axis=0) * wxhi[r, :w, None])           # (w, M)
        window_t = (cols.take(ylo[r, :h], axis=1) * wylo[r, :h]
                    + cols.take(yhi[r, :h], axis=1) * wyhi[r, :h])               # (w, h)
        out_t[r, x0:x0 + w, y0:y0 + h] = window_t >= threshold
    return out_t.transpose(0, 2, 1)


def _axis_taps_tf(start, end, num_pixels, mask_size):
    """TF `axis_taps` over a whole image side, batched over boxes.

    Args:
        start, end: (R,) float32 box extent along the axis.
        num_pixels: scalar int32 tensor, image size along the axis.
        mask_size: int, M.
    Returns:
        (low, high) (R, P) int32 cells clipped into [0, M), (w_low, w_high) (R, P) float32
        weights, 0 for a cell outside the mask (zero padding).
    """
    centres = tf.cast(tf.range(num_pixels), tf.float32) + 0.5          # (P,)
    grid = (centres[None, :] - start[:, None]) / (end - start)[:, None] * 2.0 - 1.0
    pos = ((grid + 1.0) * float(mask_size) - 1.0) / 2.0                 # (R, P) in mask cells
    low_f = tf.floor(pos)
    frac = pos - low_f
    low = tf.cast(low_f, tf.int32)
    high = low + 1
    w_low = tf.where((low >= 0) & (low < mask_size), 1.0 - frac, 0.0)
    w_high = tf.where((high >= 0) & (high < mask_size), frac, 0.0)
    return (tf.clip_by_value(low, 0, mask_size - 1), tf.clip_by_value(high, 0, mask_size - 1),
            w_low, w_high)


def paste_masks_in_image_tf(masks, boxes, image_shape, threshold=0.5):
    """Graph-mode paste (same convention as `paste_masks_in_image`), usable in a SavedModel.

    Samples every mask over the whole image with two gathers per axis (no data-dependent
    shapes). Gathers and element-wise float32 arithmetic rather than ``Wy @ mask @ Wx.T``
    matmuls: GPUs would run those in TensorFloat-32 by default, and the lost mantissa bits
    move pixels across the threshold.

    Args:
        masks: (R, M, M) float mask probabilities, M static.
        boxes: (R, 4) xyxy in output-image pixels.
        image_shape: (2,) int tensor or pair (H, W).
        threshold: python float.
    Returns:
        (R, H, W) bool tensor.
    """
    masks = tf.convert_to_tensor(masks, tf.float32)
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    image_shape = tf.cast(tf.convert_to_tensor(image_shape), tf.int32)
    mask_size = masks.shape[-1]
    x0, y0, x1, y1 = tf.unstack(boxes, 4, axis=1)                       # each (R,)
    ylo, yhi, wylo, wyhi = _axis_taps_tf(y0, y1, image_shape[0], mask_size)   # each (R, H)
    xlo, xhi, wxlo, wxhi = _axis_taps_tf(x0, x1, image_shape[1], mask_size)   # each (R, W)
    rows = (tf.gather(masks, ylo, axis=1, batch_dims=1) * wylo[:, :, None]
            + tf.gather(masks, yhi, axis=1, batch_dims=1) * wyhi[:, :, None])   # (R, H, M)
    probs = (tf.gather(rows, xlo, axis=2, batch_dims=1) * wxlo[:, None, :]
             + tf.gather(rows, xhi, axis=2, batch_dims=1) * wxhi[:, None, :])   # (R, H, W)
    return probs >= threshold
