"""LR schedule, SGD + weight decay, clipping, worker scaling, loss scale vs NumPy references."""
import math

import numpy as np
import pytest
import tensorflow as tf

from tfmrcnn.config import get_cfg
from tfmrcnn.engine.solver import (SGD, DynamicLossScale, WarmupMultiStepLR, auto_scale_workers,
                                   build_optimizer, clip_gradients)
from engine_toy import ToyModel


def _ref_lr(i, base, steps, gamma, warm_iters, warm_factor, method):
    """detectron2 WarmupMultiStepLR written from its definition."""
    mult = gamma ** len([s for s in steps if s <= i])
    if i >= warm_iters:
        return base * mult
    if method == "constant":
        return base * warm_factor
    alpha = i / warm_iters
    return base * (warm_factor * (1 - alpha) + alpha) * mult


@pytest.mark.parametrize("method", ["linear", "constant"])
def test_lr_schedule_matches_reference(method):
    sched = WarmupMultiStepLR(0.02, (60, 80), 0.1, 10, 0.001, method, max_iter=90)
    fn = tf.function(sched)
    for i in list(range(0, 15)) + [59, 60, 61, 79, 80, 89]:
        ref = _ref_lr(i, 0.02, (60, 80), 0.1, 10, 0.001, method)
        assert math.isclose(sched.value(i), ref, rel_tol=1e-9), i
        assert math.isclose(float(fn(tf.constant(i, tf.int64))), ref, rel_tol=1e-5), i


def test_lr_schedule_from_config_detectron2_values():
    sched = WarmupMultiStepLR.from_config(get_cfg())
    assert math.isclose(sched.value(0), 0.02 * 0.001)
    assert math.isclose(sched.value(500), 0.02 * (0.001 * 0.5 + 0.5))
    assert math.isclose(sched.value(1000), 0.02)
    assert math.isclose(sched.value(60000), 0.002)
    assert math.isclose(sched.value(80000), 0.0002, rel_tol=1e-9)


def _torch_sgd_reference(p, grads, lr, momentum, wd, nesterov):
    """PyTorch SGD (dampening 0) step by step in NumPy."""
    p = p.astype(np.float64).copy()
    buf = None
    for g in grads:
        d = g + wd * p
        buf = d.copy() if buf is None else momentum * buf + d
        p -= lr * (d + momentum * buf if nesterov else buf)
    return p, buf


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_weight_decay_matches_pytorch_formula(nesterov):
    rng = np.random.default_rng(0)
    p0 = rng.normal(size=(3, 2)).astype(np.float32)
    grads = [rng.normal(size=(3, 2)).astype(np.float32) for _ in range(4)]
    v = tf.Variable(p0, name="x.weight")
    opt = SGD([v], momentum=0.9, nesterov=nesterov, weight_decays=[1e-2], lr_multipliers=[1.0])
    for g in grads:
        opt.apply([tf.constant(g)], tf.constant(0.1))
    ref_p, ref_buf = _torch_sgd_reference(p0, grads, 0.1, 0.9, 1e-2, nesterov)
    np.testing.assert_allclose(v.numpy(), ref_p, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(opt.slots[0].numpy(), ref_buf, rtol=1e-5, atol=1e-6)
    assert list(opt.named_slots()) == ["momentum/x.weight"]


def test_parameter_groups_follow_detectron2():
    cfg = get_cfg()
    cfg.SOLVER.WEIGHT_DECAY = 1e-4
    cfg.SOLVER.WEIGHT_DECAY_NORM = 0.0
    cfg.SOLVER.WEIGHT_DECAY_BIAS = 3e-4
    cfg.SOLVER.BIAS_LR_FACTOR = 2.0
    model = ToyModel()
    opt = build_optimizer(cfg, model)
    groups = {v.name.split(":")[0]: (wd, m) for v, wd, m in
              zip(opt.variables_, opt.weight_decays, opt.lr_multipliers)}
    assert groups == {"head.fc.weight": (1e-4, 1.0), "head.fc.bias": (3e-4, 2.0),
                      "head.norm.weight": (0.0, 1.0)}     # frozen variable not trained


def test_clip_gradients_value_and_norm():
    cfg = get_cfg()
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 1.0
    g = [tf.constant([3.0, -4.0]), tf.constant([0.3, 0.4])]
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "value"
    np.testing.assert_allclose(clip_gradients(g, cfg)[0], [1.0, -1.0])
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "norm"
    out = clip_gradients(g, cfg)
    np.testing.assert_allclose(out[0], np.array([3.0, -4.0]) / (5.0 + 1e-6), rtol=1e-6)
    np.testing.assert_allclose(out[1], [0.3, 0.4])     # norm 0.5 < 1: per variable, untouched
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = False
    np.testing.assert_allclose(clip_gradients(g, cfg)[0], [3.0, -4.0])


def test_auto_scale_workers_like_detectron2():
    cfg = get_cfg()
    cfg.SOLVER.REFERENCE_WORLD_SIZE = 8
    cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.BASE_LR = 16, 0.02
    cfg.SOLVER.MAX_ITER, cfg.SOLVER.STEPS, cfg.SOLVER.WARMUP_ITERS = 90000, (60000, 80000), 1000
    cfg.SOLVER.CHECKPOINT_PERIOD, cfg.TEST.EVAL_PERIOD = 5000, 10000
    out = auto_scale_workers(cfg, 4)
    assert out.SOLVER.IMS_PER_BATCH == 8 and math.isclose(out.SOLVER.BASE_LR, 0.01)
    assert out.SOLVER.MAX_ITER == 180000 and tuple(out.SOLVER.STEPS) == (120000, 160000)
    assert out.SOLVER.WARMUP_ITERS == 2000 and out.SOLVER.CHECKPOINT_PERIOD == 10000
    assert out.TEST.EVAL_PERIOD == 20000 and out.SOLVER.REFERENCE_WORLD_SIZE == 4
    cfg.SOLVER.REFERENCE_WORLD_SIZE = 0
    assert auto_scale_workers(cfg, 4) is cfg


def test_dynamic_loss_scale():
    ls = DynamicLossScale(initial=8.0, growth_interval=2)
    ls.update(tf.constant(False))
    assert ls.scale.numpy() == 4.0
    ls.update(tf.constant(True))
    assert ls.scale.numpy() == 4.0
    ls.update(tf.constant(True))
    assert ls.scale.numpy() == 8.0 and ls.good_steps.numpy() == 0
