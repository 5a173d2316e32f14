"""The three speed-ups keep the numbers: FrozenBN folded into its conv, the mask head on the
real foreground only, the ROI heads in the low dtype under mixed precision."""
import numpy as np
import pytest
import tensorflow as tf

from tfmrcnn.modeling.layers import Conv2D
from tfmrcnn.modeling.mask_head import mask_rcnn_loss, mask_rcnn_targets
from tfmrcnn.modeling.norm import FrozenBN, get_norm

from roi_heads_toy import build_heads, features, small_cfg, train_batch

EPS = 1e-5


# ---------------------------------------------------------------- 1. FrozenBN folded into conv
def _frozen_conv(rng, use_bias, stride, cin=5, cout=6, k=3):
    conv = Conv2D("c", cin, cout, k, stride=stride, use_bias=use_bias,
                  norm=FrozenBN("c.norm", cout), activation=tf.nn.relu)
    n = conv.norm
    for v, lo, hi in ((n.weight, 0.5, 2.0), (n.bias, -1.0, 1.0), (n.running_mean, -1.0, 1.0),
                      (n.running_var, 0.2, 3.0)):
        v.assign(rng.uniform(lo, hi, v.shape).astype(np.float32))
    if use_bias:
        conv.bias.assign(rng.normal(0, 1, conv.bias.shape).astype(np.float32))
    return conv


def _unfolded(conv, x):
    """conv (+ bias), then FrozenBN's definition x * w / sqrt(var + eps) + b - mean * scale,
    then ReLU: the computation before the fold."""
    p = conv.padding
    y = tf.nn.conv2d(tf.pad(x, [[0, 0], [p, p], [p, p], [0, 0]]), conv.weight,
                     strides=conv.stride, padding="VALID")
    if conv.bias is not None:
        y = y + conv.bias
    n = conv.norm
    scale = n.weight / tf.sqrt(n.running_var + EPS)
    return tf.nn.relu(y * scale + (n.bias - n.running_mean * scale))


@pytest.mark.parametrize("use_bias,stride", [(False, 1), (True, 2)])
def test_folded_frozen_bn_equals_conv_then_norm_with_same_input_gradient(use_bias, stride):
    rng = np.random.default_rng(0)
    conv = _frozen_conv(rng, use_bias, stride)
    before = {v.name: v.numpy().copy() for v in conv.variables}
    x = tf.constant(rng.normal(0, 1, (2, 9, 11, 5)).astype(np.float32))
    upstream = tf.constant(rng.normal(0, 1, _unfolded(conv, x).shape).astype(np.float32))
    grads = []
    for fn in (conv, lambda t: _unfolded(conv, t)):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = fn(x)
            loss = tf.reduce_sum(y * upstream)
        grads.append((y.numpy(), tape.gradient(loss, x).numpy()))
    (y, gx), (y_ref, gx_ref) = grads
    assert (y_ref > 0).any() and (y_ref == 0).any()  # both sides of the ReLU exercised
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gx, gx_ref, rtol=1e-5, atol=1e-5)
    # the fold happens in the call: variables (and so checkpoints) are unchanged
    assert all(np.array_equal(v.numpy(), before[v.name]) for v in conv.variables)
    assert {v.name.split(":")[0] for v in conv.variables} >= {
        "c.weight", "c.norm.weight", "c.norm.bias", "c.norm.running_mean", "c.norm.running_var"}


def test_folded_frozen_bn_in_bfloat16_and_graph_mode():
    rng = np.random.default_rng(1)
    conv = _frozen_conv(rng, False, 1)
    x = rng.normal(0, 1, (1, 8, 8, 5)).astype(np.float32)
    fn = tf.function(conv, input_signature=[tf.TensorSpec([None, None, None, 5], tf.bfloat16)])
    y = fn(tf.constant(x, tf.bfloat16))
    assert y.dtype == tf.bfloat16
    ref = _unfolded(conv, tf.constant(x)).numpy()
    np.testing.assert_allclose(tf.cast(y, tf.float32).numpy(), ref, rtol=0.05,
                               atol=0.05 * np.abs(ref).max())


def test_trainable_batch_norm_is_not_folded():
    # BN in training must normalise with the batch statistics, not the stored ones
    rng = np.random.default_rng(2)
    conv = Conv2D("c", 3, 4, 1, use_bias=False, norm=get_norm("BN", 4, "c.norm"))
    x = tf.constant(rng.normal(3, 2, (2, 5, 5, 3)).astype(np.float32))
    y = conv(x, training=True).numpy()
    np.testing.assert_allclose(y.mean(axis=(0, 1, 2)), 0, atol=1e-4)


# ---------------------------------------------------------------- 2. mask head on foreground
def _padded_mask_loss(heads, feats, samples, gt_masks):
    """The previous computation: the mask head on all F slots of each image, the loss weighted
    by the foreground flag."""
    f = heads.max_foreground
    boxes = samples.boxes[:, :f]  # (B, F, 4)
    logits = heads._mask_logits(feats, boxes, True)  # (B*F, M, M, K)
    m = heads.mask_size
    targets = mask_rcnn_targets(gt_masks, boxes, samples.gt_indices[:, :f], m)  # (B, F, M, M)
    return mask_rcnn_loss(logits, tf.reshape(samples.classes[:, :f], [-1]),
                          tf.reshape(targets, [-1, m, m]),
                          tf.reshape(samples.foreground[:, :f], [-1]))


def _loss_and_grads(fn, heads, feats):
    with tf.GradientTape() as tape:
        tape.watch(feats)
        loss = fn()
    sources = list(heads.mask_head.trainable_variables) + list(feats)
    return loss.numpy(), [g.numpy() for g in tape.gradient(loss, sources)]


def test_foreground_only_mask_loss_equals_padded_loss_and_gradients():
    rng = np.random.default_rng(3)
    heads = build_heads(small_cfg(k=3, s=64, frac=0.5))  # F = 32 slots, fewer foreground ROIs
    feats = features(rng, 2)
    proposals, valid, gt, gt_classes, masks, crowd = train_batch(rng)
    samples = heads.label_and_sample_proposals(proposals, valid, gt, gt_classes, crowd)
    fg = samples.foreground.numpy()[:, :heads.max_foreground]
    assert fg.sum(1).min() > 0 and not fg.all(1).any()  # real padding in both images
    new, new_grads = _loss_and_grads(
        lambda: heads._mask_loss(feats, samples, masks, True), heads, feats)
    old, old_grads = _loss_and_grads(
        lambda: _padded_mask_loss(heads, feats, samples, masks), heads, feats)
    assert new > 0
    np.testing.assert_allclose(new, old, rtol=1e-5)
    for a, b in zip(new_grads, old_grads):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * np.abs(b).max())


def test_foreground_only_mask_loss_in_graph_mode_and_without_foreground():
    rng = np.random.default_rng(4)
    heads = build_heads(small_cfg(k=3, s=64))
    feats = features(rng, 2)
    proposals, valid, gt, gt_classes, masks, crowd = train_batch(rng)
    samples = heads.label_and_sample_proposals(proposals, valid, gt, gt_classes, crowd)
    fspec = [tf.TensorSpec([None, None, None, 8], tf.float32)] * 4
    spec = type(samples)(*[tf.TensorSpec([None] * len(t.shape), t.dtype) for t in samples])
    loss_fn = tf.function(lambda f, s, m: heads._mask_loss(f, s, m, True), input_signature=[
        fspec, spec, tf.TensorSpec([None, None, None, None], tf.uint8)])
    np.testing.assert_allclose(loss_fn(feats, samples, masks).numpy(),
                               _padded_mask_loss(heads, feats, samples, masks).numpy(), rtol=1e-5)
    none = samples._replace(foreground=tf.zeros_like(samples.foreground))
    with tf.GradientTape() as tape:
        loss = loss_fn(feats, none, masks)
    assert loss.numpy() == 0.0
    grads = tape.gradient(loss, heads.mask_head.trainable_variables)
    assert all(g is None or np.isfinite(g.numpy()).all() for g in grads)


# ---------------------------------------------------------------- 3. ROI heads in bfloat16
def test_roi_heads_run_in_bfloat16_with_float32_outputs():
    rng = np.random.default_rng(5)
    heads = build_heads(small_cfg(k=3, s=64, d=8))
    feats = features(rng, 2)
    low = [tf.cast(f, tf.bfloat16) for f in feats]
    proposals, valid, gt, gt_classes, masks, crowd = train_batch(rng)
    flat = tf.reshape(proposals, [-1, 4])
    index = tf.repeat(tf.range(2), 20)
    pooled = heads._pool(heads.box_pooler, low, flat, index)
    assert pooled.dtype == tf.bfloat16 and heads.box_head(pooled).dtype == tf.bfloat16
    assert heads._mask_logits(low, proposals, False).dtype == tf.bfloat16
    # logits / deltas back in float32, close to the float32 heads
    for a, b in zip(heads._box_outputs(low, proposals, False),
                    heads._box_outputs(feats, proposals, False)):
        assert a.dtype == tf.float32 and np.isfinite(a.numpy()).all()
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=0.05 * np.abs(b.numpy()).max())
    sizes = tf.constant([[64, 64]] * 2)
    args = (proposals, valid, sizes, gt, gt_classes, masks, crowd)
    tf.random.set_seed(7)
    loss_low = heads.losses(low, *args)
    tf.random.set_seed(7)
    loss_f32 = heads.losses(feats, *args)
    for key, v in loss_low.items():
        assert v.dtype == tf.float32 and np.isfinite(v.numpy()), key
        np.testing.assert_allclose(v.numpy(), loss_f32[key].numpy(), rtol=0.05, err_msg=key)
    out = heads.inference(low, proposals, valid, sizes)
    assert out["scores"].dtype == tf.float32 and out["masks"].dtype == tf.float32
    assert all(np.isfinite(v.numpy()).all() for v in out.values())
