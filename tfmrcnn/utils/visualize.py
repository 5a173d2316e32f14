"""Pictures of instance predictions: translucent masks, boxes, class names and scores.

Used by `tfmrcnn-predict`, the demo and training: TensorBoard pictures of training images
(`make_train_vis_fn`) and OUTPUT_DIR/vis/*.png of validation images (`write_val_pictures`).
"""
from __future__ import annotations

import logging
import os
from typing import List, Optional, Sequence

import cv2
import numpy as np

logger = logging.getLogger(__name__)
# training pictures show detections from this score (detectron2's demo default); lower, the
# per-class NMS leaves second guesses of another class on the same object in the picture
VIS_SCORE_THRESHOLD = 0.5


def color_for(index: int) -> tuple:
    """A stable, well-separated BGR colour for instance `index` (golden-ratio hue walk)."""
    hue = (index * 0.618033988749895) % 1.0
    hsv = np.uint8([[[int(hue * 179), 200, 255]]])
    b, g, r = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0]
    return int(b), int(g), int(r)


def draw_instances(image_bgr: np.ndarray, boxes: np.ndarray, classes: np.ndarray,
                   scores: Optional[np.ndarray] = None, masks: Optional[np.ndarray] = None,
                   class_names: Optional[Sequence[str]] = None, alpha: float = 0.45,
                   score_threshold: float = 0.0) -> np.ndarray:
    """Return a copy of `image_bgr` (H, W, 3) uint8 with the instances drawn on it.

    boxes (D, 4) xyxy in image pixels; classes (D,) contiguous labels; scores (D,);
    masks (D, H, W) bool, already pasted at the image's resolution.
    """
    canvas = np.ascontiguousarray(image_bgr, dtype=np.uint8).copy()
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    keep = np.ones(len(boxes), bool) if scores is None else np.asarray(scores) >= score_threshold
    order = np.argsort(-np.asarray(scores)) if scores is not None else np.arange(len(boxes))
    order = [i for i in order if keep[i]]
    # masks first, the largest below, so that small instances stay visible
    if masks is not None and len(order):
        areas = [(masks[i].sum(), i) for i in order]
        for _, i in sorted(areas, reverse=True):
            m = masks[i].astype(bool)
            color = np.array(color_for(i), np.float32)
            canvas[m] = (canvas[m] * (1 - alpha) + color * alpha).astype(np.uint8)
            contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL,
                                           cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(canvas, contours, -1, color_for(i), 1, cv2.LINE_AA)
    h, w = canvas.shape[:2]
    font_scale = max(0.35, min(h, w) / 900.0)
    for i in order:
        x0, y0, x1, y1 = [int(round(v)) for v in boxes[i]]
        color = color_for(i)
        cv2.rectangle(canvas, (x0, y0), (x1, y1), color, 1 + min(h, w) // 500, cv2.LINE_AA)
        label = str(int(classes[i])) if class_names is None else class_names[int(classes[i])]
        if scores is not None:
            label = f"{label} {float(scores[i]):.0%}"
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
        ty = max(y0, th + base + 1)
        cv2.rectangle(canvas, (x0, ty - th - base - 1), (x0 + tw + 2, ty), color, -1)
        cv2.putText(canvas, label, (x0 + 1, ty - base), cv2.FONT_HERSHEY_SIMPLEX, font_scale,
                    (0, 0, 0), 1, cv2.LINE_AA)
    return canvas


# ---------------------------------------------------------------------------- training pictures
def _class_names(dataset_name):
    from tfmrcnn.data.catalog import MetadataCatalog

    try:
        return list(MetadataCatalog.get(dataset_name).get("thing_classes", None) or [])
    except Exception:  # noqa: BLE001 - names only decorate pictures
        return None


def make_train_vis_fn(cfg, model, num_images=2):
    """(batch numpy dict, iteration) -> RGB pictures of predictions on training images."""
    from tfmrcnn.inference.postprocess import unbatch_outputs

    infer = model.make_inference_fn()
    names = _class_names(cfg.DATASETS.TRAIN[0])

    def vis_fn(batch, iteration):
        images = batch["images"][:num_images]
        sizes = batch["image_sizes"][:num_images].astype(np.int32)
        outputs = {k: v.numpy() for k, v in infer(images, sizes).items()}
        pictures = []
        for i, out in enumerate(unbatch_outputs(outputs)):
            h, w = sizes[i]
            canvas = images[i, :h, :w].astype(np.uint8)
            drawn = draw_instances(canvas, out["boxes"], out["classes"], out["scores"],
                                   class_names=names, score_threshold=VIS_SCORE_THRESHOLD)
            pictures.append(drawn[:, :, ::-1])
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
