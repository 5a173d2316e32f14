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

Portable: the graph has standard convolutions only. Winograd (MODEL.WINOGRAD) is a run-time
choice of the CPU Python path, never baked into an artefact: `export_saved_model` refuses a model
built with it (tfmrcnn-export builds the model with MODEL.WINOGRAD=False), so one SavedModel
serves on CPUs and GPUs. Its detections equal tfmrcnn-predict's with MODEL.WINOGRAD=False
(Winograd rounds differently).

Custom ops: one, ``RoiAlign`` (tfmrcnn's ROIAlign; `custom_ops_needed` lists those a saved graph
uses, and the export writes them to ``assets.extra/custom_ops.txt``). It must be registered in
the serving process before the SavedModel is loaded:

* Python: ``tfmrcnn.ops.load_library()`` then ``tf.saved_model.load(path)`` (or simply
  `load_saved_model(path)`); without tfmrcnn, ``tf.load_op_library(path_to_so)`` of a library
  built for the same TensorFlow version, e.g. RoiAlign alone:
  ``python custom_ops/build.py --out roi_align_ops.so --sources roi_align_op.cc``.
* TF Serving links ops into its binary: add custom_ops/roi_align_op.cc with its headers (and
  roi_align_op_gpu.cu.cc for a GPU server) as a ``cc_library`` with ``alwayslink = 1`` to the
  model server's SUPPORTED_TENSORFLOW_OPS and rebuild tensorflow_model_server (TF Serving's
  guide "Serving TensorFlow models with custom ops").

The export directory also holds ``assets.extra/class_names.txt``
when class names are known and ``assets.extra/category_ids.txt`` (the dataset category id of
each label, one per line in label order) when given.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from tfmrcnn.inference.postprocess import postprocess_graph
from tfmrcnn.inference.preprocess import InputSpec, preprocess_image_tf

__all__ = ["ServingModule", "export_saved_model", "load_saved_model", "custom_ops_needed",
           "saved_model_op_types", "SERVE_ENCODED_KEY", "PORTABLE_CUSTOM_OPS"]

SERVE_ENCODED_KEY = "serve_encoded"
# the custom ops an exported graph may hold (module docstring)
PORTABLE_CUSTOM_OPS = ("RoiAlign",)
_CUSTOM_OPS_FILE = os.path.join("assets.extra", "custom_ops.txt")
_CLASS_NAMES_FILE = os.path.join("assets.extra", "class_names.txt")
_CATEGORY_IDS_FILE = os.path.join("assets.extra", "category_ids.txt")


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
                       mask_threshold: float = 0.5,
                       category_ids: Optional[Sequence[int]] = None) -> str:
    """Write the SavedModel of `ServingModule(cfg, model)` to output_dir; returns output_dir.

    The model must compute standard convolutions (built with MODEL.WINOGRAD=False); the saved
    graph is checked to hold no custom op but PORTABLE_CUSTOM_OPS, and those it holds are
    listed in assets.extra/custom_ops.txt.
    """
    if getattr(model, "winograd", False):
        raise ValueError("the model computes its 3x3 convolutions with Winograd, a run-time "
                         "choice of the CPU that an exported graph must not hold: build it with "
                         "MODEL.WINOGRAD=False (tfmrcnn-export does)")
    module = ServingModule(cfg, model, mask_threshold)
    tf.saved_model.save(module, output_dir, signatures=module.signatures())
    needed = custom_ops_needed(output_dir)
    unexpected = sorted(set(needed) - set(PORTABLE_CUSTOM_OPS))
    if unexpected:
        raise RuntimeError(f"the graph saved to {output_dir} holds custom ops {unexpected}; an "
                           f"exported model may only need {list(PORTABLE_CUSTOM_OPS)}")
    path = os.path.join(output_dir, _CUSTOM_OPS_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("".join(f"{name}\n" for name in needed))
    for name, lines in ((_CLASS_NAMES_FILE, class_names), (_CATEGORY_IDS_FILE, category_ids)):
        if lines:
            path = os.path.join(output_dir, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w", encoding="utf-8") as f:
                f.write("".join(f"{line}\n" for line in lines))
    return output_dir


def saved_model_op_types(path: str) -> set:
    """The op types of every graph and function of the SavedModel at path (its saved_model.pb)."""
    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    ops = set()
    for meta_graph in proto.meta_graphs:
        ops.update(node.op for node in meta_graph.graph_def.node)
        for function in meta_graph.graph_def.library.function:
            ops.update(node.op for node in function.node_def)
    return ops


def custom_ops_needed(path: str) -> list:
    """Sorted names of the ops the SavedModel at path uses that TensorFlow does not ship (those
    missing from tf.raw_ops): the op libraries a serving process must load first."""
    return sorted(saved_model_op_types(path) - set(dir(tf.raw_ops)))


def load_saved_model(path: str):
    """tf.saved_model.load after loading tfmrcnn's custom-op library (ROIAlign)."""
    from tfmrcnn.ops import load_library

    load_library()
    return tf.saved_model.load(path)
