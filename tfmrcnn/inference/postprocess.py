"""From model outputs on the resized image to detections on the original image.

Convention (detectron2 ``modeling/postprocessing.py: detector_postprocess``)
--------------------------------------------------------------------------
Boxes are scaled with separate factors ``original_w / resized_w`` for x and
``original_h / resized_h`` for y (tensorpack uses one factor), clipped to the original image,
and boxes left with zero width or height are dropped. Masks are pasted at the original
resolution with `mask_paste.paste_masks_in_image` (threshold ``>= mask_threshold``).

Model outputs (see NOTES.md): ``boxes (B, D, 4)`` xyxy in resized-image pixels,
``scores (B, D)``, ``classes (B, D)`` int32 contiguous, ``masks (B, D, 28, 28)`` probabilities,
``num_detections (B,)``; rows past ``num_detections`` are padding.
"""
from __future__ import annotations

import numpy as np

from tfmrcnn.inference.paste import paste_masks_in_image, paste_windows

__all__ = ["unbatch_outputs", "detector_postprocess"]

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


def detector_postprocess(outputs, resized_hw, original_hw, mask_threshold=0.5):
    """Rescale one image's detections to the original image and paste its masks.

    Args:
        outputs: one image's outputs: boxes (D, 4) xyxy in resized-image pixels, scores (D,),
            classes (D,), optional masks (D, M, M) probabilities. Batched outputs with a leading
            axis of 1 and ``num_detections`` are accepted too.
        resized_hw: (h, w) of the resized image the model saw (before padding).
        original_hw: (H, W) of the original image.
        mask_threshold: pasted masks are ``probability >= mask_threshold``.
    Returns:
        dict: boxes (D', 4) float32 xyxy in original pixels, scores (D',) float32,
        classes (D',) int32, masks (D', H, W) bool and mask_windows (D', 4) int x0, y0, x1, y1
        outside of which each mask is False (both only when masks were given).
    """
    if _to_numpy(outputs["boxes"]).ndim == 3:
        (outputs,) = unbatch_outputs(outputs)
    boxes = _to_numpy(outputs["boxes"]).astype(np.float32).reshape(-1, 4)
    out_h, out_w = int(original_hw[0]), int(original_hw[1])
    # python-float ratios applied in float32, as torch does with a float32 tensor
    scale_x = np.float32(out_w / float(resized_hw[1]))
    scale_y = np.float32(out_h / float(resized_hw[0]))
    boxes = boxes * np.array([scale_x, scale_y, scale_x, scale_y], np.float32)  # (D, 4) original
    boxes = np.stack([np.clip(boxes[:, 0], 0, out_w), np.clip(boxes[:, 1], 0, out_h),
                      np.clip(boxes[:, 2], 0, out_w), np.clip(boxes[:, 3], 0, out_h)], axis=1)
    # detectron2's Boxes.nonempty(threshold=0): width > 0 and height > 0
    keep = (boxes[:, 2] - boxes[:, 0] > 0) & (boxes[:, 3] - boxes[:, 1] > 0)
    result = {
        "boxes": boxes[keep],
        "scores": _to_numpy(outputs["scores"]).astype(np.float32).reshape(-1)[keep],
        "classes": _to_numpy(outputs["classes"]).astype(np.int32).reshape(-1)[keep],
    }
    if outputs.get("masks") is not None:
        masks = _to_numpy(outputs["masks"]).astype(np.float32)[keep]     # (D', M, M)
        result["masks"] = paste_masks_in_image(masks, result["boxes"], (out_h, out_w),
                                               threshold=mask_threshold)
        # where each mask can be non-zero: lets the RLE encoder skip the rest of the image
        result["mask_windows"] = paste_windows(result["boxes"], (out_h, out_w))
    return result
