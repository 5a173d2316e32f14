"""Benchmark section: the training input pipeline (tfmrcnn.data.pipeline) in images per second.

Synthetic set written to a temporary directory: JPEG images of COCO's typical size (480x640,
quick: 240x320) with 7 polygon instances each (COCO's mean), resized with detectron2's training
rule (short side 640..800, max 1333; quick: 320, 533). Rows:
  stage=decode      cv2.imdecode of one JPEG
  stage=resize      Pillow's bilinear resize of one decoded image (tfmrcnn.data.resize)
  stage=masks       transform + rasterise the polygons of one image at the resized size
  stage=pipeline    batches of 2 drawn from build_train_dataset, for DATALOADER.NUM_WORKERS
                    1, 2 and 4 (images/s over all of it: decode, resize, masks, pad, batch)
The pipeline has to deliver more images/s than one GPU trains (detectron2 R50-FPN: ~20-25 img/s
on a V100) for the GPU not to wait.
"""
import gc
import itertools
import os
import tempfile
import time

import cv2
import numpy as np


def _write_set(root, n, hw, instances=7, seed=0):
    rng = np.random.default_rng(seed)
    h, w = hw
    dicts = []
    for i in range(n):
        img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        img = cv2.GaussianBlur(img, (7, 7), 3)
        path = os.path.join(root, f"{i:05d}.jpg")
        cv2.imwrite(path, img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        anns = []
        for _ in range(instances):
            cx, cy = rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h
            r = rng.uniform(10, min(h, w) / 4)
            ang = np.sort(rng.uniform(0, 2 * np.pi, 12))
            poly = np.stack([cx + r * np.cos(ang), cy + r * np.sin(ang)], 1)
            x0, y0 = poly.min(0)
            x1, y1 = poly.max(0)
            anns.append({"bbox": [x0, y0, x1 - x0, y1 - y0], "category_id": int(rng.integers(80)),
                         "iscrowd": 0, "segmentation": [poly.reshape(-1).tolist()]})
        dicts.append({"file_name": path, "height": h, "width": w, "image_id": i,
                      "annotations": anns})
    return dicts


def run(args):
    from tfmrcnn.config import get_cfg
    from tfmrcnn.data import transforms as T
    from tfmrcnn.data.pipeline import build_train_dataset
    from tfmrcnn.data.resize import resize_image, resize_shortest_edge_shape

    quick = getattr(args, "quick", False)
    hw = (240, 320) if quick else (480, 640)
    n = 16 if quick else 64
    short, max_size = ((320,), 533) if quick else ((640, 672, 704, 736, 768, 800), 1333)
    rows = []
    with tempfile.TemporaryDirectory() as root:
        dicts = _write_set(root, n, hw)
        data = open(dicts[0]["file_name"], "rb").read()
        buf = np.frombuffer(data, np.uint8)
        t = args.time(lambda: cv2.imdecode(buf, cv2.IMREAD_COLOR))
        rows.append({"stage": "decode", "image": "%dx%d" % hw, "ms_per_image": t * 1e3})
        image = cv2.imdecode(buf, cv2.IMREAD_COLOR)
        new_h, new_w = resize_shortest_edge_shape(hw[0], hw[1], short[-1], max_size)
        t = args.time(lambda: resize_image(image, new_h, new_w))
        rows.append({"stage": "resize", "image": f"{new_h}x{new_w}", "ms_per_image": t * 1e3})
        params = T.TransformParams(hw[0], hw[1], new_h, new_w, True)
        t = args.time(lambda: T.transform_annotations(dicts[0]["annotations"], params))
        rows.append({"stage": "masks", "image": f"{new_h}x{new_w}", "ms_per_image": t * 1e3})

        cfg = get_cfg()
        cfg.SOLVER.IMS_PER_BATCH = 2
        cfg.INPUT.MIN_SIZE_TRAIN = short
        cfg.INPUT.MAX_SIZE_TRAIN = max_size
        num_batches = 8 if quick else 40
        for workers in (1, 2, 4):
            cfg.DATALOADER.NUM_WORKERS = workers
            ds = build_train_dataset(cfg, dicts, 0, 1, seed=0)
            it = iter(ds)
            next(it)                                     # start-up (threads, tracing)
            start = time.perf_counter()
            for b in itertools.islice(it, num_batches):
                b["images"].numpy()
            dt = time.perf_counter() - start
            rows.append({"stage": "pipeline", "workers": workers,
                         "images_per_s": 2 * num_batches / dt})
            del it, ds                  # stop the prefetching threads before the files go
            gc.collect()
    return rows
