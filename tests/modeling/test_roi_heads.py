"""ROI heads vs NumPy references of detectron2's definitions.

Covers proposal labelling/sampling (GT appended, crowd ignore, background = K), the box losses'
normalisation, fast_rcnn_inference (threshold, class-specific decode, per-class NMS, top-k),
batch == single image, empty cases and graph mode.
"""
import math

import numpy as np
import pytest
import tensorflow as tf

from tfmrcnn.config import get_cfg
from tfmrcnn.modeling import roi_heads as rh
from tfmrcnn.modeling.layers import named_variables

WEIGHTS = (10.0, 10.0, 5.0, 5.0)
CLAMP = math.log(1000.0 / 16)


# ---------------------------------------------------------------- NumPy references
def np_area(b):
    return (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])


def np_inter(a, b):
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    return np.clip(iw, 0, None) * np.clip(ih, 0, None)


def np_iou(a, b):
    inter = np_inter(a, b)
    union = np_area(a)[:, None] + np_area(b)[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(inter > 0, inter / union, 0.0)


def np_labels(cands, cand_valid, gt_boxes, gt_classes, crowd, k):
    """detectron2 labelling of candidate boxes: GT class if max IoU >= 0.5, else k; -1 for
    invalid candidates and non-foreground ones covered >= 0.5 by a crowd box."""
    labels = np.full(len(cands), k, np.int64)
    matched = np.full(len(cands), -1)
    real = gt_classes >= 0
    if real.any():
        iou = np_iou(gt_boxes[real], cands)
        best = iou.argmax(0)
        fg = iou.max(0) >= 0.5
        labels[fg] = gt_classes[real][best[fg]]
        matched[fg] = np.flatnonzero(real)[best[fg]]
    crowd = crowd[np_area(crowd) > 0]
    if len(crowd):
        with np.errstate(invalid="ignore", divide="ignore"):
            ioa = np.where(np_inter(crowd, cands) > 0, np_inter(crowd, cands) / np_area(cands), 0)
        labels[(ioa >= 0.5).any(0) & (labels == k)] = -1
    labels[~cand_valid] = -1
    return labels, matched


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


# ---------------------------------------------------------------- helpers
def _cfg(k=3, s=16, frac=0.25, d=10, fc=16, mask=True, agnostic=False, num_conv=0):
    cfg = get_cfg()
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = k
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = s
    cfg.MODEL.ROI_HEADS.POSITIVE_FRACTION = frac
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = fc
    cfg.MODEL.ROI_BOX_HEAD.NUM_CONV = num_conv
    cfg.MODEL.ROI_BOX_HEAD.CONV_DIM = 8
    cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = agnostic
    cfg.MODEL.ROI_MASK_HEAD.CONV_DIM = 8
    cfg.MODEL.ROI_MASK_HEAD.NUM_CONV = 2
    cfg.MODEL.MASK_ON = mask
    cfg.TEST.DETECTIONS_PER_IMAGE = d
    return cfg


def _random_boxes(rng, n, size=64.0, lo=4.0, hi=30.0):
    xy = rng.uniform(0, size - lo, (n, 2))
    wh = rng.uniform(lo, hi, (n, 2))
    return np.concatenate([xy, np.minimum(xy + wh, size)], -1).astype(np.float32)


def _jitter(rng, box, n, scale=0.08):
    w, h = box[2] - box[0], box[3] - box[1]
    return (box[None] + rng.normal(0, scale, (n, 4)) * [w, h, w, h]).astype(np.float32)


# ---------------------------------------------------------------- labelling and sampling
def test_labels_match_numpy_reference():
    rng = np.random.default_rng(0)
    b, g, n, k = 2, 4, 60, 5
    gt = _random_boxes(rng, b * g).reshape(b, g, 4)
    gt_classes = rng.integers(0, k, (b, g)).astype(np.int32)
    gt_classes[1, 2:] = -1  # padding GT rows
    cands = np.stack([np.concatenate([_jitter(rng, gt[i, j], 10) for j in range(g)]
                                     + [_random_boxes(rng, n - 10 * g)]) for i in range(b)])
    valid = rng.random((b, n)) < 0.9
    crowd = np.zeros((b, 2, 4), np.float32)
    crowd[0, 0] = [30, 30, 64, 64]  # image 1 has no crowd region
    sampler = rh.ROISampler(_cfg(k=k))
    labels, _ = sampler.label(tf.constant(cands), tf.constant(valid), tf.constant(gt),
                              tf.constant(gt_classes), tf.constant(crowd))
    for i in range(b):
        ref, _ = np_labels(cands[i], valid[i], gt[i], gt_classes[i], crowd[i], k)
        np.testing.assert_array_equal(labels.numpy()[i], ref)
        assert (ref >= 0).any() and (ref < k).any() and (ref == k).any()
    assert (labels.numpy()[0] == -1).sum() > (~valid[0]).sum()  # the crowd region ignored some


def _sample_setup(rng):
    """One image: 2 GT, 6 foreground proposals, 30 background, 3 background inside a crowd."""
    gt = np.array([[[4, 4, 24, 28], [36, 30, 60, 58]]], np.float32)
    gt_classes = np.array([[2, 0]], np.int32)
    fg = np.concatenate([_jitter(rng, gt[0, 0], 3, 0.03), _jitter(rng, gt[0, 1], 3, 0.03)])
    bg = np.concatenate([_random_boxes(rng, 30, 64.0, 2.0, 4.0)])
    crowded = np.array([[70, 70, 75, 76], [72, 80, 78, 90], [66, 68, 80, 79]], np.float32)
    proposals = np.concatenate([fg, bg, crowded])[None]
    crowd = np.array([[[65, 65, 90, 95], [0, 0, 0, 0]]], np.float32)
    return proposals, gt, gt_classes, crowd


def test_sampling_counts_classes_gt_appended_and_crowd_ignored():
    rng = np.random.default_rng(1)
    proposals, gt, gt_classes, crowd = _sample_setup(rng)
    k, s = 3, 16
    sampler = rh.ROISampler(_cfg(k=k, s=s, frac=0.25))
    cands = np.concatenate([proposals[0], gt[0]])
    ref, matched = np_labels(cands, np.ones(len(cands), bool), gt[0], gt_classes[0], crowd[0], k)
    assert (ref[:6] < k).all() and (ref[-2:] < k).all() and (ref[-5:-2] == -1).all()
    for seed in range(4):
        sampler.seed = seed
        out = sampler(tf.constant(proposals), tf.ones([1, proposals.shape[1]], tf.bool),
                      tf.constant(gt), tf.constant(gt_classes), tf.constant(crowd))
        fg, valid = out.foreground.numpy()[0], out.valid.numpy()[0]
        boxes, classes = out.boxes.numpy()[0], out.classes.numpy()[0]
        assert out.boxes.shape == (1, s, 4)
        # 8 foreground candidates (6 + 2 appended GT) capped at 16 * 0.25; 30 bg fill the rest
        assert fg.sum() == 4 and fg[:4].all() and valid.sum() == s
        for box, c, f, gtb in zip(boxes, classes, fg, out.gt_boxes.numpy()[0]):
            j = np.flatnonzero((np.abs(cands - box) < 1e-6).all(1))
            assert len(j) == 1, "every sample is a distinct candidate"
            assert c == ref[j[0]] and ref[j[0]] != -1  # crowd-covered ones never sampled
            if f:
                np.testing.assert_allclose(gtb, gt[0, matched[j[0]]])
            else:
                assert c == k


def test_sampling_pads_when_few_candidates_and_appends_gt():
    gt = np.array([[[4, 4, 24, 28], [36, 30, 60, 58], [0, 0, 0, 0]]], np.float32)
    gt_classes = np.array([[1, 2, -1]], np.int32)
    proposals = np.array([[[40, 2, 44, 6], [50, 2, 60, 9], [5, 4, 24, 28], [0, 0, 0, 0]]],
                         np.float32)
    valid = np.array([[True, True, True, False]])
    sampler = rh.ROISampler(_cfg(k=3, s=16, frac=0.25), seed=3)
    out = sampler(tf.constant(proposals), tf.constant(valid), tf.constant(gt),
                  tf.constant(gt_classes), tf.zeros([1, 0, 4]))
    fg, v = out.foreground.numpy()[0], out.valid.numpy()[0]
    # fg: proposal 2 (IoU 0.95 with GT 0) + the 2 appended real GT; bg: proposals 0 and 1
    assert fg.sum() == 3 and fg[:3].all() and v.sum() == 5 and v[:5].all()
    assert sorted(out.classes.numpy()[0][:3].tolist()) == [1, 1, 2]
    assert (out.classes.numpy()[0][3:] == 3).all()
    boxes, gt_of = out.boxes.numpy()[0], out.gt_boxes.numpy()[0]
    appended = [i for i in range(3) if np.allclose(boxes[i], gt_of[i])]
    assert len(appended) == 2
    assert not out.boxes.numpy()[0, 5:].any()


# ---------------------------------------------------------------- box losses
def _hand_samples():
    """2 images x 4 slots: 3 foreground, 3 background, 2 padding."""
    boxes = np.array([[[0, 0, 10, 10], [5, 5, 20, 30], [1, 2, 3, 4], [0, 0, 0, 0]],
                      [[10, 10, 40, 30], [2, 2, 9, 9], [0, 0, 5, 5], [0, 0, 0, 0]]], np.float32)
    gt = np.array([[[1, 1, 11, 12], [4, 6, 22, 28], [0, 0, 0, 0], [0, 0, 0, 0]],
                   [[12, 8, 38, 33], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]], np.float32)
    fg = np.array([[1, 1, 0, 0], [1, 0, 0, 0]], bool)
    valid = np.array([[1, 1, 1, 0], [1, 1, 1, 0]], bool)
    classes = np.array([[2, 0, 3, 3], [1, 3, 3, 3]], np.int32)
    samples = rh.ROISamples(boxes=tf.constant(boxes), classes=tf.constant(classes),
                            gt_boxes=tf.constant(gt), gt_indices=tf.zeros([2, 4], tf.int32),
                            valid=tf.constant(valid), foreground=tf.constant(fg))
    return samples, boxes, gt, fg, valid, classes


@pytest.mark.parametrize("beta", [0.0, 0.5])
def test_box_losses_normalised_by_sampled_count(beta):
    cfg = _cfg(k=3)
    cfg.MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA = beta
    pred = rh.FastRCNNOutputLayers(cfg, 8)
    samples, boxes, gt, fg, valid, classes = _hand_samples()
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
    pred = rh.FastRCNNOutputLayers(_cfg(k=3), 8)
    samples, *_ = _hand_samples()
    samples = samples._replace(foreground=tf.zeros([2, 4], tf.bool),
                               classes=tf.fill([2, 4], 3), gt_boxes=tf.zeros([2, 4, 4]))
    deltas = tf.Variable(tf.random.normal([2, 4, 12]))
    with tf.GradientTape() as tape:
        out = pred.losses(tf.random.normal([2, 4, 4]), deltas, samples)
    assert out["loss_box_reg"].numpy() == 0.0 and np.isfinite(out["loss_cls"].numpy())
    assert np.isfinite(tape.gradient(out["loss_box_reg"], deltas).numpy()).all()


def test_classification_metrics_on_hand_built_samples():
    samples, _, _, fg, valid, classes = _hand_samples()
    logits = np.full((2, 4, 4), -5.0, np.float32)
    pred = np.array([[2, 3, 3, 1], [3, 3, 0, 0]])  # fg: right, wrong (bg), wrong (bg)
    np.put_along_axis(logits, pred[..., None], 5.0, axis=-1)
    m = {k: v.numpy() for k, v in rh.classification_metrics(tf.constant(logits), samples).items()}
    right = pred == classes
    np.testing.assert_allclose(m["fast_rcnn/cls_accuracy"], right[valid].mean(), rtol=1e-6)
    np.testing.assert_allclose(m["fast_rcnn/fg_cls_accuracy"], right[fg].mean(), rtol=1e-6)
    np.testing.assert_allclose(m["fast_rcnn/false_negative"], (pred[fg] == 3).mean(), rtol=1e-6)
    np.testing.assert_allclose(m["roi_head/num_fg_samples"], fg.sum() / 2)
    np.testing.assert_allclose(m["roi_head/num_bg_samples"], (valid & ~fg).sum() / 2)


# ---------------------------------------------------------------- inference
@pytest.mark.parametrize("seed,agnostic", [(0, False), (1, False), (3, True)])
def test_inference_matches_numpy_fast_rcnn_inference(seed, agnostic):
    rng = np.random.default_rng(seed)
    b, p, k, d = 2, 40, 3, 12
    cfg = _cfg(k=k, d=d, agnostic=agnostic)
    pred = rh.FastRCNNOutputLayers(cfg, 8)
    centres = _random_boxes(rng, 6, 64.0, 10, 30)
    proposals = np.stack([np.concatenate([_jitter(rng, centres[j], p // 6, 0.15)
                                          for j in range(6)] + [_random_boxes(rng, p % 6)])
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


# ---------------------------------------------------------------- box head
def test_box_head_names_init_and_nhwc_flatten():
    tf.random.set_seed(0)
    cfg = _cfg(k=80, fc=1024)
    head = rh.FastRCNNConvFCHead(cfg, 256, 7)
    pred = rh.FastRCNNOutputLayers(cfg, head.output_dim)
    shapes = {k: tuple(v.shape) for m in (head, pred) for k, v in named_variables(m).items()}
    assert shapes == {"roi_heads.box_head.fc1.weight": (7 * 7 * 256, 1024),
                      "roi_heads.box_head.fc1.bias": (1024,),
                      "roi_heads.box_head.fc2.weight": (1024, 1024),
                      "roi_heads.box_head.fc2.bias": (1024,),
                      "roi_heads.box_predictor.cls_score.weight": (1024, 81),
                      "roi_heads.box_predictor.cls_score.bias": (81,),
                      "roi_heads.box_predictor.bbox_pred.weight": (1024, 320),
                      "roi_heads.box_predictor.bbox_pred.bias": (320,)}
    assert abs(pred.cls_score.weight.numpy().std() - 0.01) < 5e-4
    assert abs(pred.bbox_pred.weight.numpy().std() - 0.001) < 5e-5
    x = np.random.default_rng(0).normal(0, 1, (3, 7, 7, 256)).astype(np.float32)
    w1, b1 = head.fcs[0].weight.numpy(), head.fcs[0].bias.numpy()
    w2, b2 = head.fcs[1].weight.numpy(), head.fcs[1].bias.numpy()
    ref = np.maximum(np.maximum(x.reshape(3, -1) @ w1 + b1, 0) @ w2 + b2, 0)
    np.testing.assert_allclose(head(tf.constant(x)).numpy(), ref, rtol=1e-4, atol=1e-4)


def test_box_head_convs_with_norm_and_agnostic_regression():
    cfg = _cfg(k=4, num_conv=2, agnostic=True)
    cfg.MODEL.ROI_BOX_HEAD.NORM = "GN"
    cfg.MODEL.ROI_BOX_HEAD.CONV_DIM = 32
    head = rh.FastRCNNConvFCHead(cfg, 16, 7)
    names = set(named_variables(head))
    assert {"roi_heads.box_head.conv1.weight", "roi_heads.box_head.conv2.norm.weight"} <= names
    assert "roi_heads.box_head.conv1.bias" not in names
    pred = rh.FastRCNNOutputLayers(cfg, head.output_dim)
    logits, deltas = pred(head(tf.zeros([5, 7, 7, 16]), training=True))
    assert logits.shape == (5, 5) and deltas.shape == (5, 4)


# ---------------------------------------------------------------- StandardROIHeads end to end
STRIDES = [4, 8, 16, 32]


def _features(rng, b, c=8, size=64):
    return [tf.constant(rng.normal(0, 1, (b, size // s, size // s, c)).astype(np.float32))
            for s in STRIDES]


def _heads(cfg, seed=0):
    tf.random.set_seed(seed)
    heads = rh.StandardROIHeads(cfg, 8, STRIDES)
    # larger predictor weights than the init so scores are well separated (no near-ties)
    rng = np.random.default_rng(seed)
    for lin, std in ((heads.box_predictor.cls_score, 0.3), (heads.box_predictor.bbox_pred, 0.05)):
        lin.weight.assign(rng.normal(0, std, lin.weight.shape).astype(np.float32))
    return heads


def _train_batch(rng, b=2, g=3, p=20, size=64):
    gt = np.zeros((b, g, 4), np.float32)
    gt_classes = np.full((b, g), -1, np.int32)
    masks = np.zeros((b, g, size, size), np.uint8)
    proposals = np.zeros((b, p, 4), np.float32)
    for i in range(b):
        n = g - i  # image 1 has one padding GT row
        gt[i, :n] = _random_boxes(rng, n, size, 12, 30)
        gt_classes[i, :n] = rng.integers(0, 3, n)
        for j in range(n):
            x0, y0, x1, y1 = gt[i, j].astype(int)
            masks[i, j, y0:y1, x0:x1] = rng.random((y1 - y0, x1 - x0)) < 0.7
        proposals[i] = np.concatenate([_jitter(rng, gt[i, 0], 4), _random_boxes(rng, p - 4, size)])
    valid = np.ones((b, p), bool)
    valid[1, -3:] = False
    crowd = np.zeros((b, 1, 4), np.float32)
    return [tf.constant(x) for x in (proposals, valid, gt, gt_classes, masks, crowd)]


def _slice(tensors, i):
    return [t[i:i + 1] for t in tensors]


def test_variable_names_of_standard_roi_heads():
    heads = rh.StandardROIHeads(_cfg(k=3), 8, STRIDES)
    names = set(named_variables(heads))
    assert names == ({f"roi_heads.box_head.fc{i}.{w}" for i in (1, 2) for w in ("weight", "bias")}
                     | {f"roi_heads.box_predictor.{m}.{w}" for m in ("cls_score", "bbox_pred")
                        for w in ("weight", "bias")}
                     | {f"roi_heads.mask_head.{m}.{w}" for m in ("mask_fcn1", "mask_fcn2", "deconv",
                                                                  "predictor")
                        for w in ("weight", "bias")})


def test_losses_of_a_batch_combine_the_images_and_give_gradients():
    rng = np.random.default_rng(5)
    cfg = _cfg(k=3, s=64, frac=0.25)  # every candidate gets sampled: no randomness
    heads = _heads(cfg)
    feats = _features(rng, 2)
    proposals, valid, gt, gt_classes, masks, crowd = batch = _train_batch(rng)
    proposals = tf.Variable(proposals)
    with tf.GradientTape(persistent=True) as tape:
        both = heads.losses(feats, proposals, valid, tf.constant([[64, 64]] * 2), gt, gt_classes,
                            masks, crowd)
        total = tf.add_n(list(both.values()))
    grads = tape.gradient(total, heads.trainable_variables)
    assert all(g is not None and np.isfinite(g.numpy()).all() for g in grads)
    assert tape.gradient(total, proposals) is None  # proposals are constants for the heads
    singles, counts = [], []
    for i in range(2):
        p, v, g, c, m, cr = _slice(batch, i)
        singles.append(heads.losses([f[i:i + 1] for f in feats], p, v, tf.constant([[64, 64]]),
                                    g, c, m, cr))
        s = heads.sampler(p, v, g, c, cr)
        counts.append((s.valid.numpy().sum(), s.foreground.numpy().sum()))
    (n0, f0), (n1, f1) = counts
    assert f0 > 0 and f1 > 0 and n0 < 64 and n1 < 64
    for key, (w0, w1) in (("loss_cls", (n0, n1)), ("loss_box_reg", (n0, n1)),
                          ("loss_mask", (f0, f1))):
        ref = (singles[0][key] * w0 + singles[1][key] * w1) / (w0 + w1)
        np.testing.assert_allclose(both[key].numpy(), ref.numpy(), rtol=1e-4, err_msg=key)


def test_mask_loss_uses_the_matched_instance_mask_and_gt_class():
    # the NumPy ROIAlign reference lives next to the mask-head tests (same folder, on sys.path)
    from test_mask_head import np_bce_with_logits, np_roi_align

    rng = np.random.default_rng(11)
    heads = _heads(_cfg(k=3, s=64, frac=0.25))  # every candidate sampled: deterministic
    feats = _features(rng, 2)
    proposals, valid, gt, gt_classes, masks, crowd = _train_batch(rng)
    loss = heads.losses(feats, proposals, valid, tf.constant([[64, 64]] * 2), gt, gt_classes,
                        masks, crowd)["loss_mask"].numpy()
    s = heads.sampler(proposals, valid, gt, gt_classes, crowd)
    f = heads.sampler.max_foreground
    logits = heads._mask_logits(feats, s.boxes[:, :f], False).numpy().reshape(2, f, 28, 28, 3)
    terms = []
    for i in range(2):
        for slot in np.flatnonzero(s.foreground.numpy()[i]):
            box = s.boxes.numpy()[i, slot]
            # the instance is identified by its GT box, independently of the sampler's indices
            ious = np_iou(gt.numpy()[i], box[None])[:, 0] * (gt_classes.numpy()[i] >= 0)
            j = int(ious.argmax())
            assert s.classes.numpy()[i, slot] == gt_classes.numpy()[i, j]
            target = np_roi_align(masks.numpy()[i, j][None, :, :, None].astype(np.float32),
                                  box[None], [0], (28, 28), 1.0)[0, :, :, 0] >= 0.5
            x = logits[i, slot, :, :, gt_classes.numpy()[i, j]].astype(np.float64)
            terms.append(np_bce_with_logits(x, target))
    assert len(terms) > 2
    np.testing.assert_allclose(loss, np.mean(terms), rtol=1e-4)


def test_losses_without_gt_are_finite():
    rng = np.random.default_rng(6)
    heads = _heads(_cfg(k=3))
    feats = _features(rng, 2)
    proposals = tf.constant(np.stack([_random_boxes(rng, 10), _random_boxes(rng, 10)]))
    for g in (0, 2):  # no GT slot at all, or padding rows only
        out = heads.losses(feats, proposals, tf.ones([2, 10], tf.bool),
                           tf.constant([[64, 64]] * 2), tf.zeros([2, g, 4]), tf.fill([2, g], -1),
                           tf.zeros([2, g, 64, 64], tf.uint8), tf.zeros([2, 0, 4]))
        assert out["loss_box_reg"].numpy() == 0.0 and out["loss_mask"].numpy() == 0.0
        assert np.isfinite(out["loss_cls"].numpy()) and out["loss_cls"].numpy() > 0


def test_inference_of_a_batch_equals_each_image_alone():
    rng = np.random.default_rng(7)
    heads = _heads(_cfg(k=3, d=15))
    feats = _features(rng, 2)
    proposals = tf.constant(np.stack([_random_boxes(rng, 30), _random_boxes(rng, 30)]))
    valid = tf.constant(rng.random((2, 30)) < 0.8)
    sizes = tf.constant([[64, 64], [48, 56]], tf.int32)
    both = heads.inference(feats, proposals, valid, sizes)
    assert both["masks"].shape == (2, 15, 28, 28) and both["boxes"].shape == (2, 15, 4)
    for i in range(2):
        one = heads.inference([f[i:i + 1] for f in feats], proposals[i:i + 1], valid[i:i + 1],
                              sizes[i:i + 1])
        n = int(one["num_detections"][0])
        assert n == int(both["num_detections"][i]) and n > 0
        for key in ("boxes", "scores", "classes", "masks"):
            np.testing.assert_allclose(both[key].numpy()[i], one[key].numpy()[0], rtol=1e-4,
                                       atol=1e-4, err_msg=key)
        m = both["masks"].numpy()[i]
        assert (m[:n] > 0).all() and (m[:n] < 1).all() and not m[n:].any()


def test_inference_without_detections_is_all_padding():
    rng = np.random.default_rng(8)
    cfg = _cfg(k=3, d=5)
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 1.0
    heads = _heads(cfg)
    out = heads.inference(_features(rng, 2), tf.constant(np.stack([_random_boxes(rng, 6)] * 2)),
                          tf.ones([2, 6], tf.bool), tf.constant([[64, 64]] * 2))
    assert out["num_detections"].numpy().tolist() == [0, 0]
    for key in ("boxes", "scores", "classes", "masks"):
        assert not out[key].numpy().any() and np.isfinite(out[key].numpy()).all()


FSPEC = [tf.TensorSpec([None, None, None, 8], tf.float32) for _ in STRIDES]
BOXES = tf.TensorSpec([None, None, 4], tf.float32)
FLAGS = tf.TensorSpec([None, None], tf.bool)
SIZES = tf.TensorSpec([None, 2], tf.int32)


def test_inference_in_graph_mode_with_unknown_dims():
    rng = np.random.default_rng(9)
    heads = _heads(_cfg(k=3, d=8))
    infer = tf.function(heads.inference, input_signature=[FSPEC, BOXES, FLAGS, SIZES])
    feats = _features(rng, 2)
    proposals, valid, *_ = _train_batch(rng)
    sizes = tf.constant([[64, 64], [60, 52]])
    out = infer(feats, proposals, valid, sizes)
    eager = heads.inference(feats, proposals, valid, sizes)
    assert out["num_detections"].numpy().tolist() == eager["num_detections"].numpy().tolist()
    for key in ("boxes", "scores", "masks"):
        np.testing.assert_allclose(out[key].numpy(), eager[key].numpy(), atol=1e-4, err_msg=key)


def test_losses_in_graph_mode_with_unknown_dims():
    rng = np.random.default_rng(10)
    heads = _heads(_cfg(k=3, s=64))
    train = tf.function(heads.losses, input_signature=[
        FSPEC, BOXES, FLAGS, SIZES, BOXES, tf.TensorSpec([None, None], tf.int32),
        tf.TensorSpec([None, None, None, None], tf.uint8), BOXES])
    feats = _features(rng, 2)
    batch = _train_batch(rng)
    sizes = tf.constant([[64, 64]] * 2)
    proposals, valid, gt, gt_classes, masks, crowd = batch
    graph = train(feats, proposals, valid, sizes, gt, gt_classes, masks, crowd)
    eager = heads.losses(feats, proposals, valid, sizes, gt, gt_classes, masks, crowd)
    for key in ("loss_cls", "loss_box_reg", "loss_mask"):  # every candidate sampled: same value
        np.testing.assert_allclose(graph[key].numpy(), eager[key].numpy(), rtol=1e-4, err_msg=key)
