"""Training tf.data pipeline: batch format, padding, sharding, determinism, resume, robustness."""
import itertools
import logging

import cv2
import numpy as np
import pytest

from tfmrcnn.config import get_cfg
from tfmrcnn.data.pipeline import TrainSampler, build_train_dataset, per_process_batch_size


def _write_dataset(root, sizes, crowd_on=()):
    """PNG images with one bright square instance each (+ a crowd region on some)."""
    dicts = []
    for i, (h, w) in enumerate(sizes):
        img = np.full((h, w, 3), 30, np.uint8)
        x0, y0, s = 5 + i % 7, 4 + i % 5, 12
        img[y0:y0 + s, x0:x0 + s] = (200, 100, 50)
        path = str(root / f"{i:03d}.png")
        cv2.imwrite(path, img)
        anns = [{"bbox": [x0, y0, s, s], "category_id": i % 3, "iscrowd": 0,
                 "segmentation": [[x0, y0, x0 + s, y0, x0 + s, y0 + s, x0, y0 + s]]}]
        if i in crowd_on:
            anns.append({"bbox": [20, 20, 10, 8], "category_id": 0, "iscrowd": 1,
                         "segmentation": [[20, 20, 30, 20, 30, 28, 20, 28]]})
        dicts.append({"file_name": path, "height": h, "width": w, "image_id": i,
                      "annotations": anns})
    return dicts


def _cfg(batch=2, workers=2):
    cfg = get_cfg()
    cfg.SOLVER.IMS_PER_BATCH = batch
    cfg.INPUT.MIN_SIZE_TRAIN = (40, 48)
    cfg.INPUT.MAX_SIZE_TRAIN = 80
    cfg.DATALOADER.NUM_WORKERS = workers
    return cfg


SIZES = [(40, 60), (50, 40), (45, 70), (64, 48), (40, 40), (70, 50), (44, 66), (52, 39)]


def _take(ds, n):
    return [{k: v.numpy() for k, v in b.items()} for b in itertools.islice(iter(ds), n)]


def test_batch_format_and_padding(tmp_path):
    dicts = _write_dataset(tmp_path, SIZES, crowd_on=(1,))
    batches = _take(build_train_dataset(_cfg(), dicts, 0, 1, seed=3), 6)
    for b in batches:
        n, hp, wp, c = b["images"].shape
        assert n == 2 and c == 3 and hp % 32 == 0 and wp % 32 == 0
        assert b["images"].dtype == np.float32
        assert b["image_sizes"].shape == (2, 2) and (b["image_sizes"] <= [hp, wp]).all()
        assert (b["image_sizes"].min(1) >= 40).all() and (b["image_sizes"].max(1) <= 80).all()
        g = b["gt_classes"].shape[1]
        assert b["gt_boxes"].shape == (2, g, 4) and b["gt_masks"].shape == (2, g, hp, wp)
        assert b["gt_masks"].dtype == np.uint8
        for i in range(n):
            h, w = b["image_sizes"][i]
            assert (b["images"][i, h:] == 0).all() and (b["images"][i, :, w:] == 0).all()
            valid = b["gt_classes"][i] >= 0
            assert valid.sum() == 1                      # one instance per image
            assert (b["gt_boxes"][i][~valid] == 0).all()
            # the mask lies inside its box and covers the square's pixels in the image
            ys, xs = np.nonzero(b["gt_masks"][i, 0])
            x0, y0, x1, y1 = b["gt_boxes"][i, 0]
            assert xs.min() >= np.floor(x0) and xs.max() < np.ceil(x1) + 1
            assert ys.min() >= np.floor(y0) and ys.max() < np.ceil(y1) + 1
            bright = b["images"][i, :, :, 0] > 120
            assert (np.logical_and(bright, b["gt_masks"][i, 0]).sum()
                    / np.logical_or(bright, b["gt_masks"][i, 0]).sum()) > 0.8
        assert b["data_position"] >= 1
    assert [b["data_position"] for b in batches] == list(range(1, 7))


def test_aspect_ratio_grouping(tmp_path):
    dicts = _write_dataset(tmp_path, SIZES)
    for b in _take(build_train_dataset(_cfg(), dicts, 0, 1, seed=0), 6):
        h, w = b["image_sizes"].T
        assert len(set((w > h).tolist())) == 1


def test_crowd_goes_to_crowd_boxes(tmp_path):
    dicts = _write_dataset(tmp_path, SIZES, crowd_on=tuple(range(len(SIZES))))
    for b in _take(build_train_dataset(_cfg(), dicts, 0, 1, seed=1), 3):
        assert b["crowd_boxes"].shape[1:] == (1, 4)
        assert (b["crowd_boxes"][:, 0, 2] > b["crowd_boxes"][:, 0, 0]).all()
        assert ((b["gt_classes"] >= 0).sum(1) == 1).all()   # the crowd is not a gt instance


def test_shards_are_disjoint_and_cover_an_epoch():
    sizes = np.array([(10, 20) if i % 3 else (20, 10) for i in range(24)])
    seen = []
    for rank in range(4):
        sampler = TrainSampler(sizes, 1, rank, 4, seed=7, min_sizes=(8,), group_by_aspect=False)
        seen.append([idx for _, batch in itertools.islice(sampler.batches(), 6) for idx, _, _ in batch])
    flat = [i for s in seen for i in s]
    assert sorted(flat) == list(range(24))              # disjoint, together one epoch
    # the next epoch is a different permutation
    sampler = TrainSampler(sizes, 1, 0, 1, seed=7, min_sizes=(8,), group_by_aspect=False)
    order = [b[0][0] for _, b in itertools.islice(sampler.batches(), 48)]
    assert sorted(order[:24]) == sorted(order[24:]) == list(range(24)) and order[:24] != order[24:]


def test_deterministic_for_a_seed_and_resumable(tmp_path):
    dicts = _write_dataset(tmp_path, SIZES)
    a = _take(build_train_dataset(_cfg(), dicts, 0, 1, seed=5), 5)
    b = _take(build_train_dataset(_cfg(workers=1), dicts, 0, 1, seed=5), 5)
    c = _take(build_train_dataset(_cfg(), dicts, 0, 1, seed=6), 5)
    resumed = _take(build_train_dataset(_cfg(), dicts, 0, 1, seed=5, start_position=3), 2)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    assert any(not np.array_equal(x["image_sizes"], y["image_sizes"])
               or x["images"].shape != y["images"].shape or not np.array_equal(x["images"], y["images"])
               for x, y in zip(a, c))
    for x, y in zip(a[3:], resumed):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


def test_corrupt_and_missing_images_are_skipped(tmp_path, caplog):
    dicts = _write_dataset(tmp_path, SIZES[:4])
    data = open(dicts[1]["file_name"], "rb").read()
    open(dicts[1]["file_name"], "wb").write(data[:len(data) // 2])    # truncated PNG
    dicts[2]["file_name"] = str(tmp_path / "missing.png")
    with caplog.at_level(logging.WARNING, logger="tfmrcnn.data.pipeline"):
        batches = _take(build_train_dataset(_cfg(batch=1), dicts, 0, 1, seed=0), 6)
    assert len(batches) == 6                            # the stream keeps going
    good_sizes = {(40, 60), (64, 48)}
    for b in batches:
        h, w = b["image_sizes"][0]
        # only images 0 and 3 can appear (resized with short side 40 or 48)
        assert any(abs(h / w - sh / sw) < 0.05 for sh, sw in good_sizes)
    text = caplog.text
    assert dicts[1]["file_name"] in text and "missing.png" in text
    # positions keep counting the sampler's batches, including the skipped ones
    assert batches[-1]["data_position"] > 6


def test_per_process_batch_size():
    assert per_process_batch_size(16, 8) == 2
    with pytest.raises(ValueError, match="not divisible"):
        per_process_batch_size(16, 3)


def test_instance_cap_and_no_masks_without_mask_head(tmp_path):
    dicts = _write_dataset(tmp_path, SIZES[:4])
    for d in dicts:                                      # a second instance per image
        d["annotations"].append({"bbox": [30, 30, 6, 5], "category_id": 1, "iscrowd": 0,
                                 "segmentation": [[30, 30, 36, 30, 36, 35, 30, 35]]})
    cfg = _cfg()
    (full,) = _take(build_train_dataset(cfg, dicts, 0, 1, seed=0), 1)
    assert full["gt_classes"].shape[1] == 2 and (full["gt_classes"] >= 0).all()
    cfg.TRAINER.MAX_GT_INSTANCES = 1
    cfg.MODEL.MASK_ON = False
    (capped,) = _take(build_train_dataset(cfg, dicts, 0, 1, seed=0), 1)
    assert capped["gt_classes"].shape[1] == 1 and "gt_masks" not in capped
    np.testing.assert_array_equal(capped["gt_boxes"][:, 0], full["gt_boxes"][:, 0])


@pytest.mark.parametrize("how", ["files missing", "boxes outside"])
def test_a_set_without_usable_image_stops_instead_of_looping(tmp_path, caplog, how):
    """Issue 20: with no usable image the stream skipped empty batches forever (a hang with
    148,609 'Skipping image' lines in 240 s); now it raises, logging each image once."""
    import tensorflow as tf

    dicts = _write_dataset(tmp_path, SIZES[:3])
    for d in dicts:
        if how == "files missing":
            d["file_name"] += ".gone"
        else:
            d["annotations"][0]["bbox"] = [d["width"] + 5, 2, 10, 10]
    ds = build_train_dataset(_cfg(batch=1), dicts, 0, 1, seed=0)
    with caplog.at_level(logging.WARNING, logger="tfmrcnn.data.pipeline"):
        with pytest.raises(tf.errors.OpError, match="NoUsableImageError: None of the 3 training "
                                                    "images can be used"):
            _take(ds, 1)
    skips = [r.getMessage() for r in caplog.records if "Skipping" in r.getMessage()]
    assert len(skips) == 3 and all(any(d["file_name"] in m for m in skips) for d in dicts)
