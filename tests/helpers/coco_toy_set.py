"""A tiny hand-made COCO instances set for the evaluation tests (no dependency on tfmrcnn.data).

Five images of different sizes; categories with non-contiguous ids (3, 7, 12) plus one category
(20) without any ground truth; polygons of squares, triangles and octagons; one crowd region
given as uncompressed RLE; one image without annotations.
"""
import json
import math
import os

import numpy as np
import pycocotools.mask as mask_util

CATEGORIES = [{"id": 3, "name": "square"}, {"id": 7, "name": "triangle"},
              {"id": 12, "name": "octagon"}, {"id": 20, "name": "unused"}]
CONTIGUOUS = {c["id"]: i for i, c in enumerate(sorted(CATEGORIES, key=lambda c: c["id"]))}

IMAGES = [  # (id, height, width)
    (11, 48, 64), (4, 64, 48), (27, 40, 40), (5, 56, 72), (9, 32, 32),
]


def _square(x, y, s):
    return [x, y, x + s, y, x + s, y + s, x, y + s]


def _triangle(x, y, s):
    return [x, y + s, x + s, y + s, x + s / 2.0, y]


def _octagon(cx, cy, r):
    pts = []
    for k in range(8):
        a = 2 * math.pi * (k + 0.5) / 8
        pts += [cx + r * math.cos(a), cy + r * math.sin(a)]
    return pts


# (image id, category id, polygon)
OBJECTS = [
    (11, 3, _square(4, 6, 20)), (11, 7, _triangle(30.5, 10.25, 16)), (11, 12, _octagon(50, 36, 9)),
    (4, 12, _octagon(20, 20, 12)), (4, 3, _square(10.5, 40, 14)), (4, 3, _square(30, 44, 12)),
    (27, 7, _triangle(2, 2, 30)),
    (5, 3, _square(40, 8, 28)), (5, 12, _octagon(16, 30, 10)), (5, 7, _triangle(44, 38, 14)),
]
CROWD = (27, 3, (24, 22, 14, 16))  # image 27: a crowd square region (x, y, w, h) given as RLE


def _uncompressed_rle(mask):
    """COCO's uncompressed RLE of a (H, W) 0/1 mask: run lengths of the column-major order."""
    flat = mask.T.reshape(-1)
    counts, current, run = [], 0, 0
    for v in flat:
        if v != current:
            counts.append(run)
            current, run = v, 0
        run += 1
    counts.append(run)
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def build_coco_dict():
    sizes = {i: (h, w) for i, h, w in IMAGES}
    images = [{"id": i, "height": h, "width": w, "file_name": f"{i:04d}.png"} for i, h, w in IMAGES]
    annotations = []
    for image_id, cat, poly in OBJECTS:
        h, w = sizes[image_id]
        rle = mask_util.frPyObjects([poly], h, w)[0]
        xs, ys = poly[0::2], poly[1::2]
        annotations.append({
            "id": len(annotations) + 1, "image_id": image_id, "category_id": cat,
            "segmentation": [poly], "area": float(mask_util.area(rle)), "iscrowd": 0,
            "bbox": [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]})
    image_id, cat, (x, y, bw, bh) = CROWD
    h, w = sizes[image_id]
    crowd = np.zeros((h, w), np.uint8)
    crowd[y:y + bh, x:x + bw] = 1
    annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": cat,
                        "segmentation": _uncompressed_rle(crowd), "area": float(crowd.sum()),
                        "iscrowd": 1, "bbox": [x, y, bw, bh]})
    return {"images": images, "annotations": annotations, "categories": CATEGORIES}


def write_coco_set(directory, with_images=False):
    """Write annotations.json (and PNG images whose pixels all equal a per-image code) to directory.

    Returns (json_path, image_root).
    """
    os.makedirs(directory, exist_ok=True)
    data = build_coco_dict()
    json_path = os.path.join(directory, "annotations.json")
    with open(json_path, "w") as f:
        json.dump(data, f)
    if with_images:
        import cv2

        for code, img in enumerate(data["images"]):
            pixels = np.full((img["height"], img["width"], 3), image_code(code), np.uint8)
            cv2.imwrite(os.path.join(directory, img["file_name"]), pixels)
    return json_path, directory


def image_code(index):
    """Grey level identifying the index-th image (survives resizing: the image is constant)."""
    return 10 * (index + 1)


def gt_masks(data, image_id):
    """(non-crowd annotations of the image, (D, H, W) bool masks rasterised from their polygons)."""
    img = next(i for i in data["images"] if i["id"] == image_id)
    anns = [a for a in data["annotations"] if a["image_id"] == image_id and not a["iscrowd"]]
    masks = np.zeros((len(anns), img["height"], img["width"]), bool)
    for k, a in enumerate(anns):
        rle = mask_util.merge(mask_util.frPyObjects(a["segmentation"], img["height"], img["width"]))
        masks[k] = mask_util.decode(rle).astype(bool)
    return anns, masks


def perfect_outputs(data, image_id):
    """Post-processed detections equal to the ground truth (score 1) of one image."""
    anns, masks = gt_masks(data, image_id)
    boxes = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                       a["bbox"][1] + a["bbox"][3]] for a in anns], np.float32).reshape(-1, 4)
    return {"boxes": boxes, "scores": np.ones(len(anns), np.float32),
            "classes": np.array([CONTIGUOUS[a["category_id"]] for a in anns], np.int32),
            "masks": masks}


def dataset_inputs(data, image_ids=None):
    """Evaluator inputs (image_id, height, width) in the json's image order."""
    return [{"image_id": i["id"], "height": i["height"], "width": i["width"]}
            for i in data["images"] if image_ids is None or i["id"] in image_ids]


class FakeModel:
    """Returns the ground truth of the image it is shown (recognised by its grey level), as a
    detector would: boxes in resized-image pixels, all-ones 28x28 masks, padded rows.

    jitter > 0 moves boxes by up to jitter resized pixels and draws scores, from a generator
    seeded by the image id (the same on every process).
    """

    def __init__(self, data, max_dets=5, jitter=0.0):
        self.data, self.max_dets, self.jitter, self.calls = data, max_dets, jitter, 0

    def inference(self, images, image_sizes):
        self.calls += 1
        b = len(images)
        out = {"boxes": np.zeros((b, self.max_dets, 4), np.float32),
               "scores": np.zeros((b, self.max_dets), np.float32),
               "classes": np.zeros((b, self.max_dets), np.int32),
               "masks": np.zeros((b, self.max_dets, 28, 28), np.float32),
               "num_detections": np.zeros(b, np.int32)}
        for k in range(b):
            index = int(round(images[k, 0, 0, 0] / image_code(0))) - 1
            img = self.data["images"][index]
            gt = perfect_outputs(self.data, img["id"])
            d = len(gt["boxes"])
            sy = image_sizes[k][0] / img["height"]
            sx = image_sizes[k][1] / img["width"]
            out["boxes"][k, :d] = gt["boxes"] * np.array([sx, sy, sx, sy], np.float32)
            out["scores"][k, :d] = 1.0
            if self.jitter:
                rng = np.random.default_rng(img["id"])
                out["boxes"][k, :d] += rng.uniform(-self.jitter, self.jitter, (d, 4))
                out["scores"][k, :d] = rng.uniform(0.3, 1.0, d)
            out["classes"][k, :d] = gt["classes"]
            out["masks"][k, :d] = 1.0
            out["num_detections"][k] = d
        return out


def run_fake_evaluation(json_path, image_root, output_dir, batch_size=2):
    """inference_on_dataset of a jittered FakeModel on the toy set (this process's shard).

    Returns (metrics, number of model calls). Used in-process and by dist_eval_job.py.
    """
    from tfmrcnn.config import get_cfg
    from tfmrcnn.evaluation.coco_evaluation import COCOEvaluator
    from tfmrcnn.evaluation.inference import inference_on_dataset

    cfg = get_cfg()
    cfg.INPUT.MIN_SIZE_TEST = 100
    cfg.INPUT.MAX_SIZE_TEST = 150
    model = FakeModel(build_coco_dict(), jitter=2.0)
    evaluator = COCOEvaluator((json_path, image_root), output_dir, verbose=False)
    metrics = inference_on_dataset(model, (json_path, image_root), cfg, evaluator,
                                   batch_size=batch_size, progress=False)
    return metrics, model.calls
