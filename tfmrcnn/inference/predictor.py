"""Python-side prediction on in-memory images: detectron2's DefaultPredictor, batched.

Convention
----------
Input: a list of (H, W, 3) uint8 images in BGR order (what ``cv2.imdecode`` returns), whatever
INPUT.FORMAT the model was trained with. Steps: `preprocess.preprocess_images` (channel order,
ResizeShortestEdge(MIN_SIZE_TEST, MAX_SIZE_TEST), zero padding to SIZE_DIVISIBILITY) -> model
inference -> `postprocess.detector_postprocess` (separate x/y scales back to the original
image, masks pasted with detectron2's paste at the mask threshold).
Output per image: boxes (D, 4) float32 xyxy in original-image pixels, scores (D,) float32,
classes (D,) int32 contiguous labels, masks (D, H, W) bool (MASK_ON models).
Evaluation (`tfmrcnn.evaluation.inference`) runs the same three steps, with its own image
loading and batching around them.
"""
from __future__ import annotations

import weakref
from typing import Dict, List, Sequence

import numpy as np

from tfmrcnn.inference.postprocess import detector_postprocess, unbatch_outputs
from tfmrcnn.inference.preprocess import InputSpec, preprocess_images

__all__ = ["Predictor", "inference_callable"]


# model -> its compiled inference function, shared by every Predictor of that model: each
# evaluation during training, the final one and the pictures after it then trace it once
# (tracing the demo's model takes ~20 s on 2 cores). Weak keys: a dropped model drops its entry.
# Python switches read while tracing (norm.use_batch_statistics_at_test) are set before the
# first Predictor of a model (tfmrcnn-eval does), as the function keeps what it traced.
_COMPILED = weakref.WeakKeyDictionary()


def inference_callable(model):
    """The function (images, image_sizes) -> outputs of a model: compiled when it offers one
    (one compiled function per model, reused)."""
    if hasattr(model, "make_inference_fn"):
        fn = _COMPILED.get(model)
        if fn is None:
            fn = _COMPILED[model] = model.make_inference_fn()
        return fn
    if hasattr(model, "inference"):
        return model.inference
    return model


def _to_host(outputs) -> Dict[str, np.ndarray]:
    return {k: (v.numpy() if hasattr(v, "numpy") else np.asarray(v)) for k, v in outputs.items()}


class Predictor:
    """Callable: list of BGR uint8 images -> list of per-image detections (module docstring).

    compile=True runs the model through its tf.function (traced once, then fast); compile=False
    runs it eagerly (no tracing: quicker for a handful of small images).
    """

    def __init__(self, cfg, model, compile: bool = True, mask_threshold: float = 0.5):
        self.input_spec = InputSpec.from_cfg(cfg)
        self.mask_threshold = float(mask_threshold)
        self._fn = inference_callable(model) if compile else getattr(model, "inference", model)

    def preprocess(self, images_bgr: Sequence[np.ndarray]):
        """(images (B, Hp, Wp, 3) float32 in the model's channel order, image_sizes (B, 2)
        int32)."""
        return preprocess_images(images_bgr, self.input_spec)

    def run_model(self, images, image_sizes) -> Dict[str, np.ndarray]:
        """The model's batched outputs, as NumPy arrays on the host."""
        return _to_host(self._fn(images, image_sizes))

    def postprocess(self, outputs, image_sizes, original_sizes) -> List[Dict[str, np.ndarray]]:
        """Batched outputs -> per-image detections on images of original_sizes [(H, W)]."""
        return [detector_postprocess(out, image_sizes[i], original_sizes[i],
                                     mask_threshold=self.mask_threshold)
                for i, out in enumerate(unbatch_outputs(outputs))]

    def __call__(self, images_bgr: Sequence[np.ndarray]) -> List[Dict[str, np.ndarray]]:
        if len(images_bgr) == 0:
            return []
        images, image_sizes = self.preprocess(images_bgr)
        return self.postprocess(self.run_model(images, image_sizes), image_sizes,
                                [im.shape[:2] for im in images_bgr])
