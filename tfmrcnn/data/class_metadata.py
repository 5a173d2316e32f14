"""The classes a model predicts, written into its model folder so that they travel with it.

A model's output label k (contiguous, 0..K-1) is the k-th category of its training json, the
categories sorted by id (`tfmrcnn.data.coco.category_maps`). Pictures need the name of each
label and COCO results its dataset category id. Both used to be looked up in the dataset
registry of the running process, where a set registered by a training script is unknown:
pictures showed numbers and ids fell back to 1..K (wrong for ids like 1, 5, 90). Training and
conversion therefore write them into the model folder (``classes.json``, see
`tfmrcnn.checkpoint.model_dir`), and predict, eval and export read them from there.

File format (JSON, lists in label order)::

    {"thing_classes": ["circle", "square", "triangle"],      # name of label k
     "category_ids": [1, 5, 90],                              # dataset category id of label k
     "datasets": ["coco:/data/train.json:/data/images"],      # DATASETS.TRAIN that defined them
     "json_files": ["/data/train.json"]}                      # their jsons, when known
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence, Tuple

__all__ = ["ClassMetadata", "classes_of_datasets", "training_classes", "classes_mismatch"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClassMetadata:
    """Names and dataset category ids of a model's labels, and the data sets they came from."""

    thing_classes: Tuple[str, ...]
    category_ids: Tuple[int, ...]
    datasets: Tuple[str, ...] = ()
    json_files: Tuple[str, ...] = ()

    def __post_init__(self):
        if len(self.thing_classes) != len(self.category_ids):
            raise ValueError(f"{len(self.thing_classes)} class names but "
                             f"{len(self.category_ids)} category ids")
        if len(set(self.category_ids)) != len(self.category_ids):
            raise ValueError(f"category ids repeat: {list(self.category_ids)}")

    def __len__(self):
        return len(self.thing_classes)

    def to_json(self) -> dict:
        return {"thing_classes": list(self.thing_classes),
                "category_ids": list(self.category_ids),
                "datasets": list(self.datasets), "json_files": list(self.json_files)}

    @classmethod
    def from_json(cls, data, source: str) -> "ClassMetadata":
        """Parse `to_json`'s dict; any malformed field is a ValueError naming ``source``."""
        def strings(key, required):
            value = data.get(key, None if required else [])
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"{source}: '{key}' must be a list of strings, got {value!r}")
            return tuple(value)

        if not isinstance(data, dict):
            raise ValueError(f"{source}: expected a JSON object, got {type(data).__name__}")
        ids = data.get("category_ids")
        if not isinstance(ids, list) or not all(type(i) is int for i in ids):
            raise ValueError(f"{source}: 'category_ids' must be a list of integers, got {ids!r}")
        try:
            return cls(strings("thing_classes", True), tuple(ids),
                       strings("datasets", False), strings("json_files", False))
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from None


def _classes_of(name: str) -> Optional[ClassMetadata]:
    """The classes a registered set's metadata holds (its json's once loaded), else None."""
    from tfmrcnn.data.catalog import MetadataCatalog

    meta = MetadataCatalog.get(name)
    names = meta.get("thing_classes")
    to_dataset = meta.get("thing_contiguous_id_to_dataset_id")
    if names is None or to_dataset is None or len(to_dataset) != len(names):
        return None
    try:
        json_file = meta.get("json_file")
    except OSError:  # a built-in set whose files are absent: its table is still known
        json_file = None
    return ClassMetadata(tuple(names), tuple(int(to_dataset[k]) for k in range(len(names))),
                         (name,), (json_file,) if json_file else ())


def classes_of_datasets(names: Sequence[str]) -> Optional[ClassMetadata]:
    """The common classes of the named sets, None when one of them has no class metadata.

    Sets whose classes differ raise ValueError: their labels would mean different things
    (detectron2 refuses them too).
    """
    found = [_classes_of(name) for name in names]
    if not found or any(c is None for c in found):
        return None
    first = found[0]
    for name, other in zip(names[1:], found[1:]):
        if (other.thing_classes, other.category_ids) != (first.thing_classes, first.category_ids):
            raise ValueError(
                f"Data sets '{names[0]}' and '{name}' have different categories, so a label "
                f"would mean different classes: {_pairs(first)} vs {_pairs(other)}")
    return ClassMetadata(first.thing_classes, first.category_ids, tuple(names),
                         tuple(j for c in found for j in c.json_files))


def training_classes(cfg) -> Optional[ClassMetadata]:
    """The classes of cfg.DATASETS.TRAIN when they are the model's labels, else None (logged).

    Call it after the sets were loaded (their jsons' categories replace built-in tables).
    None when unknown, or when their number differs from MODEL.ROI_HEADS.NUM_CLASSES (the
    labels beyond the json's categories have no name).
    """
    classes = classes_of_datasets(list(cfg.DATASETS.TRAIN))
    num_classes = int(cfg.MODEL.ROI_HEADS.NUM_CLASSES)
    if classes is None:
        logger.warning("The classes of %s are unknown: pictures will show label numbers",
                       list(cfg.DATASETS.TRAIN))
        return None
    if len(classes) != num_classes:
        logger.warning("%s has %d categories but MODEL.ROI_HEADS.NUM_CLASSES is %d: no class "
                       "names or category ids are kept with the model", list(cfg.DATASETS.TRAIN),
                       len(classes), num_classes)
        return None
    return classes


def _pairs(classes: ClassMetadata) -> str:
    return ", ".join(f"{i}:{n}" for i, n in zip(classes.category_ids, classes.thing_classes))


def classes_mismatch(model: Optional[ClassMetadata],
                     categories: Sequence[Mapping]) -> Optional[str]:
    """Why a model's labels do not match a json's categories (its ``categories`` list), or None
    (also when the model's classes are unknown: nothing to compare).

    Evaluation maps label k to the k-th category of the ground-truth json sorted by id; that is
    right only when the json's categories are the model's, compared by name in label order (the
    ids may differ: results then carry the json's ids, which is what it is scored against).
    """
    if model is None:
        return None
    cats = sorted(categories, key=lambda c: c["id"])
    names = tuple(c["name"] for c in cats)
    if names == model.thing_classes:
        return None
    where = ", ".join(model.datasets) or "its training data"
    if len(names) != len(model):
        return (f"the model has {len(model)} classes ({', '.join(model.thing_classes)}; from "
                f"{where}), the json {len(names)} ({', '.join(names)})")
    diffs = [f"label {k} is '{a}' in the model, '{b}' in the json"
             for k, (a, b) in enumerate(zip(model.thing_classes, names)) if a != b]
    return (f"the json's categories are not the model's (from {where}): " + "; ".join(diffs[:5])
            + (f"; ... {len(diffs) - 5} more" if len(diffs) > 5 else ""))
