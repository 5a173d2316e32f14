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
of each pixel row / column (at most two non-zero entries per row). Both implementations here use
that form; the NumPy one evaluates it only over each box's pixel window.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

__all__ = ["paste_masks_in_image", "paste_masks_in_image_tf", "interpolation_weights"]


def interpolation_weights(start, end, first_pixel, num_pixels, mask_size):
    """1-D bilinear weights of pixels ``first_pixel .. first_pixel + num_pixels - 1`` on a box side.

    Args:
        start, end: float, the box extent along this axis (x0, x1 or y0, y1).
        first_pixel, num_pixels: int, the pixel window.
        mask_size: int, M.
    Returns:
        (num_pixels, M) float32; row p holds the weights of the mask cells for pixel p.
    """
    start, end = np.float32(start), np.float32(end)
    centres = np.arange(first_pixel, first_pixel + num_pixels, dtype=np.float32) + np.float32(0.5)
    # detectron2 builds the [-1, 1] grid first and grid_sample un-normalises it; keep that
    # float32 order so ties at the threshold fall the same way.
    grid = (centres - start) / (end - start) * np.float32(2) - np.float32(1)
    pos = ((grid + np.float32(1)) * np.float32(mask_size) - np.float32(1)) / np.float32(2)
    low = np.floor(pos)
    frac = pos - low                                   # weight of the upper neighbour
    low = low.astype(np.int64)
    weights = np.zeros((num_pixels, mask_size), np.float32)
    rows = np.arange(num_pixels)
    for cell, w in ((low, np.float32(1) - frac), (low + 1, frac)):
        inside = (cell >= 0) & (cell < mask_size)      # zero padding outside the mask
        weights[rows[inside], cell[inside]] = w[inside]
    return weights


def _pixel_window(box, image_h, image_w):
    """detectron2's window of pixels that can be non-zero: floor(x0) - 1 .. ceil(x1) + 1, clipped."""
    x0 = max(int(np.floor(box[0])) - 1, 0)
    y0 = max(int(np.floor(box[1])) - 1, 0)
    x1 = min(int(np.ceil(box[2])) + 1, image_w)
    y1 = min(int(np.ceil(box[3])) + 1, image_h)
    return x0, y0, x1, y1


def paste_masks_in_image(masks, boxes, image_shape, threshold=0.5):
    """NumPy paste of R masks into an (H, W) image (see the module docstring for the convention).

    Args:
        masks: (R, M, M) float mask probabilities.
        boxes: (R, 4) xyxy in output-image pixels; boxes must have positive width and height.
        image_shape: (H, W) of the output image.
        threshold: foreground when the sampled probability >= threshold.
    Returns:
        (R, H, W) bool.
    """
    masks = np.asarray(masks, np.float32)
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    image_h, image_w = int(image_shape[0]), int(image_shape[1])
    assert masks.ndim == 3 and masks.shape[1] == masks.shape[2], masks.shape
    assert len(masks) == len(boxes), (masks.shape, boxes.shape)
    mask_size = masks.shape[1]
    out = np.zeros((len(masks), image_h, image_w), bool)
    for r in range(len(masks)):
        x0, y0, x1, y1 = _pixel_window(boxes[r], image_h, image_w)
        if x1 <= x0 or y1 <= y0:
            continue                                     # box entirely outside the image
        wy = interpolation_weights(boxes[r, 1], boxes[r, 3], y0, y1 - y0, mask_size)
        wx = interpolation_weights(boxes[r, 0], boxes[r, 2], x0, x1 - x0, mask_size)
        window = wy @ masks[r] @ wx.T                    # (y1 - y0, x1 - x0) probabilities
        out[r, y0:y1, x0:x1] = window >= threshold
    return out


def _interpolation_weights_tf(start, end, num_pixels, mask_size):
    """TF version of `interpolation_weights` over a whole image side, batched over boxes.

    Args:
        start, end: (R,) float32 box extent along the axis.
        num_pixels: scalar int32 tensor, image size along the axis.
        mask_size: int, M.
    Returns:
        (R, num_pixels, M) float32.
    """
    centres = tf.cast(tf.range(num_pixels), tf.float32) + 0.5          # (P,)
    grid = (centres[None, :] - start[:, None]) / (end - start)[:, None] * 2.0 - 1.0
    pos = ((grid + 1.0) * float(mask_size) - 1.0) / 2.0                 # (R, P) in mask cells
    low = tf.floor(pos)
    frac = pos - low
    low = tf.cast(low, tf.int32)
    # one_hot of an out-of-range index is all zeros: exactly the zero padding of grid_sample.
    return (tf.one_hot(low, mask_size, dtype=tf.float32) * (1.0 - frac)[..., None]
            + tf.one_hot(low + 1, mask_size, dtype=tf.float32) * frac[..., None])


def paste_masks_in_image_tf(masks, boxes, image_shape, threshold=0.5):
    """Graph-mode paste (same convention as `paste_masks_in_image`), usable in a SavedModel.

    Evaluates ``Wy @ mask @ Wx.T`` over the whole image for every mask: O(R * H * W * M) work,
    cheap on an accelerator and free of data-dependent shapes.

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
    wy = _interpolation_weights_tf(y0, y1, image_shape[0], mask_size)   # (R, H, M)
    wx = _interpolation_weights_tf(x0, x1, image_shape[1], mask_size)   # (R, W, M)
    probs = tf.matmul(tf.matmul(wy, masks), wx, transpose_b=True)       # (R, H, W)
    return probs >= threshold
