"""A model directory: what `tfmrcnn-predict` / `tfmrcnn-export` load.

Convention
----------
``DIR/config.yaml`` is our config tree (`tfmrcnn.config.load_config`), ``DIR/model_final.npz``
the weights (`tfmrcnn.checkpoint.weights_io`), both written by training or `tfmrcnn-convert`.
``DIR/class_names.txt`` (optional) holds one class name per line, contiguous label order.
``DIR/classes.json`` (written by training and conversion when the classes are known) holds the
name and dataset category id of each label and the data sets they came from
(`tfmrcnn.data.class_metadata`): a model folder needs no dataset registration to be used.

Class names of label k, first source that has exactly NUM_CLASSES names:
  1. an explicit names file (``--class-names``), one name per line;
  2. ``DIR/class_names.txt``;
  3. ``DIR/classes.json``;
  4. ``thing_classes`` of the MetadataCatalog entry of ``DATASETS.TRAIN[0]``;
  5. the 80 COCO names when NUM_CLASSES == 80 (a converted COCO model);
  6. none: pictures show the numeric label.

Category id written for label k in COCO results: ``DIR/classes.json``'s when it has
NUM_CLASSES entries, else ``thing_contiguous_id_to_dataset_id`` of ``DATASETS.TRAIN[0]``'s
metadata when it has NUM_CLASSES entries, else the COCO ids when NUM_CLASSES == 80, else
``k + 1`` (ids 1..K, the usual COCO-style numbering).
"""
from __future__ import annotations

import os
from typing import List, Mapping, Optional, Sequence, Tuple

__all__ = ["CONFIG_FILENAME", "WEIGHTS_FILENAME", "CLASS_NAMES_FILENAME", "CLASSES_FILENAME",
           "ModelDirError", "model_dir_paths", "write_config", "write_model_dir", "load_model",
           "read_class_names", "write_classes", "read_classes", "resolve_class_names",
           "label_to_category_id"]

WEIGHTS_FILENAME = "model_final.npz"
CONFIG_FILENAME = "config.yaml"
CLASS_NAMES_FILENAME = "class_names.txt"
CLASSES_FILENAME = "classes.json"


class ModelDirError(FileNotFoundError):
    """The model directory lacks config.yaml or model_final.npz."""


def model_dir_paths(model_dir: str) -> Tuple[str, str]:
    """(config path, weights path) of a model directory; raises ModelDirError naming what is missing."""
    if not os.path.isdir(model_dir):
        raise ModelDirError(f"model directory {model_dir} does not exist")
    config = os.path.join(model_dir, CONFIG_FILENAME)
    weights = os.path.join(model_dir, WEIGHTS_FILENAME)
    missing = [p for p in (config, weights) if not os.path.isfile(p)]
    if missing:
        raise ModelDirError(
            f"{' and '.join(missing)} not found. A model directory holds {CONFIG_FILENAME} and "
            f"{WEIGHTS_FILENAME}, as written by training (OUTPUT_DIR) or by "
            f"`tfmrcnn-convert MODEL.pkl --output DIR`.")
    return config, weights


def write_config(model_dir: str, config_text: str) -> str:
    """Write DIR/config.yaml (atomically); returns its path."""
    from tfmrcnn.utils.file_io import atomic_write

    path = os.path.join(model_dir, CONFIG_FILENAME)
    return atomic_write(path, lambda f: f.write(config_text.encode("utf-8")))


def write_model_dir(model_dir: str, named_arrays: Mapping, config_text: str,
                    meta: Optional[dict] = None) -> Tuple[str, str]:
    """Write a complete model directory: the weights file, then config.yaml.

    Returns (config path, weights path), like `model_dir_paths`.
    """
    from tfmrcnn.checkpoint.weights_io import save_weights

    weights = save_weights(os.path.join(model_dir, WEIGHTS_FILENAME), named_arrays, meta)
    return write_config(model_dir, config_text), weights


def load_model(model_dir: str, overrides: Sequence[str] = ()):
    """(cfg frozen, GeneralizedRCNN with the weights of DIR/model_final.npz).

    overrides: "KEY=VALUE" (or "KEY", "VALUE") strings merged after DIR/config.yaml.
    Every model variable must be in the weights file (a model dir holds a complete detector).
    """
    config_path, weights_path = model_dir_paths(model_dir)  # before the slow TF imports
    from tfmrcnn.checkpoint.weights_io import load_weights
    from tfmrcnn.config import load_config
    from tfmrcnn.modeling.meta_arch import GeneralizedRCNN

    cfg = load_config(config_path, list(overrides))
    model = GeneralizedRCNN(cfg)
    load_weights(model, weights_path)
    return cfg, model


def read_class_names(path: str) -> List[str]:
    """Names from a text file, one per line; blank lines are ignored."""
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def write_classes(model_dir: str, classes) -> str:
    """Write DIR/classes.json (a `ClassMetadata`, atomically); returns its path."""
    from tfmrcnn.utils.file_io import write_json

    return write_json(os.path.join(model_dir, CLASSES_FILENAME), classes.to_json(), indent=1)


def read_classes(model_dir: Optional[str]):
    """DIR/classes.json as a `ClassMetadata`, None when absent; ValueError naming a bad file."""
    import json

    from tfmrcnn.data.class_metadata import ClassMetadata

    path = os.path.join(model_dir, CLASSES_FILENAME) if model_dir else None
    if path is None or not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from None
    return ClassMetadata.from_json(data, path)


def _train_metadata(cfg):
    from tfmrcnn.data.catalog import MetadataCatalog

    train = list(cfg.DATASETS.TRAIN)
    return MetadataCatalog.get(train[0]) if train else None


def resolve_class_names(cfg, model_dir: Optional[str] = None,
                        class_names_file: Optional[str] = None) -> Optional[List[str]]:
    """Class name of each contiguous label (see the module docstring for the order), or None.

    An explicit file with the wrong number of names is an error; other sources are skipped.
    """
    from tfmrcnn.data.catalog import COCO_CATEGORIES

    num_classes = int(cfg.MODEL.ROI_HEADS.NUM_CLASSES)
    if class_names_file:
        names = read_class_names(class_names_file)
        if len(names) != num_classes:
            raise ValueError(f"{class_names_file} has {len(names)} names, the model has "
                             f"MODEL.ROI_HEADS.NUM_CLASSES = {num_classes}")
        return names
    if model_dir and os.path.isfile(os.path.join(model_dir, CLASS_NAMES_FILENAME)):
        names = read_class_names(os.path.join(model_dir, CLASS_NAMES_FILENAME))
        if len(names) == num_classes:
            return names
    classes = read_classes(model_dir)
    if classes is not None and len(classes) == num_classes:
        return list(classes.thing_classes)
    meta = _train_metadata(cfg)
    names = meta.get("thing_classes") if meta is not None else None
    if names is not None and len(names) == num_classes:
        return list(names)
    if num_classes == len(COCO_CATEGORIES):
        return [c["name"] for c in COCO_CATEGORIES]
    return None


def label_to_category_id(cfg, model_dir: Optional[str] = None) -> List[int]:
    """Dataset category id of each contiguous label (see the module docstring)."""
    from tfmrcnn.data.catalog import COCO_CATEGORIES

    num_classes = int(cfg.MODEL.ROI_HEADS.NUM_CLASSES)
    classes = read_classes(model_dir)
    if classes is not None and len(classes) == num_classes:
        return list(classes.category_ids)
    meta = _train_metadata(cfg)
    to_dataset = meta.get("thing_contiguous_id_to_dataset_id") if meta is not None else None
    if to_dataset is not None and len(to_dataset) == num_classes:
        return [int(to_dataset[k]) for k in range(num_classes)]
    if num_classes == len(COCO_CATEGORIES):
        return [c["id"] for c in COCO_CATEGORIES]
    return [k + 1 for k in range(num_classes)]
