"""A tiny randomly initialised Mask R-CNN saved as a model directory, and a few test images."""
import os
import pathlib

import cv2
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]
# small images and few detections keep the model fast; threshold 0 so random weights detect
TINY_OVERRIDES = ["MODEL.ROI_HEADS.SCORE_THRESH_TEST=0.0", "INPUT.MIN_SIZE_TEST=64",
                  "INPUT.MAX_SIZE_TEST=96", "TEST.DETECTIONS_PER_IMAGE=8",
                  "MODEL.RPN.POST_NMS_TOPK_TEST=50"]
IMAGE_SHAPES = {"a.png": (70, 100), "b.png": (90, 60)}


def make_model_dir(path, overrides=()):
    """Write config.yaml + model_final.npz of a fresh shapes_demo_cpu model; returns its cfg."""
    import tensorflow as tf

    from tfmrcnn.checkpoint.weights_io import save_weights
    from tfmrcnn.config import load_config
    from tfmrcnn.modeling.meta_arch import GeneralizedRCNN

    cfg = load_config(str(ROOT / "configs" / "shapes_demo_cpu.yaml"),
                      TINY_OVERRIDES + list(overrides))
    tf.random.set_seed(0)
    model = GeneralizedRCNN(cfg)
    os.makedirs(path, exist_ok=True)
    save_weights(os.path.join(path, "model_final.npz"), model)
    with open(os.path.join(path, "config.yaml"), "w") as f:
        f.write(cfg.dump())
    return cfg


def write_images(folder, corrupt=True):
    """Random-texture PNGs of IMAGE_SHAPES (+ c.png, not an image); returns {name: BGR array}."""
    rng = np.random.default_rng(0)
    os.makedirs(folder, exist_ok=True)
    images = {}
    for name, (h, w) in IMAGE_SHAPES.items():
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        image[h // 4:h // 2, w // 3:w // 2] = (40, 200, 90)  # a flat patch, something to find
        cv2.imwrite(os.path.join(folder, name), image)
        images[name] = image
    if corrupt:
        with open(os.path.join(folder, "c.png"), "wb") as f:
            f.write(b"\x89PNG this is not an image")
    return images
