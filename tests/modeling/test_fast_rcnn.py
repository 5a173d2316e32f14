"""Box predictor (detectron2's FastRCNNOutputLayers) vs NumPy references of detectron2's
definitions: the box losses' normalisation, the training statistics, fast_rcnn_inference
(threshold, class-specific decode, per-class NMS, top-k, empty-box drop), names and init."""
import math

import numpy as np
import pytest
import tensorflow as tf

from tfmrcnn.modeling.fast_rcnn import FastRCNNOutputLayers, classification_metrics
from tfmrcnn.modeling.layers import named_variables

from roi_heads_toy import hand_samples, jitter, np_iou, random_boxes, small_cfg

WEIGHTS = (10.0, 10.0, 5.0, 5.0)
CLAMP = math.log(1000.0 / 16)


# ---------------------------------------------------------------- NumPy references
def np_get_deltas(src, tgt, w=WEIGHTS):
    sw, sh = src[:, 2] - src[:, 0], src[:, 3] - src[:, 1]
    tw, th = tgt[:, 2] - tgt[:, 0], tgt[:, 3] - tgt[:, 1]
    sx, sy = src[:, 0] + 0.5 * sw, src[:, 1] + 0.5 * sh
    tx, ty = tgt[:, 0] + 0.5 * tw, tgt[:, 1] + 0.5 * th
    return np.stack([w[0] * (tx - sx) / sw, w[1] * (ty - sy) / sh,
                     w[2] * np.log(tw / sw), w[3] * np.log(th / sh)], -1)


def np_apply_deltas(d, box, w=WEIGHTS):
    bw, bh = box[2] - box[0], box[3] - box[1]
    cx, cy = box[0] + 0.5 * bw, box[1] + 0.5 * bh
    pcx, pcy = d[0] / w[0] * bw + cx, d[1] / w[1] * bh + cy
    pw = np.exp(min(d[2] / w[2], CLAMP)) * bw
    ph = np.exp(min(d[3] / w[3], CLAMP)) * bh
    return np.array([pcx - 0.5 * pw, pcy - 0.5 * ph, pcx + 0.5 * pw, pcy + 0.5 * ph])


def np_softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_fast_rcnn_inference(logits, deltas, proposals, valid, size, k, thresh, nms, topk):
    """detectron2's fast_rcnn_inference_single_image + detector_postprocess's empty-box drop."""
    probs = np_softmax(logits.astype(np.float64))[:, :k]
    cands = []
    for p in range(len(proposals)):
        if not valid[p]:
            continue
        for c in range(k):
            if probs[p, c] > thresh:
                col = 4 * c if deltas.shape[1] > 4 else 0  # class-agnostic: one box for all
                box = np_apply_deltas(deltas[p, col:col + 4], proposals[p])
                box = np.clip(box, 0, [size[1], size[0], size[1], size[0]])
                cands.append((probs[p, c], c, box))
    cands.sort(key=lambda t: -t[0])
    kept = []
    for s, c, box in cands:  # greedy NMS within each class: suppressed when IoU > nms
        if all(kc != c or np_iou(kb[None], box[None])[0, 0] <= nms for _, kc, kb in kept):
            kept.append((s, c, box))
    survivors = len(kept)
    kept = [t for t in kept[:topk] if t[2][2] > t[2][0] and t[2][3] > t[2][1]]
    return kept, survivors


def np_ce(logits, labels):
    lp = logits - logits.max(-1, keepdims=True)
    lp = lp - np.log(np.exp(lp).sum(-1, keepdims=True))
    return -lp[np.arange(len(labels)), labels]


# ---------------------------------------------------------------- box losses
@pytest.mark.parametrize("beta", [0.0, 0.5])
def test_box_losses_normalised_by_sampled_count(beta):
    cfg = small_cfg(k=3)
    cfg.MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA = beta
    pred = FastRCNNOutputLayers.from_config(cfg, 8)
    samples, boxes, gt, fg, valid, classes = hand_samples()
    rng = np.random.default_rng(2)
    logits = rng.normal(0, 1, (2, 4, 4)).astype(np.float32)
    deltas = rng.normal(0, 1, (2, 4, 12)).astype(np.float32)
    out = pred.losses(tf.constant(logits), tf.constant(deltas), samples)
    n = valid.sum()
    ref_cls = np_ce(logits[valid].astype(np.float64), classes[valid]).sum() / n
    target = np_get_deltas(boxes[fg].astype(np.float64), gt[fg].astype(np.float64))
    d = deltas[fg].reshape(-1, 3, 4)[np.arange(fg.sum()), classes[fg]]
    x = np.abs(d - target)
    l1 = x if beta == 0 else np.where(x < beta, 0.5 * x * x / beta, x - 0.5 * beta)
    np.testing.assert_allclose(out["loss_cls"].numpy(), ref_cls, rtol=1e-5)
    np.testing.assert_allclose(out["loss_box_reg"].numpy(), l1.sum() / n, rtol=1e-5)


def test_box_losses_without_foreground_are_finite():
    pred = FastRCNNOutputLayers.from_config(small_cfg(k=3), 8)
    samples, *_ = hand_samples()
    samples = samples._replace(foreground=tf.zeros([2, 4], tf.bool),
                               classes=tf.fill([2, 4], 3), gt_boxes=tf.zeros([2, 4, 4]))
    deltas = tf.Variable(tf.random.normal([2, 4, 12]))
    with tf.GradientTape() as tape:
        out = pred.losses(tf.random.normal([2, 4, 4]), deltas, samples)
    assert out["loss_box_reg"].numpy() == 0.0 and np.isfinite(out["loss_cls"].numpy())
    assert np.isfinite(tape.gradient(out["loss_box_reg"], deltas).numpy()).all()


def test_classification_metrics_on_hand_built_samples():
    samples, _, _, fg, valid, classes = hand_samples()
    logits = np.full((2, 4, 4), -5.0, np.float32)
    pred = np.array([[2, 3, 3, 1], [3, 3, 0, 0]])  # fg: right, wrong (bg), wrong (bg)
    np.put_along_axis(logits, pred[..., None], 5.0, axis=-1)
    m = {k: v.numpy() for k, v in classification_metrics(tf.constant(logits), samples).items()}
    assert set(m) == {"fast_rcnn/cls_accuracy", "fast_rcnn/fg_cls_accuracy",
                      "fast_rcnn/false_negative"}
    right = pred == classes
    np.testing.assert_allclose(m["fast_rcnn/cls_accuracy"], right[valid].mean(), rtol=1e-6)
    np.testing.assert_allclose(m["fast_rcnn/fg_cls_accuracy"], right[fg].mean(), rtol=1e-6)
    np.testing.assert_allclose(m["fast_rcnn/false_negative"], (pred[fg] == 3).mean(), rtol=1e-6)


# ---------------------------------------------------------------- inference
@pytest.mark.parametrize("seed,agnostic", [(0, False), (1, False), (3, True)])
def test_inference_matches_numpy_fast_rcnn_inference(seed, agnostic):
    rng = np.random.default_rng(seed)
    b, p, k, d = 2, 40, 3, 12
    cfg = small_cfg(k=k, d=d, agnostic=agnostic)
    pred = FastRCNNOutputLayers.from_config(cfg, 8)
    centres = random_boxes(rng, 6, 64.0, 10, 30)
    proposals = np.stack([np.concatenate([jitter(rng, centres[j], p // 6, 0.15)
                                          for j in range(6)] + [random_boxes(rng, p % 6)])
                          for _ in range(b)])
    proposals[0, :3] = [[70, 5, 90, 20], [66, 70, 80, 90], [-20, -20, -5, -4]]  # clip to empty
    logits = rng.normal(0, 2, (b, p, k + 1)).astype(np.float32)
    deltas = rng.normal(0, 0.5, (b, p, 4 if agnostic else 4 * k)).astype(np.float32)
    valid = rng.random((b, p)) < 0.9
    sizes = np.array([[64, 64], [50, 60]], np.int32)
    out = pred.inference(tf.constant(logits), tf.constant(deltas), tf.constant(proposals),
                         tf.constant(valid), tf.constant(sizes))
    cut = dropped = 0
    for i in range(b):
        ref, survivors = np_fast_rcnn_inference(logits[i], deltas[i], proposals[i], valid[i],
                                                sizes[i], k, 0.05, 0.5, d)
        cut += survivors > d
        dropped += min(survivors, d) - len(ref)
        n = int(out["num_detections"][i])
        assert n == len(ref) and 0 < n <= d
        np.testing.assert_allclose(out["scores"][i, :n], [t[0] for t in ref], rtol=1e-5)
        np.testing.assert_array_equal(out["classes"][i, :n], [t[1] for t in ref])
        np.testing.assert_allclose(out["boxes"][i, :n], np.stack([t[2] for t in ref]),
                                   rtol=1e-4, atol=1e-3)
        assert not out["boxes"].numpy()[i, n:].any() and not out["scores"].numpy()[i, n:].any()
    assert cut > 0 and dropped > 0, "the top-k cut and the empty-box drop must be exercised"


# ---------------------------------------------------------------- names and init
def test_predictor_names_and_init():
    tf.random.set_seed(0)
    pred = FastRCNNOutputLayers.from_config(small_cfg(k=80, fc=1024), 1024)
    shapes = {k: tuple(v.shape) for k, v in named_variables(pred).items()}
    assert shapes == {"roi_heads.box_predictor.cls_score.weight": (1024, 81),
                      "roi_heads.box_predictor.cls_score.bias": (81,),
                      "roi_heads.box_predictor.bbox_pred.weight": (1024, 320),
                      "roi_heads.box_predictor.bbox_pred.bias": (320,)}
    assert abs(pred.cls_score.weight.numpy().std() - 0.01) < 5e-4
    assert abs(pred.bbox_pred.weight.numpy().std() - 0.001) < 5e-5
