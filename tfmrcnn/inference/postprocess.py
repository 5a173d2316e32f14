"""From model outputs on the resized image to detections on the original image.

Convention (detectron2 ``modeling/postprocessing.py: detector_postprocess``)
--------------------------------------------------------------------------
Boxes are scaled with separate factors ``original_w / resized_w`` for x and
``original_h / resized_h`` for y (tensorpack uses one factor), computed in float64 (Python
floats) and applied in float32 (torch's float32 tensors), clipped to the original image, and
boxes left with zero width or height are dropped. Masks are pasted at the original resolution
with `tfmrcnn.inference.paste` (foreground where the probability is ``>= mask_threshold``).

Model outputs (see NOTES.md): ``boxes (B, D, 4)`` xyxy in resized-image pixels,
``scores (B, D)``, ``classes (B, D)`` int32 contiguous, ``masks (B, D, 28, 28)`` probabilities,
``num_detections (B,)``; rows past ``num_detections`` are padding.

One implementation, in TF ops: `postprocess_graph` runs it inside a graph (the SavedModel) and
returns whole masks; `detector_postprocess` is the NumPy-in, NumPy-out form of the Python
test-time path (predict, eval): the same ops in one traced ``tf.function``, masks unpacked
column-major from their windows (`paste.unpack_masks`).
"""
from __future__ import annotations

from typing import Dict

import numpy as np
import tensorflow as tf

from tfmrcnn.inference.paste import paste_masks_in_image, paste_masks_packed, unpack_masks

__all__ = ["unbatch_outputs", "postprocess_graph", "detector_postprocess"]

_PER_DETECTION_KEYS = ("boxes", "scores", "classes", "masks")


def _to_numpy(x):
    return x.numpy() if hasattr(x, "numpy") else np.asarray(x)


def unbatch_outputs(outputs):
    """Split batched model outputs into per-image dicts without the padding rows.

    Args:
        outputs: dict of numpy arrays or tensors with a leading batch axis (and
            ``num_detections (B,)``; without it every row is kept).
    Returns:
        list of B dicts: boxes (D_i, 4), scores (D_i,), classes (D_i,), and masks (D_i, M, M)
        if present.
    """
    arrays = {k: _to_numpy(v) for k, v in outputs.items() if k in _PER_DETECTION_KEYS}
    batch = len(arrays["boxes"])
    if "num_detections" in outputs:
        counts = _to_numpy(outputs["num_detections"]).astype(np.int64).reshape(-1)
    else:
        counts = np.full(batch, arrays["boxes"].shape[1], np.int64)
    return [{k: v[i, :counts[i]] for k, v in arrays.items()} for i in range(batch)]


def _rescale_and_select(boxes, scores, classes, masks, resized_hw, original_hw):
    """The box rules of the module docstring for one image.

    Args:
        boxes (D, 4) float32 resized pixels, scores (D,), classes (D,), masks (D, M, M) or None,
        resized_hw, original_hw: (2,) int (h, w).
    Returns:
        boxes (D', 4) float32 original pixels, scores (D',) float32, classes (D',) int32, masks
        (D', M, M) float32 or None: the detections with a non-empty clipped box.
    """
    scale_y, scale_x = tf.unstack(tf.cast(
        tf.cast(original_hw, tf.float64) / tf.cast(resized_hw, tf.float64), tf.float32))
    boxes = boxes * tf.stack([scale_x, scale_y, scale_x, scale_y])     # (D, 4) original pixels
    out_h, out_w = tf.unstack(tf.cast(original_hw, tf.float32))
    boxes = tf.clip_by_value(boxes, 0.0, tf.stack([out_w, out_h, out_w, out_h]))
    # detectron2's Boxes.nonempty(threshold=0): width > 0 and height > 0
    keep = (boxes[:, 2] - boxes[:, 0] > 0) & (boxes[:, 3] - boxes[:, 1] > 0)
    kept_masks = None if masks is None else tf.boolean_mask(masks, keep)
    return (tf.boolean_mask(boxes, keep), tf.boolean_mask(scores, keep),
            tf.boolean_mask(classes, keep), kept_masks)


def postprocess_graph(outputs: Dict[str, tf.Tensor], resized_hw, original_hw,
                      mask_threshold=0.5) -> Dict[str, tf.Tensor]:
    """Graph-mode post-processing of one image (no padding rows).

    Args:
        outputs: boxes (D, 4) in resized pixels, scores (D,), classes (D,), optional masks
            (D, M, M) probabilities.
        resized_hw, original_hw: (2,) int32 (h, w).
    Returns:
        boxes (D', 4) float32, scores (D',) float32, classes (D',) int32, masks (D', H, W)
        uint8 0/1 (MASK_ON models only), num_detections () int32.
    """
    masks = outputs.get("masks")
    boxes, scores, classes, masks = _rescale_and_select(
        tf.cast(outputs["boxes"], tf.float32), tf.cast(outputs["scores"], tf.float32),
        tf.cast(outputs["classes"], tf.int32),
        None if masks is None else tf.cast(masks, tf.float32), resized_hw, original_hw)
    result = {"boxes": boxes, "scores": scores, "classes": classes,
              "num_detections": tf.shape(boxes)[0]}
    if masks is not None:
        result["masks"] = tf.cast(
            paste_masks_in_image(masks, boxes, original_hw, mask_threshold), tf.uint8)
    return result


_SIGNATURE = [tf.TensorSpec([None, 4], tf.float32), tf.TensorSpec([None], tf.float32),
              tf.TensorSpec([None], tf.int32)]
_SIZES = [tf.TensorSpec([2], tf.int32), tf.TensorSpec([2], tf.int32)]


@tf.function(input_signature=_SIGNATURE + _SIZES, autograph=False)
def _boxes_fn(boxes, scores, classes, resized_hw, original_hw):
    return _rescale_and_select(boxes, scores, classes, None, resized_hw, original_hw)[:3]


@tf.function(input_signature=_SIGNATURE + [tf.TensorSpec([None, None, None], tf.float32)]
             + _SIZES + [tf.TensorSpec([], tf.float32)], autograph=False)
def _masks_fn(boxes, scores, classes, masks, resized_hw, original_hw, threshold):
    boxes, scores, classes, masks = _rescale_and_select(boxes, scores, classes, masks,
                                                        resized_hw, original_hw)
    windows, packed = paste_masks_packed(masks, boxes, original_hw, threshold)
    return boxes, scores, classes, windows, packed


def detector_postprocess(outputs, resized_hw, original_hw, mask_threshold=0.5):
    """Rescale one image's detections to the original image and paste its masks (NumPy).

    Args:
        outputs: one image's outputs: boxes (D, 4) xyxy in resized-image pixels, scores (D,),
            classes (D,), optional masks (D, M, M) probabilities. Batched outputs with a leading
            axis of 1 and ``num_detections`` are accepted too.
        resized_hw: (h, w) of the resized image the model saw (before padding).
        original_hw: (H, W) of the original image.
        mask_threshold: pasted masks are ``probability >= mask_threshold``.
    Returns:
        dict: boxes (D', 4) float32 xyxy in original pixels, scores (D',) float32,
        classes (D',) int32 and, when masks were given, masks (D', H, W) bool (column-major per
        mask: the transposed view of a (D', W, H) array, as `paste.unpack_masks` makes it) and
        mask_windows (D', 4) int32 x0, y0, x1, y1: `paste.paste_windows` of the boxes, outside
        which each mask is empty (what RLE encoding reads: `tfmrcnn.evaluation.rle`).
    """
    if _to_numpy(outputs["boxes"]).ndim == 3:
        (outputs,) = unbatch_outputs(outputs)
    inputs = (_to_numpy(outputs["boxes"]).astype(np.float32).reshape(-1, 4),
              _to_numpy(outputs["scores"]).astype(np.float32).reshape(-1),
              _to_numpy(outputs["classes"]).astype(np.int32).reshape(-1))
    sizes = (np.asarray(resized_hw, np.int32).reshape(2),
             np.asarray(original_hw, np.int32).reshape(2))
    if outputs.get("masks") is None:
        boxes, scores, classes = _boxes_fn(*inputs, *sizes)
        return {"boxes": boxes.numpy(), "scores": scores.numpy(), "classes": classes.numpy()}
    masks = _to_numpy(outputs["masks"]).astype(np.float32)
    boxes, scores, classes, windows, packed = _masks_fn(*inputs, masks, *sizes,
                                                        np.float32(mask_threshold))
    windows = windows.numpy()
    return {"boxes": boxes.numpy(), "scores": scores.numpy(), "classes": classes.numpy(),
            "masks": unpack_masks(windows, packed.numpy(), sizes[1]), "mask_windows": windows}
