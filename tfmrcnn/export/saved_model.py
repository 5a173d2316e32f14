"""SavedModel export: the whole test-time pipeline (resize, pad, model, rescale, paste) in one graph.

Signatures
----------
``serving_default(image)``: ``image`` (H, W, 3) uint8 in **BGR** order (``cv2.imread``'s).
``serve_encoded(image_bytes)``: scalar string of an encoded JPEG / PNG / BMP / GIF (first
frame); decoded to RGB and swapped to BGR inside the graph.

Both return, on the original image (rows are detections, D is dynamic)::

    boxes           (D, 4) float32  xyxy in original-image pixels (separate x/y scales, clipped)
    scores          (D,)   float32
    classes         (D,)   int32    contiguous labels 0..NUM_CLASSES-1
    masks           (D, H, W) uint8 0/1, pasted at the original size (MASK_ON models only)
    num_detections  ()     int32    D

Inside the graph: detectron2's ResizeShortestEdge(MIN_SIZE_TEST, MAX_SIZE_TEST) shape rule in
float64 (Python's float arithmetic) and ``int(x + 0.5)``, the antialiased bilinear uint8 resize
of `tfmrcnn.data.transforms.resize_image`, zero padding bottom/right to SIZE_DIVISIBILITY, the
model's inference, then `detector_postprocess`'s rules: boxes scaled by original / resized per
axis, clipped, empty boxes dropped, masks pasted with `paste_masks_in_image_tf` at >= 0.5.

Loading: the graph uses tfmrcnn's custom ROIAlign op, so its library must be loaded in the
process first: ``tfmrcnn.ops.load_library()`` then ``tf.saved_model.load(path)``, or simply
`load_saved_model(path)`. A model exported on a host without GPU with MODEL.WINOGRAD (the
default) also holds the Winograd tile ops, which have CPU kernels only: to serve on a GPU,
export with the override ``MODEL.WINOGRAD=False``. The export directory also holds ``assets.extra/class_names.txt``
when class names are known.
"""
from __future__ import annotations

import os
from typing import Dict, Optional, Sequence

import tensorflow as tf

from tfmrcnn.data import transforms as T
from tfmrcnn.inference.paste import paste_masks_in_image_tf

__all__ = ["resized_shape_tf", "preprocess_image_tf", "postprocess_tf", "ServingModule",
           "export_saved_model", "load_saved_model", "SERVE_ENCODED_KEY"]

SERVE_ENCODED_KEY = "serve_encoded"
_CLASS_NAMES_FILE = os.path.join("assets.extra", "class_names.txt")


def resized_shape_tf(height, width, min_size: int, max_size: int):
    """Graph version of `transforms.resize_shortest_edge_shape`: (new_h, new_w) int32 scalars.

    min_size <= 0 keeps the original size (detectron2 skips the resize).
    """
    height, width = tf.cast(height, tf.int32), tf.cast(width, tf.int32)
    if min_size <= 0:
        return height, width
    # float64, as detectron2 computes with Python floats: same rounding at .5 boundaries
    h, w = tf.cast(height, tf.float64), tf.cast(width, tf.float64)
    short = tf.constant(float(min_size), tf.float64)
    scale = short / tf.minimum(h, w)
    new_h = tf.where(h < w, short, scale * h)
    new_w = tf.where(h < w, scale * w, short)
    longest = tf.maximum(new_h, new_w)
    rescale = tf.where(longest > float(max_size), float(max_size) / longest,
                       tf.constant(1.0, tf.float64))
    new_h, new_w = new_h * rescale, new_w * rescale
    return (tf.cast(tf.floor(new_h + 0.5), tf.int32), tf.cast(tf.floor(new_w + 0.5), tf.int32))


def preprocess_image_tf(image, min_size: int, max_size: int, size_divisibility: int = 32,
                        to_rgb: bool = False):
    """(H, W, 3) uint8 BGR -> (images (1, Hp, Wp, 3) float32, image_sizes (1, 2) int32 resized
    (h, w)), as `evaluation.resize.prepare_eval_images`; to_rgb for INPUT.FORMAT "RGB" models."""
    image = tf.convert_to_tensor(image, tf.uint8)
    if to_rgb:
        image = tf.reverse(image, axis=[-1])
    shape = tf.shape(image)
    new_h, new_w = resized_shape_tf(shape[0], shape[1], min_size, max_size)
    same = tf.logical_and(tf.equal(new_h, shape[0]), tf.equal(new_w, shape[1]))
    # the eval path does not resample an image that keeps its size
    resized = tf.cond(same, lambda: image, lambda: T.resize_image(image, new_h, new_w))
    div = max(int(size_divisibility), 1)
    pad_h = (new_h + div - 1) // div * div - new_h
    pad_w = (new_w + div - 1) // div * div - new_w
    padded = tf.pad(tf.cast(resized, tf.float32), [[0, pad_h], [0, pad_w], [0, 0]])
    return padded[None], tf.stack([new_h, new_w])[None]


def postprocess_tf(outputs: Dict[str, tf.Tensor], resized_hw, original_hw,
                   mask_threshold: float = 0.5) -> Dict[str, tf.Tensor]:
    """Graph version of `postprocess.detector_postprocess` for image 0 of a batch of one.

    Args:
        outputs: model outputs (boxes (1, D, 4) in resized pixels, scores, classes,
            num_detections, optional masks (1, D, M, M) probabilities).
        resized_hw, original_hw: (2,) int32 (h, w).
    Returns:
        boxes (D', 4), scores (D',), classes (D',) int32, masks (D', H, W) uint8 (if given),
        num_detections () int32.
    """
    n = outputs["num_detections"][0]
    boxes = outputs["boxes"][0, :n]                                   # (D, 4) resized pixels
    resized = tf.cast(resized_hw, tf.float64)
    original = tf.cast(original_hw, tf.float64)
    # ratios in float64 (Python floats) applied in float32, as the NumPy path does
    scale_y, scale_x = tf.unstack(tf.cast(original / resized, tf.float32))
    boxes = boxes * tf.stack([scale_x, scale_y, scale_x, scale_y])    # (D, 4) original pixels
    out_h, out_w = tf.unstack(tf.cast(original_hw, tf.float32))
    boxes = tf.clip_by_value(boxes, 0.0, tf.stack([out_w, out_h, out_w, out_h]))
    keep = tf.logical_and(boxes[:, 2] - boxes[:, 0] > 0, boxes[:, 3] - boxes[:, 1] > 0)
    result = {
        "boxes": tf.boolean_mask(boxes, keep),
        "scores": tf.boolean_mask(tf.cast(outputs["scores"][0, :n], tf.float32), keep),
        "classes": tf.boolean_mask(tf.cast(outputs["classes"][0, :n], tf.int32), keep),
    }
    if "masks" in outputs:
        masks = tf.boolean_mask(tf.cast(outputs["masks"][0, :n], tf.float32), keep)
        pasted = paste_masks_in_image_tf(masks, result["boxes"], original_hw, mask_threshold)
        result["masks"] = tf.cast(pasted, tf.uint8)                    # (D', H, W)
    result["num_detections"] = tf.shape(result["boxes"])[0]
    return result


class ServingModule(tf.Module):
    """A GeneralizedRCNN wrapped with its test-time pre/post-processing (module docstring)."""

    def __init__(self, cfg, model, mask_threshold: float = 0.5):
        super().__init__(name="tfmrcnn_serving")
        # plain Python values only: a config (a dict) set on a tf.Module would be wrapped for tracking
        self._resize = (int(cfg.INPUT.MIN_SIZE_TEST), int(cfg.INPUT.MAX_SIZE_TEST),
                        int(cfg.INPUT.SIZE_DIVISIBILITY), cfg.INPUT.FORMAT == "RGB")
        self._mask_threshold = float(mask_threshold)
        self.model = model  # tracked: its variables are saved with the graph
        self.serve = tf.function(self._serve, autograph=False, input_signature=[
            tf.TensorSpec([None, None, 3], tf.uint8, name="image")])
        self.serve_encoded = tf.function(self._serve_encoded, autograph=False, input_signature=[
            tf.TensorSpec([], tf.string, name="image_bytes")])

    def _serve(self, image):
        images, image_sizes = preprocess_image_tf(image, *self._resize)
        outputs = self.model.inference(images, image_sizes)
        return postprocess_tf(outputs, image_sizes[0], tf.shape(image)[:2], self._mask_threshold)

    def _serve_encoded(self, image_bytes):
        rgb = tf.io.decode_image(image_bytes, channels=3, dtype=tf.uint8, expand_animations=False)
        rgb.set_shape([None, None, 3])
        return self._serve(tf.reverse(rgb, axis=[-1]))                 # RGB -> BGR

    def signatures(self):
        return {"serving_default": self.serve.get_concrete_function(),
                SERVE_ENCODED_KEY: self.serve_encoded.get_concrete_function()}


def export_saved_model(cfg, model, output_dir: str, class_names: Optional[Sequence[str]] = None,
                       mask_threshold: float = 0.5) -> str:
    """Write the SavedModel of `ServingModule(cfg, model)` to output_dir; returns output_dir."""
    module = ServingModule(cfg, model, mask_threshold)
    tf.saved_model.save(module, output_dir, signatures=module.signatures())
    if class_names:
        path = os.path.join(output_dir, _CLASS_NAMES_FILE)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write("".join(f"{name}\n" for name in class_names))
    return output_dir


def load_saved_model(path: str):
    """tf.saved_model.load after loading tfmrcnn's custom-op library (ROIAlign)."""
    from tfmrcnn.ops import load_library

    load_library()
    return tf.saved_model.load(path)
