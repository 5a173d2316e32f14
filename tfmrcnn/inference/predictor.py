"""Python-side prediction on in-memory images: detectron2's DefaultPredictor, batched.

Convention
----------
Input: a list of (H, W, 3) uint8 images in BGR order (what ``cv2.imread`` returns), whatever
INPUT.FORMAT the model was trained with (RGB models get their channels swapped here).
Steps: ResizeShortestEdge(MIN_SIZE_TEST, MAX_SIZE_TEST) + zero padding to SIZE_DIVISIBILITY
(`tfmrcnn.data.resize`) -> model inference -> `detector_postprocess` (separate x/y
scales back to the original image, masks pasted with detectron2's paste at MASK threshold).
Output per image: boxes (D, 4) float32 xyxy in original-image pixels, scores (D,) float32,
classes (D,) int32 contiguous labels, masks (D, H, W) bool (MASK_ON models).
"""
from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np

from tfmrcnn.evaluation.inference import inference_callable
from tfmrcnn.data.resize import prepare_eval_images
from tfmrcnn.inference.postprocess import detector_postprocess, unbatch_outputs

__all__ = ["Predictor"]


class Predictor:
    """Callable: list of BGR uint8 images -> list of per-image detections (module docstring).

    compile=True runs the model through its tf.function (traced once, then fast); compile=False
    runs it eagerly (no tracing: quicker for a handful of small images).
    """

    def __init__(self, cfg, model, compile: bool = True, mask_threshold: float = 0.5):
        self.cfg = cfg
        self.mask_threshold = float(mask_threshold)
        self._fn = inference_callable(model) if compile else model.inference

    def preprocess(self, images_bgr: Sequence[np.ndarray]):
        """(images (B, Hp, Wp, 3) float32 in the model's channel order, image_sizes (B, 2) int32)."""
        if self.cfg.INPUT.FORMAT == "RGB":
            images_bgr = [im[:, :, ::-1] for im in images_bgr]
        return prepare_eval_images(images_bgr, self.cfg.INPUT.MIN_SIZE_TEST,
                                   self.cfg.INPUT.MAX_SIZE_TEST, self.cfg.INPUT.SIZE_DIVISIBILITY)

    def __call__(self, images_bgr: Sequence[np.ndarray]) -> List[Dict[str, np.ndarray]]:
        if len(images_bgr) == 0:
            return []
        images, image_sizes = self.preprocess(images_bgr)
        outputs = self._fn(images, image_sizes)
        return [detector_postprocess(out, image_sizes[i], images_bgr[i].shape[:2],
                                     mask_threshold=self.mask_threshold)
                for i, out in enumerate(unbatch_outputs(outputs))]
