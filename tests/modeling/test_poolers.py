"""FPN level assignment and the multi-level pooler."""
import math
import pathlib

import numpy as np
import pytest
import tensorflow as tf

from custom_ops.reference.roi_align_numpy import roi_align_grad_np, roi_align_np
from tfmrcnn.modeling.poolers import ROIPooler, aligned_for_pooler_type, assign_boxes_to_levels

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "d2"


def _levels_np(boxes, min_level, max_level, canonical_box_size=224, canonical_level=4):
    """Level index from 0, from the FPN paper's formula, in float64."""
    out = []
    for x0, y0, x1, y1 in boxes.astype(np.float64):
        size = math.sqrt(max((x1 - x0) * (y1 - y0), 0.0))
        level = math.floor(canonical_level + math.log2(size / canonical_box_size + 1e-8))
        out.append(min(max(level, min_level), max_level) - min_level)
    return np.array(out, np.int32)


def test_levels_match_detectron2_golden():
    d = np.load(FIXTURES / "pooler_levels.npz")
    got = assign_boxes_to_levels(d["boxes"], int(d["min_level"]), int(d["max_level"]),
                                 int(d["canonical_box_size"]), int(d["canonical_level"]))
    assert got.dtype == tf.int32
    np.testing.assert_array_equal(got.numpy(), d["level_index"])
    assert len(set(d["level_index"].tolist())) == 4  # the fixture exercises every level


def test_levels_match_numpy_formula():
    rng = np.random.default_rng(0)
    sides = np.exp(rng.uniform(np.log(2), np.log(2000), (500, 2)))
    x0 = rng.uniform(0, 500, 500)
    y0 = rng.uniform(0, 500, 500)
    boxes = np.stack([x0, y0, x0 + sides[:, 0], y0 + sides[:, 1]], 1).astype(np.float32)
    for lo, hi in [(2, 5), (3, 6), (2, 2)]:
        got = assign_boxes_to_levels(boxes, lo, hi).numpy()
        ref = _levels_np(boxes, lo, hi)
        # float32 vs float64 may differ only for sizes on a level boundary: none here.
        np.testing.assert_array_equal(got, ref)


def test_level_boundaries_and_clamping():
    sides = np.array([0.0, 10.0, 111.9, 112.0, 223.9, 224.0, 447.9, 448.0, 5000.0], np.float32)
    boxes = np.stack([np.zeros_like(sides), np.zeros_like(sides), sides, sides], 1)
    got = assign_boxes_to_levels(boxes, 2, 5).numpy()
    np.testing.assert_array_equal(got, [0, 0, 0, 1, 1, 2, 2, 3, 3])


def test_degenerate_boxes_go_to_the_finest_level():
    boxes = np.array([[10, 10, 5, 400], [0, 0, np.nan, 10], [0, 0, np.inf, 1000]], np.float32)
    np.testing.assert_array_equal(assign_boxes_to_levels(boxes, 2, 5).numpy(), [0, 0, 0])


def _pyramid(rng, n=2, c=3, img=(128, 160)):
    scales = [1 / 4, 1 / 8, 1 / 16, 1 / 32]
    feats = [rng.standard_normal((n, int(img[0] * s), int(img[1] * s), c)).astype(np.float32)
             for s in scales]
    return feats, scales


def _boxes(rng, r, img=(128, 160)):
    sides = np.exp(rng.uniform(np.log(8), np.log(600), (r, 2)))
    x0 = rng.uniform(-20, img[1], r)
    y0 = rng.uniform(-20, img[0], r)
    return np.stack([x0, y0, x0 + sides[:, 0], y0 + sides[:, 1]], 1).astype(np.float32)


def test_pooler_matches_per_box_roi_align_in_input_order():
    rng = np.random.default_rng(1)
    feats, scales = _pyramid(rng)
    boxes = _boxes(rng, 40)
    indices = rng.integers(0, 2, 40).astype(np.int32)
    pooler = ROIPooler((7, 7), scales, sampling_ratio=0)
    out = pooler(feats, boxes, indices).numpy()
    assert out.shape == (40, 7, 7, 3)
    levels = _levels_np(boxes, 2, 5)
    assert len(set(levels.tolist())) >= 3
    for i in range(40):
        lv = levels[i]
        ref = roi_align_np(feats[lv], boxes[i:i + 1], indices[i:i + 1], (7, 7), scales[lv])
        np.testing.assert_allclose(out[i], ref[0], atol=1e-4)


def test_pooler_empty_levels_and_no_boxes():
    rng = np.random.default_rng(2)
    feats, scales = _pyramid(rng)
    pooler = ROIPooler(14, scales)
    small = np.array([[10, 10, 20, 20], [30, 40, 45, 50]], np.float32)  # all on level 2
    out = pooler(feats, small, [1, 0]).numpy()
    ref = roi_align_np(feats[0], small, [1, 0], (14, 14), 1 / 4)
    np.testing.assert_allclose(out, ref, atol=1e-4)
    empty = pooler(feats, np.zeros((0, 4), np.float32), np.zeros((0,), np.int32))
    assert empty.shape == (0, 14, 14, 3)


def test_pooler_in_tf_function_with_gradient():
    rng = np.random.default_rng(3)
    feats, scales = _pyramid(rng)
    pooler = ROIPooler(7, scales)
    specs = [tf.TensorSpec([None, None, None, 3]) for _ in feats]

    @tf.function(input_signature=[specs, tf.TensorSpec([None, 4]),
                                  tf.TensorSpec([None], tf.int32)])
    def grads(features, boxes, indices):
        with tf.GradientTape() as tape:
            tape.watch(features)
            loss = tf.reduce_sum(pooler(features, boxes, indices))
        return tape.gradient(loss, features)

    for r in (0, 12):
        boxes = _boxes(rng, r)
        indices = rng.integers(0, 2, r).astype(np.int32)
        got = grads(feats, boxes, indices)
        levels = _levels_np(boxes, 2, 5)
        for lv in range(4):
            # d(sum of pooled)/d(map) = how much each pixel is used by the boxes of that level.
            sel = levels == lv
            ones = np.ones((int(sel.sum()), 7, 7, 3))
            ref = roi_align_grad_np(ones, boxes[sel], indices[sel], feats[lv].shape, (7, 7),
                                    scales[lv])
            np.testing.assert_allclose(got[lv].numpy(), ref, atol=1e-4)


def test_pooler_rejects_bad_scales():
    with pytest.raises(ValueError):
        ROIPooler(7, [1 / 4, 1 / 6])
    with pytest.raises(ValueError):
        ROIPooler(7, [1 / 4, 1 / 16])


def test_detectron1_roialign_pooler_type_pools_without_the_half_pixel_shift():
    """POOLER_TYPE ROIAlign (Detectron1's, the Detectron1-Comparisons zoo configs) is ROIAlign
    with aligned=False; the ROI heads' poolers follow their config's POOLER_TYPE."""
    from roi_heads_toy import STRIDES, small_cfg
    from tfmrcnn.modeling.roi_heads import StandardROIHeads
    assert aligned_for_pooler_type("ROIAlignV2") and not aligned_for_pooler_type("ROIAlign")
    with pytest.raises(ValueError, match="MODEL.ROI_BOX_HEAD.POOLER_TYPE = 'ROIPool'"):
        aligned_for_pooler_type("ROIPool", "MODEL.ROI_BOX_HEAD.POOLER_TYPE")
    rng = np.random.default_rng(4)
    feats, scales = _pyramid(rng)
    boxes = _boxes(rng, 20)
    indices = rng.integers(0, 2, 20).astype(np.int32)
    out = ROIPooler(7, scales, sampling_ratio=2, aligned=False)(feats, boxes, indices).numpy()
    levels = _levels_np(boxes, 2, 5)
    for i in range(20):
        lv = levels[i]
        ref = roi_align_np(feats[lv], boxes[i:i + 1], indices[i:i + 1], (7, 7), scales[lv],
                           sampling_ratio=2, aligned=False)
        np.testing.assert_allclose(out[i], ref[0], atol=1e-4)
    cfg = small_cfg()
    cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE = "ROIAlign"
    heads = StandardROIHeads(cfg, 8, STRIDES)
    assert (heads.box_pooler.aligned, heads.mask_pooler.aligned) == (False, True)
