"""Training-time geometric transforms of one image and its annotations (detectron2's rules).

Conventions
-----------
* Coordinates are continuous: pixel (i, j) spans [j, j+1] x [i, i+1]; boxes are xyxy.
* ResizeShortestEdge: the output shape and the pixels are `tfmrcnn.data.resize`'s (Pillow's
  bilinear resize, as detectron2's ResizeTransform). Coordinates scale by new/old per axis.
* Horizontal flip maps x to ``W - x`` (W = width after resizing); resize happens before flip.
* Masks are rasterised after the geometric transform: polygons are transformed and then
  rasterised at the resized size with pycocotools (as detectron2's PolygonMasks); RLE masks and
  bitmasks are decoded at the original size, resized with Pillow's NEAREST (detectron2's
  ``apply_segmentation``) and flipped.
* Boxes are clipped to the image; instances whose clipped box has a side <= 1e-5 are dropped
  (detectron2's ``filter_empty_instances``). Crowd regions are kept apart (``crowd_boxes``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence

import numpy as np
import pycocotools.mask as mask_util

from tfmrcnn.data.resize import resize_image, resize_mask

__all__ = [
    "sample_short_edge", "TransformParams", "transform_annotations", "EMPTY_BOX_THRESHOLD",
]

EMPTY_BOX_THRESHOLD = 1e-5  # detectron2 Boxes.nonempty threshold


def sample_short_edge(rng: np.random.Generator, sizes: Sequence[int], sampling: str) -> int:
    """Short side for one training image: a choice among ``sizes`` or uniform in [lo, hi]."""
    if sampling == "choice":
        return int(sizes[rng.integers(len(sizes))])
    if sampling == "range":
        if len(sizes) != 2:
            raise ValueError(f"MIN_SIZE_TRAIN_SAMPLING 'range' needs 2 values, got {sizes}")
        return int(rng.integers(int(sizes[0]), int(sizes[1]) + 1))
    raise ValueError(f"unknown MIN_SIZE_TRAIN_SAMPLING {sampling!r}")


@dataclass(frozen=True)
class TransformParams:
    """Resize of an (h, w) image to (new_h, new_w), then an optional horizontal flip."""
    h: int
    w: int
    new_h: int
    new_w: int
    flip: bool

    def apply_coords(self, xy: np.ndarray) -> np.ndarray:
        """(N, 2) float xy -> transformed xy (continuous coordinates)."""
        out = np.asarray(xy, np.float64).reshape(-1, 2).copy()
        out[:, 0] *= self.new_w / self.w
        out[:, 1] *= self.new_h / self.h
        if self.flip:
            out[:, 0] = self.new_w - out[:, 0]
        return out

    def apply_box(self, boxes_xyxy: np.ndarray) -> np.ndarray:
        """(N, 4) xyxy -> (N, 4) xyxy enclosing the transformed corners, clipped to the image."""
        boxes = np.asarray(boxes_xyxy, np.float64).reshape(-1, 4)
        corners = boxes[:, [0, 1, 2, 1, 0, 3, 2, 3]].reshape(-1, 2)
        pts = self.apply_coords(corners).reshape(-1, 4, 2)
        out = np.concatenate([pts.min(axis=1), pts.max(axis=1)], axis=1)
        out[:, 0::2] = out[:, 0::2].clip(0, self.new_w)
        out[:, 1::2] = out[:, 1::2].clip(0, self.new_h)
        return out

    def apply_polygons(self, polygons: List[Sequence[float]]) -> List[np.ndarray]:
        return [self.apply_coords(np.asarray(p, np.float64)).reshape(-1) for p in polygons]

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """(h, w, C) uint8 -> (new_h, new_w, C) uint8: Pillow's bilinear resize, then the flip."""
        return self._flip(resize_image(image, self.new_h, self.new_w))

    def apply_bitmask(self, mask: np.ndarray) -> np.ndarray:
        """(h, w) 0/1 -> (new_h, new_w) uint8: Pillow's nearest-neighbour resize, then the flip."""
        return self._flip(resize_mask(np.asarray(mask, np.uint8), self.new_h, self.new_w))

    def _flip(self, array: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(array[:, ::-1]) if self.flip else array


def _xywh_to_xyxy(b) -> np.ndarray:
    x, y, w, h = [float(v) for v in b]
    return np.array([x, y, x + w, y + h], np.float64)


def _segmentation_to_mask(segm, params: TransformParams) -> np.ndarray:
    """(new_h, new_w) uint8 bitmask of one annotation's segmentation after the transform."""
    if isinstance(segm, list):
        polys = [p for p in params.apply_polygons(segm) if len(p) >= 6]
        if not polys:
            return np.zeros((params.new_h, params.new_w), np.uint8)
        rles = mask_util.frPyObjects([p.tolist() for p in polys], params.new_h, params.new_w)
        return mask_util.decode(mask_util.merge(rles)).astype(np.uint8)
    if isinstance(segm, dict):
        if isinstance(segm.get("counts"), list):  # uncompressed RLE
            segm = mask_util.frPyObjects(segm, *segm["size"])
        return params.apply_bitmask(mask_util.decode(segm))
    if isinstance(segm, np.ndarray) and segm.ndim == 2:
        return params.apply_bitmask(segm)
    raise ValueError(f"unsupported segmentation type {type(segm).__name__}")


def transform_annotations(annotations: Sequence[dict], params: TransformParams,
                          with_masks: bool = True) -> Dict[str, np.ndarray]:
    """Transformed targets of one image.

    Returns boxes (G, 4) float32 xyxy, classes (G,) int32, masks (G, new_h, new_w) uint8 (G = 0
    rows when ``with_masks`` is False), crowd_boxes (C, 4) float32.
    """
    boxes, classes, masks, crowd = [], [], [], []
    for ann in annotations:
        box = params.apply_box(_xywh_to_xyxy(ann["bbox"]))[0]
        if ann.get("iscrowd", 0):
            crowd.append(box)
            continue
        if box[2] - box[0] <= EMPTY_BOX_THRESHOLD or box[3] - box[1] <= EMPTY_BOX_THRESHOLD:
            continue
        boxes.append(box)
        classes.append(int(ann["category_id"]))
        if with_masks:
            if "segmentation" not in ann:
                raise ValueError("MASK_ON needs a 'segmentation' in every annotation")
            masks.append(_segmentation_to_mask(ann["segmentation"], params))
    g = len(boxes)
    mask_shape = (g, params.new_h, params.new_w) if with_masks else (0, params.new_h, params.new_w)
    return {
        "boxes": np.asarray(boxes, np.float32).reshape(g, 4),
        "classes": np.asarray(classes, np.int32).reshape(g),
        "masks": np.stack(masks).astype(np.uint8) if masks else np.zeros(mask_shape, np.uint8),
        "crowd_boxes": np.asarray(crowd, np.float32).reshape(-1, 4),
    }
