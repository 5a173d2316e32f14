"""Data sets by path (coco:JSON:IMAGES) and where the dataset roots resolve (tfmrcnn.data.catalog).
"""
import logging
import os

import pytest

from own_coco_set import write_tiny_json
from tfmrcnn.config import get_cfg
from tfmrcnn.data import catalog
from tfmrcnn.data.catalog import (DatasetCatalog, MetadataCatalog, absolute_dataset_names,
                                  datasets_root, parse_path_name, shapes_root)

CATEGORIES = [{"id": 90, "name": "fox"}, {"id": 1, "name": "cat"}, {"id": 5, "name": "dog"}]


@pytest.fixture
def forget_path_names():
    """Path names registered by a test are removed afterwards (the registry is global)."""
    before = set(DatasetCatalog.list())
    yield
    for name in set(DatasetCatalog.list()) - before:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_parse_absolute_relative_and_home(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", "/home/someone")
    assert parse_path_name("coco:/d/a.json:/d/img") == ("/d/a.json", "/d/img")
    assert parse_path_name("coco:a.json:img") == (str(tmp_path / "a.json"), str(tmp_path / "img"))
    assert parse_path_name("coco:~/a.json:~/img") == ("/home/someone/a.json", "/home/someone/img")
    # the last colon separates: a json path may hold colons, the image folder may not
    assert parse_path_name("coco:/d/x:y.json:/d/img") == ("/d/x:y.json", "/d/img")


@pytest.mark.parametrize("name", ["coco:/d/a.json", "coco::/d/img", "coco:/d/a.json:", "coco:"])
def test_malformed_path_name_is_an_error_naming_it(name):
    with pytest.raises(ValueError, match="expected coco:JSON:IMAGES") as err:
        parse_path_name(name)
    assert repr(name)[1:-1] in str(err.value)


def test_unknown_name_error_shows_the_path_form():
    with pytest.raises(KeyError, match="mydata.*coco:JSON:IMAGES"):
        DatasetCatalog.get("mydata")


def test_path_name_is_registered_on_first_use(tmp_path, monkeypatch, forget_path_names):
    monkeypatch.chdir(tmp_path)
    write_tiny_json(str(tmp_path / "own.json"), CATEGORIES, str(tmp_path / "pics"))
    name = "coco:own.json:pics"
    assert name in DatasetCatalog
    meta = MetadataCatalog.get(name)  # before loading: the paths, absolute
    assert (meta.json_file, meta.image_root, meta.evaluator_type) == (
        str(tmp_path / "own.json"), str(tmp_path / "pics"), "coco")
    dicts = DatasetCatalog.get(name)
    assert dicts[0]["file_name"] == str(tmp_path / "pics" / "a.png")
    assert dicts[0]["annotations"][0]["category_id"] == 2   # id 90, the last of 1, 5, 90
    assert meta.thing_classes == ["cat", "dog", "fox"]
    assert meta.thing_contiguous_id_to_dataset_id == {0: 1, 1: 5, 2: 90}


def test_path_name_with_missing_json_names_the_file(tmp_path, forget_path_names):
    (tmp_path / "pics").mkdir()
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope.json")):
        DatasetCatalog.get(f"coco:{tmp_path / 'nope.json'}:{tmp_path / 'pics'}")


def test_absolute_dataset_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = get_cfg()
    cfg.DATASETS.TRAIN = ("coco:t.json:img", "shapes_train")
    cfg.DATASETS.TEST = ("coco:/v.json:/img",)
    cfg.freeze()
    out = absolute_dataset_names(cfg)
    assert out.DATASETS.TRAIN == (f"coco:{tmp_path / 't.json'}:{tmp_path / 'img'}",
                                  "shapes_train")
    assert out.DATASETS.TEST == ("coco:/v.json:/img",) and out.is_frozen()
    assert cfg.DATASETS.TRAIN[0] == "coco:t.json:img"     # the input is not modified
    assert absolute_dataset_names(out) is out               # nothing left to change


def test_datasets_root_default_and_relative_value_are_logged(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TFMRCNN_DATASETS", raising=False)
    monkeypatch.setattr(catalog, "_logged", set())
    with caplog.at_level(logging.INFO, logger="tfmrcnn.data.catalog"):
        assert datasets_root() == str(tmp_path / "datasets")
        monkeypatch.setenv("TFMRCNN_DATASETS", "rel/data")
        assert datasets_root() == str(tmp_path / "rel" / "data")
    assert f"Datasets root {tmp_path / 'datasets'} ($TFMRCNN_DATASETS unset" in caplog.text
    assert f"Datasets root {tmp_path / 'rel' / 'data'} ($TFMRCNN_DATASETS = rel/data)" \
        in caplog.text


def test_shapes_root_precedence(tmp_path, monkeypatch):
    for key in ("TFMRCNN_SHAPES_DIR", "TFMRCNN_DATASETS"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("TFMRCNN_CACHE", str(tmp_path / "cache"))
    assert shapes_root() == str(tmp_path / "cache" / "datasets" / "shapes")
    monkeypatch.setenv("TFMRCNN_DATASETS", str(tmp_path / "d"))
    assert shapes_root() == str(tmp_path / "d" / "shapes")
    monkeypatch.setenv("TFMRCNN_SHAPES_DIR", str(tmp_path / "s"))
    assert shapes_root() == str(tmp_path / "s")


def test_shapes_are_generated_in_the_cache_not_the_current_folder(tmp_path, monkeypatch,
                                                                  caplog):
    """Issue 18: run from any folder, the 151 MB shapes set appeared in ./datasets there."""
    for key in ("TFMRCNN_SHAPES_DIR", "TFMRCNN_DATASETS"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("TFMRCNN_CACHE", str(tmp_path / "cache"))
    for key, value in {"num_train": 2, "num_val": 1, "seed": 3}.items():
        monkeypatch.setitem(catalog.SHAPES_DEFAULTS, key, value)
    cwd = tmp_path / "somewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    root = tmp_path / "cache" / "datasets" / "shapes"
    with caplog.at_level(logging.WARNING, logger="tfmrcnn.data.catalog"):
        assert len(DatasetCatalog.get("shapes_val")) == 1
    assert os.listdir(cwd) == []
    assert os.path.isfile(root / "STAMP.json")
    assert f"Generating the synthetic shapes data set (2 + 1 images" in caplog.text
    assert str(root) in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tfmrcnn.data.catalog"):
        DatasetCatalog.get("shapes_train")                   # already there: no warning
    assert "Generating" not in caplog.text


def test_dataset_tag_for_output_folders():
    assert catalog.dataset_tag("coco:/data/own/val.json:/data/own/images") == "val"
    assert catalog.dataset_tag("coco_2017_val") == "coco_2017_val"


def test_membership_of_path_names():
    assert "coco:/d/a.json:/d/img" in DatasetCatalog
    assert "coco:/d/a.json" not in DatasetCatalog             # malformed: no image folder
