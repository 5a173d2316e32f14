"""Test-time image preparation: channel order, ResizeShortestEdge, zero padding into a batch.

Convention (detectron2's DefaultPredictor / test-time mapper)
------------------------------------------------------------
Input images are (H, W, 3) uint8 in **BGR** order (``cv2.imdecode``'s); a model trained with
INPUT.FORMAT "RGB" gets its channels swapped here, the one place that does it. Each image is
resized with ResizeShortestEdge(MIN_SIZE_TEST, MAX_SIZE_TEST) (`tfmrcnn.data.resize`: the shape
rule and Pillow's bilinear resize, as in training; MIN_SIZE_TEST 0 keeps the size) and padded
with zeros bottom/right to a multiple of SIZE_DIVISIBILITY; the model gets float32 0..255 values.

Two forms of the same steps: `preprocess_images` for a batch of NumPy images (predict, eval;
Pillow itself; images of a batch are padded to the largest) and `preprocess_image_tf` for one
image tensor in a graph (the SavedModel; Pillow's algorithm in TF ops), equal bit for bit.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import tensorflow as tf

from tfmrcnn.data import resize as R

__all__ = ["InputSpec", "resize_for_test", "pad_batch", "preprocess_images",
           "preprocess_image_tf"]


@dataclass(frozen=True)
class InputSpec:
    """The test-time input settings of a config (INPUT.*): plain values, safe in a tf.Module."""
    min_size: int
    max_size: int
    size_divisibility: int
    rgb: bool

    @classmethod
    def from_cfg(cls, cfg) -> "InputSpec":
        return cls(int(cfg.INPUT.MIN_SIZE_TEST), int(cfg.INPUT.MAX_SIZE_TEST),
                   int(cfg.INPUT.SIZE_DIVISIBILITY), cfg.INPUT.FORMAT == "RGB")


def resize_for_test(image, min_size: int, max_size: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (h, w, 3) uint8 resized like detectron2's test-time augmentation."""
    new_h, new_w = R.resize_shortest_edge_shape(image.shape[0], image.shape[1], min_size,
                                                max_size)
    return R.resize_image(image, new_h, new_w)


def pad_batch(images, size_divisibility: int = 32):
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


def preprocess_images(images_bgr: Sequence[np.ndarray], spec: InputSpec):
    """BGR uint8 images -> (images (B, Hp, Wp, 3) float32 in the model's channel order,
    image_sizes (B, 2) int32 resized (h, w))."""
    if spec.rgb:
        images_bgr = [im[:, :, ::-1] for im in images_bgr]
    return pad_batch([resize_for_test(im, spec.min_size, spec.max_size) for im in images_bgr],
                     spec.size_divisibility)


def preprocess_image_tf(image_bgr, spec: InputSpec):
    """Graph form of `preprocess_images` for one (H, W, 3) uint8 BGR image tensor.

    Returns (images (1, Hp, Wp, 3) float32, image_sizes (1, 2) int32 resized (h, w)).
    """
    image = tf.convert_to_tensor(image_bgr, tf.uint8)
    if spec.rgb:
        image = tf.reverse(image, axis=[-1])
    shape = tf.shape(image)
    new_h, new_w = R.resize_shortest_edge_shape_tf(shape[0], shape[1], spec.min_size,
                                                   spec.max_size)
    resized = R.resize_image_tf(image, new_h, new_w)
    div = max(spec.size_divisibility, 1)
    pad_h = (new_h + div - 1) // div * div - new_h
    pad_w = (new_w + div - 1) // div * div - new_w
    padded = tf.pad(tf.cast(resized, tf.float32), [[0, pad_h], [0, pad_w], [0, 0]])
    return padded[None], tf.stack([new_h, new_w])[None]
