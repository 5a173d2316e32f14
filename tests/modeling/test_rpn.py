"""RPN head, anchor labels, losses and proposals against NumPy references of detectron2's RPN."""
import numpy as np
import pytest
import tensorflow as tf

from tfmrcnn.config import get_cfg
from tfmrcnn.modeling.layers import named_variables
from tfmrcnn.modeling.rpn import RPN

STRIDES = [4, 8]


def make_rpn(channels=4, seed=0, **rpn_keys):
    cfg = get_cfg()
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[16], [32]]
    cfg.MODEL.RPN.IN_FEATURES = ["p2", "p3"]
    for k, v in rpn_keys.items():
        setattr(cfg.MODEL.RPN, k, v)
    tf.random.set_seed(seed)
    return RPN(cfg, channels, STRIDES, seed=seed)


def features(rng, batch, height, width, channels=4):
    return [tf.constant(rng.normal(size=(batch, height // s, width // s, channels)), tf.float32)
            for s in STRIDES]


# ---------------------------------------------------------------- NumPy references
def np_iou(a, b):
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.maximum(iw, 0) * np.maximum(ih, 0)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(inter > 0, inter / np.where(inter > 0, union, 1), 0.0)


def np_nms(boxes, scores, thresh):
    order = np.argsort(-scores, kind="stable")
    iou = np_iou(boxes, boxes)
    alive = np.ones(len(boxes), bool)
    keep = []
    for i in order:
        if alive[i]:
            keep.append(i)
            alive &= ~(iou[i] > thresh)
    return np.asarray(keep, np.int64)


def np_encode(src, tgt):
    sw, sh = src[..., 2] - src[..., 0], src[..., 3] - src[..., 1]
    tw, th = tgt[..., 2] - tgt[..., 0], tgt[..., 3] - tgt[..., 1]
    return np.stack([(tgt[..., 0] + 0.5 * tw - src[..., 0] - 0.5 * sw) / sw,
                     (tgt[..., 1] + 0.5 * th - src[..., 1] - 0.5 * sh) / sh,
                     np.log(tw / sw), np.log(th / sh)], axis=-1)


def np_decode(deltas, anchors, clamp=np.log(1000.0 / 16)):
    w, h = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    cx, cy = anchors[:, 0] + 0.5 * w, anchors[:, 1] + 0.5 * h
    pcx, pcy = deltas[:, 0] * w + cx, deltas[:, 1] * h + cy
    pw = np.exp(np.minimum(deltas[:, 2], clamp)) * w
    ph = np.exp(np.minimum(deltas[:, 3], clamp)) * h
    return np.stack([pcx - pw / 2, pcy - ph / 2, pcx + pw / 2, pcy + ph / 2], axis=1)


def np_proposals(anchors, logits, deltas, size, pre_k, post_k, thresh, min_size=0.0):
    """detectron2's find_top_rpn_proposals for one image, from its description."""
    boxes, scores, levels = [], [], []
    for lvl, (a, s, d) in enumerate(zip(anchors, logits, deltas)):
        top = np.argsort(-s, kind="stable")[:min(pre_k, len(s))]
        boxes.append(np_decode(d[top].astype(np.float64), a[top].astype(np.float64)))
        scores.append(s[top])
        levels.append(np.full(len(top), lvl))
    boxes, scores, levels = map(np.concatenate, (boxes, scores, levels))
    h, w = size
    boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, w)
    boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, h)
    ok = (boxes[:, 2] - boxes[:, 0] > min_size) & (boxes[:, 3] - boxes[:, 1] > min_size)
    boxes, scores, levels = boxes[ok], scores[ok], levels[ok]
    keep = []
    for lvl in np.unique(levels):
        idx = np.nonzero(levels == lvl)[0]
        keep.extend(idx[np_nms(boxes[idx], scores[idx], thresh)])
    keep = np.asarray(keep, np.int64)
    keep = keep[np.argsort(-scores[keep], kind="stable")][:post_k]
    return boxes[keep], scores[keep]


def np_conv(x, w, b):
    # x (B, H, W, C), w (k, k, C, O) HWIO, 'same' zero padding, stride 1
    k = w.shape[0]
    p = k // 2
    xp = np.pad(x, [(0, 0), (p, p), (p, p), (0, 0)])
    out = np.zeros(x.shape[:3] + (w.shape[3],))
    for dy in range(k):
        for dx in range(k):
            out += xp[:, dy:dy + x.shape[1], dx:dx + x.shape[2]] @ w[dy, dx]
    return out + b


# ---------------------------------------------------------------- head
def test_head_variables_and_init():
    rpn = make_rpn(channels=32)
    names = named_variables(rpn)
    assert {k: tuple(v.shape) for k, v in names.items()} == {
        "proposal_generator.rpn_head.conv.weight": (3, 3, 32, 32),
        "proposal_generator.rpn_head.conv.bias": (32,),
        "proposal_generator.rpn_head.objectness_logits.weight": (1, 1, 32, 3),
        "proposal_generator.rpn_head.objectness_logits.bias": (3,),
        "proposal_generator.rpn_head.anchor_deltas.weight": (1, 1, 32, 12),
        "proposal_generator.rpn_head.anchor_deltas.bias": (12,),
    }
    w = names["proposal_generator.rpn_head.conv.weight"].numpy()
    assert 0.008 < w.std() < 0.012 and abs(w.mean()) < 0.002
    assert not names["proposal_generator.rpn_head.anchor_deltas.bias"].numpy().any()


def test_head_outputs_follow_anchor_order():
    rng = np.random.RandomState(0)
    rpn = make_rpn()
    v = named_variables(rpn)
    for var in v.values():  # nonzero biases so that a channel mix-up shows
        var.assign(rng.normal(size=var.shape).astype(np.float32))
    feats = features(rng, 2, 16, 24)
    objectness, deltas = rpn.rpn_head(feats)
    p = "proposal_generator.rpn_head."
    for f, obj, dl in zip(feats, objectness, deltas):
        x = f.numpy()
        wb = lambda name: (v[p + name + ".weight"].numpy(), v[p + name + ".bias"].numpy())
        t = np.maximum(np_conv(x, *wb("conv")), 0)
        o = np_conv(t, *wb("objectness_logits"))
        d = np_conv(t, *wb("anchor_deltas"))
        b, h, w = x.shape[:3]
        # detectron2: deltas channel a*4 + j is coordinate j of anchor a; order (y, x, anchor)
        np.testing.assert_allclose(obj.numpy(), o.reshape(b, h * w * 3), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(dl.numpy(), d.reshape(b, h, w, 3, 4).reshape(b, h * w * 3, 4),
                                   rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- labels
HAND_ANCHORS = np.array([
    [0, 0, 10, 10],  # IoU 1 with gt0 -> 1
    [0, 0, 10, 20],  # IoU 0.5 -> ignore
    [0, 0, 10, 40],  # IoU 0.25 -> 0
    [100, 100, 110, 110],  # nothing -> 0
    [50, 50, 60, 80],  # IoU 1/3 with gt1, its best -> 1 (low quality)
    [50, 50, 60, 80],  # tied with the previous -> 1 too
    [210, 210, 220, 220],  # IoU 0.25 with gt2, inside the crowd box -> ignore
    [290, 290, 310, 310],  # a quarter inside the crowd box -> 0
    [205, 205, 225, 225],  # IoU 1 with gt2 inside the crowd box: positives stay -> 1
], np.float32)
HAND_GT = np.array([[0, 0, 10, 10], [50, 50, 60, 60], [205, 205, 225, 225], [0, 0, 0, 0]],
                   np.float32)
HAND_VALID = np.array([True, True, True, False])  # the last row is padding
HAND_CROWD = np.array([[200, 200, 300, 300], [0, 0, 0, 0]], np.float32)


def test_label_anchors_hand_built():
    rpn = make_rpn()
    gt = np.stack([HAND_GT, np.zeros_like(HAND_GT)])  # image 2 has no gt at all
    valid = np.stack([HAND_VALID, np.zeros_like(HAND_VALID)])
    crowd = np.stack([HAND_CROWD, np.zeros_like(HAND_CROWD)])
    sizes = np.array([[400, 400], [400, 400]], np.int32)
    labels, matches = rpn.label_anchors(tf.constant(HAND_ANCHORS), sizes, gt, valid, crowd)
    np.testing.assert_array_equal(labels.numpy()[0], [1, -1, 0, 0, 1, 1, -1, 0, 1])
    np.testing.assert_array_equal(labels.numpy()[1], [0] * 9)
    np.testing.assert_array_equal(matches.numpy()[0][[0, 4, 5, 8]], [0, 1, 1, 2])


def test_boundary_thresh_ignores_outside_anchors():
    rpn = make_rpn(BOUNDARY_THRESH=0)
    labels, _ = rpn.label_anchors(tf.constant(HAND_ANCHORS), np.array([[105, 300]], np.int32),
                                  HAND_GT[None], HAND_VALID[None], HAND_CROWD[None])
    # anchor 3 ends at y = 110 >= 105, anchors 6-8 at x >= 300 or y >= 105
    np.testing.assert_array_equal(labels.numpy()[0], [1, -1, 0, -1, 1, 1, -1, -1, -1])


def test_label_and_sample_counts():
    rng = np.random.RandomState(1)
    rpn = make_rpn(BATCH_SIZE_PER_IMAGE=64)
    anchors = tf.concat(rpn.anchor_generator([(32, 32), (16, 16)]), axis=0)
    xy = rng.uniform(0, 90, size=(2, 6, 2))
    gt = np.concatenate([xy, xy + rng.uniform(10, 40, size=(2, 6, 2))], -1).astype(np.float32)
    classes = np.array([[0, 1, 2, 3, 4, 5], [1, 1, 1, -1, -1, -1]], np.int32)
    sizes = np.array([[128, 128], [128, 128]], np.int32)
    pre, _ = rpn.label_anchors(anchors, sizes, gt, classes >= 0)
    labels, matched = rpn.label_and_sample_anchors(anchors, sizes, gt, classes)
    pre, labels, matched = pre.numpy(), labels.numpy(), matched.numpy()
    n_pos = (pre == 1).sum(1)
    np.testing.assert_array_equal((labels == 1).sum(1), np.minimum(n_pos, 32))
    np.testing.assert_array_equal((labels == 0).sum(1), 64 - np.minimum(n_pos, 32))
    assert (pre[labels == 1] == 1).all() and (pre[labels == 0] == 0).all()
    for i in range(2):  # every positive's target is the gt of highest IoU
        iou = np_iou(gt[i][classes[i] >= 0], anchors.numpy())
        pos = labels[i] == 1
        np.testing.assert_array_equal(matched[i][pos], gt[i][iou.argmax(0)[pos]])


# ---------------------------------------------------------------- losses
def _np_losses(anchors, labels, matched, logits, deltas, beta, batch_size):
    pos, sampled = labels == 1, labels >= 0
    z = pos.astype(np.float64)
    bce = np.maximum(logits, 0) - logits * z + np.log1p(np.exp(-np.abs(logits)))
    with np.errstate(divide="ignore"):  # non-positives may hold zero boxes: log(0), unused
        target = np_encode(np.broadcast_to(anchors, matched.shape), matched)
    diff = np.abs(deltas - target)
    loc = diff if beta == 0 else np.where(diff < beta, 0.5 * diff ** 2 / beta, diff - 0.5 * beta)
    norm = labels.shape[0] * batch_size
    return bce[sampled].sum() / norm, loc[pos].sum() / norm


@pytest.mark.parametrize("beta,weight,reg_weight", [(0.0, 1.0, 1.0), (0.1, 2.0, 0.5)])
def test_losses_against_numpy(beta, weight, reg_weight):
    rng = np.random.RandomState(2)
    rpn = make_rpn(SMOOTH_L1_BETA=beta, LOSS_WEIGHT=weight, BBOX_REG_LOSS_WEIGHT=reg_weight)
    n = 50
    xy = rng.uniform(0, 50, size=(n, 2))
    anchors = np.concatenate([xy, xy + rng.uniform(4, 20, size=(n, 2))], 1).astype(np.float32)
    xy = rng.uniform(0, 50, size=(2, n, 2))
    matched = np.concatenate([xy, xy + rng.uniform(4, 20, size=(2, n, 2))], -1).astype(np.float32)
    labels = rng.choice([-1, 0, 1], size=(2, n)).astype(np.int32)
    matched[labels != 1] = 0.0  # non-positives may point at a padding row
    logits = rng.normal(size=(2, n)).astype(np.float32)
    deltas = rng.normal(scale=0.3, size=(2, n, 4)).astype(np.float32)
    pred_logits, pred_deltas = tf.Variable(logits), tf.Variable(deltas)
    gt_var = tf.Variable(matched)
    with tf.GradientTape(persistent=True) as tape:
        out = rpn.losses(tf.constant(anchors), labels, gt_var, pred_logits, pred_deltas)
        total = out["loss_rpn_cls"] + out["loss_rpn_loc"]
    cls, loc = _np_losses(anchors, labels, matched, logits, deltas, beta, 256)
    assert out["loss_rpn_cls"].numpy() == pytest.approx(cls * weight, rel=1e-5)
    assert out["loss_rpn_loc"].numpy() == pytest.approx(loc * weight * reg_weight, rel=1e-5)
    assert tape.gradient(total, gt_var) is None  # targets carry no gradient
    g = tape.gradient(total, pred_deltas).numpy()
    assert np.isfinite(g).all() and not g[labels != 1].any()
    assert not tape.gradient(total, pred_logits).numpy()[labels == -1].any()


# ---------------------------------------------------------------- proposals
def test_find_top_proposals_against_numpy():
    rng = np.random.RandomState(3)
    pre_k, post_k = 40, 30
    rpn = make_rpn(PRE_NMS_TOPK_TEST=pre_k, POST_NMS_TOPK_TEST=post_k, NMS_THRESH=0.5)
    shapes = [(6, 8), (3, 2)]  # level 2 has 18 < pre_k anchors
    anchors = rpn.anchor_generator(shapes)
    n = [int(a.shape[0]) for a in anchors]
    logits = [rng.normal(size=(2, k)).astype(np.float32) for k in n]
    deltas = [rng.normal(scale=0.4, size=(2, k, 4)).astype(np.float32) for k in n]
    deltas[0][0, :5, 2] = -8.0  # a few boxes collapse below a pixel... still nonempty
    deltas[0][1, :, 0] = -3.0  # many boxes of image 2 end up left of the image: empty
    sizes = np.array([[20, 30], [24, 16]], np.int32)
    boxes, scores, valid = rpn.find_top_proposals(anchors, logits, deltas, sizes, training=False)
    assert boxes.shape == (2, post_k, 4) and scores.shape == (2, post_k)
    for i in range(2):
        wb, ws = np_proposals([a.numpy() for a in anchors], [l[i] for l in logits],
                              [d[i] for d in deltas], sizes[i], pre_k, post_k, 0.5)
        m = len(ws)
        assert valid.numpy()[i].sum() == m and valid.numpy()[i][:m].all()
        np.testing.assert_allclose(boxes.numpy()[i][:m], wb, rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(scores.numpy()[i][:m], ws, rtol=1e-6)
        assert not boxes.numpy()[i][m:].any() and not scores.numpy()[i][m:].any()
    assert valid.numpy()[1].sum() < valid.numpy()[0].sum()  # empties were dropped


def test_batch_equals_each_image_alone():
    rng = np.random.RandomState(4)
    rpn = make_rpn(PRE_NMS_TOPK_TEST=60, POST_NMS_TOPK_TEST=40)
    feats = features(rng, 2, 32, 48)
    sizes = np.array([[32, 40], [20, 48]], np.int32)
    batched = rpn(feats, sizes, training=False)
    for i in range(2):
        alone = rpn([f[i:i + 1] for f in feats], sizes[i:i + 1], training=False)
        for got, want in zip(batched[:3], alone[:3]):
            np.testing.assert_allclose(np.asarray(got[i]), np.asarray(want[0]),
                                       rtol=1e-6, atol=1e-5)
    assert batched[3] == {}
    # targets are per image too
    anchors = tf.concat(rpn.anchor_generator([(8, 12), (4, 6)]), axis=0)
    gt = np.array([[[2, 3, 20, 30], [0, 0, 0, 0]], [[10, 5, 40, 18], [1, 1, 9, 9]]], np.float32)
    valid = np.array([[True, False], [True, True]])
    both, _ = rpn.label_anchors(anchors, sizes, gt, valid)
    for i in range(2):
        one, _ = rpn.label_anchors(anchors, sizes[i:i + 1], gt[i:i + 1], valid[i:i + 1])
        np.testing.assert_array_equal(both.numpy()[i], one.numpy()[0])


def test_training_in_tf_function_traces_once():
    rpn = make_rpn(PRE_NMS_TOPK_TRAIN=50, POST_NMS_TOPK_TRAIN=30, BATCH_SIZE_PER_IMAGE=32)
    spec = [tf.TensorSpec([None, None, None, 4]), tf.TensorSpec([None, None, None, 4])]

    @tf.function(input_signature=[spec, tf.TensorSpec([None, 2], tf.int32),
                                  tf.TensorSpec([None, None, 4]),
                                  tf.TensorSpec([None, None], tf.int32),
                                  tf.TensorSpec([None, None, 4])])
    def step(feats, sizes, gt_boxes, gt_classes, crowd):
        with tf.GradientTape() as tape:
            props, scores, valid, losses = rpn(feats, sizes, True, gt_boxes, gt_classes, crowd)
            total = losses["loss_rpn_cls"] + losses["loss_rpn_loc"]
        grads = tape.gradient(total, rpn.trainable_variables)
        return props, valid, losses, grads

    rng = np.random.RandomState(5)
    for (h, w), g in (((32, 48), 3), ((48, 32), 0)):
        gt = np.tile(np.array([[4, 4, 20, 28]], np.float32), (2, g, 1))
        out = step(features(rng, 2, h, w), np.array([[h, w], [h - 8, w]], np.int32), gt,
                   np.zeros((2, g), np.int32), np.zeros((2, 0, 4), np.float32))
        props, valid, losses, grads = out
        assert props.shape == (2, 30, 4) and valid.numpy().any()
        assert np.isfinite(losses["loss_rpn_cls"].numpy()) and losses["loss_rpn_cls"].numpy() > 0
        assert (losses["loss_rpn_loc"].numpy() > 0) == (g > 0)
        assert all(np.isfinite(x.numpy()).all() for x in grads)
    assert step.experimental_get_tracing_count() == 1
