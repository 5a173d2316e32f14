"""tfmrcnn.data.coco: COCO json -> dataset dicts, id mapping, degenerate and crowd annotations."""

import json
import logging
import os

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from tfmrcnn.data import shapes
from tfmrcnn.data.catalog import MetadataCatalog
from tfmrcnn.data.coco import (
    CocoFormatError, filter_images_with_only_crowd_annotations, load_coco_json)


@pytest.fixture(scope="module")
def shapes_set(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("coco_loading") / "shapes")
    shapes.generate_shapes_dataset(root, num_train=5, num_val=2, seed=11)
    return root


def _crowd_rle(height, width):
    """An uncompressed-then-compressed RLE of a rectangle, counts as str (json-safe)."""
    m = np.zeros((height, width), np.uint8, order="F")
    m[10:30, 5:25] = 1
    rle = mask_utils.encode(np.asfortranarray(m))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def _hand_made_json(path):
    """Two sparse category ids (7, 3), a crowd RLE, degenerate boxes and polygons."""
    poly = [10.0, 10.0, 30.0, 10.0, 30.0, 25.0, 10.0, 25.0]
    data = {
        "images": [
            {"id": 40, "file_name": "a.png", "height": 48, "width": 64},
            {"id": 5, "file_name": "b.png", "height": 48, "width": 64},  # crowd only
            {"id": 9, "file_name": "c.png", "height": 48, "width": 64},  # nothing usable
        ],
        "annotations": [
            {"id": 1, "image_id": 40, "category_id": 7, "bbox": [10, 10, 20, 15],
             "segmentation": [poly], "area": 300.0, "iscrowd": 0},
            {"id": 2, "image_id": 40, "category_id": 3, "bbox": [10, 10, 20, 15],
             "segmentation": [poly, [1.0, 1.0, 2.0, 2.0]], "area": 300.0, "iscrowd": 0},
            {"id": 3, "image_id": 5, "category_id": 3, "bbox": [5, 10, 20, 20],
             "segmentation": _crowd_rle(48, 64), "area": 400.0, "iscrowd": 1},
            {"id": 4, "image_id": 9, "category_id": 7, "bbox": [3, 3, 0, 5],
             "segmentation": [poly], "area": 0.0, "iscrowd": 0},
            {"id": 5, "image_id": 9, "category_id": 7, "bbox": [3, 3, 4, 5],
             "segmentation": [[1.0, 1.0, 2.0, 2.0]], "area": 0.0, "iscrowd": 0},
        ],
        "categories": [{"id": 7, "name": "seven"}, {"id": 3, "name": "three"}],
    }
    with open(path, "w") as f:
        json.dump(data, f)
    return data


@pytest.fixture
def hand_made(tmp_path):
    json_file = str(tmp_path / "hand.json")
    data = _hand_made_json(json_file)
    return json_file, str(tmp_path), data


def test_shapes_json_loads_with_contiguous_ids(shapes_set):
    json_file, image_root = shapes.shapes_paths(shapes_set, "train")
    raw = json.load(open(json_file))
    dicts = load_coco_json(json_file, image_root)
    assert [d["image_id"] for d in dicts] == sorted(i["id"] for i in raw["images"])
    images = {i["id"]: i for i in raw["images"]}
    anns_by_image = {}
    for a in raw["annotations"]:
        anns_by_image.setdefault(a["image_id"], []).append(a)
    for d in dicts:
        img = images[d["image_id"]]
        assert d["file_name"] == os.path.join(image_root, img["file_name"])
        assert os.path.isfile(d["file_name"])
        assert (d["height"], d["width"]) == (img["height"], img["width"])
        expected = anns_by_image[d["image_id"]]
        assert len(d["annotations"]) == len(expected)
        for got, want in zip(d["annotations"], expected):
            assert got["category_id"] == want["category_id"] - 1  # ids 1, 2, 3 -> 0, 1, 2
            assert got["bbox"] == want["bbox"]
            assert got["segmentation"] == want["segmentation"]
            assert got["iscrowd"] == 0


def test_sparse_ids_crowd_and_degenerate(hand_made, caplog):
    json_file, image_root, _ = hand_made
    with caplog.at_level(logging.WARNING, logger="tfmrcnn.data.coco"):
        dicts = load_coco_json(json_file, image_root,
                               metadata=MetadataCatalog.get("test_hand_made"))
    by_id = {d["image_id"]: d for d in dicts}
    assert [d["image_id"] for d in dicts] == [5, 9, 40]

    a = by_id[40]["annotations"]
    assert [x["category_id"] for x in a] == [1, 0]  # sorted ids (3, 7) -> 3: 0, 7: 1
    assert len(a[1]["segmentation"]) == 1  # the 2-point polygon is dropped, the other kept
    assert a[0]["bbox"] == [10.0, 10.0, 20.0, 15.0]

    crowd = by_id[5]["annotations"]
    assert len(crowd) == 1 and crowd[0]["iscrowd"] == 1
    rle = crowd[0]["segmentation"]
    assert isinstance(rle, dict) and mask_utils.decode(rle).sum() == 400

    assert by_id[9]["annotations"] == []  # zero-width box and 2-point-only annotation dropped
    assert ("dropped 1 annotations with an empty box (ids 4), 1 without a valid polygon (ids 5)"
            in caplog.text)
    assert "2 polygons" in caplog.text

    meta = MetadataCatalog.get("test_hand_made")
    assert meta.thing_classes == ["three", "seven"]
    assert meta.thing_dataset_id_to_contiguous_id == {3: 0, 7: 1}
    assert meta.thing_contiguous_id_to_dataset_id == {0: 3, 1: 7}
    assert (meta.json_file, meta.image_root, meta.evaluator_type) == (json_file, image_root, "coco")
    MetadataCatalog.remove("test_hand_made")


def test_filter_images_with_only_crowd_annotations(hand_made, caplog):
    json_file, image_root, _ = hand_made
    dicts = load_coco_json(json_file, image_root)
    with caplog.at_level(logging.INFO, logger="tfmrcnn.data.coco"):
        kept = filter_images_with_only_crowd_annotations(dicts)
    assert [d["image_id"] for d in kept] == [40]
    assert "Removed 2 images" in caplog.text


def test_corrupt_json_names_the_file(tmp_path):
    bad = tmp_path / "corrupt.json"
    bad.write_text('{"images": [')
    with pytest.raises(CocoFormatError, match="corrupt.json"):
        load_coco_json(str(bad), str(tmp_path))


def test_json_of_wrong_shape_names_the_file(tmp_path):
    bad = tmp_path / "shape.json"
    bad.write_text(json.dumps({"images": [{"id": 1}], "annotations": [], "categories": []}))
    with pytest.raises(CocoFormatError, match="shape.json"):
        load_coco_json(str(bad), str(tmp_path))


def test_unknown_category_names_the_file(tmp_path):
    data = {"images": [{"id": 1, "file_name": "x.png", "height": 4, "width": 4}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 99, "bbox": [0, 0, 1, 1],
                             "iscrowd": 0, "area": 1.0}],
            "categories": [{"id": 1, "name": "one"}]}
    path = tmp_path / "cats.json"
    path.write_text(json.dumps(data))
    with pytest.raises(CocoFormatError, match="cats.json.*category_id 99"):
        load_coco_json(str(path), str(tmp_path))


def test_missing_json_and_image_root(hand_made, tmp_path):
    json_file, image_root, _ = hand_made
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_coco_json(str(tmp_path / "missing.json"), image_root)
    with pytest.raises(FileNotFoundError, match="no_such_images"):
        load_coco_json(json_file, str(tmp_path / "no_such_images"))
