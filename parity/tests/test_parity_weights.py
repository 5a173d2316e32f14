"""parity.weights: reproducible per-tensor draws and the scaling rules of its docstring."""
import numpy as np

from parity.weights import BN_EPS, RESIDUAL_GAIN, calibration_scales, generate_d2_weights

SHAPES = {
    "backbone.bottom_up.stem.conv1.weight": [64, 3, 7, 7],
    "backbone.bottom_up.stem.conv1.norm.weight": [64],
    "backbone.bottom_up.stem.conv1.norm.bias": [64],
    "backbone.bottom_up.stem.conv1.norm.running_mean": [64],
    "backbone.bottom_up.stem.conv1.norm.running_var": [64],
    "backbone.bottom_up.res2.0.conv2.weight": [64, 64, 3, 3],
    "backbone.bottom_up.res2.0.conv2.norm.weight": [64],
    "backbone.bottom_up.res2.0.conv3.weight": [256, 64, 1, 1],
    "backbone.bottom_up.res2.0.conv3.norm.weight": [256],
    "backbone.bottom_up.res2.0.conv3.norm.running_var": [256],
    "backbone.bottom_up.res2.0.conv3.norm.num_batches_tracked": [],
    "backbone.bottom_up.res2.1.conv2.norm.weight": [64],  # a GN norm of a basic block
    "backbone.fpn_lateral2.weight": [256, 256, 1, 1],
    "roi_heads.mask_head.deconv.weight": [256, 256, 2, 2],
    "roi_heads.box_predictor.cls_score.weight": [81, 1024],
    "roi_heads.box_predictor.cls_score.bias": [81],
}


def test_same_seed_same_weights_whatever_the_list():
    a = generate_d2_weights(SHAPES, seed=3)
    subset = {k: SHAPES[k] for k in reversed(list(SHAPES)) if "conv2" not in k}
    b = generate_d2_weights(subset, seed=3)
    for name in subset:
        np.testing.assert_array_equal(a[name], b[name])
    c = generate_d2_weights(SHAPES, seed=4)
    assert not np.array_equal(a["backbone.fpn_lateral2.weight"],
                              c["backbone.fpn_lateral2.weight"])
    assert all(a[k].shape == tuple(s) for k, s in SHAPES.items())
    assert a["backbone.bottom_up.res2.0.conv3.norm.num_batches_tracked"].dtype == np.int64


def test_he_scaling_of_convs():
    w = generate_d2_weights(SHAPES, seed=0, input_scale=50.0)
    conv = w["backbone.bottom_up.res2.0.conv2.weight"]                # fan_in 64*3*3
    assert abs(conv.std() / np.sqrt(2 / 576) - 1) < 0.05
    lateral = w["backbone.fpn_lateral2.weight"]                      # linear: gain 1
    assert abs(lateral.std() / np.sqrt(1 / 256) - 1) < 0.05
    stem = w["backbone.bottom_up.stem.conv1.weight"]                 # divided by the input scale
    assert abs(stem.std() / (np.sqrt(2 / 147) / 50) - 1) < 0.1
    deconv = w["roi_heads.mask_head.deconv.weight"]                  # (in, out, 2, 2): fan_in = in
    assert abs(deconv.std() / np.sqrt(2 / 256) - 1) < 0.05


def test_norms_are_near_identity_and_residual_branches_damped():
    w = generate_d2_weights(SHAPES, seed=0)
    prefix = "backbone.bottom_up.stem.conv1.norm."
    var = w[prefix + "running_var"]
    assert var.min() >= 0.5 and var.max() <= 2.0
    ratio = w[prefix + "weight"] / np.sqrt(var + BN_EPS)
    assert ratio.min() >= 0.8 - 1e-6 and ratio.max() <= 1.2 + 1e-6
    # conv3 ends the bottleneck res2.0; conv2 ends the basic block res2.1 (GN: no statistics)
    last = w["backbone.bottom_up.res2.0.conv3.norm.weight"] / np.sqrt(
        w["backbone.bottom_up.res2.0.conv3.norm.running_var"] + BN_EPS)
    assert last.max() <= 1.2 * RESIDUAL_GAIN + 1e-6
    assert w["backbone.bottom_up.res2.1.conv2.norm.weight"].max() <= 1.2 * RESIDUAL_GAIN + 1e-6
    assert w["backbone.bottom_up.res2.0.conv2.norm.weight"].min() >= 0.8 - 1e-6


def test_calibration_scales_bring_outputs_to_their_targets():
    shapes = {"roi_heads.box_predictor.cls_score.weight": [81, 1024],
              "roi_heads.box_predictor.cls_score.bias": [81],
              "roi_heads.box_predictor.0.bbox_pred.weight": [4, 1024],
              "roi_heads.mask_head.predictor.weight": [80, 256, 1, 1],
              "backbone.fpn_lateral2.weight": [256, 256, 1, 1]}
    rms = {"roi_heads.box_predictor.cls_score": 10.0,
           "roi_heads.box_predictor.0.bbox_pred": 3.0}  # the mask head never ran
    scales = calibration_scales(shapes, rms)
    # targets 2.5 and 1.0, rounded to two significant digits
    assert scales == {"roi_heads.box_predictor.cls_score.weight": 0.25,
                      "roi_heads.box_predictor.0.bbox_pred.weight": 0.33}
    plain = generate_d2_weights(shapes, seed=1)
    scaled = generate_d2_weights(shapes, seed=1, scales=scales)
    name = "roi_heads.box_predictor.cls_score.weight"
    np.testing.assert_allclose(scaled[name], 0.25 * plain[name], rtol=1e-6)
    for other in ("roi_heads.box_predictor.cls_score.bias", "backbone.fpn_lateral2.weight",
                  "roi_heads.mask_head.predictor.weight"):
        np.testing.assert_array_equal(scaled[other], plain[other])
