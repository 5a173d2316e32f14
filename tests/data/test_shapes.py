"""The synthetic shapes set: COCO validity, geometry, rendering, determinism, atomic caching."""

import contextlib
import io
import json
import os
import re

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from tfmrcnn.cli import shapes as shapes_cli
from tfmrcnn.data import shapes

NUM_TRAIN, NUM_VAL, SEED = 8, 4, 7
VERTICES = {1: 32, 2: 4, 3: 3}  # circle, square, triangle


def _coco(json_file):
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(json_file)


def _all_files(root):
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


def _shoelace(xy):
    x, y = xy[:, 0], xy[:, 1]
    return 0.5 * abs(np.sum(x * np.roll(y, -1) - y * np.roll(x, -1)))


def _perimeter(xy):
    return np.sum(np.linalg.norm(xy - np.roll(xy, -1, axis=0), axis=1))


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes") / "set"
    return shapes.ensure_shapes_dataset(str(root), NUM_TRAIN, NUM_VAL, seed=SEED)


@pytest.fixture(scope="module", params=shapes.SPLITS)
def split_coco(request, shapes_root):
    json_file, image_root = shapes.shapes_paths(shapes_root, request.param)
    return _coco(json_file), image_root


def test_json_loads_in_pycocotools(shapes_root):
    for split, num in zip(shapes.SPLITS, (NUM_TRAIN, NUM_VAL)):
        coco = _coco(shapes.shapes_paths(shapes_root, split)[0])
        assert len(coco.imgs) == num
        assert {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())} == {
            1: "circle", 2: "square", 3: "triangle"}
        for image_id in coco.imgs:
            assert 1 <= len(coco.getAnnIds(imgIds=[image_id])) <= 4


def test_images_exist_with_json_sizes_and_vary(split_coco):
    coco, image_root = split_coco
    sizes = set()
    for img in coco.imgs.values():
        image = cv2.imread(os.path.join(image_root, img["file_name"]), cv2.IMREAD_UNCHANGED)
        assert image.shape == (img["height"], img["width"], 3) and image.dtype == np.uint8
        assert 192 <= img["height"] <= 320 and 192 <= img["width"] <= 320
        sizes.add(image.shape)
    assert len(sizes) > 1


def test_polygons_inside_image_and_bbox_is_extent(split_coco):
    coco, _ = split_coco
    for ann in coco.anns.values():
        img = coco.imgs[ann["image_id"]]
        assert ann["iscrowd"] == 0 and len(ann["segmentation"]) == 1
        xy = np.array(ann["segmentation"][0]).reshape(-1, 2)
        assert len(xy) == VERTICES[ann["category_id"]]
        assert xy[:, 0].min() >= 0 and xy[:, 0].max() <= img["width"]
        assert xy[:, 1].min() >= 0 and xy[:, 1].max() <= img["height"]
        x, y, w, h = ann["bbox"]
        np.testing.assert_allclose([x, y, x + w, y + h],
                                   [*xy.min(axis=0), *xy.max(axis=0)], atol=1e-3)
        assert w > 0 and h > 0
        np.testing.assert_allclose(ann["area"], _shoelace(xy), rtol=1e-4)


def test_rasterised_area_close_to_annotation_area(split_coco):
    coco, _ = split_coco
    for ann in coco.anns.values():
        mask_area = coco.annToMask(ann).sum()
        xy = np.array(ann["segmentation"][0]).reshape(-1, 2)
        # Rasterising moves the area by a fraction of the boundary length, no more.
        assert abs(mask_area - ann["area"]) <= 0.25 * _perimeter(xy), ann


def test_objects_do_not_overlap(split_coco):
    coco, _ = split_coco
    for image_id in coco.imgs:
        masks = [coco.annToMask(a) for a in coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))]
        assert np.sum(masks, axis=0).max() == 1


def test_objects_are_drawn_where_their_polygon_is(split_coco):
    """Each object is one flat colour; the pixels of that colour are the polygon's raster."""
    coco, image_root = split_coco
    for ann in coco.anns.values():
        img = coco.imgs[ann["image_id"]]
        image = cv2.imread(os.path.join(image_root, img["file_name"]))
        mask = coco.annToMask(ann).astype(bool)
        colours, counts = np.unique(image[mask], axis=0, return_counts=True)
        colour = colours[np.argmax(counts)]
        assert counts.max() >= 0.97 * mask.sum()
        x, y, w, h = ann["bbox"]
        near = np.zeros_like(mask)  # the object's box, 2 px margin: other objects are further
        y0, x0 = max(int(y) - 2, 0), max(int(x) - 2, 0)
        near[y0:int(np.ceil(y + h)) + 2, x0:int(np.ceil(x + w)) + 2] = True
        painted = np.all(image == colour, axis=-1) & near
        iou = (painted & mask).sum() / (painted | mask).sum()
        assert iou >= 0.95, (ann["id"], iou)


def test_render_polygon_matches_coverage_of_a_square():
    """A 10x10 axis-aligned square [2.5, 12.5]^2 covers pixels 3..11 fully, row/column 2 and 12
    half and the four corner pixels a quarter."""
    mask = shapes.render_polygon(np.zeros((16, 16), np.uint8),
                                 [2.5, 2.5, 12.5, 2.5, 12.5, 12.5, 2.5, 12.5])
    # Coverage >= 0.5 keeps the half-covered border pixels and drops the corners.
    expected = np.zeros((16, 16), np.uint8)
    expected[2:13, 2:13] = 1
    expected[[2, 2, 12, 12], [2, 12, 2, 12]] = 0
    np.testing.assert_array_equal(mask, expected)
    inner = shapes.render_polygon(np.zeros((16, 16), np.uint8),
                                  [2.7, 2.7, 12.3, 2.7, 12.3, 12.3, 2.7, 12.3])
    expected[:] = 0
    expected[3:12, 3:12] = 1  # border pixels covered 30 %: dropped
    np.testing.assert_array_equal(inner, expected)


def test_same_seed_same_bytes_different_seed_different(tmp_path, shapes_root):
    again = str(tmp_path / "again")
    shapes.generate_shapes_dataset(again, NUM_TRAIN, NUM_VAL, seed=SEED)
    first = {k: v for k, v in _all_files(shapes_root).items() if k != "STAMP.json"}
    assert _all_files(again) == first
    other = str(tmp_path / "other")
    shapes.generate_shapes_dataset(other, NUM_TRAIN, NUM_VAL, seed=SEED + 1)
    other_files = _all_files(other)
    assert set(other_files) == set(first)
    train_json = "annotations/instances_train.json"
    assert other_files[train_json] != first[train_json]
    assert all(other_files[k] != first[k] for k in first if k.endswith(".png"))


def test_image_does_not_depend_on_set_size(tmp_path, shapes_root):
    small = str(tmp_path / "small")
    shapes.generate_shapes_dataset(small, 2, 1, seed=SEED)
    for rel in ("train/000001.png", "train/000002.png", "val/000001.png"):
        with open(os.path.join(small, rel), "rb") as a:
            with open(os.path.join(shapes_root, rel), "rb") as b:
                assert a.read() == b.read()


def test_fixed_image_size(tmp_path):
    root = str(tmp_path / "fixed")
    shapes.generate_shapes_dataset(root, 3, 1, seed=1, image_size=(200, 240))
    coco = _coco(shapes.shapes_paths(root, "train")[0])
    assert {(i["height"], i["width"]) for i in coco.imgs.values()} == {(200, 240)}


def test_ensure_reuses_a_complete_set(tmp_path, monkeypatch):
    root = str(tmp_path / "cached")
    shapes.ensure_shapes_dataset(root, 2, 1, seed=3)
    stamp = json.load(open(os.path.join(root, "STAMP.json")))
    assert (stamp["num_train"], stamp["num_val"], stamp["seed"]) == (2, 1, 3)

    def fail(*args, **kwargs):
        raise AssertionError("regenerated a complete set")

    monkeypatch.setattr(shapes, "_write_set", fail)
    assert shapes.ensure_shapes_dataset(root, 2, 1, seed=3) == os.path.abspath(root)


def test_ensure_replaces_a_set_with_other_parameters(tmp_path):
    root = str(tmp_path / "cached")
    shapes.ensure_shapes_dataset(root, 3, 1, seed=3)
    shapes.ensure_shapes_dataset(root, 2, 1, seed=3)
    assert sorted(os.listdir(os.path.join(root, "train"))) == ["000001.png", "000002.png"]
    assert sorted(os.listdir(tmp_path)) == ["cached"]  # nothing left beside it


def test_replacing_a_set_keeps_files_the_generator_did_not_write(tmp_path):
    root = tmp_path / "cached"
    shapes.ensure_shapes_dataset(str(root), 3, 1, seed=3)
    (root / "notes.txt").write_text("mine")
    (root / "train" / "extra.png").write_bytes(b"mine")
    shapes.ensure_shapes_dataset(str(root), 1, 1, seed=4)
    assert (root / "notes.txt").read_text() == "mine"
    assert sorted(os.listdir(root / "train")) == ["000001.png", "extra.png"]


# Every way a command reaches the generator: the CLI's --output, $TFMRCNN_SHAPES_DIR and
# $TFMRCNN_DATASETS/shapes (through the catalog, as tfmrcnn-eval/train do).
def _user_folder(path):
    (path / "sub").mkdir(parents=True)
    (path / "important.txt").write_text("x")
    (path / "sub" / "labels.csv").write_text("a,b")
    return _all_files(path)


def test_cli_refuses_a_folder_it_did_not_create(tmp_path, capsys):
    folder = tmp_path / "d"
    before = _user_folder(folder)
    with pytest.raises(SystemExit) as exit_info:
        shapes_cli.main(["--output", str(folder), "--num-train", "2", "--num-val", "1"])
    assert exit_info.value.code not in (0, None)
    assert str(folder) in str(exit_info.value.code) and "not made by the shapes generator" in str(
        exit_info.value.code)
    assert _all_files(folder) == before and sorted(os.listdir(tmp_path)) == ["d"]


@pytest.mark.parametrize("variable", ["TFMRCNN_SHAPES_DIR", "TFMRCNN_DATASETS"])
def test_catalog_refuses_a_folder_it_did_not_create(tmp_path, monkeypatch, variable):
    from tfmrcnn.data.catalog import DatasetCatalog

    monkeypatch.delenv("TFMRCNN_SHAPES_DIR", raising=False)
    monkeypatch.setenv(variable, str(tmp_path / "d"))
    folder = tmp_path / "d" / ("shapes" if variable == "TFMRCNN_DATASETS" else "")
    before = _user_folder(folder)
    with pytest.raises(shapes.ForeignDirectoryError, match=re.escape(str(folder))):
        DatasetCatalog.get("shapes_val")
    assert _all_files(folder) == before


def test_an_empty_folder_is_adopted(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    shapes.ensure_shapes_dataset(str(folder), 1, 1, seed=3)
    assert (folder / shapes.OWNER_MARKER).is_file() and (folder / "STAMP.json").is_file()


def test_crash_mid_write_leaves_no_set_that_looks_complete(tmp_path, monkeypatch):
    root = str(tmp_path / "crashy")
    real = shapes._write_split

    def crash_on_val(root_dir, split, *args):
        if split == "val":
            raise RuntimeError("simulated crash")
        return real(root_dir, split, *args)

    monkeypatch.setattr(shapes, "_write_split", crash_on_val)
    with pytest.raises(RuntimeError, match="simulated"):
        shapes.ensure_shapes_dataset(root, 2, 1, seed=3)
    assert not os.path.exists(os.path.join(root, "STAMP.json"))
    assert os.path.isfile(os.path.join(root, shapes.OWNER_MARKER))  # still ours: may be redone
    monkeypatch.setattr(shapes, "_write_split", real)
    shapes.ensure_shapes_dataset(root, 2, 1, seed=3)
    assert os.path.isfile(shapes.shapes_paths(root, "val")[0])


def test_cli_writes_the_set(tmp_path, capsys):
    out = str(tmp_path / "cli")
    assert shapes_cli.main(["--output", out, "--num-train", "2", "--num-val", "1",
                            "--seed", "5", "--image-size", "96", "128"]) == 0
    assert "instances_train.json" in capsys.readouterr().out
    coco = _coco(shapes.shapes_paths(out, "val")[0])
    assert [(i["height"], i["width"]) for i in coco.imgs.values()] == [(96, 128)]
    assert sorted(os.listdir(os.path.join(out, "train"))) == ["000001.png", "000002.png"]
