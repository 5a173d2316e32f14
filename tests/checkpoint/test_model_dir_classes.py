"""DIR/classes.json: written and read through tfmrcnn.checkpoint.model_dir, and used for names
and category ids before any dataset registry (a model folder needs no registration)."""
import json

import pytest

from own_coco_set import LABEL_IDS, LABEL_NAMES
from tfmrcnn.checkpoint.model_dir import (CLASSES_FILENAME, label_to_category_id, read_classes,
                                          resolve_class_names, write_classes)
from tfmrcnn.config import load_config
from tfmrcnn.data.class_metadata import ClassMetadata

OWN = ClassMetadata(tuple(LABEL_NAMES), tuple(LABEL_IDS), ("coco:/d/train.json:/d/img",),
                    ("/d/train.json",))


def _cfg(num_classes, train):
    return load_config(overrides=[f"MODEL.ROI_HEADS.NUM_CLASSES={num_classes}",
                                  f"DATASETS.TRAIN={list(train)}"])


def test_write_and_read(tmp_path):
    assert read_classes(str(tmp_path)) is None and read_classes(None) is None
    path = write_classes(str(tmp_path), OWN)
    assert path == str(tmp_path / CLASSES_FILENAME)
    assert json.loads((tmp_path / CLASSES_FILENAME).read_text())["category_ids"] == [1, 5, 90]
    assert read_classes(str(tmp_path)) == OWN


def test_unreadable_file_is_an_error_naming_it(tmp_path):
    (tmp_path / CLASSES_FILENAME).write_text("{not json")
    with pytest.raises(ValueError, match=f"{tmp_path / CLASSES_FILENAME}: not valid JSON"):
        read_classes(str(tmp_path))


def test_unregistered_training_set_keeps_its_names_and_ids(tmp_path):
    """Issue 18: a model trained on a set registered by a wrapper script showed numbers and
    ids 1..K in a process where that set is unknown."""
    cfg = _cfg(3, ["mydata_registered_elsewhere"])
    assert resolve_class_names(cfg, str(tmp_path)) is None
    assert label_to_category_id(cfg, str(tmp_path)) == [1, 2, 3]
    write_classes(str(tmp_path), OWN)
    assert resolve_class_names(cfg, str(tmp_path)) == LABEL_NAMES
    assert label_to_category_id(cfg, str(tmp_path)) == LABEL_IDS


def test_classes_json_comes_before_the_registry_but_after_name_files(tmp_path):
    cfg = _cfg(3, ["shapes_train"])      # registered: circle, square, triangle with ids 1, 2, 3
    write_classes(str(tmp_path), OWN)
    assert resolve_class_names(cfg, str(tmp_path)) == LABEL_NAMES
    assert label_to_category_id(cfg, str(tmp_path)) == LABEL_IDS
    (tmp_path / "class_names.txt").write_text("x\ny\nz\n")
    assert resolve_class_names(cfg, str(tmp_path)) == ["x", "y", "z"]
    assert label_to_category_id(cfg, str(tmp_path)) == LABEL_IDS


def test_classes_json_of_another_size_is_skipped(tmp_path):
    cfg = _cfg(4, ["mydata_registered_elsewhere"])
    write_classes(str(tmp_path), OWN)
    assert resolve_class_names(cfg, str(tmp_path)) is None
    assert label_to_category_id(cfg, str(tmp_path)) == [1, 2, 3, 4]
