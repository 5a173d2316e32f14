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

Inside the graph: the test-time path of `tfmrcnn.inference` in its graph form, the same ops as
`tfmrcnn-predict`'s: `preprocess.preprocess_image_tf` (channel order, ResizeShortestEdge
(MIN_SIZE_TEST, MAX_SIZE_TEST), zero padding to SIZE_DIVISIBILITY), the model's inference, then
`postprocess.postprocess_graph` (boxes scaled by original / resized per axis, clipped, empty
boxes dropped, masks pasted at >= 0.5).

Loading: the graph uses tfmrcnn's custom ROIAlign op, so its library must be loaded in the
process first: ``tfmrcnn.ops.load_library()`` then ``tf.saved_model.load(path)``, or simply
`load_saved_model(path)`. A model exported on a host without GPU with MODEL.WINOGRAD (the
default) also holds the Winograd tile ops, which have CPU kernels only: to serve on a GPU,
export with the override ``MODEL.WINOGRAD=False``. The export directory also holds ``assets.extra/class_names.txt``
when class names are known.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

import tensorflow as tf

from tfmrcnn.inference.postprocess import postprocess_graph
from tfmrcnn.inference.preprocess import InputSpec, preprocess_image_tf

__all__ = ["ServingModule", "export_saved_model", "load_saved_model", "SERVE_ENCODED_KEY"]

SERVE_ENCODED_KEY = "serve_encoded"
_CLASS_NAMES_FILE = os.path.join("assets.extra", "class_names.txt")


class ServingModule(tf.Module):
    """A GeneralizedRCNN wrapped with its test-time pre/post-processing (module docstring)."""

    def __init__(self, cfg, model, mask_threshold: float = 0.5):
        super().__init__(name="tfmrcnn_serving")
        # plain Python values only: a config (a dict) set on a tf.Module would be wrapped for tracking
        self._input_spec = InputSpec.from_cfg(cfg)
        self._mask_threshold = float(mask_threshold)
        self.model = model  # tracked: its variables are saved with the graph
        self.serve = tf.function(self._serve, autograph=False, input_signature=[
            tf.TensorSpec([None, None, 3], tf.uint8, name="image")])
        self.serve_encoded = tf.function(self._serve_encoded, autograph=False, input_signature=[
            tf.TensorSpec([], tf.string, name="image_bytes")])

    def _serve(self, image):
        images, image_sizes = preprocess_image_tf(image, self._input_spec)
        outputs = self.model.inference(images, image_sizes)
        n = outputs["num_detections"][0]
        first_image = {k: v[0, :n] for k, v in outputs.items() if k != "num_detections"}
        return postprocess_graph(first_image, image_sizes[0], tf.shape(image)[:2],
                                 self._mask_threshold)

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
