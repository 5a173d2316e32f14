"""Benchmark section: mask pasting and the evaluation time split (post-processing vs COCOeval).

Paste problem: 100 masks of 28x28 probabilities (smooth blobs), boxes with sides log-uniform in
16..600 px, on an 800x1333 image.
  ours-packed    tfmrcnn's paste as the Python test-time path runs it: paste_masks_packed
                 (separable bilinear, two taps per axis, gathers, over each box's pixel window
                 only; traced) + unpack_masks into NumPy
  ours-whole     paste_masks_in_image: the same windows padded to whole (R, H, W) masks in the
                 graph (the SavedModel's output)
  cv2-per-mask   the usual shortcut (tensorpack / Detectron1 style): cv2.resize the mask to the
                 rounded box size, threshold, copy into the image; not detectron2's sampling
  d2-grid-numpy  detectron2's algorithm as written there: a full-image sampling grid per mask
                 and 4 corner gathers (slow: timed once on 10 masks and scaled)
mismatch_px is the number of pixels differing from ours-packed (detectron2-exact).

Evaluation split: a synthetic set of images with 100 detections each is post-processed
(rescale + paste + RLE) and scored with COCOeval (bbox + segm); times are per image.
"""
import contextlib
import io
import json
import os
import tempfile
import time

import cv2
import numpy as np

from tfmrcnn.evaluation.coco_evaluation import COCOEvaluator
from tfmrcnn.evaluation import rle
import tensorflow as tf

from tfmrcnn.inference.paste import (paste_masks_in_image, paste_masks_packed, paste_windows,
                                     unpack_masks)
from tfmrcnn.inference.postprocess import detector_postprocess


def make_problem(num=100, image_hw=(800, 1333), seed=0):
    rng = np.random.default_rng(seed)
    h, w = image_hw
    sides = np.exp(rng.uniform(np.log(16), np.log(600), (num, 2)))      # (R, 2) w, h
    x0 = rng.uniform(-20, w - sides[:, 0] / 2)
    y0 = rng.uniform(-20, h - sides[:, 1] / 2)
    boxes = np.stack([x0, y0, x0 + sides[:, 0], y0 + sides[:, 1]], 1).astype(np.float32)
    yy, xx = np.mgrid[0:28, 0:28] / 27.0
    centres = rng.uniform(0.3, 0.7, (num, 2, 1, 1))
    radius = rng.uniform(0.2, 0.45, (num, 1, 1))
    dist = np.sqrt((xx - centres[:, 0]) ** 2 + (yy - centres[:, 1]) ** 2)
    masks = (1.0 / (1.0 + np.exp((dist - radius) * 20))).astype(np.float32)   # (R, 28, 28)
    return masks, boxes, image_hw


def cv2_paste(masks, boxes, image_hw, threshold=0.5):
    """Resize each mask to its integer box with cv2 and paste (the common approximation)."""
    h, w = image_hw
    out = np.zeros((len(masks), h, w), bool)
    for r, (mask, box) in enumerate(zip(masks, boxes)):
        x0, y0 = int(np.floor(box[0] + 0.5)), int(np.floor(box[1] + 0.5))
        x1, y1 = int(np.floor(box[2] + 0.5)), int(np.floor(box[3] + 0.5))
        bw, bh = max(x1 - x0, 1), max(y1 - y0, 1)
        resized = cv2.resize(mask, (bw, bh), interpolation=cv2.INTER_LINEAR) >= threshold
        cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x0 + bw, w), min(y0 + bh, h)
        if cx1 > cx0 and cy1 > cy0:
            out[r, cy0:cy1, cx0:cx1] = resized[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]
    return out


def d2_grid_paste(masks, boxes, image_hw, threshold=0.5):
    """detectron2's formulation: for every mask, a grid over the whole image and 4 gathers."""
    h, w = image_hw
    m = masks.shape[1]
    out = np.zeros((len(masks), h, w), bool)
    ys = np.arange(h, dtype=np.float32) + 0.5
    xs = np.arange(w, dtype=np.float32) + 0.5
    for r, (mask, (x0, y0, x1, y1)) in enumerate(zip(masks, boxes)):
        gx = ((xs - x0) / (x1 - x0) * 2 - 1)[None, :].repeat(h, 0)      # (H, W)
        gy = ((ys - y0) / (y1 - y0) * 2 - 1)[:, None].repeat(w, 1)
        u = ((gx + 1) * m - 1) / 2
        v = ((gy + 1) * m - 1) / 2
        u0, v0 = np.floor(u).astype(np.int64), np.floor(v).astype(np.int64)
        fu, fv = u - u0, v - v0
        value = np.zeros((h, w), np.float32)
        for dv, wv in ((0, 1 - fv), (1, fv)):
            for du, wu in ((0, 1 - fu), (1, fu)):
                rr, cc = v0 + dv, u0 + du
                ok = (rr >= 0) & (rr < m) & (cc >= 0) & (cc < m)
                value += np.where(ok, mask[rr.clip(0, m - 1), cc.clip(0, m - 1)], 0) * wu * wv
        out[r] = value >= threshold
    return out


def _paste_rows(args):
    num, hw = (20, (400, 667)) if args.quick else (100, (800, 1333))
    masks, boxes, hw = make_problem(num, hw)
    packed_fn, whole_fn = tf.function(paste_masks_packed), tf.function(paste_masks_in_image)

    def packed():
        return unpack_masks(*[t.numpy() for t in packed_fn(masks, boxes, hw)], hw)

    ref = packed()
    rows = [{"case": f"paste {num} masks {hw[0]}x{hw[1]}", "impl": "ours-packed",
             "seconds": args.time(packed), "mismatch_px": 0}]
    whole = whole_fn(masks, boxes, hw).numpy()
    rows.append({"case": rows[0]["case"], "impl": "ours-whole",
                 "seconds": args.time(lambda: whole_fn(masks, boxes, hw).numpy()),
                 "mismatch_px": int((whole != ref).sum())})
    rows.append({"case": rows[0]["case"], "impl": "cv2-per-mask",
                 "seconds": args.time(lambda: cv2_paste(masks, boxes, hw)),
                 "mismatch_px": int((cv2_paste(masks, boxes, hw) != ref).sum())})
    # one run on the first 10 masks, scaled to all of them: the full run takes minutes
    sub = min(10, num)
    start = time.perf_counter()
    grid = d2_grid_paste(masks[:sub], boxes[:sub], hw)
    rows.append({"case": rows[0]["case"], "impl": f"d2-grid-numpy ({sub} masks x{num / sub:g})",
                 "seconds": (time.perf_counter() - start) * num / sub,
                 "mismatch_px": int((grid != ref[:sub]).sum())})
    windows = paste_windows(boxes, hw).numpy()
    rows.append({"case": f"RLE {num} pasted masks", "impl": "pycocotools encode (full masks)",
                 "seconds": args.time(lambda: rle.encode_masks(ref))})
    rows.append({"case": f"RLE {num} pasted masks", "impl": "windowed counts + compress",
                 "seconds": args.time(lambda: rle.encode_windowed(ref, windows))})
    return rows


def _synthetic_eval_set(directory, num_images, dets, hw, seed=1):
    """COCO json with 10 square GT per image, and model-like outputs with `dets` detections."""
    rng = np.random.default_rng(seed)
    h, w = hw
    images, anns, outputs = [], [], []
    for i in range(num_images):
        images.append({"id": i + 1, "height": h, "width": w, "file_name": f"{i}.jpg"})
        for _ in range(10):
            x, y = rng.uniform(0, w - 200), rng.uniform(0, h - 200)
            s = rng.uniform(20, 200)
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0,
                         "bbox": [x, y, s, s], "area": s * s,
                         "segmentation": [[x, y, x + s, y, x + s, y + s, x, y + s]]})
        masks, boxes, _ = make_problem(dets, hw, seed=seed + i)
        outputs.append({"boxes": boxes, "scores": np.sort(rng.uniform(0.05, 1, dets))[::-1].copy(),
                        "classes": np.zeros(dets, np.int32), "masks": masks})
    path = os.path.join(directory, "gt.json")
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": anns,
                   "categories": [{"id": 1, "name": "thing"}]}, f)
    return path, images, outputs


def _eval_split_rows(args):
    num_images, dets, hw = (3, 20, (400, 667)) if args.quick else (10, 100, (800, 1333))
    with tempfile.TemporaryDirectory() as tmp:
        json_path, images, outputs = _synthetic_eval_set(tmp, num_images, dets, hw)
        evaluator = COCOEvaluator((json_path, tmp), None, distributed=False, verbose=False,
                                  per_category=False)
        evaluator.reset()
        start = time.perf_counter()
        for img, out in zip(images, outputs):
            # the model saw the image at the same size: rescale is identity, paste is full size
            result = detector_postprocess(out, hw, (img["height"], img["width"]))
            evaluator.process([{"image_id": img["id"]}], [result])
        post = time.perf_counter() - start
        with contextlib.redirect_stdout(io.StringIO()):
            evaluator.evaluate()
    case = f"eval {num_images} images x {dets} dets {hw[0]}x{hw[1]}"
    return [{"case": case, "impl": "postprocess+RLE per image", "seconds": post / num_images},
            {"case": case, "impl": "COCOeval bbox+segm per image",
             "seconds": evaluator.eval_time / num_images}]


def run(args):
    return _paste_rows(args) + _eval_split_rows(args)
