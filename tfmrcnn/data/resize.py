"""Test-time image preparation: detectron2's ResizeShortestEdge + padding into a batch.

Convention (detectron2 ``data/transforms/augmentation_impl.py: ResizeShortestEdge``)
------------------------------------------------------------------------------------
``scale = short_edge / min(h, w)``; if the long side then exceeds ``max_size`` both sides are
rescaled by ``max_size / long side``; each side is rounded as ``int(side + 0.5)``.
``short_edge == 0`` means no resizing (detectron2 skips the augmentation). The shape rule and
the pixel resize are the training pipeline's (`tfmrcnn.data.transforms`); this module adds the
test-time wrapper and the batch padding.
Pixels are resized on uint8 with bilinear interpolation that antialiases when shrinking (PIL's
behaviour), which ``tf.image.resize(bilinear, antialias=True)`` followed by rounding reproduces
within one grey level (measured, see the conventions doc). Images are BGR, padded with zeros
bottom/right to a multiple of ``size_divisibility``.
"""
from __future__ import annotations

import numpy as np

from tfmrcnn.data import transforms as T

__all__ = ["eval_resize_shape", "resize_for_eval", "pad_batch", "prepare_eval_images"]


def eval_resize_shape(height, width, min_size, max_size):
    """(new_h, new_w) at test time: ResizeShortestEdge, or the original size when min_size == 0."""
    if min_size <= 0:
        return int(height), int(width)
    return T.resize_shortest_edge_shape(int(height), int(width), int(min_size), int(max_size))


def resize_for_eval(image, min_size, max_size):
    """(H, W, 3) uint8 BGR -> (h, w, 3) uint8 resized like detectron2's test-time augmentation."""
    new_h, new_w = eval_resize_shape(image.shape[0], image.shape[1], min_size, max_size)
    if (new_h, new_w) == tuple(image.shape[:2]):
        return np.asarray(image)
    return T.resize_image(image, new_h, new_w).numpy()


def pad_batch(images, size_divisibility=32):
    """Stack (h_i, w_i, 3) images into (B, Hp, Wp, 3) float32, zero-padded bottom/right.

    Hp, Wp are the largest h, w of the batch rounded up to a multiple of size_divisibility.
    Returns (batch, image_sizes (B, 2) int32 (h, w) before padding).
    """
    sizes = np.array([im.shape[:2] for im in images], np.int32).reshape(-1, 2)
    height, width = sizes.max(axis=0)
    if size_divisibility > 1:
        height = -(-height // size_divisibility) * size_divisibility
        width = -(-width // size_divisibility) * size_divisibility
    batch = np.zeros((len(images), height, width, 3), np.float32)
    for i, im in enumerate(images):
        batch[i, :im.shape[0], :im.shape[1]] = im
    return batch, sizes


def prepare_eval_images(images_bgr, min_size, max_size, size_divisibility=32):
    """Resize each (H, W, 3) uint8 BGR image and pad them into one model batch.

    Returns (images (B, Hp, Wp, 3) float32 BGR 0..255, image_sizes (B, 2) int32 resized (h, w)).
    """
    return pad_batch([resize_for_eval(im, min_size, max_size) for im in images_bgr],
                     size_divisibility)
