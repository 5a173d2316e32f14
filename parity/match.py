"""Matching detectron2's detections with ours (NumPy only).

Convention: a detection is a dict ``{"box": [x1, y1, x2, y2] (original-image pixels),
"score": float, "category_id": int, "segmentation": COCO RLE}``. A reference (detectron2)
detection is matched to at most one candidate (ours) and vice versa. References are visited in
decreasing score; each takes, among the unmatched candidates of the same class whose box IoU
is >= ``min_iou`` and whose score is within ``score_tol``, the one with the highest box IoU.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np

__all__ = ["STRICT", "LOOSE", "box_iou", "mask_iou", "greedy_match"]

# (min box IoU, score tolerance): the parity criterion of the issue, and a loose one that tells
# "slightly off" (resize, rounding) apart from "different detection".
STRICT = (0.99, 1e-3)
LOOSE = (0.9, 0.05)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of (N, 4) and (M, 4) xyxy boxes -> (N, M); detectron2's pairwise_iou (no +1)."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = np.maximum(a[:, None, :2], b[None, :, :2])                  # (N, M, 2)
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two (H, W) binary masks; two empty masks agree fully (1.0)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else np.count_nonzero(a & b) / union


def greedy_match(reference: Sequence[Dict], candidates: Sequence[Dict],
                 min_iou: float = STRICT[0], score_tol: float = STRICT[1]
                 ) -> List[Tuple[int, int]]:
    """[(reference index, candidate index)] matched as the module docstring says."""
    if not reference or not candidates:
        return []
    ious = box_iou([d["box"] for d in reference], [d["box"] for d in candidates])
    ref_scores = np.array([d["score"] for d in reference])
    cand_scores = np.array([d["score"] for d in candidates])
    same_class = (np.array([d["category_id"] for d in reference])[:, None]
                  == np.array([d["category_id"] for d in candidates])[None, :])
    ok = (same_class & (ious >= min_iou)
          & (np.abs(ref_scores[:, None] - cand_scores[None, :]) <= score_tol))
    taken = np.zeros(len(candidates), bool)
    pairs = []
    for i in np.argsort(-ref_scores, kind="stable"):
        allowed = ok[i] & ~taken
        if allowed.any():
            j = int(np.argmax(np.where(allowed, ious[i], -1.0)))
            taken[j] = True
            pairs.append((int(i), j))
    return pairs
