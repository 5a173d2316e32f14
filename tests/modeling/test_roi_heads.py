"""ROI heads (detectron2's ROIHeads / StandardROIHeads) vs NumPy references of detectron2's
definitions.

Covers proposal labelling and sampling (GT appended, crowd ignore, background = K), the sample
counts logged in training, and StandardROIHeads end to end: variable names, losses of a batch
against single images, the mask loss, empty cases, batch == single image at inference, graph
mode.
"""
import numpy as np
import tensorflow as tf

from tfmrcnn.modeling import roi_heads as rh
from tfmrcnn.modeling.layers import named_variables

from roi_heads_toy import (STRIDES, build_heads, features, hand_samples, jitter, np_area,
                           np_inter, np_iou, random_boxes, small_cfg, train_batch)


# ---------------------------------------------------------------- NumPy reference
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


# ---------------------------------------------------------------- labelling and sampling
def test_labels_match_numpy_reference():
    rng = np.random.default_rng(0)
    b, g, n, k = 2, 4, 60, 5
    gt = random_boxes(rng, b * g).reshape(b, g, 4)
    gt_classes = rng.integers(0, k, (b, g)).astype(np.int32)
    gt_classes[1, 2:] = -1  # padding GT rows
    cands = np.stack([np.concatenate([jitter(rng, gt[i, j], 10) for j in range(g)]
                                     + [random_boxes(rng, n - 10 * g)]) for i in range(b)])
    valid = rng.random((b, n)) < 0.9
    crowd = np.zeros((b, 2, 4), np.float32)
    crowd[0, 0] = [30, 30, 64, 64]  # image 1 has no crowd region
    heads = rh.ROIHeads(small_cfg(k=k))
    labels, _ = heads.label_proposals(tf.constant(cands), tf.constant(valid), tf.constant(gt),
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
    fg = np.concatenate([jitter(rng, gt[0, 0], 3, 0.03), jitter(rng, gt[0, 1], 3, 0.03)])
    bg = np.concatenate([random_boxes(rng, 30, 64.0, 2.0, 4.0)])
    crowded = np.array([[70, 70, 75, 76], [72, 80, 78, 90], [66, 68, 80, 79]], np.float32)
    proposals = np.concatenate([fg, bg, crowded])[None]
    crowd = np.array([[[65, 65, 90, 95], [0, 0, 0, 0]]], np.float32)
    return proposals, gt, gt_classes, crowd


def test_sampling_counts_classes_gt_appended_and_crowd_ignored():
    rng = np.random.default_rng(1)
    proposals, gt, gt_classes, crowd = _sample_setup(rng)
    k, s = 3, 16
    heads = rh.ROIHeads(small_cfg(k=k, s=s, frac=0.25))
    cands = np.concatenate([proposals[0], gt[0]])
    ref, matched = np_labels(cands, np.ones(len(cands), bool), gt[0], gt_classes[0], crowd[0], k)
    assert (ref[:6] < k).all() and (ref[-2:] < k).all() and (ref[-5:-2] == -1).all()
    for seed in range(4):
        heads.seed = seed
        out = heads.label_and_sample_proposals(
            tf.constant(proposals), tf.ones([1, proposals.shape[1]], tf.bool),
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
    heads = rh.ROIHeads(small_cfg(k=3, s=16, frac=0.25), seed=3)
    out = heads.label_and_sample_proposals(tf.constant(proposals), tf.constant(valid),
                                           tf.constant(gt), tf.constant(gt_classes),
                                           tf.zeros([1, 0, 4]))
    fg, v = out.foreground.numpy()[0], out.valid.numpy()[0]
    # fg: proposal 2 (IoU 0.95 with GT 0) + the 2 appended real GT; bg: proposals 0 and 1
    assert fg.sum() == 3 and fg[:3].all() and v.sum() == 5 and v[:5].all()
    assert sorted(out.classes.numpy()[0][:3].tolist()) == [1, 1, 2]
    assert (out.classes.numpy()[0][3:] == 3).all()
    boxes, gt_of = out.boxes.numpy()[0], out.gt_boxes.numpy()[0]
    appended = [i for i in range(3) if np.allclose(boxes[i], gt_of[i])]
    assert len(appended) == 2
    assert not out.boxes.numpy()[0, 5:].any()


def test_sample_count_metrics_on_hand_built_samples():
    samples, _, _, fg, valid, _ = hand_samples()
    m = {k: v.numpy() for k, v in rh.sample_count_metrics(samples).items()}
    assert set(m) == {"roi_head/num_fg_samples", "roi_head/num_bg_samples"}
    np.testing.assert_allclose(m["roi_head/num_fg_samples"], fg.sum() / 2)
    np.testing.assert_allclose(m["roi_head/num_bg_samples"], (valid & ~fg).sum() / 2)


# ---------------------------------------------------------------- StandardROIHeads end to end
def _slice(tensors, i):
    return [t[i:i + 1] for t in tensors]


def test_variable_names_of_standard_roi_heads():
    heads = rh.StandardROIHeads(small_cfg(k=3), 8, STRIDES)
    names = set(named_variables(heads))
    assert names == ({f"roi_heads.box_head.fc{i}.{w}" for i in (1, 2) for w in ("weight", "bias")}
                     | {f"roi_heads.box_predictor.{m}.{w}" for m in ("cls_score", "bbox_pred")
                        for w in ("weight", "bias")}
                     | {f"roi_heads.mask_head.{m}.{w}" for m in ("mask_fcn1", "mask_fcn2", "deconv",
                                                                  "predictor")
                        for w in ("weight", "bias")})


def test_losses_of_a_batch_combine_the_images_and_give_gradients():
    rng = np.random.default_rng(5)
    cfg = small_cfg(k=3, s=64, frac=0.25)  # every candidate gets sampled: no randomness
    heads = build_heads(cfg)
    feats = features(rng, 2)
    proposals, valid, gt, gt_classes, masks, crowd = batch = train_batch(rng)
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
        s = heads.label_and_sample_proposals(p, v, g, c, cr)
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
    heads = build_heads(small_cfg(k=3, s=64, frac=0.25))  # every candidate sampled: deterministic
    feats = features(rng, 2)
    proposals, valid, gt, gt_classes, masks, crowd = train_batch(rng)
    loss = heads.losses(feats, proposals, valid, tf.constant([[64, 64]] * 2), gt, gt_classes,
                        masks, crowd)["loss_mask"].numpy()
    s = heads.label_and_sample_proposals(proposals, valid, gt, gt_classes, crowd)
    f = heads.max_foreground
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
    heads = build_heads(small_cfg(k=3))
    feats = features(rng, 2)
    proposals = tf.constant(np.stack([random_boxes(rng, 10), random_boxes(rng, 10)]))
    for g in (0, 2):  # no GT slot at all, or padding rows only
        out = heads.losses(feats, proposals, tf.ones([2, 10], tf.bool),
                           tf.constant([[64, 64]] * 2), tf.zeros([2, g, 4]), tf.fill([2, g], -1),
                           tf.zeros([2, g, 64, 64], tf.uint8), tf.zeros([2, 0, 4]))
        assert out["loss_box_reg"].numpy() == 0.0 and out["loss_mask"].numpy() == 0.0
        assert np.isfinite(out["loss_cls"].numpy()) and out["loss_cls"].numpy() > 0


def test_inference_of_a_batch_equals_each_image_alone():
    rng = np.random.default_rng(7)
    heads = build_heads(small_cfg(k=3, d=15))
    feats = features(rng, 2)
    proposals = tf.constant(np.stack([random_boxes(rng, 30), random_boxes(rng, 30)]))
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
    cfg = small_cfg(k=3, d=5)
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 1.0
    heads = build_heads(cfg)
    out = heads.inference(features(rng, 2), tf.constant(np.stack([random_boxes(rng, 6)] * 2)),
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
    heads = build_heads(small_cfg(k=3, d=8))
    infer = tf.function(heads.inference, input_signature=[FSPEC, BOXES, FLAGS, SIZES])
    feats = features(rng, 2)
    proposals, valid, *_ = train_batch(rng)
    sizes = tf.constant([[64, 64], [60, 52]])
    out = infer(feats, proposals, valid, sizes)
    eager = heads.inference(feats, proposals, valid, sizes)
    assert out["num_detections"].numpy().tolist() == eager["num_detections"].numpy().tolist()
    for key in ("boxes", "scores", "masks"):
        np.testing.assert_allclose(out[key].numpy(), eager[key].numpy(), atol=1e-4, err_msg=key)


def test_losses_in_graph_mode_with_unknown_dims():
    rng = np.random.default_rng(10)
    heads = build_heads(small_cfg(k=3, s=64))
    train = tf.function(heads.losses, input_signature=[
        FSPEC, BOXES, FLAGS, SIZES, BOXES, tf.TensorSpec([None, None], tf.int32),
        tf.TensorSpec([None, None, None, None], tf.uint8), BOXES])
    feats = features(rng, 2)
    batch = train_batch(rng)
    sizes = tf.constant([[64, 64]] * 2)
    proposals, valid, gt, gt_classes, masks, crowd = batch
    graph = train(feats, proposals, valid, sizes, gt, gt_classes, masks, crowd)
    eager = heads.losses(feats, proposals, valid, sizes, gt, gt_classes, masks, crowd)
    for key in ("loss_cls", "loss_box_reg", "loss_mask"):  # every candidate sampled: same value
        np.testing.assert_allclose(graph[key].numpy(), eager[key].numpy(), rtol=1e-4, err_msg=key)


def test_losses_with_training_metrics():
    rng = np.random.default_rng(12)
    heads = build_heads(small_cfg(k=3, s=64))  # every candidate sampled: deterministic
    feats = features(rng, 2)
    proposals, valid, gt, gt_classes, masks, crowd = train_batch(rng)
    args = (feats, proposals, valid, tf.constant([[64, 64]] * 2), gt, gt_classes, masks, crowd)
    losses, metrics = heads.losses(*args, return_metrics=True)
    plain = heads.losses(*args)
    assert set(losses) == set(plain)
    for key, value in plain.items():
        np.testing.assert_allclose(losses[key].numpy(), value.numpy(), rtol=1e-6, err_msg=key)
    s = heads.label_and_sample_proposals(proposals, valid, gt, gt_classes, crowd)
    assert set(metrics) == {"fast_rcnn/cls_accuracy", "fast_rcnn/fg_cls_accuracy",
                            "fast_rcnn/false_negative", "roi_head/num_fg_samples",
                            "roi_head/num_bg_samples"}
    fg, sampled = s.foreground.numpy(), s.valid.numpy()
    np.testing.assert_allclose(metrics["roi_head/num_fg_samples"].numpy(), fg.sum() / 2)
    np.testing.assert_allclose(metrics["roi_head/num_bg_samples"].numpy(),
                               (sampled & ~fg).sum() / 2)
    assert all(0.0 <= float(metrics[k]) <= 1.0 for k in metrics if k.startswith("fast_rcnn/"))
