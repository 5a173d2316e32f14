"""Pictures of instance predictions: translucent masks, boxes, class names and scores.

Used by `tfmrcnn-predict`, the demo and training: TensorBoard pictures of training images
(`make_train_vis_fn`: ground truth and predictions side by side) and OUTPUT_DIR/vis/*.png of
validation images (`write_val_pictures`).

Legibility rules (`draw_instances`):

* the label font grows with the picture (`font_scale_for`), so labels read the same at 200 and
  at 1333 px;
* labels are laid out (`layout_labels`) in score order, the highest first: each takes the first
  free place among above its box, inside its top, below it and inside its bottom, else the
  nearest free place in its column; every label lies inside the picture and none covers
  another (where the picture has room);
* a detection is a *same-object duplicate* (`same_object_duplicates`) when a higher-scored
  detection of another class overlaps it with IoU >= 0.7 (per-class NMS keeps both): it gets
  no mask fill and a thin box; boxes and labels are drawn from the lowest score up, so the
  higher-scored detection of an object is the one seen on top.
"""
from __future__ import annotations

import logging
import os
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np

logger = logging.getLogger(__name__)
# training pictures show detections from this score (detectron2's demo default); lower, the
# per-class NMS leaves second guesses of another class on the same object in the picture
VIS_SCORE_THRESHOLD = 0.5
DUPLICATE_IOU = 0.7  # a lower-scored detection of another class this close is the same object
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_FONT_PX_AT_SCALE_1 = 22.0  # cap height of FONT_HERSHEY_SIMPLEX at font scale 1


def color_for(index: int) -> tuple:
    """A stable, well-separated BGR colour for instance `index` (golden-ratio hue walk)."""
    hue = (index * 0.618033988749895) % 1.0
    hsv = np.uint8([[[int(hue * 179), 200, 255]]])
    b, g, r = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0]
    return int(b), int(g), int(r)


def font_scale_for(height: int, width: int) -> float:
    """OpenCV font scale for labels on a (height, width) picture: text about sqrt(h * w) / 70
    px tall (14 px at 800 x 1333), never under 9 px (detectron2's Visualizer also sizes its
    font by sqrt(h * w))."""
    text_px = max(9.0, float(np.sqrt(height * width)) / 70.0)
    return text_px / _FONT_PX_AT_SCALE_1


def _text_thickness(font_scale: float) -> int:
    return 1 if font_scale < 0.8 else 2


def label_size(text: str, font_scale: float) -> Tuple[int, int]:
    """(width, height) in px of a label's filled background box (text plus a 2 px margin)."""
    (tw, th), base = cv2.getTextSize(text, _FONT, font_scale, _text_thickness(font_scale))
    return tw + 4, th + base + 4


def _overlaps(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _inside(x0, y0, size, image_hw):
    """(x0, y0, x1, y1) of a box of `size` moved the least to lie inside the picture."""
    (w, h), (ih, iw) = size, image_hw
    x0 = int(min(max(x0, 0), max(iw - w, 0)))
    y0 = int(min(max(y0, 0), max(ih - h, 0)))
    return x0, y0, x0 + w, y0 + h


def layout_labels(boxes: np.ndarray, sizes: Sequence[Tuple[int, int]],
                  image_hw: Tuple[int, int]) -> List[Tuple[int, int, int, int]]:
    """Places for labels, given in priority order (the highest score first).

    Args:
        boxes (N, 4) xyxy of the detections; sizes: N (width, height) of their labels;
        image_hw: (H, W) of the picture.
    Returns:
        N label rectangles (x0, y0, x1, y1), inside the picture; each is the first of (above the
        box, inside its top, below it, inside its bottom) that covers no earlier label, else
        the free place nearest to the box top in the box's column, else (no room) the first.
    """
    placed: List[Tuple[int, int, int, int]] = []
    for box, (w, h) in zip(np.asarray(boxes, np.float32).reshape(-1, 4), sizes):
        bx0, by0, _, by1 = (int(round(v)) for v in box)
        wanted = [_inside(bx0, y, (w, h), image_hw) for y in (by0 - h, by0, by1, by1 - h)]
        free = [r for r in wanted if not any(_overlaps(r, p) for p in placed)]
        if not free and placed:  # slide along the column, nearest to the box top first
            ys = np.arange(0, max(image_hw[0] - h, 0) + 1)
            column = np.array([_inside(bx0, y, (w, h), image_hw) for y in ys])     # (K, 4)
            p = np.array(placed)                                                    # (P, 4)
            hit = ((column[:, None, 0] < p[None, :, 2]) & (p[None, :, 0] < column[:, None, 2])
                   & (column[:, None, 1] < p[None, :, 3]) & (p[None, :, 1] < column[:, None, 3]))
            ok = np.flatnonzero(~hit.any(axis=1))
            if len(ok):
                best = ok[np.argmin(np.abs(column[ok, 1] - wanted[0][1]))]
                free = [tuple(int(v) for v in column[best])]
        placed.append(free[0] if free else wanted[0])
    return placed


def same_object_duplicates(boxes: np.ndarray, classes: np.ndarray, scores: np.ndarray,
                           iou_threshold: float = DUPLICATE_IOU) -> np.ndarray:
    """(N,) bool: detection i overlaps a higher-scored detection of another class with IoU >=
    `iou_threshold` (the same object labelled twice)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    classes, scores = np.asarray(classes).reshape(-1), np.asarray(scores).reshape(-1)
    area = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    lt = np.maximum(boxes[:, None, :2], boxes[None, :, :2])
    rb = np.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)                       # (N, N)
    iou = inter / np.maximum(area[:, None] + area[None, :] - inter, 1e-9)
    higher = scores[None, :] > scores[:, None]                                # j above i
    other_class = classes[None, :] != classes[:, None]
    return np.any((iou >= iou_threshold) & higher & other_class, axis=1)


def draw_instances(image_bgr: np.ndarray, boxes: np.ndarray, classes: np.ndarray,
                   scores: Optional[np.ndarray] = None, masks: Optional[np.ndarray] = None,
                   class_names: Optional[Sequence[str]] = None, alpha: float = 0.45,
                   score_threshold: float = 0.0) -> np.ndarray:
    """Return a copy of `image_bgr` (H, W, 3) uint8 with the instances drawn on it (the rules
    of the module docstring).

    boxes (D, 4) xyxy in image pixels; classes (D,) contiguous labels; scores (D,) or None
    (ground truth: no score in the label, drawn in the given order); masks (D, H, W) bool,
    already pasted at the image's resolution.
    """
    canvas = np.ascontiguousarray(image_bgr, dtype=np.uint8).copy()
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    classes = np.asarray(classes).reshape(-1)
    if scores is None:
        order, duplicate = np.arange(len(boxes)), np.zeros(len(boxes), bool)
    else:
        scores = np.asarray(scores, np.float32).reshape(-1)
        order = [i for i in np.argsort(-scores, kind="stable") if scores[i] >= score_threshold]
        duplicate = same_object_duplicates(boxes, classes, scores)
    h, w = canvas.shape[:2]
    # masks first, the largest below, so that small instances stay visible
    if masks is not None and len(order):
        areas = [(masks[i].sum(), i) for i in order if not duplicate[i]]
        for _, i in sorted(areas, reverse=True):
            m = masks[i].astype(bool)
            color = np.array(color_for(i), np.float32)
            canvas[m] = (canvas[m] * (1 - alpha) + color * alpha).astype(np.uint8)
            contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL,
                                           cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(canvas, contours, -1, color_for(i), 1, cv2.LINE_AA)
    font_scale = font_scale_for(h, w)
    texts = []
    for i in order:
        text = str(int(classes[i])) if class_names is None else class_names[int(classes[i])]
        texts.append(text if scores is None else f"{text} {float(scores[i]):.0%}")
    places = layout_labels(boxes[list(order)], [label_size(t, font_scale) for t in texts], (h, w))
    line = 1 + min(h, w) // 500
    for i in reversed(order):  # the lowest score first: the highest ends on top
        x0, y0, x1, y1 = (int(round(v)) for v in boxes[i])
        cv2.rectangle(canvas, (x0, y0), (x1, y1), color_for(i), 1 if duplicate[i] else line,
                      cv2.LINE_AA)
    thickness = _text_thickness(font_scale)
    for k in reversed(range(len(order))):
        lx0, ly0, lx1, ly1 = places[k]
        cv2.rectangle(canvas, (lx0, ly0), (lx1 - 1, ly1 - 1), color_for(order[k]), -1)
        (_, th), base = cv2.getTextSize(texts[k], _FONT, font_scale, thickness)
        cv2.putText(canvas, texts[k], (lx0 + 2, ly0 + 2 + th), _FONT, font_scale, (0, 0, 0),
                    thickness, cv2.LINE_AA)
    return canvas


# ---------------------------------------------------------------------------- training pictures
def _class_names(dataset_name):
    from tfmrcnn.data.catalog import MetadataCatalog

    try:
        return list(MetadataCatalog.get(dataset_name).get("thing_classes", None) or [])
    except Exception:  # noqa: BLE001 - names only decorate pictures
        return None


def side_by_side(pictures: Sequence[np.ndarray], gap: int = 4) -> np.ndarray:
    """(H, W_1 + gap + W_2 ..., 3): pictures left to right on white, tops aligned."""
    height = max(p.shape[0] for p in pictures)
    width = sum(p.shape[1] for p in pictures) + gap * (len(pictures) - 1)
    out = np.full((height, width, 3), 255, np.uint8)
    x = 0
    for p in pictures:
        out[:p.shape[0], x:x + p.shape[1]] = p
        x += p.shape[1] + gap
    return out


def make_train_vis_fn(cfg, model, num_images=2):
    """(batch numpy dict, iteration) -> (N, H, W, 3) RGB uint8: for the first `num_images`
    training images of the batch, the ground truth (left) and the model's detections with
    score >= VIS_SCORE_THRESHOLD (right), as the model sees them (resized)."""
    from tfmrcnn.inference.paste import paste_masks_in_image
    from tfmrcnn.inference.postprocess import unbatch_outputs
    from tfmrcnn.inference.predictor import inference_callable

    infer = inference_callable(model)  # shared with evaluation (one tracing)
    names = _class_names(cfg.DATASETS.TRAIN[0])

    def vis_fn(batch, iteration):
        images = batch["images"][:num_images]
        sizes = batch["image_sizes"][:num_images].astype(np.int32)
        outputs = {k: v.numpy() for k, v in infer(images, sizes).items()}
        pictures = []
        for i, out in enumerate(unbatch_outputs(outputs)):
            h, w = sizes[i]
            canvas = images[i, :h, :w].astype(np.uint8)
            real = batch["gt_classes"][i] >= 0
            gt_masks = batch["gt_masks"][i][real, :h, :w] if "gt_masks" in batch else None
            truth = draw_instances(canvas, batch["gt_boxes"][i][real], batch["gt_classes"][i][real],
                                   masks=gt_masks, class_names=names)
            masks = None
            if "masks" in out and len(out["boxes"]):
                masks = paste_masks_in_image(out["masks"], out["boxes"], (h, w)).numpy()
            predicted = draw_instances(canvas, out["boxes"], out["classes"], out["scores"],
                                       masks=masks, class_names=names,
                                       score_threshold=VIS_SCORE_THRESHOLD)
            pictures.append(side_by_side([truth, predicted])[:, :, ::-1])
        hmax = max(p.shape[0] for p in pictures)
        wmax = max(p.shape[1] for p in pictures)
        return np.stack([np.pad(p, ((0, hmax - p.shape[0]), (0, wmax - p.shape[1]), (0, 0)))
                         for p in pictures])

    return vis_fn


def write_val_pictures(cfg, model, num_images: int) -> List[str]:
    """OUTPUT_DIR/vis/<image>.png for the first validation images (rank 0 only)."""
    from tfmrcnn.data.catalog import DatasetCatalog
    from tfmrcnn.data.image_io import read_image
    from tfmrcnn.inference.predictor import Predictor

    if num_images <= 0 or not cfg.DATASETS.TEST:
        return []
    name = cfg.DATASETS.TEST[0]
    predictor = Predictor(cfg, model)  # the same resize -> model -> rescale -> paste as predict
    names = _class_names(name)
    out_dir = os.path.join(cfg.OUTPUT_DIR, "vis")
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for record in DatasetCatalog.get(name)[:num_images]:
        image = read_image(record["file_name"])  # (H, W, 3) uint8 BGR
        result = predictor([image])[0]
        drawn = draw_instances(image, result["boxes"], result["classes"], result["scores"],
                               masks=result.get("masks"), class_names=names,
                               score_threshold=VIS_SCORE_THRESHOLD)
        stem = os.path.splitext(os.path.basename(record["file_name"]))[0]
        path = os.path.join(out_dir, stem + ".png")
        cv2.imwrite(path, drawn)
        written.append(path)
    logger.info("Wrote %d prediction pictures to %s", len(written), out_dir)
    return written
