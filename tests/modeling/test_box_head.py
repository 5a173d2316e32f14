"""Box head (detectron2's FastRCNNConvFCHead): variable names, init and forward vs NumPy."""
import numpy as np
import tensorflow as tf

from tfmrcnn.modeling.box_head import FastRCNNConvFCHead
from tfmrcnn.modeling.fast_rcnn import FastRCNNOutputLayers
from tfmrcnn.modeling.layers import named_variables

from roi_heads_toy import small_cfg


def np_conv3x3_relu(x, w, b):
    """Conv2d(kernel 3, padding 1) + ReLU on NHWC x, HWIO w, from the definition."""
    xp = np.pad(x, [(0, 0), (1, 1), (1, 1), (0, 0)])
    windows = np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(1, 2))  # N,H,W,C,3,3
    return np.maximum(np.einsum("nhwcab,abco->nhwo", windows, w) + b, 0)


def test_box_head_names_init_and_nhwc_flatten():
    tf.random.set_seed(0)
    head = FastRCNNConvFCHead.from_config(small_cfg(k=80, fc=1024), 256, 7)
    shapes = {k: tuple(v.shape) for k, v in named_variables(head).items()}
    assert shapes == {"roi_heads.box_head.fc1.weight": (7 * 7 * 256, 1024),
                      "roi_heads.box_head.fc1.bias": (1024,),
                      "roi_heads.box_head.fc2.weight": (1024, 1024),
                      "roi_heads.box_head.fc2.bias": (1024,)}
    x = np.random.default_rng(0).normal(0, 1, (3, 7, 7, 256)).astype(np.float32)
    w1, b1 = head.fcs[0].weight.numpy(), head.fcs[0].bias.numpy()
    w2, b2 = head.fcs[1].weight.numpy(), head.fcs[1].bias.numpy()
    ref = np.maximum(np.maximum(x.reshape(3, -1) @ w1 + b1, 0) @ w2 + b2, 0)
    np.testing.assert_allclose(head(tf.constant(x)).numpy(), ref, rtol=1e-4, atol=1e-4)


def test_box_head_convs_with_norm_and_agnostic_regression():
    cfg = small_cfg(k=4, num_conv=2, agnostic=True)
    cfg.MODEL.ROI_BOX_HEAD.NORM = "GN"
    cfg.MODEL.ROI_BOX_HEAD.CONV_DIM = 32
    head = FastRCNNConvFCHead.from_config(cfg, 16, 7)
    names = set(named_variables(head))
    assert {"roi_heads.box_head.conv1.weight", "roi_heads.box_head.conv2.norm.weight"} <= names
    assert "roi_heads.box_head.conv1.bias" not in names
    pred = FastRCNNOutputLayers.from_config(cfg, head.output_dim)
    logits, deltas = pred(head(tf.zeros([5, 7, 7, 16]), training=True))
    assert logits.shape == (5, 5) and deltas.shape == (5, 4)


def test_4conv1fc_gn_head_under_a_stage_prefix():
    """detectron2's "4conv1fc" GN head (conv_dims [256] * 4, fc_dims [1024]) as a cascade
    stage would name it: every conv bias-free with its GN, one fc."""
    head = FastRCNNConvFCHead(256, 7, conv_dims=[256] * 4, fc_dims=[1024], conv_norm="GN",
                              prefix="roi_heads.box_head.1")
    shapes = {k: tuple(v.shape) for k, v in named_variables(head).items()}
    expected = {"roi_heads.box_head.1.fc1.weight": (7 * 7 * 256, 1024),
                "roi_heads.box_head.1.fc1.bias": (1024,)}
    for i in range(1, 5):
        expected[f"roi_heads.box_head.1.conv{i}.weight"] = (3, 3, 256, 256)
        expected[f"roi_heads.box_head.1.conv{i}.norm.weight"] = (256,)
        expected[f"roi_heads.box_head.1.conv{i}.norm.bias"] = (256,)
    assert shapes == expected and head.output_dim == 1024


def test_conv_then_fc_forward_matches_numpy():
    tf.random.set_seed(1)
    head = FastRCNNConvFCHead(5, 4, conv_dims=[6], fc_dims=[7])
    rng = np.random.default_rng(1)
    head.convs[0].bias.assign(rng.normal(0, 1, 6).astype(np.float32))
    x = rng.normal(0, 1, (2, 4, 4, 5)).astype(np.float32)
    conv, fc = head.convs[0], head.fcs[0]
    y = np_conv3x3_relu(x.astype(np.float64), conv.weight.numpy(), conv.bias.numpy())
    assert (y > 0).any() and (y == 0).any()
    ref = np.maximum(y.reshape(2, -1) @ fc.weight.numpy() + fc.bias.numpy(), 0)  # NHWC flatten
    assert head.output_dim == 7
    np.testing.assert_allclose(head(tf.constant(x)).numpy(), ref, rtol=1e-4, atol=1e-5)
