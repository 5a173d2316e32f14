"""Res5ROIHeads (C4) against detectron2 0.5's own (golden vectors of
tests/fixtures/make_res5_golden.py: same weights, res4 map, proposals and GT), for res5's
stride in the 1x1 conv (``s1x1``) and in the 3x3 conv (``s3x3``).

Inference: the box predictor's logits and deltas of every proposal (ROIAlign 14x14 on res4,
res5, spatial mean), the detections and their 14x14 masks (res5 run again on the detected
boxes). Training: the three losses, the classification statistics, the mask head's row count
(foreground only) and the gradient reaching res4 (through the box and the shared mask
features). Both in graph mode. Plus: configs/*C4*.yaml and detectron2's own C4 model-zoo
configs (through the converter's config mapping) give detectron2's state dict, names, shapes
and order; a batch without GT trains; layout errors name the key.
"""
import json

import numpy as np
import pytest
import tensorflow as tf
import yaml

from tfmrcnn.config import get_cfg
from tfmrcnn.converter.d2_config import D2ConfigError, cfg_from_d2_dict
from tfmrcnn.converter.d2_names import expected_d2_state_dict_shapes, expected_d2_tensors
from tfmrcnn.converter.layouts import to_tf
from tfmrcnn.modeling.layers import named_variables
from tfmrcnn.modeling.meta_arch import GeneralizedRCNN
from tfmrcnn.modeling.res5_roi_heads import Res5ROIHeads

VARIANTS = {"s1x1": True, "s3x3": False}  # STRIDE_IN_1X1
CHANNELS, STRIDE = 32, 16


# ---------------------------------------------------------------- fixture and model
@pytest.fixture(scope="module")
def golden_file(fixtures_dir):
    with np.load(fixtures_dir / "res5_golden.npz") as z:
        return {k: z[k] for k in z.files}


def golden_cfg(repo_root, stride_in_1x1: bool):
    """Our config of the golden heads: configs/mask_rcnn_R_50_C4_1x.yaml with
    make_res5_golden.small_cfg's changes."""
    cfg = get_cfg()
    cfg.merge_from_file(str(repo_root / "configs" / "mask_rcnn_R_50_C4_1x.yaml"))
    cfg.merge_from_list([
        "MODEL.RESNETS.RES2_OUT_CHANNELS=8", "MODEL.RESNETS.WIDTH_PER_GROUP=2",
        f"MODEL.RESNETS.STRIDE_IN_1X1={stride_in_1x1}", "MODEL.ROI_HEADS.NUM_CLASSES=3",
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE=64", "MODEL.ROI_HEADS.POSITIVE_FRACTION=1.0",
        "MODEL.ROI_MASK_HEAD.CONV_DIM=8", "TEST.DETECTIONS_PER_IMAGE=20"])
    return cfg


@pytest.fixture(scope="module", params=list(VARIANTS))
def case(request, golden_file, repo_root):
    """(golden arrays of one variant, our heads with its weights)."""
    name = request.param
    golden = {k[len(name) + 1:]: v for k, v in golden_file.items() if k.startswith(name + "/")}
    cfg = golden_cfg(repo_root, VARIANTS[name])
    heads = Res5ROIHeads(cfg, CHANNELS, [STRIDE])
    specs = {k: v for k, v in expected_d2_tensors(cfg).items() if k.startswith("roi_heads.")}
    assert list(specs) == list(golden["roi_heads_keys"])  # detectron2's names and order
    variables = named_variables(heads)
    assert sorted(variables) == sorted(specs)
    for key, spec in specs.items():
        variables[key].assign(to_tf(golden[f"w/{key}"], spec))
    return golden, heads


def features(golden):
    return [tf.constant(golden["features_res4"].transpose(0, 2, 3, 1))]  # NCHW -> NHWC


def proposals(golden, split):
    boxes, counts = golden[f"{split}_proposals"], golden[f"{split}_num_proposals"]
    valid = np.arange(boxes.shape[1])[None, :] < counts[:, None]
    return tf.constant(boxes), tf.constant(valid)


# ---------------------------------------------------------------- inference
def test_box_predictions_of_every_proposal_match(case):
    golden, heads = case
    boxes, _ = proposals(golden, "test")
    flat = tf.reshape(boxes, [-1, 4])
    index = tf.repeat(tf.range(2), boxes.shape[1])
    x = heads._shared_roi_transform(features(golden), flat, index, training=False)
    assert x.shape[1:] == (7, 7, 8 * 8)  # res5: stride 2 on 14 x 14, 8x res2's width
    logits, deltas = heads._box_outputs(x, tf.shape(boxes))
    for i, n in enumerate(golden["test_num_proposals"]):
        np.testing.assert_allclose(logits[i, :n], golden[f"test_i{i}_logits"],
                                   rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(deltas[i, :n], golden[f"test_i{i}_deltas"],
                                   rtol=1e-4, atol=1e-4)


def test_detections_and_masks_match_in_graph_mode(case):
    golden, heads = case
    boxes, valid = proposals(golden, "test")
    infer = tf.function(heads.inference, autograph=False)
    out = {k: v.numpy() for k, v in infer(features(golden), boxes, valid,
                                          tf.constant(golden["image_sizes"])).items()}
    assert out["masks"].shape[2:] == (14, 14)
    for i in range(2):
        d2_scores = golden[f"det_i{i}_scores"]
        n = out["num_detections"][i]
        assert n == len(d2_scores)
        assert not out["masks"][i, n:].any() and not out["scores"][i, n:].any()
        # scores can tie at 1.0: pair each detectron2 detection with ours by class and box
        unused = set(range(n))
        for box, score, cls, mask in zip(golden[f"det_i{i}_boxes"], d2_scores,
                                         golden[f"det_i{i}_classes"], golden[f"det_i{i}_masks"]):
            j = min(unused, key=lambda j: np.abs(out["boxes"][i, j] - box).max()
                    + 1e3 * (out["classes"][i, j] != cls))
            unused.remove(j)
            assert out["classes"][i, j] == cls
            np.testing.assert_allclose(out["boxes"][i, j], box, atol=2e-3)
            np.testing.assert_allclose(out["scores"][i, j], score, atol=1e-5)
            np.testing.assert_allclose(out["masks"][i, j], mask, atol=1e-4)


# ---------------------------------------------------------------- training
def test_losses_statistics_and_feature_gradient_match_in_graph_mode(case):
    golden, heads = case
    boxes, valid = proposals(golden, "train")
    feat = features(golden)[0]

    @tf.function(autograph=False)
    def step(feat):
        with tf.GradientTape() as tape:
            tape.watch(feat)
            losses, metrics = heads.losses(
                [feat], boxes, valid, tf.constant(golden["image_sizes"]),
                tf.constant(golden["gt_boxes"]), tf.constant(golden["gt_classes"]),
                tf.constant(golden["gt_masks"]), tf.zeros([2, 0, 4]), return_metrics=True)
            total = tf.add_n(list(losses.values()))
        return losses, metrics, tape.gradient(total, feat)

    losses, metrics, grad = step(feat)
    assert sorted(losses) == ["loss_box_reg", "loss_cls", "loss_mask"]
    for name, value in losses.items():
        np.testing.assert_allclose(value, golden[name], rtol=2e-5, err_msg=name)
    for key in ("fast_rcnn|cls_accuracy", "fast_rcnn|fg_cls_accuracy",
                "fast_rcnn|false_negative", "roi_head|num_fg_samples", "roi_head|num_bg_samples"):
        np.testing.assert_allclose(metrics[key.replace("|", "/")], golden[f"metric_{key}"],
                                   rtol=1e-6, err_msg=key)
    # the mask head saw the foreground rows only, as many as detectron2's
    num_fg = metrics["roi_head/num_fg_samples"].numpy() * 2
    assert round(num_fg) == golden["train_mask_rows"]
    d2_grad = golden["grad_res4"].transpose(0, 2, 3, 1)
    assert np.abs(d2_grad).max() > 0
    np.testing.assert_allclose(grad, d2_grad, atol=2e-5 * np.abs(d2_grad).max())


def test_batch_without_gt_trains(repo_root):
    cfg = golden_cfg(repo_root, True)
    heads = Res5ROIHeads(cfg, CHANNELS, [STRIDE], seed=0)
    rng = np.random.default_rng(0)
    feat = tf.constant(rng.normal(0, 1, (2, 8, 12, CHANNELS)).astype(np.float32))
    boxes = tf.constant(np.tile([[10.0, 10.0, 60.0, 50.0]], (2, 5, 1)).astype(np.float32))
    with tf.GradientTape() as tape:
        tape.watch(feat)
        losses = heads.losses([feat], boxes, tf.ones([2, 5], tf.bool),
                              tf.constant([[128, 192]] * 2), tf.zeros([2, 0, 4]),
                              tf.zeros([2, 0], tf.int32), tf.zeros([2, 0, 128, 192], tf.uint8))
        total = tf.add_n(list(losses.values()))
    grad = tape.gradient(total, feat)
    assert losses["loss_mask"].numpy() == 0 and losses["loss_box_reg"].numpy() == 0
    assert losses["loss_cls"].numpy() > 0 and np.isfinite(grad.numpy()).all()


# ---------------------------------------------------------------- configs and names
@pytest.mark.parametrize("name", ["mask_rcnn_R_50_C4_1x", "mask_rcnn_R_50_C4_3x",
                                  "mask_rcnn_R_101_C4_3x", "faster_rcnn_R_50_C4_1x",
                                  "faster_rcnn_R_50_C4_3x", "faster_rcnn_R_101_C4_3x"])
def test_our_c4_configs_are_detectron2s_models(repo_root, golden_file, name):
    """configs/<name>.yaml gives detectron2's state dict of the model-zoo config (recorded from
    detectron2 itself where the fixture has it, otherwise the converter's name map)."""
    cfg = get_cfg()
    cfg.merge_from_file(str(repo_root / "configs" / f"{name}.yaml"))
    expected = expected_d2_state_dict_shapes(cfg)
    for group in ("COCO-InstanceSegmentation", "COCO-Detection"):
        key = f"zoo/{group}/{name}.yaml/state_dict"
        if key in golden_file:
            assert list(expected.items()) == [(k, tuple(s)) for k, s in
                                              json.loads(str(golden_file[key]))]
    assert "roi_heads.res5.2.conv3.weight" in expected
    assert not any(k.startswith(("backbone.res5", "backbone.bottom_up", "backbone.fpn"))
                   for k in expected)


@pytest.mark.parametrize("config", ["COCO-InstanceSegmentation/mask_rcnn_R_50_C4_1x.yaml",
                                    "COCO-InstanceSegmentation/mask_rcnn_R_101_C4_3x.yaml",
                                    "COCO-Detection/faster_rcnn_R_50_C4_1x.yaml"])
def test_detectron2_c4_config_maps_to_its_state_dict(golden_file, config):
    """detectron2's cfg.dump() of a C4 zoo config -> our tree -> detectron2's tensors."""
    cfg, report = cfg_from_d2_dict(yaml.safe_load(str(golden_file[f"zoo/{config}/dump"])))
    m = cfg.MODEL
    assert (m.BACKBONE.NAME, m.ROI_HEADS.NAME) == ("build_resnet_backbone", "Res5ROIHeads")
    assert list(m.RESNETS.OUT_FEATURES) == list(m.RPN.IN_FEATURES) == ["res4"]
    assert list(m.ROI_HEADS.IN_FEATURES) == ["res4"]
    assert m.RPN.PRE_NMS_TOPK_TEST == 6000 and m.ROI_BOX_HEAD.POOLER_RESOLUTION == 14
    assert m.ROI_MASK_HEAD.NUM_CONV == 0
    d2 = [(k, tuple(s)) for k, s in json.loads(str(golden_file[f"zoo/{config}/state_dict"]))]
    assert list(expected_d2_state_dict_shapes(cfg).items()) == d2


def test_full_c4_model_variables_are_detectron2s(repo_root):
    cfg = get_cfg()
    cfg.merge_from_file(str(repo_root / "configs" / "mask_rcnn_R_50_C4_1x.yaml"))
    cfg.merge_from_list(["MODEL.RESNETS.RES2_OUT_CHANNELS=16", "MODEL.RESNETS.WIDTH_PER_GROUP=4",
                         "MODEL.RESNETS.STEM_OUT_CHANNELS=8", "MODEL.ROI_MASK_HEAD.CONV_DIM=8",
                         "MODEL.ROI_HEADS.NUM_CLASSES=3"])
    model = GeneralizedRCNN(cfg)
    ours = {k: tuple(v.shape) for k, v in model.named_variables().items()}
    specs = expected_d2_tensors(cfg)
    assert sorted(ours) == sorted(specs)
    for key, spec in specs.items():
        assert ours[key] == to_tf(np.zeros(spec.shape, np.float32), spec).shape, key
    # res4 of the backbone (stride 16) feeds the RPN (15 anchors on one level) and the heads
    assert model.backbone.out_features == ["res4"] and model.backbone.strides["res4"] == 16
    assert model.backbone.stage_names == ["res2", "res3", "res4"]  # no res5 in the backbone
    assert model.proposal_generator.anchor_generator.num_anchors == [15]


@pytest.mark.parametrize("config", ["COCO-InstanceSegmentation/mask_rcnn_R_101_C4_3x.yaml",
                                    "COCO-Detection/faster_rcnn_R_50_C4_1x.yaml"])
def test_c4_checkpoint_without_config_is_recognised(golden_file, config):
    """tfmrcnn-convert without --d2-config: a state dict with roi_heads.res5 is read as C4."""
    from tfmrcnn.converter.infer_config import infer_cfg_from_shapes

    d2 = {k: tuple(v) for k, v in json.loads(str(golden_file[f"zoo/{config}/state_dict"]))}
    cfg, notes = infer_cfg_from_shapes(d2)
    assert cfg.MODEL.ROI_HEADS.NAME == "Res5ROIHeads"
    assert list(cfg.MODEL.RPN.IN_FEATURES) == list(cfg.MODEL.ROI_HEADS.IN_FEATURES) == ["res4"]
    assert expected_d2_state_dict_shapes(cfg) == d2
    assert any("C4 model" in n for n in notes)


def test_imagenet_backbone_initialises_backbone_and_res5_head(repo_root, tmp_path):
    """MODEL.WEIGHTS = an ImageNet ResNet (converted as backbone.bottom_up.*): stem..res4 go
    to backbone.*, res5 to roi_heads.res5.* (detectron2's matching heuristics)."""
    from tfmrcnn.checkpoint.checkpointer import Checkpointer
    from tfmrcnn.checkpoint.weights_io import save_weights

    cfg = golden_cfg(repo_root, True)
    model = GeneralizedRCNN(cfg)
    rng = np.random.default_rng(0)
    imagenet = {k: to_tf(rng.normal(0, 1, spec.shape).astype(np.float32), spec)
                for k, spec in expected_d2_tensors(cfg, backbone_only=True).items()}
    assert all(k.startswith("backbone.bottom_up.") for k in imagenet)
    path = save_weights(str(tmp_path / "r50.npz"), imagenet)
    Checkpointer(str(tmp_path), model, {}).load_initial_weights(path)
    ours = model.named_variables()
    for key, value in imagenet.items():
        rest = key[len("backbone.bottom_up."):]
        target = f"roi_heads.{rest}" if rest.startswith("res5.") else f"backbone.{rest}"
        np.testing.assert_array_equal(ours[target].numpy(), value, err_msg=key)


def test_c4_layout_errors_name_the_key(golden_file):
    dump = yaml.safe_load(str(golden_file["zoo/COCO-InstanceSegmentation/"
                                          "mask_rcnn_R_50_C4_1x.yaml/dump"]))
    dump["MODEL"]["RPN"]["IN_FEATURES"] = ["res3"]
    with pytest.raises(D2ConfigError, match=r"MODEL\.BACKBONE\.NAME.*MODEL\.RPN\.IN_FEATURES"):
        cfg_from_d2_dict(dump)
    dump["MODEL"]["RPN"]["IN_FEATURES"] = ["res4"]
    dump["MODEL"]["ROI_HEADS"]["NAME"] = "StandardROIHeads"
    dump["MODEL"]["ROI_BOX_HEAD"]["NAME"] = "FastRCNNConvFCHead"
    with pytest.raises(D2ConfigError, match=r"MODEL\.ROI_HEADS\.NAME"):
        cfg_from_d2_dict(dump)


def test_res5_heads_pool_one_map(repo_root):
    with pytest.raises(ValueError, match="IN_FEATURES"):
        Res5ROIHeads(golden_cfg(repo_root, True), CHANNELS, [16, 32])
    with pytest.raises(ValueError, match="RES2_OUT_CHANNELS"):
        Res5ROIHeads(golden_cfg(repo_root, True), 2 * CHANNELS, [16])


# ---------------------------------------------------------------- training (2 processes)
# the demo model (R18, GN, from scratch) rewired as C4: RPN and Res5ROIHeads on res4 (128
# channels), res5 in the heads 256 wide with a 64-channel bottleneck, 14 x 14 masks
TINY_C4 = ("MODEL.BACKBONE.NAME=build_resnet_backbone", "MODEL.RESNETS.OUT_FEATURES=['res4']",
           "MODEL.RPN.IN_FEATURES=['res4']", "MODEL.ROI_HEADS.IN_FEATURES=['res4']",
           "MODEL.ROI_HEADS.NAME=Res5ROIHeads", "MODEL.RESNETS.WIDTH_PER_GROUP=8",
           "MODEL.ANCHOR_GENERATOR.SIZES=[[16, 32, 64, 128, 256]]",
           "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION=14", "MODEL.ROI_MASK_HEAD.NUM_CONV=0",
           # the res5 head from scratch swings at the demo's 0.02 after a 2-iteration warm-up
           "SOLVER.BASE_LR=0.005")


@pytest.mark.slow
def test_two_processes_train_a_tiny_c4_checkpoint_and_resume(tmp_path):
    from shapes_horovod_train import (STANDARD_LOSSES, assert_resumed, assert_trained,
                                      horovod_train, logged)

    log = logged(horovod_train(tmp_path, 8, *TINY_C4))
    assert_trained(tmp_path, log, 8, STANDARD_LOSSES)
    # the logged values are medians since iteration 0: a falling loss shows at the end
    assert log[7]["total_loss"] < log[0]["total_loss"]
    assert log[7]["loss_mask"] < log[0]["loss_mask"]
    with np.load(tmp_path / "model_final.npz") as weights:
        assert "roi_heads.res5.0.conv1.weight" in weights.files
    assert_resumed(horovod_train(tmp_path, 12, *TINY_C4), 8, 12)
