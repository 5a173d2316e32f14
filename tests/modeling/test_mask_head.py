"""Mask head: structure, targets (ROIAlign of the GT mask >= 0.5), loss and inference vs NumPy."""
import math

import numpy as np
import pytest
import tensorflow as tf

import tfmrcnn.ops
from tfmrcnn.config import get_cfg
from tfmrcnn.modeling import mask_head as mh
from tfmrcnn.modeling.layers import named_variables


# ---------------------------------------------------------------- NumPy references
def _bilinear(fmap, y, x):
    """torchvision's roi_align bilinear_interpolate on one (H, W, C) map."""
    h, w = fmap.shape[:2]
    if y < -1.0 or y > h or x < -1.0 or x > w:
        return np.zeros(fmap.shape[2], np.float64)
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(y), int(x)
    if y0 >= h - 1:
        y0 = y1 = h - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= w - 1:
        x0 = x1 = w - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    hy, hx = 1.0 - ly, 1.0 - lx
    return (hy * hx * fmap[y0, x0] + hy * lx * fmap[y0, x1]
            + ly * hx * fmap[y1, x0] + ly * lx * fmap[y1, x1])


def np_roi_align(features, boxes, box_indices, output_size, spatial_scale, sampling_ratio=0,
                 aligned=True):
    """torchvision.ops.roi_align written from its definition, NHWC in and out."""
    oh, ow = output_size
    out = np.zeros((len(boxes), oh, ow, features.shape[3]), np.float64)
    offset = 0.5 if aligned else 0.0
    for r, (box, b) in enumerate(zip(np.asarray(boxes, np.float64), box_indices)):
        x0, y0, x1, y1 = box * spatial_scale - offset
        rw, rh = x1 - x0, y1 - y0
        if not aligned:
            rw, rh = max(rw, 1.0), max(rh, 1.0)
        bh, bw = rh / oh, rw / ow
        gh = sampling_ratio if sampling_ratio > 0 else int(math.ceil(rh / oh))
        gw = sampling_ratio if sampling_ratio > 0 else int(math.ceil(rw / ow))
        count = max(gh * gw, 1)
        for i in range(oh):
            for j in range(ow):
                acc = 0.0
                for iy in range(gh):
                    y = y0 + i * bh + (iy + 0.5) * bh / gh
                    for ix in range(gw):
                        x = x0 + j * bw + (ix + 0.5) * bw / gw
                        acc = acc + _bilinear(features[b], y, x)
                out[r, i, j] = acc / count
    return out.astype(np.float32)


def np_bce_with_logits(x, z):
    return np.maximum(x, 0) - x * z + np.log1p(np.exp(-np.abs(x)))


# ---------------------------------------------------------------- the ROIAlign op
def _op_works():
    try:
        out = tfmrcnn.ops.roi_align(tf.ones([1, 4, 4, 1]), tf.constant([[0.0, 0.0, 2.0, 2.0]]),
                                    tf.constant([0]), (2, 2), 1.0, sampling_ratio=0, aligned=True)
        return np.allclose(out.numpy(), 1.0)
    except Exception:  # noqa: BLE001 - the custom op may not be built yet
        return False


@pytest.fixture
def roi_align_op(monkeypatch):
    """The real op when it loads, else the NumPy reference wrapped as a TF stand-in."""
    if not _op_works():
        def standin(features, boxes, box_indices, output_size, spatial_scale, sampling_ratio=0,
                    aligned=True):
            fn = lambda f, b, i: np_roi_align(f, b, i, output_size, spatial_scale,  # noqa: E731
                                              sampling_ratio, aligned)
            out = tf.numpy_function(fn, [features, boxes, box_indices], tf.float32)
            return tf.reshape(out, [-1, output_size[0], output_size[1], tf.shape(features)[3]])
        monkeypatch.setattr(tfmrcnn.ops, "roi_align", standin, raising=False)
    return tfmrcnn.ops.roi_align


def test_numpy_roi_align_reference_matches_detectron2(fixtures_dir):
    d = np.load(fixtures_dir / "d2" / "roi_align_4.npz")
    out = np_roi_align(d["features"], d["boxes"], d["box_indices"], tuple(d["output_size"]),
                       float(d["spatial_scale"]), int(d["sampling_ratio"]), bool(d["aligned"]))
    np.testing.assert_allclose(out, d["output"], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- head structure
def _cfg(num_classes=3, agnostic=False, num_conv=4, dim=16, norm=""):
    cfg = get_cfg()
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = num_classes
    cfg.MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK = agnostic
    cfg.MODEL.ROI_MASK_HEAD.NUM_CONV = num_conv
    cfg.MODEL.ROI_MASK_HEAD.CONV_DIM = dim
    cfg.MODEL.ROI_MASK_HEAD.NORM = norm
    return cfg


def test_head_variable_names_shapes_and_output():
    head = mh.MaskRCNNConvUpsampleHead(_cfg(num_classes=5, dim=16), in_channels=8)
    v = named_variables(head)
    expected = {f"roi_heads.mask_head.mask_fcn{i}.weight": (3, 3, 8 if i == 1 else 16, 16)
                for i in range(1, 5)}
    expected.update({f"roi_heads.mask_head.mask_fcn{i}.bias": (16,) for i in range(1, 5)})
    expected.update({"roi_heads.mask_head.deconv.weight": (2, 2, 16, 16),
                     "roi_heads.mask_head.deconv.bias": (16,),
                     "roi_heads.mask_head.predictor.weight": (1, 1, 16, 5),
                     "roi_heads.mask_head.predictor.bias": (5,)})
    assert {k: tuple(x.shape) for k, x in v.items()} == expected
    out = head(tf.random.normal([3, 14, 14, 8]))
    assert out.shape == (3, 28, 28, 5)


def test_head_with_gn_has_no_conv_bias_and_agnostic_has_one_channel():
    head = mh.MaskRCNNConvUpsampleHead(_cfg(agnostic=True, num_conv=2, dim=32, norm="GN"), 8)
    names = set(named_variables(head))
    assert "roi_heads.mask_head.mask_fcn1.bias" not in names
    assert "roi_heads.mask_head.mask_fcn1.norm.weight" in names
    assert head(tf.zeros([2, 14, 14, 8])).shape == (2, 28, 28, 1)


def test_predictor_init_std():
    tf.random.set_seed(0)
    head = mh.MaskRCNNConvUpsampleHead(_cfg(num_classes=80, dim=256, num_conv=1), 256)
    w = head.predictor.weight.numpy()
    assert abs(w.std() - 0.001) < 1e-4 and not head.predictor.bias.numpy().any()
    # c2_msra_fill: std sqrt(2 / fan_out), fan_out = 3 * 3 * 256
    std = head.convs[0].weight.numpy().std()
    assert abs(std - math.sqrt(2.0 / (9 * 256))) < 0.05 * std


# ---------------------------------------------------------------- targets / loss / inference
def test_mask_targets_match_numpy_roi_align_threshold(roi_align_op):
    rng = np.random.default_rng(0)
    b, g, h, w, m = 2, 3, 40, 48, 28
    masks = np.zeros((b, g, h, w), np.uint8)
    for i in range(b):
        for j in range(g):
            y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
            masks[i, j, y0:y0 + rng.integers(5, h // 2), x0:x0 + rng.integers(5, w // 2)] = 1
            masks[i, j] &= rng.random((h, w)) < 0.8  # ragged edges so the threshold matters
    r = 4
    xy = rng.uniform(0, 20, (b, r, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(3, 25, (b, r, 2))], -1).astype(np.float32)
    idx = rng.integers(0, g, (b, r)).astype(np.int32)
    got = mh.mask_rcnn_targets(tf.constant(masks), tf.constant(boxes), tf.constant(idx), m)
    stack = masks.reshape(b * g, h, w, 1).astype(np.float32)
    flat_idx = (np.arange(b)[:, None] * g + idx).reshape(-1)
    ref = np_roi_align(stack, boxes.reshape(-1, 4), flat_idx, (m, m), 1.0, 0, True)[..., 0] >= 0.5
    assert got.shape == (b, r, m, m)
    np.testing.assert_array_equal(got.numpy().reshape(-1, m, m), ref.astype(np.float32))
    assert 0 < ref.mean() < 1


def test_mask_targets_without_instances_are_zero(roi_align_op):
    got = mh.mask_rcnn_targets(tf.zeros([2, 0, 16, 16], tf.uint8), tf.ones([2, 3, 4]),
                               tf.zeros([2, 3], tf.int32), 28)
    assert got.shape == (2, 3, 28, 28) and not got.numpy().any()


def test_mask_loss_is_mean_bce_of_gt_channel_over_foreground():
    rng = np.random.default_rng(1)
    r, m, k = 6, 28, 4
    logits = rng.normal(0, 2, (r, m, m, k)).astype(np.float32)
    classes = rng.integers(0, k, r).astype(np.int32)
    targets = (rng.random((r, m, m)) < 0.5).astype(np.float32)
    weights = np.array([1, 1, 0, 1, 0, 0], np.float32)
    got = mh.mask_rcnn_loss(tf.constant(logits), tf.constant(classes), tf.constant(targets),
                            tf.constant(weights)).numpy()
    fg = weights > 0
    sel = logits[np.arange(r), :, :, classes][fg]  # (3, M, M)
    ref = np_bce_with_logits(sel.astype(np.float64), targets[fg]).mean()
    np.testing.assert_allclose(got, ref, rtol=1e-5)


def test_mask_loss_without_foreground_is_zero_with_finite_gradient():
    logits = tf.Variable(tf.random.normal([4, 28, 28, 3]))
    with tf.GradientTape() as tape:
        loss = mh.mask_rcnn_loss(logits, tf.constant([0, 1, 2, 3]), tf.zeros([4, 28, 28]),
                                 tf.zeros([4]))
    grad = tape.gradient(loss, logits)
    assert loss.numpy() == 0.0 and np.isfinite(grad.numpy()).all()


def test_mask_inference_is_sigmoid_of_predicted_class():
    rng = np.random.default_rng(2)
    logits = rng.normal(0, 3, (5, 28, 28, 3)).astype(np.float32)
    classes = np.array([2, 0, 1, 1, 0], np.int32)
    got = mh.mask_rcnn_inference(tf.constant(logits), tf.constant(classes)).numpy()
    ref = 1.0 / (1.0 + np.exp(-logits[np.arange(5), :, :, classes]))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    # class-agnostic: the single channel whatever the class
    got1 = mh.mask_rcnn_inference(tf.constant(logits[..., :1]), tf.constant(classes)).numpy()
    np.testing.assert_allclose(got1, 1.0 / (1.0 + np.exp(-logits[..., 0])), rtol=1e-5, atol=1e-6)


def test_deconv_2x2_stride_2_matches_numpy_definition_and_tf_gradients():
    """ConvTranspose2D (matmul + depth_to_space) against the definition of PyTorch's
    ConvTranspose2d(k=2, stride=2): y[n, 2i+a, 2j+b, o] = sum_c x[n, i, j, c] W[c, o, a, b] + b[o]
    (our weight is (a, b, o, c)), and its gradients against tf.nn.conv2d_transpose's."""
    from tfmrcnn.modeling.layers import ConvTranspose2D
    rng = np.random.default_rng(3)
    layer = ConvTranspose2D("d", 5, 3)
    layer.weight.assign(rng.normal(size=(2, 2, 3, 5)).astype(np.float32))
    layer.bias.assign(rng.normal(size=3).astype(np.float32))
    x = rng.normal(size=(2, 4, 3, 5)).astype(np.float32)
    w, b = layer.weight.numpy(), layer.bias.numpy()
    want = np.zeros((2, 8, 6, 3))
    for a in range(2):
        for bb in range(2):
            want[:, a::2, bb::2, :] = np.einsum("nijc,oc->nijo", x, w[a, bb]) + b
    xt = tf.constant(x)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(xt)
        y = layer(xt)
        ref = tf.nn.conv2d_transpose(xt, layer.weight, [2, 8, 6, 3], 2, "VALID") + layer.bias
        loss, ref_loss = tf.reduce_sum(y * y), tf.reduce_sum(ref * ref)
    np.testing.assert_allclose(y.numpy(), want, rtol=1e-5, atol=1e-5)
    for got, expected in zip(tape.gradient(loss, [xt, layer.weight, layer.bias]),
                             tape.gradient(ref_loss, [xt, layer.weight, layer.bias])):
        np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-5, atol=1e-4)
