"""tfmrcnn.data.catalog: registry behaviour, built-in COCO paths and errors, shapes on demand."""

import json
import os

import pytest

from tfmrcnn.data import catalog
from tfmrcnn.data.catalog import (
    COCO_CATEGORIES, DatasetCatalog, MetadataCatalog, register_coco_instances)
from tfmrcnn.data.shapes import shapes_paths


@pytest.fixture
def datasets_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("TFMRCNN_DATASETS", str(tmp_path))
    monkeypatch.delenv("TFMRCNN_SHAPES_DIR", raising=False)
    return tmp_path


@pytest.fixture
def small_shapes(monkeypatch):
    for key, value in {"num_train": 3, "num_val": 2, "seed": 4}.items():
        monkeypatch.setitem(catalog.SHAPES_DEFAULTS, key, value)


def test_register_get_and_duplicates():
    records = [{"file_name": "x", "height": 1, "width": 1, "image_id": 1, "annotations": []}]
    DatasetCatalog.register("test_catalog_toy", lambda: list(records))
    try:
        assert DatasetCatalog.get("test_catalog_toy") == records
        assert "test_catalog_toy" in DatasetCatalog.list()
        with pytest.raises(KeyError, match="already registered"):
            DatasetCatalog.register("test_catalog_toy", lambda: [])
    finally:
        DatasetCatalog.remove("test_catalog_toy")
    assert "test_catalog_toy" not in DatasetCatalog


def test_unknown_dataset_suggests_a_name():
    with pytest.raises(KeyError, match="Did you mean 'coco_2017_val'"):
        DatasetCatalog.get("coco_2017_vall")


def test_registered_function_must_return_a_list():
    DatasetCatalog.register("test_catalog_bad", lambda: None)
    try:
        with pytest.raises(TypeError, match="test_catalog_bad"):
            DatasetCatalog.get("test_catalog_bad")
    finally:
        DatasetCatalog.remove("test_catalog_bad")


def test_metadata_attributes_and_missing_key_error():
    meta = MetadataCatalog.get("test_catalog_meta").set(thing_classes=["a"])
    try:
        assert MetadataCatalog.get("test_catalog_meta") is meta
        assert meta.thing_classes == ["a"] and meta.get("nope", 3) == 3
        with pytest.raises(AttributeError, match="test_catalog_meta.*thing_class'.*thing_classes"):
            meta.thing_class
    finally:
        MetadataCatalog.remove("test_catalog_meta")


def test_builtin_coco_metadata():
    for name in ("coco_2017_train", "coco_2017_val"):
        meta = MetadataCatalog.get(name)
        assert len(meta.thing_classes) == 80 and meta.evaluator_type == "coco"
        ids = sorted(meta.thing_dataset_id_to_contiguous_id)
        assert ids[0] == 1 and ids[-1] == 90 and len(ids) == 80
        assert [meta.thing_dataset_id_to_contiguous_id[i] for i in ids] == list(range(80))
        assert meta.thing_classes[0] == "person" and meta.thing_classes[-1] == "toothbrush"
        assert meta.thing_contiguous_id_to_dataset_id[79] == 90
    assert len({c["id"] for c in COCO_CATEGORIES}) == 80


def test_missing_coco_names_path_and_layout(datasets_dir):
    expected = os.path.join(str(datasets_dir), "coco", "annotations", "instances_val2017.json")
    with pytest.raises(FileNotFoundError) as err:
        DatasetCatalog.get("coco_2017_val")
    assert expected in str(err.value) and "train2017" in str(err.value)
    with pytest.raises(FileNotFoundError, match="instances_train2017.json"):
        MetadataCatalog.get("coco_2017_train").json_file


def test_builtin_coco_loads_from_detectron2_layout(datasets_dir):
    coco = datasets_dir / "coco"
    (coco / "annotations").mkdir(parents=True)
    (coco / "val2017").mkdir()
    data = {"images": [{"id": 139, "file_name": "000000000139.jpg", "height": 426, "width": 640}],
            "annotations": [{"id": 1, "image_id": 139, "category_id": 90, "iscrowd": 0,
                             "bbox": [1.0, 2.0, 30.0, 40.0], "area": 1200.0,
                             "segmentation": [[1.0, 2.0, 31.0, 2.0, 31.0, 42.0]]}],
            "categories": COCO_CATEGORIES}
    (coco / "annotations" / "instances_val2017.json").write_text(json.dumps(data))
    dicts = DatasetCatalog.get("coco_2017_val")
    assert dicts[0]["file_name"] == str(coco / "val2017" / "000000000139.jpg")
    assert dicts[0]["annotations"][0]["category_id"] == 79  # toothbrush, the last class
    assert MetadataCatalog.get("coco_2017_val").image_root == str(coco / "val2017")


def test_shapes_generated_on_demand_under_datasets_root(datasets_dir, small_shapes):
    dicts = DatasetCatalog.get("shapes_val")
    root = datasets_dir / "shapes"
    assert len(dicts) == 2 and os.path.isfile(root / "STAMP.json")
    assert all(d["file_name"].startswith(str(root / "val")) for d in dicts)
    meta = MetadataCatalog.get("shapes_val")
    assert meta.thing_classes == ["circle", "square", "triangle"]
    assert meta.thing_dataset_id_to_contiguous_id == {1: 0, 2: 1, 3: 2}
    assert meta.json_file == str(root / "annotations" / "instances_val.json")
    assert len(DatasetCatalog.get("shapes_train")) == 3


def test_shapes_dir_override_and_lazy_metadata(datasets_dir, small_shapes, tmp_path, monkeypatch):
    monkeypatch.setenv("TFMRCNN_SHAPES_DIR", str(tmp_path / "elsewhere"))
    # Reading the json path alone generates the set (an evaluator may ask for it first).
    json_file = MetadataCatalog.get("shapes_train").json_file
    assert json_file == str(tmp_path / "elsewhere" / "annotations" / "instances_train.json")
    assert os.path.isfile(json_file)


def test_register_coco_instances(tmp_path):
    from tfmrcnn.data.shapes import generate_shapes_dataset

    root = str(tmp_path / "s")
    generate_shapes_dataset(root, 2, 1, seed=2)
    json_file, image_root = shapes_paths(root, "train")
    register_coco_instances("test_catalog_custom", {"note": "x"}, json_file, image_root)
    try:
        meta = MetadataCatalog.get("test_catalog_custom")
        assert (meta.json_file, meta.image_root, meta.evaluator_type, meta.note) == (
            json_file, image_root, "coco", "x")
        assert len(DatasetCatalog.get("test_catalog_custom")) == 2
        assert meta.thing_classes == ["circle", "square", "triangle"]  # set by the loader
    finally:
        DatasetCatalog.remove("test_catalog_custom")
        MetadataCatalog.remove("test_catalog_custom")


def test_custom_json_under_a_coco_name_sets_its_own_classes(datasets_dir):
    coco = datasets_dir / "coco"
    (coco / "annotations").mkdir(parents=True)
    (coco / "train2017").mkdir()
    cats = [{"id": 1, "name": "cat"}, {"id": 5, "name": "dog"}, {"id": 90, "name": "fox"}]
    data = {"images": [{"id": 1, "file_name": "a.jpg", "height": 20, "width": 30}],
            "annotations": [{"id": 7, "image_id": 1, "category_id": 90, "iscrowd": 0,
                             "bbox": [1.0, 2.0, 10.0, 10.0], "area": 100.0,
                             "segmentation": [[1.0, 2.0, 11.0, 2.0, 11.0, 12.0]]}],
            "categories": cats}
    (coco / "annotations" / "instances_train2017.json").write_text(json.dumps(data))
    try:
        dicts = DatasetCatalog.get("coco_2017_train")
        meta = MetadataCatalog.get("coco_2017_train")
        assert dicts[0]["annotations"][0]["category_id"] == 2
        assert meta.thing_classes == ["cat", "dog", "fox"]
        assert meta.thing_contiguous_id_to_dataset_id == {0: 1, 1: 5, 2: 90}
        assert meta.json_file == str(coco / "annotations" / "instances_train2017.json")
    finally:  # back to the built-in table for the other tests
        classes, to_contiguous, to_dataset = catalog.category_maps(COCO_CATEGORIES)
        MetadataCatalog.get("coco_2017_train").set(
            thing_classes=classes, thing_dataset_id_to_contiguous_id=to_contiguous,
            thing_contiguous_id_to_dataset_id=to_dataset)
