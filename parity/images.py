"""Test images of several sizes, and ground truth derived from detectron2's detections.

Images: seeded synthetic "photos" (a smooth background, noise, filled shapes), written as PNG
so that detectron2 (Pillow) and tfmrcnn (OpenCV) decode the same pixels. The default sizes need
ResizeShortestEdge(800, 1333) to go up, down, and (800x1333) not at all.

Ground truth: a network with random weights finds nothing of the drawn shapes, so the
annotations are derived from detectron2's own detections instead (`annotations_from_detections`):
every other detection in score order, its box jittered by a few percent. AP then measures how
well a set of predictions reproduces detectron2's ranking and localisation, and detectron2 does
not score 100 against it.
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Sequence, Tuple

import numpy as np

__all__ = ["DEFAULT_SIZES", "make_images", "annotations_from_detections", "categories"]

# (height, width): up-scaled (480x640, 640x427, 375x500, 300x200), kept (800x1333), down (1200x900)
DEFAULT_SIZES: Tuple[Tuple[int, int], ...] = (
    (480, 640), (640, 427), (375, 500), (800, 1333), (300, 200), (1200, 900))
BOX_JITTER = 0.03  # fraction of the box's width / height


def _draw_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """(H, W, 3) uint8 BGR: a colour gradient, a few filled shapes, Gaussian noise."""
    import cv2

    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    c0, cx, cy = rng.uniform(40, 200, 3), rng.uniform(-60, 60, 3), rng.uniform(-60, 60, 3)
    image = c0 + cx * (xx / width)[..., None] + cy * (yy / height)[..., None]
    for _ in range(rng.integers(3, 8)):
        color = tuple(float(c) for c in rng.uniform(0, 255, 3))
        cx_, cy_ = int(rng.uniform(0, width)), int(rng.uniform(0, height))
        size = int(rng.uniform(0.08, 0.3) * min(height, width))
        kind = rng.integers(3)
        if kind == 0:
            cv2.circle(image, (cx_, cy_), size, color, -1)
        elif kind == 1:
            cv2.rectangle(image, (cx_ - size, cy_ - size // 2), (cx_ + size, cy_ + size // 2),
                          color, -1)
        else:
            pts = np.array([[cx_, cy_ - size], [cx_ - size, cy_ + size], [cx_ + size, cy_ + size]],
                           np.int32)
            cv2.fillPoly(image, [pts], color)
    image += rng.normal(0, 12, image.shape).astype(np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def make_images(out_dir: str, sizes: Sequence[Tuple[int, int]] = DEFAULT_SIZES,
                seed: int = 0) -> List[Dict]:
    """Write one PNG per size to out_dir; returns COCO image records (id, file_name, h, w)."""
    import cv2

    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(seed)
    records = []
    for i, (h, w) in enumerate(sizes):
        name = f"img{i:02d}_{h}x{w}.png"
        cv2.imwrite(os.path.join(out_dir, name), _draw_image(rng, h, w))
        records.append({"id": i + 1, "file_name": name, "height": h, "width": w})
    return records


def categories(num_classes: int) -> List[Dict]:
    """COCO's 80 categories (their json ids) for an 80-class model, else ids 1..K."""
    if num_classes == 80:
        from tfmrcnn.data.catalog import COCO_CATEGORIES

        return [{"id": c["id"], "name": c["name"]} for c in COCO_CATEGORIES]
    return [{"id": k + 1, "name": f"class_{k}"} for k in range(num_classes)]


def annotations_from_detections(images: Sequence[Dict], detections: Dict[str, List[Dict]],
                                cats: Sequence[Dict], seed: int = 0) -> Dict:
    """A COCO instances dict whose objects are every other detection of `detections`.

    detections: file_name -> [{"box" xyxy, "score", "category_id", optional "segmentation"
    (COCO RLE) and "area" (mask pixels; the box's area when absent)}].
    Per image the detections are sorted by score; ranks 0, 2, 4, ... become objects, their box
    jittered by up to BOX_JITTER of its size (seeded), their mask kept.
    """
    rng = np.random.default_rng(seed)
    annotations = []
    for image in images:
        dets = sorted(detections.get(image["file_name"], []), key=lambda d: -d["score"])
        for det in dets[::2]:
            x1, y1, x2, y2 = det["box"]
            w, h = x2 - x1, y2 - y1
            dx1, dy1, dx2, dy2 = rng.uniform(-BOX_JITTER, BOX_JITTER, 4) * [w, h, w, h]
            x1, x2 = np.clip([x1 + dx1, x2 + dx2], 0, image["width"])
            y1, y2 = np.clip([y1 + dy1, y2 + dy2], 0, image["height"])
            ann = {"id": len(annotations) + 1, "image_id": image["id"],
                   "category_id": int(det["category_id"]),
                   "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                   "area": float(det.get("area", (x2 - x1) * (y2 - y1))), "iscrowd": 0}
            if "segmentation" in det:
                ann["segmentation"] = dict(det["segmentation"])
            annotations.append(ann)
    return {"images": list(images), "annotations": annotations, "categories": list(cats)}


def write_json(path: str, data) -> str:
    with open(path, "w") as f:
        json.dump(data, f)
    return path
