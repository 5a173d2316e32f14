"""tfmrcnn.data.class_metadata: the classes kept with a model, from the data sets it trained on."""
import logging

import pytest

from own_coco_set import write_tiny_json
from tfmrcnn.config import get_cfg
from tfmrcnn.data.catalog import DatasetCatalog, MetadataCatalog
from tfmrcnn.data.class_metadata import (ClassMetadata, classes_mismatch, classes_of_datasets,
                                         training_classes)

CATEGORIES = [{"id": 90, "name": "fox"}, {"id": 1, "name": "cat"}, {"id": 5, "name": "dog"}]


@pytest.fixture
def own_sets(tmp_path):
    """Two path-named sets with the categories above, one with other names; loaded."""
    names = {}
    for key, cats in (("a", CATEGORIES), ("b", CATEGORIES),
                      ("other", [dict(c, name=c["name"].upper()) for c in CATEGORIES])):
        json_file = write_tiny_json(str(tmp_path / f"{key}.json"), cats, str(tmp_path / "img"))
        names[key] = f"coco:{json_file}:{tmp_path / 'img'}"
        DatasetCatalog.get(names[key])
    yield names
    for name in names.values():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_json_round_trip():
    classes = ClassMetadata(("cat", "dog"), (1, 90), ("coco:/a.json:/i",), ("/a.json",))
    assert ClassMetadata.from_json(classes.to_json(), "x") == classes
    assert classes.to_json() == {"thing_classes": ["cat", "dog"], "category_ids": [1, 90],
                                 "datasets": ["coco:/a.json:/i"], "json_files": ["/a.json"]}


@pytest.mark.parametrize("data, message", [
    ([], "expected a JSON object"),
    ({"thing_classes": ["a"], "category_ids": ["1"]}, "'category_ids' must be a list of int"),
    ({"thing_classes": ["a"], "category_ids": [True]}, "'category_ids' must be a list of int"),
    ({"thing_classes": "a", "category_ids": [1]}, "'thing_classes' must be a list of str"),
    ({"thing_classes": ["a", "b"], "category_ids": [1]}, "2 class names but 1 category ids"),
    ({"thing_classes": ["a", "b"], "category_ids": [3, 3]}, "category ids repeat"),
    ({"thing_classes": ["a"], "category_ids": [1], "datasets": "x"}, "'datasets' must be"),
])
def test_malformed_file_names_the_source(data, message):
    with pytest.raises(ValueError, match=f"^/m/classes.json: .*{message}"):
        ClassMetadata.from_json(data, "/m/classes.json")


def test_classes_of_a_loaded_set_are_in_label_order(own_sets, tmp_path):
    classes = classes_of_datasets([own_sets["a"], own_sets["b"]])
    assert classes.thing_classes == ("cat", "dog", "fox")   # sorted by id: 1, 5, 90
    assert classes.category_ids == (1, 5, 90)
    assert classes.datasets == (own_sets["a"], own_sets["b"])
    assert classes.json_files == (str(tmp_path / "a.json"), str(tmp_path / "b.json"))


def test_sets_with_different_classes_are_refused(own_sets):
    with pytest.raises(ValueError, match="different categories.*1:cat.*1:CAT"):
        classes_of_datasets([own_sets["a"], own_sets["other"]])


def test_a_set_without_class_metadata_gives_none():
    DatasetCatalog.register("test_class_metadata_bare", lambda: [])
    try:
        assert classes_of_datasets(["test_class_metadata_bare"]) is None
    finally:
        DatasetCatalog.remove("test_class_metadata_bare")
        MetadataCatalog.remove("test_class_metadata_bare")


def test_builtin_coco_table_without_the_files(tmp_path, monkeypatch):
    monkeypatch.setenv("TFMRCNN_DATASETS", str(tmp_path))       # no COCO there
    classes = classes_of_datasets(["coco_2017_train"])
    assert len(classes) == 80 and classes.category_ids[-1] == 90
    assert classes.thing_classes[0] == "person" and classes.json_files == ()


def test_training_classes_need_num_classes_labels(own_sets, caplog):
    cfg = get_cfg()
    cfg.DATASETS.TRAIN = (own_sets["a"],)
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    assert training_classes(cfg).category_ids == (1, 5, 90)
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 80
    with caplog.at_level(logging.WARNING, logger="tfmrcnn.data.class_metadata"):
        assert training_classes(cfg) is None
    assert "has 3 categories but MODEL.ROI_HEADS.NUM_CLASSES is 80" in caplog.text


def test_mismatch_between_model_and_json():
    model = ClassMetadata(("cat", "dog", "fox"), (1, 5, 90), ("coco:/t.json:/i",))
    assert classes_mismatch(model, CATEGORIES) is None
    renumbered = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "fox"}]
    assert classes_mismatch(model, renumbered) is None           # same classes, json's ids
    assert classes_mismatch(None, renumbered) is None            # nothing to compare
    swapped = [{"id": 1, "name": "dog"}, {"id": 5, "name": "cat"}, {"id": 90, "name": "fox"}]
    problem = classes_mismatch(model, swapped)
    assert "label 0 is 'cat' in the model, 'dog' in the json" in problem
    assert "label 1 is 'dog' in the model, 'cat' in the json" in problem
    assert "label 2" not in problem and "coco:/t.json:/i" in problem    # fox matches
    problem = classes_mismatch(model, renumbered[:2])
    assert "the model has 3 classes" in problem and "the json 2 (cat, dog)" in problem
