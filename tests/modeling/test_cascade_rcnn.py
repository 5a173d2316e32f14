"""CascadeROIHeads against detectron2 0.5's own (golden vectors of
tests/fixtures/make_cascade_golden.py: same weights, features, proposals and GT).

Training: every stage's rows (boxes, labels, matched GT, regression targets with the stage's
weights, logits and deltas), the empty boxes dropped and the clipping between stages, the stage
losses and statistics, and the gradient reaching the features (1/3 scaling, no gradient through
the refined boxes). Inference: every stage's input boxes and probabilities, the last stage's
decoded boxes, the detections of the stage-averaged scores with their masks. Both in graph mode.
Plus: the model built from configs/cascade_mask_rcnn_R_50_FPN_1x.yaml has detectron2's tensors
in detectron2's order, config errors name the key, a batch without GT trains, and (slow) a tiny
cascade trains with 2 Horovod processes, checkpoints and resumes.
"""
import numpy as np
import pytest
import tensorflow as tf

from tfmrcnn.config import get_cfg, load_config
from tfmrcnn.converter.d2_names import expected_d2_tensors
from tfmrcnn.converter.layouts import to_tf
from tfmrcnn.modeling.cascade_rcnn import CascadeROIHeads
from tfmrcnn.modeling.layers import named_variables
from tfmrcnn.modeling.meta_arch import GeneralizedRCNN
from tfmrcnn.modeling.norm import is_norm_variable

STRIDES = [4, 8, 16, 32]
STAGES = 3


# ---------------------------------------------------------------- fixture and model
@pytest.fixture(scope="module")
def golden(fixtures_dir):
    with np.load(fixtures_dir / "cascade_golden.npz") as z:
        return {k: z[k] for k in z.files}


def golden_cfg():
    """Our config of the golden heads (make_cascade_golden.small_cfg)."""
    cfg = get_cfg()
    cfg.MODEL.ROI_HEADS.NAME = "CascadeROIHeads"
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 64
    cfg.MODEL.ROI_HEADS.POSITIVE_FRACTION = 1.0
    cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = True
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 16
    cfg.MODEL.ROI_MASK_HEAD.CONV_DIM = 8
    cfg.MODEL.ROI_MASK_HEAD.NUM_CONV = 2
    cfg.MODEL.FPN.OUT_CHANNELS = 8
    cfg.TEST.DETECTIONS_PER_IMAGE = 20
    return cfg


@pytest.fixture(scope="module")
def heads(golden):
    cfg = golden_cfg()
    model = CascadeROIHeads(cfg, 8, STRIDES)
    specs = {k: v for k, v in expected_d2_tensors(cfg).items() if k.startswith("roi_heads.")}
    assert list(specs) == list(golden["roi_heads_keys"])  # detectron2's names and order
    variables = named_variables(model)
    assert sorted(variables) == sorted(specs)
    for name, spec in specs.items():
        variables[name].assign(to_tf(golden[f"w/{name}"], spec))
    return model


def features(golden):
    # detectron2's NCHW maps -> NHWC
    return [tf.constant(golden[f"features_p{l}"].transpose(0, 2, 3, 1)) for l in range(2, 6)]


def proposals(golden, split):
    boxes, counts = golden[f"{split}_proposals"], golden[f"{split}_num_proposals"]
    valid = np.arange(boxes.shape[1])[None, :] < counts[:, None]
    return tf.constant(boxes), tf.constant(valid)


def train_inputs(golden):
    boxes, valid = proposals(golden, "train")
    return (features(golden), boxes, valid, tf.constant(golden["image_sizes"]),
            tf.constant(golden["gt_boxes"]), tf.constant(golden["gt_classes"]),
            tf.constant(golden["gt_masks"]), tf.zeros([2, 0, 4]))


def match_rows(ours, theirs, atol):
    """Index into `ours` (N, 4) of each row of `theirs` (N, 4): the same box within atol."""
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    diff = np.abs(theirs[:, None, :] - ours[None, :, :]).max(-1)  # (N, N)
    order = diff.argmin(1)
    assert np.all(diff[np.arange(len(theirs)), order] <= atol), diff.min(1).max()
    assert len(set(order.tolist())) == len(order)  # one to one
    return order


# ---------------------------------------------------------------- training
def test_every_stage_sees_detectron2s_rows_labels_targets_and_outputs(golden, heads):
    feats, boxes, valid, sizes, gt_boxes, gt_classes, _, crowd = train_inputs(golden)
    samples = heads.label_and_sample_proposals(boxes, valid, gt_boxes, gt_classes, crowd)
    stages = heads.training_stages(feats, samples, sizes, gt_boxes, gt_classes, crowd, True)
    assert len(stages) == STAGES
    dropped = 0
    for s, (rows, logits, deltas) in enumerate(stages):
        for i in range(2):
            key = f"train_s{s}_i{i}_"
            mine = rows.valid.numpy()[i]
            ref_boxes = golden[key + "boxes"]
            # stage 0: the same candidates (proposals + GT) exactly; later: regressed boxes
            order = np.flatnonzero(mine)[match_rows(rows.boxes.numpy()[i][mine], ref_boxes,
                                                    0.0 if s == 0 else 2e-4)]
            classes = rows.classes.numpy()[i][order]
            np.testing.assert_array_equal(classes, golden[key + "classes"])
            fg = classes < 3
            assert fg.any() and (~fg).any()
            gt = rows.gt_boxes.numpy()[i][order]
            np.testing.assert_allclose(gt[fg], golden[key + "gt_boxes"][fg], atol=1e-6)
            # regression targets with this stage's Box2BoxTransform weights
            targets = heads.box_predictors[s].box2box.get_deltas(rows.boxes[i], rows.gt_boxes[i])
            np.testing.assert_allclose(targets.numpy()[order][fg], golden[key + "targets"][fg],
                                       rtol=1e-4, atol=2e-4)
            np.testing.assert_allclose(logits.numpy()[i][order], golden[key + "logits"],
                                       rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(deltas.numpy()[i][order], golden[key + "deltas"],
                                       rtol=1e-4, atol=1e-4)
            if s + 1 < STAGES:
                # detectron2's regressed boxes, clipped: the next stage's input (empty ones out)
                decoded = golden[key + "decoded"]
                h, w = golden["image_sizes"][i]
                clipped = np.clip(decoded, 0, [w, h, w, h])
                nonempty = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
                np.testing.assert_allclose(clipped[nonempty], golden[f"train_s{s + 1}_i{i}_boxes"])
                dropped += int((~nonempty).sum())
                assert (decoded != clipped).any()  # some boxes left the image
    assert dropped == 2  # each image's zero-width proposal, after stage 0


def test_stage_losses_and_statistics_equal_detectron2_in_graph_mode(golden, heads):
    fn = tf.function(lambda *a: heads.losses(*a, return_metrics=True), autograph=False)
    losses, metrics = fn(*train_inputs(golden))
    expected = {k: golden[k] for k in golden if k.startswith("loss_")}
    assert set(losses) == set(expected) == (
        {f"loss_{n}_stage{s}" for n in ("cls", "box_reg") for s in range(STAGES)} | {"loss_mask"})
    for name, value in expected.items():
        np.testing.assert_allclose(losses[name].numpy(), value, rtol=2e-5, err_msg=name)
    d2_metrics = {k[len("metric_"):].replace("|", "/"): golden[k] for k in golden
                  if k.startswith("metric_") and not k.startswith("metric_mask_rcnn")}
    assert set(d2_metrics) == set(metrics)
    for name, value in d2_metrics.items():
        np.testing.assert_allclose(metrics[name].numpy(), value, rtol=1e-6, err_msg=name)


def test_gradient_reaching_the_features_equals_detectron2(golden, heads):
    """detectron2 scales the pooled features' gradient by 1/3 per stage and passes none through
    the refined boxes; the ROI-head loss gradient w.r.t. P2..P5 shows both."""
    feats, *rest = train_inputs(golden)
    feats = [tf.Variable(f) for f in feats]
    with tf.GradientTape() as tape:
        total = tf.add_n(list(heads.losses(feats, *rest).values()))
    grads = tape.gradient(total, feats)
    refs = [golden[f"grad_p{level}"].transpose(0, 2, 3, 1) for level in range(2, 6)]
    scale = max(np.abs(r).max() for r in refs)
    assert scale > 0
    for level, g, ref in zip(range(2, 6), grads, refs):
        g = np.zeros_like(ref) if g is None else g.numpy()  # a level no box pools from
        np.testing.assert_allclose(g, ref, rtol=1e-3, atol=1e-4 * scale, err_msg=f"p{level}")


def test_losses_of_a_batch_without_gt_are_finite_and_all_background(heads):
    rng = np.random.default_rng(0)
    feats = [tf.constant(rng.normal(0, 1, (2, 64 // s, 96 // s, 8)).astype(np.float32))
             for s in STRIDES]
    boxes = tf.constant(rng.uniform(0, 30, (2, 6, 2)).repeat(2, -1).astype(np.float32)
                        + np.array([0, 0, 20, 20], np.float32))
    losses, metrics = heads.losses(
        feats, boxes, tf.ones([2, 6], tf.bool), tf.constant([[64, 96], [64, 96]]),
        tf.zeros([2, 0, 4]), tf.zeros([2, 0], tf.int32), tf.zeros([2, 0, 64, 96], tf.uint8),
        return_metrics=True)
    assert all(np.isfinite(v.numpy()) for v in losses.values())
    for s in range(STAGES):
        assert losses[f"loss_box_reg_stage{s}"].numpy() == 0.0
    assert losses["loss_mask"].numpy() == 0.0
    assert metrics["stage2/roi_head/num_fg_samples"].numpy() == 0
    assert metrics["stage2/roi_head/num_bg_samples"].numpy() == 6


# ---------------------------------------------------------------- inference
def test_inference_equals_detectron2_stage_by_stage_in_graph_mode(golden, heads):
    feats = features(golden)
    boxes, valid = proposals(golden, "test")
    sizes = tf.constant(golden["image_sizes"])
    inputs, probs, decoded = heads.stage_outputs(feats, boxes, sizes)
    counts = golden["test_num_proposals"]
    for i, n in enumerate(counts):
        for s in range(STAGES):
            # rows stay aligned (nothing dropped at test time): compared row by row
            np.testing.assert_allclose(inputs[s].numpy()[i, :n], golden[f"test_s{s}_i{i}_boxes"],
                                       rtol=1e-5, atol=2e-4)
            np.testing.assert_allclose(probs[s].numpy()[i, :n], golden[f"test_s{s}_i{i}_probs"],
                                       rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(decoded.numpy()[i, :n, 0], golden[f"test_i{i}_decoded"],
                                   rtol=1e-5, atol=2e-4)

    signature = [[tf.TensorSpec([None, None, None, 8])] * 4, tf.TensorSpec([None, None, 4]),
                 tf.TensorSpec([None, None], tf.bool), tf.TensorSpec([None, 2], tf.int32)]
    fn = tf.function(heads.inference, input_signature=signature, autograph=False)
    out = {k: v.numpy() for k, v in fn(feats, boxes, valid, sizes).items()}
    for i in range(2):
        n = len(golden[f"det_i{i}_scores"])
        assert out["num_detections"][i] == n == 20
        # the stage-averaged scores, in detectron2's order
        np.testing.assert_allclose(out["scores"][i, :n], golden[f"det_i{i}_scores"], rtol=1e-5)
        np.testing.assert_array_equal(out["classes"][i, :n], golden[f"det_i{i}_classes"])
        np.testing.assert_allclose(out["boxes"][i, :n], golden[f"det_i{i}_boxes"], atol=2e-4)
        np.testing.assert_allclose(out["masks"][i, :n], golden[f"det_i{i}_masks"], atol=1e-4)
        assert len(set(golden[f"det_i{i}_classes"])) > 1


# ---------------------------------------------------------------- model and config
def test_cascade_r50_has_detectron2s_tensors(repo_root, golden):
    cfg = load_config(str(repo_root / "configs" / "cascade_mask_rcnn_R_50_FPN_1x.yaml"))
    model = GeneralizedRCNN(cfg)
    nv = model.named_variables()
    sizes = {k: int(np.prod(v.shape)) for k, v in nv.items()}
    weights = sum(s for k, s in sizes.items() if not is_norm_variable(nv[k]))
    assert [weights, len(nv), sum(sizes.values())] == golden["d2_counts_cascade_R50"].tolist()
    roi_keys = [k for k in expected_d2_tensors(cfg) if k.startswith("roi_heads.")]
    assert roi_keys == golden["d2_roi_heads_keys_R50"].tolist()
    assert set(roi_keys) == {k for k in nv if k.startswith("roi_heads.")}


@pytest.mark.parametrize("key, value, message", [
    ("MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", False, "CLS_AGNOSTIC_BBOX_REG"),
    ("MODEL.ROI_BOX_CASCADE_HEAD.IOUS", (0.5, 0.6), "IOUS and BBOX_REG_WEIGHTS"),
    ("MODEL.ROI_BOX_CASCADE_HEAD.IOUS", (0.4, 0.6, 0.7), r"IOUS\[0\]"),
])
def test_config_errors_name_the_key(key, value, message):
    cfg = golden_cfg()
    cfg.merge_from_list([key, str(value)])
    with pytest.raises(ValueError, match=message):
        CascadeROIHeads(cfg, 8, STRIDES)


def test_two_stage_cascade_from_config():
    cfg = golden_cfg()
    cfg.merge_from_list(["MODEL.ROI_BOX_CASCADE_HEAD.IOUS", "(0.5, 0.65)",
                         "MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS",
                         "((10, 10, 5, 5), (15, 15, 7, 7))"])
    heads = CascadeROIHeads(cfg, 8, STRIDES)
    assert heads.num_stages == 2
    assert [m.thresholds for m in heads.stage_matchers] == [[0.5], [0.65]]
    assert heads.box_predictors[1].box2box.weights == (15.0, 15.0, 7.0, 7.0)
    assert {k.split(".")[2] for k in named_variables(heads) if ".box_head." in k} == {"0", "1"}


# ---------------------------------------------------------------- training (2 processes)
CASCADE = ("MODEL.ROI_HEADS.NAME=CascadeROIHeads", "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG=True")


@pytest.mark.slow
def test_two_processes_train_a_tiny_cascade_checkpoint_and_resume(tmp_path):
    from shapes_horovod_train import assert_resumed, assert_trained, horovod_train, logged

    log = logged(horovod_train(tmp_path, 8, *CASCADE))
    names = {f"loss_{n}_stage{s}" for n in ("cls", "box_reg") for s in range(STAGES)}
    assert_trained(tmp_path, log, 8, names | {"loss_mask", "loss_rpn_cls", "total_loss"})
    # logged values are medians since iteration 0. The classification losses fall from chance
    # within a few iterations; the box losses first grow with the foreground count
    # (measured: cls stage0/1/2 1.19/1.73/1.38 -> 1.05/1.55/0.67, mask 0.695 -> 0.628)
    falling = ["loss_rpn_cls", "loss_mask"] + [f"loss_cls_stage{s}" for s in range(STAGES)]
    assert all(log[7][k] < log[0][k] for k in falling), [(log[0][k], log[7][k]) for k in falling]
    assert_resumed(horovod_train(tmp_path, 12, *CASCADE), 8, 12)
