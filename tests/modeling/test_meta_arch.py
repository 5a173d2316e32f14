"""GeneralizedRCNN end to end: detectron2's parameter counts, losses, gradients, inference."""
import numpy as np
import pytest
import tensorflow as tf

from tfmrcnn.config import get_cfg, load_config
from tfmrcnn.modeling.layers import Conv2D
from tfmrcnn.modeling.meta_arch import GeneralizedRCNN
from tfmrcnn.modeling.norm import FrozenBN, is_norm_variable

# detectron2's mask_rcnn_R_{50,101}_FPN (80 classes) measured on its state dicts:
# (conv/linear weights + biases, trainable with FREEZE_AT=2, tensors, all values incl. FrozenBN)
D2_MEASURED = {"mask_rcnn_R_50_FPN_1x": (44_343_216, 44_120_816, 307, 44_449_456),
               "mask_rcnn_R_101_FPN_3x": (63_283_120, 63_060_720, 562, 63_493_808)}
LOSS_NAMES = {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg", "loss_mask"}


def _counts(model):
    nv = model.named_variables()
    size = {k: int(np.prod(v.shape)) for k, v in nv.items()}
    weights = sum(s for k, s in size.items() if not is_norm_variable(nv[k]))
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    return weights, trainable, len(nv), sum(size.values())


@pytest.mark.parametrize("name", [
    "mask_rcnn_R_50_FPN_1x", pytest.param("mask_rcnn_R_101_FPN_3x", marks=pytest.mark.slow)])
def test_parameter_counts_equal_detectron2(repo_root, name):
    model = GeneralizedRCNN(load_config(str(repo_root / "configs" / f"{name}.yaml")))
    assert _counts(model) == D2_MEASURED[name]
    nv = model.named_variables()
    for key in ("backbone.bottom_up.res2.0.conv1.norm.running_var", "backbone.fpn_output5.bias",
                "proposal_generator.rpn_head.anchor_deltas.weight",
                "roi_heads.box_predictor.cls_score.bias", "roi_heads.mask_head.predictor.weight"):
        assert key in nv
    # weight decay exclusion: exactly the 4 FrozenBN tensors of every norm
    norms = model.norm_variables()
    assert len(norms) == 4 * sum(isinstance(m, FrozenBN) for m in model.submodules)
    assert {id(v) for v in norms} == {id(v) for v in nv.values() if is_norm_variable(v)}


def _tiny_cfg(repo_root, *overrides):
    # the CPU demo model (R18 widths 32..) with BN instead of its GN so that the moving
    # statistics are checked too, stem frozen so the test also sees frozen variables, fewer
    # proposals to keep it fast
    return load_config(str(repo_root / "configs" / "shapes_demo_cpu.yaml"), [
        "MODEL.RESNETS.NORM=BN", "MODEL.BACKBONE.FREEZE_AT=1", "MODEL.RPN.PRE_NMS_TOPK_TRAIN=200",
        "MODEL.RPN.POST_NMS_TOPK_TRAIN=50", "MODEL.RPN.PRE_NMS_TOPK_TEST=100",
        "MODEL.RPN.POST_NMS_TOPK_TEST=30", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE=32",
        *overrides])


def _rect_batch(seed=0):
    """Two images of different sizes (96x128 and 64x96) zero-padded to 96x128, boxes as rects."""
    rng = np.random.default_rng(seed)
    hp, wp = 96, 128
    sizes = np.array([[96, 128], [64, 96]], np.int32)
    rects = [[(10, 20, 50, 60), (60, 30, 120, 90)], [(5, 5, 40, 30), (0, 0, 0, 0)]]  # x0 y0 x1 y1
    images = np.zeros((2, hp, wp, 3), np.float32)
    masks = np.zeros((2, 2, hp, wp), np.uint8)
    classes = np.array([[0, 2], [1, -1]], np.int32)
    for b, (h, w) in enumerate(sizes):
        images[b, :h, :w] = rng.uniform(0, 255, (h, w, 3))
        for g, (x0, y0, x1, y1) in enumerate(rects[b]):
            if classes[b, g] >= 0:
                masks[b, g, y0:y1, x0:x1] = 1
                images[b, y0:y1, x0:x1] = 50.0 * (classes[b, g] + 1)
    return {"images": tf.constant(images), "image_sizes": tf.constant(sizes),
            "gt_boxes": tf.constant(np.array(rects, np.float32)),
            "gt_classes": tf.constant(classes),
            "gt_masks": tf.constant(masks), "crowd_boxes": tf.zeros([2, 1, 4])}


@pytest.fixture(scope="module")
def tiny(repo_root):
    tf.random.set_seed(0)
    return GeneralizedRCNN(_tiny_cfg(repo_root))


def test_normalize_zeroes_padding(tiny):
    batch = _rect_batch()
    x = tiny.normalize(batch["images"], batch["image_sizes"]).numpy()
    mean = np.array(tiny.pixel_mean)
    std = np.array(tiny.pixel_std)
    want = (batch["images"].numpy() - mean) / std
    want[1, 64:] = 0  # detectron2 pads the normalized image with zeros
    want[1, :, 96:] = 0
    np.testing.assert_allclose(x, want, rtol=1e-5, atol=1e-4)


def test_forward_backward_losses_and_gradients(tiny):
    batch = _rect_batch()
    bn = tiny.backbone.bottom_up.stages[0][0].conv1.norm
    before = bn.running_mean.numpy()
    with tf.GradientTape() as tape:
        losses = tiny.compute_losses(batch, training=True)
        total = tf.add_n(list(losses.values()))
    assert set(losses) == LOSS_NAMES
    for k, v in losses.items():
        assert v.dtype == tf.float32 and v.shape == () and np.isfinite(v.numpy()), k
    variables = tiny.trainable_variables
    grads = tape.gradient(total, variables)
    missing = [v.name for v, g in zip(variables, grads) if g is None]
    assert not missing, missing
    assert all(np.all(np.isfinite(tf.convert_to_tensor(g))) for g in grads)
    # the frozen stem (FREEZE_AT=1) and every running statistic stay out of training
    trainable = {id(v) for v in variables}
    frozen = [v for k, v in tiny.named_variables().items()
              if ".stem." in k or k.endswith(("running_mean", "running_var"))]
    assert frozen and not any(id(v) in trainable for v in frozen)
    assert isinstance(tiny.backbone.bottom_up.stem.conv1.norm, FrozenBN)
    assert not np.array_equal(bn.running_mean.numpy(), before)  # BN used batch statistics


def _check_detections(out, b, d=100):  # d = TEST.DETECTIONS_PER_IMAGE
    assert out["boxes"].shape == (b, d, 4) and out["scores"].shape == (b, d)
    assert out["classes"].shape == (b, d) and out["num_detections"].shape == (b,)
    assert out["masks"].shape == (b, d, 28, 28)
    n = out["num_detections"].numpy()
    assert np.all((n >= 0) & (n <= d))
    masks = out["masks"].numpy()
    assert np.all(masks >= 0) and np.all(masks <= 1)
    for i in range(b):  # rows past num_detections are zero padding
        assert not out["scores"].numpy()[i, n[i]:].any() and not masks[i, n[i]:].any()


def test_inference_eager(tiny):
    batch = _rect_batch()
    _check_detections(tiny.inference(batch["images"], batch["image_sizes"]), 2)


@pytest.mark.slow  # tracing the whole model takes ~15 s on 2 CPU cores
def test_inference_fn_traces_once_for_all_sizes(tiny):
    fn = tiny.make_inference_fn()
    for hp, wp, b in ((96, 128, 2), (64, 64, 1)):
        images = tf.random.uniform([b, hp, wp, 3], 0, 255)
        sizes = tf.constant([[hp, wp]] * b, tf.int32)
        _check_detections(fn(images, sizes), b)
    assert fn.experimental_get_tracing_count() == 1


# float16 convolutions are very slow on CPU (no oneDNN kernels): slow set only
@pytest.mark.parametrize("dtype", ["bfloat16", pytest.param("float16", marks=pytest.mark.slow)])
def test_mixed_precision_losses_are_float32(repo_root, dtype):
    model = GeneralizedRCNN(_tiny_cfg(repo_root, "SOLVER.AMP.ENABLED=True",
                                      f"TRAINER.AMP_DTYPE={dtype}"))
    batch = _rect_batch(1)
    feats = model.features(batch["images"], batch["image_sizes"], True, model.train_dtype)
    assert all(f.dtype == tf.as_dtype(dtype) for f in feats.values())
    with tf.GradientTape() as tape:
        losses = model.compute_losses(batch)
        total = tf.add_n(list(losses.values()))
    assert set(losses) == LOSS_NAMES
    assert all(v.dtype == tf.float32 and np.isfinite(v.numpy()) for v in losses.values())
    grads = tape.gradient(total, model.trainable_variables)
    assert all(g is not None and g.dtype == tf.float32 for g in grads)


def test_faster_rcnn_without_masks(repo_root):
    model = GeneralizedRCNN(_tiny_cfg(repo_root, "MODEL.MASK_ON=False"))
    assert not any(k.startswith("roi_heads.mask_head") for k in model.named_variables())
    losses = model.compute_losses(_rect_batch())
    assert set(losses) == LOSS_NAMES - {"loss_mask"}


def test_unsupported_config_is_rejected():
    cfg = get_cfg()
    cfg.MODEL.KEYPOINT_ON = True
    with pytest.raises(NotImplementedError, match="KEYPOINT_ON"):
        GeneralizedRCNN(cfg)


def test_winograd_model_equals_direct_model(repo_root, tiny):
    """MODEL.WINOGRAD (the default, on a host without GPU) changes rounding only: with the same
    weights, features and losses match the model whose convs all go through tf.nn.conv2d."""
    direct = GeneralizedRCNN(_tiny_cfg(repo_root, "MODEL.WINOGRAD=False"))
    assert tiny.winograd and not direct.winograd
    wino_convs = [m for m in tiny.submodules if getattr(m, "winograd", False) is True]
    assert len(wino_convs) >= 10  # ResNet middle convs, FPN outputs, RPN head, mask head
    # the flag reaches every 3x3 stride-1 conv of every part of the model, and only those
    eligible = [m for m in tiny.submodules if isinstance(m, Conv2D)
                and tuple(m.weight.shape[:2]) == (3, 3) and m.stride == 1 and m.dilation == 1
                and m.padding == 1]
    assert {id(m) for m in wino_convs} == {id(m) for m in eligible}
    assert not any(getattr(m, "winograd", False) is True for m in direct.submodules)
    ours = tiny.named_variables()
    for key, v in direct.named_variables().items():
        v.assign(ours[key])
    batch = _rect_batch(seed=4)
    f_wino = tiny.features(batch["images"], batch["image_sizes"], False, tf.float32)
    f_direct = direct.features(batch["images"], batch["image_sizes"], False, tf.float32)
    for name in f_direct:
        ref = f_direct[name].numpy()
        np.testing.assert_allclose(f_wino[name].numpy(), ref, rtol=0,
                                   atol=1e-4 * np.abs(ref).max(), err_msg=name)
    losses = []
    for model in (tiny, direct):
        tf.random.set_seed(1)  # the same proposal and ROI sampling in both
        losses.append(model.compute_losses(batch, training=False))
    for k, v in losses[1].items():
        np.testing.assert_allclose(losses[0][k].numpy(), v.numpy(), rtol=1e-3, err_msg=k)
