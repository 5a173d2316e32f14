"""box_ops against detectron2 golden vectors and NumPy references written from the definitions."""
import math

import numpy as np
import pytest
import tensorflow as tf

from tfmrcnn.modeling import box_ops

D2 = "d2"


def _load(fixtures_dir, name):
    return np.load(fixtures_dir / D2 / name)


def random_boxes(rng, n, scale=100.0, min_size=0.0):
    xy = rng.uniform(0, scale, size=(n, 2))
    wh = rng.uniform(min_size, scale / 2, size=(n, 2))
    return np.concatenate([xy, xy + wh], axis=1).astype(np.float32)


# ---------------------------------------------------------------- NumPy references
def np_area(b):
    return (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])


def np_inter(a, b):
    # a (N, 4), b (M, 4) -> (N, M)
    out = np.zeros((len(a), len(b)), np.float64)
    for i in range(len(a)):
        for j in range(len(b)):
            w = min(a[i, 2], b[j, 2]) - max(a[i, 0], b[j, 0])
            h = min(a[i, 3], b[j, 3]) - max(a[i, 1], b[j, 1])
            out[i, j] = max(w, 0) * max(h, 0)
    return out


def np_iou(a, b):
    inter = np_inter(a, b)
    union = np_area(a)[:, None] + np_area(b)[None, :] - inter
    return np.where(inter > 0, inter / np.where(inter > 0, union, 1), 0.0)


def np_iou_vectorised(a, b):
    # same definition as np_iou, fast enough for thousands of boxes
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.maximum(iw, 0.0) * np.maximum(ih, 0.0)
    union = np_area(a)[:, None] + np_area(b)[None, :] - inter
    return np.where(inter > 0, inter / np.where(inter > 0, union, 1), 0.0)


def np_greedy_nms(boxes, scores, thresh, iou=None):
    order = np.argsort(-scores, kind="stable")
    iou = np_iou(boxes, boxes) if iou is None else iou
    suppressed = np.zeros(len(boxes), bool)
    keep = []
    for i in order:
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= iou[i] > thresh
    return np.asarray(keep, np.int64)


def np_batched_nms(boxes, scores, groups, thresh):
    keep = []
    for g in np.unique(groups):
        idx = np.nonzero(groups == g)[0]
        keep.extend(idx[np_greedy_nms(boxes[idx], scores[idx], thresh)])
    keep = np.asarray(keep, np.int64)
    return keep[np.argsort(-scores[keep], kind="stable")]


# ---------------------------------------------------------------- golden fixtures
@pytest.mark.parametrize("name", ["box_transform_roi.npz", "box_transform_rpn.npz"])
def test_box_transform_matches_detectron2(fixtures_dir, name):
    d = _load(fixtures_dir, name)
    t = box_ops.Box2BoxTransform(tuple(d["weights"]), float(d["scale_clamp"]))
    deltas = t.get_deltas(d["src_boxes"], d["target_boxes"]).numpy()
    np.testing.assert_allclose(deltas, d["deltas"], rtol=1e-5, atol=1e-5)
    decoded = t.apply_deltas(d["apply_deltas_input"], d["src_boxes"]).numpy()
    np.testing.assert_allclose(decoded, d["decoded_boxes"], rtol=1e-5, atol=1e-3)


def test_batched_nms_matches_detectron2(fixtures_dir):
    d = _load(fixtures_dir, "batched_nms.npz")
    keep = box_ops.batched_nms(d["boxes"], d["scores"], d["classes"], float(d["iou_threshold"]))
    np.testing.assert_array_equal(keep.numpy(), d["keep"])


# ---------------------------------------------------------------- IoU / IoA / clip / nonempty
def test_pairwise_iou_against_numpy():
    rng = np.random.RandomState(0)
    a, b = random_boxes(rng, 7), random_boxes(rng, 9)
    b[0] = a[0]  # identical pair -> 1
    b[1] = [500, 500, 510, 510]  # disjoint from everything -> 0
    b[2] = [3, 3, 3, 8]  # zero area
    got = box_ops.pairwise_iou(a, b).numpy()
    np.testing.assert_allclose(got, np_iou(a, b), rtol=1e-5, atol=1e-6)
    assert got[0, 0] == pytest.approx(1.0)
    assert (got[:, 1] == 0).all() and (got[:, 2] == 0).all()


def test_pairwise_iou_batched_broadcast():
    rng = np.random.RandomState(1)
    gt = np.stack([random_boxes(rng, 3), random_boxes(rng, 3)])  # (2, 3, 4)
    anchors = random_boxes(rng, 5)  # (5, 4) shared by both images
    got = box_ops.pairwise_iou(gt, anchors).numpy()
    assert got.shape == (2, 3, 5)
    for i in range(2):
        np.testing.assert_allclose(got[i], np_iou(gt[i], anchors), rtol=1e-5, atol=1e-6)


def test_pairwise_iou_gradient_finite_for_degenerate_boxes():
    a = tf.Variable([[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 5.0, 5.0]])
    b = tf.constant([[0.0, 0.0, 0.0, 0.0], [10.0, 10.0, 12.0, 12.0]])
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(box_ops.pairwise_iou(a, b))
    assert np.isfinite(tape.gradient(loss, a).numpy()).all()


def test_pairwise_ioa_against_numpy():
    rng = np.random.RandomState(2)
    crowd, boxes = random_boxes(rng, 4), random_boxes(rng, 6)
    boxes[0] = [crowd[0, 0] + 1, crowd[0, 1] + 1, crowd[0, 0] + 2, crowd[0, 1] + 2]  # inside -> 1
    boxes[1] = [7, 7, 7, 9]  # zero area -> 0
    got = box_ops.pairwise_ioa(crowd, boxes).numpy()
    inter = np_inter(crowd, boxes)
    area = np_area(boxes)[None, :]
    want = np.where(inter > 0, inter / np.where(inter > 0, area, 1), 0.0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert got[0, 0] == pytest.approx(1.0)


def test_clip_boxes_single_and_batched_sizes():
    boxes = np.array([[[-5, -3, 120, 40], [10, 20, 30, 200]],
                      [[-5, -3, 120, 40], [10, 20, 30, 200]]], np.float32)  # (2, 2, 4)
    sizes = np.array([[50, 100], [300, 25]], np.int32)  # (h, w)
    got = box_ops.clip_boxes(boxes, sizes).numpy()
    want = boxes.copy()
    for i, (h, w) in enumerate(sizes):
        want[i, :, 0::2] = np.clip(boxes[i, :, 0::2], 0, w)
        want[i, :, 1::2] = np.clip(boxes[i, :, 1::2], 0, h)
    np.testing.assert_array_equal(got, want)
    one = box_ops.clip_boxes(boxes[0], np.array([50, 100])).numpy()
    np.testing.assert_array_equal(one, want[0])
    # boxes (B, L, K, 4) with per-image sizes (B, 2)
    deep = box_ops.clip_boxes(np.stack([boxes, boxes], axis=1), sizes).numpy()
    np.testing.assert_array_equal(deep[:, 1], want)


def test_nonempty_mask():
    boxes = np.array([[0, 0, 1, 1], [0, 0, 0, 1], [0, 0, 1, 0], [2, 2, 1, 3], [0, 0, 2, 3]],
                     np.float32)
    np.testing.assert_array_equal(box_ops.nonempty_mask(boxes).numpy(),
                                  [True, False, False, False, True])
    np.testing.assert_array_equal(box_ops.nonempty_mask(boxes, 1.5).numpy(),
                                  [False, False, False, False, True])


# ---------------------------------------------------------------- Box2BoxTransform
def np_encode(src, tgt, weights):
    wx, wy, ww, wh = weights
    sw, sh = src[:, 2] - src[:, 0], src[:, 3] - src[:, 1]
    tw, th = tgt[:, 2] - tgt[:, 0], tgt[:, 3] - tgt[:, 1]
    scx, scy = src[:, 0] + 0.5 * sw, src[:, 1] + 0.5 * sh
    tcx, tcy = tgt[:, 0] + 0.5 * tw, tgt[:, 1] + 0.5 * th
    return np.stack([wx * (tcx - scx) / sw, wy * (tcy - scy) / sh,
                     ww * np.log(tw / sw), wh * np.log(th / sh)], axis=1)


def test_get_deltas_against_numpy_and_round_trip():
    rng = np.random.RandomState(3)
    src, tgt = random_boxes(rng, 50, min_size=1.0), random_boxes(rng, 50, min_size=1.0)
    w = (10.0, 10.0, 5.0, 5.0)
    t = box_ops.Box2BoxTransform(w)
    deltas = t.get_deltas(src, tgt)
    np.testing.assert_allclose(deltas.numpy(), np_encode(src.astype(np.float64), tgt, w),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(t.apply_deltas(deltas, src).numpy(), tgt, rtol=1e-5, atol=1e-3)


def test_apply_deltas_clamps_scale():
    t = box_ops.Box2BoxTransform((1.0, 1.0, 1.0, 1.0))
    box = np.array([[10.0, 20.0, 30.0, 60.0]], np.float32)  # w 20, h 40, centre (20, 40)
    out = t.apply_deltas(np.array([[0.0, 0.0, 100.0, -1.0]], np.float32), box).numpy()[0]
    w = 20 * math.exp(math.log(1000.0 / 16))
    h = 40 * math.exp(-1.0)
    np.testing.assert_allclose(out, [20 - w / 2, 40 - h / 2, 20 + w / 2, 40 + h / 2], rtol=1e-5)


def test_apply_deltas_class_specific_leading_dims_and_half():
    rng = np.random.RandomState(4)
    boxes = random_boxes(rng, 6, min_size=1.0).reshape(2, 3, 4)
    deltas = rng.normal(0, 0.5, size=(2, 3, 4 * 5)).astype(np.float32)  # 5 classes
    t = box_ops.Box2BoxTransform((10.0, 10.0, 5.0, 5.0))
    out = t.apply_deltas(deltas, boxes).numpy()
    assert out.shape == (2, 3, 20)
    flat = t.apply_deltas(deltas.reshape(6, 20), boxes.reshape(6, 4)).numpy()
    np.testing.assert_allclose(out.reshape(6, 20), flat, rtol=1e-5, atol=1e-4)
    for c in range(5):  # class c uses deltas[..., 4c:4c+4] on the same box
        one = t.apply_deltas(deltas[..., 4 * c:4 * c + 4].reshape(6, 4), boxes.reshape(6, 4))
        np.testing.assert_allclose(flat[:, 4 * c:4 * c + 4], one.numpy(), rtol=1e-5, atol=1e-4)
    half = t.apply_deltas(tf.constant(deltas, tf.float16), tf.constant(boxes, tf.float16))
    assert half.dtype == tf.float32


# ---------------------------------------------------------------- NMS
def test_batched_nms_against_numpy_greedy():
    rng = np.random.RandomState(5)
    boxes = random_boxes(rng, 300, scale=60.0, min_size=2.0)
    scores = rng.uniform(size=300).astype(np.float32)
    groups = rng.randint(0, 4, size=300)
    keep = box_ops.batched_nms(boxes, scores, groups, 0.5).numpy()
    np.testing.assert_array_equal(keep, np_batched_nms(boxes, scores, groups, 0.5))
    capped = box_ops.batched_nms(boxes, scores, groups, 0.5, 10).numpy()
    np.testing.assert_array_equal(capped, keep[:10])


def test_nms_rows_with_validity_and_negative_coords():
    rng = np.random.RandomState(6)
    b, n, k = 3, 120, 40
    boxes = np.stack([random_boxes(rng, n, scale=50.0, min_size=2.0) for _ in range(b)])
    boxes[2] -= 80.0  # all coordinates negative: must still be treated as real boxes
    scores = rng.uniform(size=(b, n)).astype(np.float32)
    valid = rng.uniform(size=(b, n)) > 0.3
    valid[1] = False  # a row with nothing valid
    keep, keep_valid = box_ops.nms_rows(boxes, scores, valid, 0.7, k)
    assert keep.shape == (b, k) and keep_valid.shape == (b, k)
    for i in range(b):
        idx = np.nonzero(valid[i])[0]
        want = idx[np_greedy_nms(boxes[i, idx], scores[i, idx], 0.7)][:k]
        got = keep.numpy()[i][keep_valid.numpy()[i]]
        np.testing.assert_array_equal(got, want)
        assert keep_valid.numpy()[i].sum() == len(want)
        assert not keep.numpy()[i][~keep_valid.numpy()[i]].any()


def test_nms_rows_in_tf_function_with_unknown_shapes():
    fn = tf.function(lambda bx, sc, v: box_ops.nms_rows(bx, sc, v, 0.5, 8),
                     input_signature=[tf.TensorSpec([None, None, 4], tf.float32),
                                      tf.TensorSpec([None, None], tf.float32),
                                      tf.TensorSpec([None, None], tf.bool)])
    rng = np.random.RandomState(7)
    for n in (5, 30):
        boxes = random_boxes(rng, n, min_size=2.0)[None]
        scores = rng.uniform(size=(1, n)).astype(np.float32)
        keep, keep_valid = fn(boxes, scores, np.ones((1, n), bool))
        want = np_greedy_nms(boxes[0], scores[0], 0.5)[:8]
        np.testing.assert_array_equal(keep.numpy()[0][keep_valid.numpy()[0]], want)
    assert fn.experimental_get_tracing_count() == 1
