"""tfmrcnn.data.validate: data set problems found up front, each named by file and annotation."""
import contextlib
import io
import json

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
from pycocotools.coco import COCO

from tfmrcnn.config import get_cfg
from tfmrcnn.data.coco import load_coco_json
from tfmrcnn.data.validate import (DatasetError, apply_check, check_evaluation_set,
                                   check_training_set, checked_evaluation_records,
                                   checked_training_records, rle_counts, rle_problem)

SIZES = [(40, 60), (50, 40), (45, 70)]  # (h, w) of the set's images


def _write_set(root, sizes=SIZES, segm="polygon"):
    """A COCO json with one square per image (ids: image k + 1, annotation 10 * (k + 1)) and
    its PNG images; segm "polygon" or "rle". Returns the json path."""
    images, annotations = [], []
    for k, (h, w) in enumerate(sizes):
        cv2.imwrite(str(root / f"{k}.png"), np.full((h, w, 3), 90, np.uint8))
        images.append({"id": k + 1, "file_name": f"{k}.png", "height": h, "width": w})
        x, y, s = 4, 5, 12
        poly = [x, y, x + s, y, x + s, y + s, x, y + s]
        if segm == "rle":
            m = np.zeros((h, w), np.uint8, order="F")
            m[y:y + s, x:x + s] = 1
            rle = mask_util.encode(m)
            segmentation = {"size": rle["size"], "counts": rle["counts"].decode()}
        else:
            segmentation = [poly]
        annotations.append({"id": 10 * (k + 1), "image_id": k + 1, "category_id": 5,
                            "bbox": [x, y, s, s], "area": s * s, "iscrowd": 0,
                            "segmentation": segmentation})
    data = {"images": images, "annotations": annotations,
            "categories": [{"id": 5, "name": "square"}]}
    path = root / "instances.json"
    path.write_text(json.dumps(data))
    return str(path)


def _edit_json(path, fn):
    with open(path) as f:
        data = json.load(f)
    fn(data)
    with open(path, "w") as f:
        json.dump(data, f)


def _coco(path):
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(path)


def _cfg(**datasets):
    cfg = get_cfg()
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 1
    for key, value in datasets.items():
        cfg.DATASETS[key] = value
    return cfg


# ---------------------------------------------------------------------------- RLE
def _reference_counts(mask):
    """Run lengths of the column-major bits of mask, the first run being zeros (COCO RLE)."""
    bits = mask.T.reshape(-1)
    edges = np.flatnonzero(np.diff(bits)) + 1
    runs = np.diff(np.concatenate([[0], edges, [bits.size]])).tolist()
    return ([0] + runs) if bits[0] else runs


@pytest.mark.parametrize("seed", range(4))
def test_rle_counts_of_compressed_strings(seed):
    rng = np.random.default_rng(seed)
    h, w = rng.integers(5, 60, 2)
    mask = (rng.random((h, w)) < rng.uniform(0.05, 0.95)).astype(np.uint8)
    mask[: rng.integers(0, h), : rng.integers(0, w)] = 1   # long runs: multi-group numbers
    compressed = mask_util.encode(np.asfortranarray(mask))["counts"]
    assert rle_counts(compressed) == rle_counts(compressed.decode()) == _reference_counts(mask)


def test_rle_problems_are_named():
    good = mask_util.encode(np.asfortranarray(np.ones((10, 10), np.uint8)))
    assert rle_problem(good, 10, 10) is None
    assert rle_problem({"size": [10, 10], "counts": [30, 70]}, 10, 10) is None
    assert "no 'counts'" in rle_problem({"size": [10, 10]}, 10, 10)
    assert "differs from the image's [10, 12]" in rle_problem(good, 10, 12)
    assert "cover 12 pixels" in rle_problem({"size": [10, 10], "counts": [5, 7]}, 10, 10)
    assert "cover" in rle_problem({"size": [10, 10], "counts": "0`0"}, 10, 10)
    assert "negative" in rle_problem({"size": [2, 2], "counts": [5, -1]}, 2, 2)
    assert "malformed" in rle_problem({"size": [2, 2], "counts": "0\x7f"}, 2, 2)
    assert "end inside a number" in rle_problem({"size": [2, 2], "counts": "P"}, 2, 2)


# ---------------------------------------------------------------------------- training
def test_no_usable_training_image_stops_at_once(tmp_path):
    """Issue 20 item 2: every file missing, or every box outside its image, hung training."""
    records = load_coco_json(_write_set(tmp_path), str(tmp_path))
    missing = [dict(r, file_name=r["file_name"] + ".gone") for r in records]
    with pytest.raises(DatasetError, match="3 problems in 3 of 3 images") as err:
        apply_check(missing, check_training_set(missing, 1))
    assert all(r["file_name"] in str(err.value) for r in missing)
    with pytest.raises(DatasetError, match=r"no usable training image among 3 \(unreadable "
                                           r"image: 3, without a usable instance: 0\)"):
        apply_check(missing, check_training_set(missing, 1, skip_bad_images=True))

    outside = [dict(r, annotations=[dict(a, bbox=[r["width"] + 1, 0, 5, 5])
                                    for a in r["annotations"]]) for r in records]
    with pytest.raises(DatasetError, match="no usable training image among 3 .*without a "
                                           "usable instance: 3"):
        apply_check(outside, check_training_set(outside, 1))


def test_unusable_images_are_left_out_with_counts(tmp_path, caplog):
    records = load_coco_json(_write_set(tmp_path), str(tmp_path))
    records[0] = dict(records[0], file_name=records[0]["file_name"] + ".gone")
    records[1] = dict(records[1], annotations=[dict(records[1]["annotations"][0], iscrowd=1)])
    with pytest.raises(DatasetError, match="SKIP_BAD_IMAGES"):
        apply_check(records, check_training_set(records, 1))
    kept = apply_check(records, check_training_set(records, 1, skip_bad_images=True))
    assert [r["image_id"] for r in kept] == [3]
    assert "leaving out 1 of 3 images with problems" in caplog.text
    assert "leaving out 1 images without a usable instance" in caplog.text


def test_size_mismatch_is_an_error_unless_the_image_is_trusted(tmp_path):
    """Issue 20 item 4: a json size that differs from the file's trained on mis-scaled targets."""
    path = _write_set(tmp_path)
    _edit_json(path, lambda d: d["images"][1].update(height=100, width=80))
    records = load_coco_json(path, str(tmp_path))
    with pytest.raises(DatasetError) as err:
        apply_check(records, check_training_set(records, 1))
    assert (f"{records[1]['file_name']} (image 2): size mismatch: the file is 50x40 (HxW), "
            f"the json says 100x80") in str(err.value)
    assert "TRUST_IMAGE_SIZE" in str(err.value)
    kept = apply_check(records, check_training_set(records, 1, trust_image_size=True))
    assert [(r["height"], r["width"]) for r in kept] == SIZES
    assert records[1]["height"] == 100                       # the loaded records are untouched


def _counts_of_zeros(h, w):
    """Compressed counts of an empty (h, w) mask."""
    return mask_util.encode(np.zeros((h, w), np.uint8, order="F"))["counts"].decode()


@pytest.mark.parametrize("breakage,message", [
    (lambda s: s.update(counts=_counts_of_zeros(s["size"][0], s["size"][1] + 3)), "counts cover"),
    (lambda s: s.pop("counts"), "no 'counts'"),
    (lambda s: s.update(size=[s["size"][0] + 1, s["size"][1]]), "differs from the image's"),
])
def test_malformed_rle_is_named_before_training(tmp_path, breakage, message):
    """Issue 20 item 5: a malformed RLE crashed training when first sampled, hours in."""
    path = _write_set(tmp_path, segm="rle")
    _edit_json(path, lambda d: breakage(d["annotations"][2]["segmentation"]))
    records = load_coco_json(path, str(tmp_path))
    with pytest.raises(DatasetError, match=message) as err:
        apply_check(records, check_training_set(records, 1))
    assert f"{records[2]['file_name']} (image 3, annotation 30): bad RLE" in str(err.value)
    # box-only training never decodes the masks
    assert len(apply_check(records, check_training_set(records, 1, with_masks=False))) == 3


def test_categories_beyond_the_model_stop_training(tmp_path):
    records = load_coco_json(_write_set(tmp_path), str(tmp_path))
    records[0]["annotations"][0]["category_id"] = 3
    with pytest.raises(DatasetError, match=r"label 3 outside the model's "
                                           r"MODEL.ROI_HEADS.NUM_CLASSES = 2"):
        apply_check(records, check_training_set(records, 2, skip_bad_images=True))


def test_training_check_reads_the_config(tmp_path):
    path = _write_set(tmp_path)
    _edit_json(path, lambda d: d["images"][0].update(height=41))
    records = load_coco_json(path, str(tmp_path))
    with pytest.raises(DatasetError, match="size mismatch"):
        checked_training_records(_cfg(), records)
    kept = checked_training_records(_cfg(TRUST_IMAGE_SIZE=True), records)
    assert kept[0]["height"] == 40


# ---------------------------------------------------------------------------- evaluation
def _eval_problems(path, root, num_classes=1, **kwargs):
    records = load_coco_json(path, str(root))
    check = check_evaluation_set(records, num_classes, _coco(path), **kwargs)
    return records, check


@pytest.mark.parametrize("breakage,message", [
    (lambda d: d["annotations"][1].update(segmentation=[]), "(image 2, annotation 20): bad "
                                                           "segmentation: polygons []"),
    (lambda d: d["annotations"][1].update(segmentation={"size": [50, 40], "counts": [100, 5]}),
     "(image 2, annotation 20): bad RLE: counts cover 105 pixels"),
])
def test_ground_truth_the_scorer_cannot_use_is_an_error(tmp_path, breakage, message):
    """Issue 20 item 5: `[]` crashed pycocotools after all inference; a bad RLE lowered AP."""
    path = _write_set(tmp_path)
    _edit_json(path, breakage)
    records, check = _eval_problems(path, tmp_path)
    with pytest.raises(DatasetError, match="evaluation scores every image") as err:
        apply_check(records, check)
    assert message in str(err.value)
    _, boxes_only = _eval_problems(path, tmp_path, with_masks=False)
    assert boxes_only.error is None


def test_unreadable_images_stop_evaluation_up_front(tmp_path):
    path = _write_set(tmp_path)
    data = (tmp_path / "1.png").read_bytes()
    (tmp_path / "1.png").write_bytes(data[:len(data) // 2])
    (tmp_path / "2.png").unlink()
    records, check = _eval_problems(path, tmp_path)
    with pytest.raises(DatasetError, match="2 problems") as err:
        apply_check(records, check)
    assert "1.png (image 2): unreadable image" in str(err.value)
    assert "2.png (image 3): unreadable image" in str(err.value)


def test_model_classes_must_match_the_json(tmp_path):
    path = _write_set(tmp_path)
    _, check = _eval_problems(path, tmp_path, num_classes=80)
    assert "json has 1 categories, the model predicts MODEL.ROI_HEADS.NUM_CLASSES = 80" in (
        check.error)


def test_trusted_sizes_reach_the_evaluation_records(tmp_path):
    path = _write_set(tmp_path)
    _edit_json(path, lambda d: d["images"][2].update(width=99))
    with pytest.raises(DatasetError, match="size mismatch"):
        checked_evaluation_records(_cfg(), (path, str(tmp_path)))
    records = checked_evaluation_records(_cfg(TRUST_IMAGE_SIZE=True), (path, str(tmp_path)))
    assert [(r["height"], r["width"]) for r in records] == SIZES
