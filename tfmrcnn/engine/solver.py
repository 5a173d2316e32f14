"""Optimisation: worker auto-scaling, the LR schedule, SGD with weight decay, clipping, loss scale.

Everything follows detectron2 (``solver/build.py``, ``solver/lr_scheduler.py``) and PyTorch's SGD:

* LR at iteration ``i`` (0-based, the LR used by the update of iteration i):
  ``base * m(i)`` with ``m(i) = GAMMA ** #{s in STEPS : s <= i}``; during the warmup
  (``i < WARMUP_ITERS``) linear: ``base * (WARMUP_FACTOR * m(0) * (1 - a) + m(W) * a)``,
  ``a = i / W``; constant: ``base * WARMUP_FACTOR * m(0)``.
* SGD step per variable p with gradient g (PyTorch, dampening 0):
  ``g += wd * p``; ``buf = momentum * buf + g``; ``p -= lr * (g + momentum * buf if nesterov
  else buf)``. The buffers are ``tf.Variable`` slots named ``momentum/<detectron2 key>``.
* Parameter groups (detectron2 get_default_optimizer_params): variables of norm layers get
  WEIGHT_DECAY_NORM; other biases WEIGHT_DECAY_BIAS; the rest WEIGHT_DECAY; every ``*.bias``
  gets LR x BIAS_LR_FACTOR.
* Gradient clipping (SOLVER.CLIP_GRADIENTS) is per variable, before weight decay is added:
  "value" clamps elements, "norm" rescales a gradient whose L-p norm exceeds the threshold.
"""
from __future__ import annotations

import logging
import math
from typing import List, Sequence

import tensorflow as tf

from tfmrcnn.modeling.layers import variable_key
from tfmrcnn.modeling.norm import norm_variables

__all__ = ["auto_scale_workers", "WarmupMultiStepLR", "SGD", "build_optimizer",
           "clip_gradients", "DynamicLossScale"]

logger = logging.getLogger(__name__)


def auto_scale_workers(cfg, world_size: int):
    """detectron2's DefaultTrainer.auto_scale_workers: a config for ``world_size`` processes.

    With SOLVER.REFERENCE_WORLD_SIZE = R > 0 and a real world size N != R, batch and LR scale by
    N / R and iteration counts (MAX_ITER, STEPS, WARMUP_ITERS, CHECKPOINT_PERIOD,
    TEST.EVAL_PERIOD) by R / N. Returns a frozen clone (or the config unchanged).
    """
    ref = cfg.SOLVER.REFERENCE_WORLD_SIZE
    if ref == 0 or ref == world_size:
        return cfg
    scale = world_size / ref
    cfg = cfg.clone().defrost()
    bs = cfg.SOLVER.IMS_PER_BATCH = int(round(cfg.SOLVER.IMS_PER_BATCH * scale))
    lr = cfg.SOLVER.BASE_LR = cfg.SOLVER.BASE_LR * scale
    max_iter = cfg.SOLVER.MAX_ITER = int(round(cfg.SOLVER.MAX_ITER / scale))
    warmup = cfg.SOLVER.WARMUP_ITERS = int(round(cfg.SOLVER.WARMUP_ITERS / scale))
    cfg.SOLVER.STEPS = tuple(int(round(s / scale)) for s in cfg.SOLVER.STEPS)
    cfg.TEST.EVAL_PERIOD = int(round(cfg.TEST.EVAL_PERIOD / scale))
    cfg.SOLVER.CHECKPOINT_PERIOD = int(round(cfg.SOLVER.CHECKPOINT_PERIOD / scale))
    cfg.SOLVER.REFERENCE_WORLD_SIZE = world_size
    logger.info("Auto-scaling the config to %d workers: IMS_PER_BATCH=%d, BASE_LR=%g, "
                "MAX_ITER=%d, WARMUP_ITERS=%d, STEPS=%s", world_size, bs, lr, max_iter, warmup,
                cfg.SOLVER.STEPS)
    return cfg.freeze()


class WarmupMultiStepLR:
    """detectron2's WarmupMultiStepLR (module docstring formula), in Python and in TF."""

    def __init__(self, base_lr: float, steps: Sequence[int], gamma: float, warmup_iters: int,
                 warmup_factor: float, warmup_method: str = "linear", max_iter: int = 0):
        if warmup_method not in ("linear", "constant"):
            raise ValueError(f"unknown SOLVER.WARMUP_METHOD {warmup_method!r}")
        if max_iter and any(s > max_iter for s in steps):
            logger.warning("SOLVER.STEPS %s contain values beyond MAX_ITER=%d", steps, max_iter)
        self.base_lr, self.gamma = float(base_lr), float(gamma)
        self.steps = sorted(int(s) for s in steps)
        self.warmup_iters = int(min(warmup_iters, max_iter)) if max_iter else int(warmup_iters)
        self.warmup_factor, self.warmup_method = float(warmup_factor), warmup_method

    @classmethod
    def from_config(cls, cfg):
        s = cfg.SOLVER
        if s.LR_SCHEDULER_NAME != "WarmupMultiStepLR":
            raise ValueError(f"SOLVER.LR_SCHEDULER_NAME {s.LR_SCHEDULER_NAME!r} not supported")
        return cls(s.BASE_LR, s.STEPS, s.GAMMA, s.WARMUP_ITERS, s.WARMUP_FACTOR,
                   s.WARMUP_METHOD, s.MAX_ITER)

    def _multiplier(self, it: int) -> float:
        return self.gamma ** sum(1 for s in self.steps if s <= it)

    def value(self, it: int) -> float:
        """LR of iteration ``it`` (Python float)."""
        w = self.warmup_iters
        if it < w:
            start = self.warmup_factor * self._multiplier(0)
            if self.warmup_method == "constant":
                return self.base_lr * start
            a = it / w
            return self.base_lr * (start * (1 - a) + self._multiplier(w) * a)
        return self.base_lr * self._multiplier(it)

    def __call__(self, it) -> tf.Tensor:
        """LR of iteration ``it`` (int tensor) as a float32 tensor; graph-safe."""
        it = tf.cast(it, tf.float32)
        steps = tf.constant(self.steps or [math.inf], tf.float32)

        def mult(x):
            return tf.pow(self.gamma, tf.reduce_sum(tf.cast(steps <= x, tf.float32)))

        w = float(self.warmup_iters)
        start = self.warmup_factor * mult(0.0)
        if self.warmup_method == "constant":
            warm = start
        else:
            a = it / max(w, 1.0)
            warm = start * (1.0 - a) + mult(w) * a
        return self.base_lr * tf.where(it < w, warm, mult(it))


class SGD(tf.Module):
    """PyTorch SGD with momentum and per-variable L2 weight decay (see module docstring).

    ``variables`` are the trained ``tf.Variable``s; ``weight_decays`` and ``lr_multipliers`` give
    one number per variable. ``slots`` are the momentum buffers, same order, float32.
    """

    def __init__(self, variables: Sequence[tf.Variable], momentum: float = 0.9,
                 nesterov: bool = False, weight_decays: Sequence[float] = None,
                 lr_multipliers: Sequence[float] = None):
        super().__init__(name="sgd")
        self.variables_ = list(variables)
        n = len(self.variables_)
        self.momentum, self.nesterov = float(momentum), bool(nesterov)
        self.weight_decays = list(weight_decays) if weight_decays is not None else [0.0] * n
        self.lr_multipliers = list(lr_multipliers) if lr_multipliers is not None else [1.0] * n
        if not len(self.weight_decays) == len(self.lr_multipliers) == n:
            raise ValueError("one weight decay and one LR multiplier per variable")
        self.slots = [tf.Variable(tf.zeros_like(v), trainable=False,
                                  name=f"momentum/{variable_key(v)}") for v in self.variables_]

    def named_slots(self):
        """{'momentum/<key>': slot variable}."""
        return {f"momentum/{variable_key(v)}": s for v, s in zip(self.variables_, self.slots)}

    def apply(self, grads: Sequence[tf.Tensor], lr) -> None:
        """One update with learning rate ``lr`` (scalar tensor); grads in variable order."""
        lr = tf.cast(lr, tf.float32)
        for v, g, buf, wd, mult in zip(self.variables_, grads, self.slots, self.weight_decays,
                                       self.lr_multipliers):
            g = tf.cast(g, v.dtype)
            if wd:
                g = g + wd * v
            buf.assign(self.momentum * buf + g)
            step = g + self.momentum * buf if self.nesterov else buf
            v.assign_sub(lr * mult * step)


def build_optimizer(cfg, model) -> SGD:
    """SGD over ``model.trainable_variables`` with detectron2's parameter groups."""
    variables = list(model.trainable_variables)
    norm_vars = model.norm_variables() if hasattr(model, "norm_variables") else norm_variables(model)
    norm_ids = {id(v) for v in norm_vars}
    s = cfg.SOLVER
    decays, mults = [], []
    for v in variables:
        key = variable_key(v)
        is_bias = key.endswith("bias")
        if id(v) in norm_ids:
            decays.append(s.WEIGHT_DECAY_NORM)
        elif is_bias:
            decays.append(s.WEIGHT_DECAY_BIAS)
        else:
            decays.append(s.WEIGHT_DECAY)
        mults.append(s.BIAS_LR_FACTOR if is_bias else 1.0)
    return SGD(variables, s.MOMENTUM, s.NESTEROV, decays, mults)


def clip_gradients(grads: Sequence[tf.Tensor], cfg) -> List[tf.Tensor]:
    """Per-variable clipping of SOLVER.CLIP_GRADIENTS (identity when disabled)."""
    c = cfg.SOLVER.CLIP_GRADIENTS
    if not c.ENABLED:
        return list(grads)
    if c.CLIP_TYPE == "value":
        return [tf.clip_by_value(g, -c.CLIP_VALUE, c.CLIP_VALUE) for g in grads]
    if c.CLIP_TYPE == "norm":
        p = float(c.NORM_TYPE)
        out = []
        for g in grads:
            a = tf.abs(g)
            norm = tf.reduce_max(a) if math.isinf(p) else tf.pow(tf.reduce_sum(tf.pow(a, p)), 1.0 / p)
            coef = c.CLIP_VALUE / (norm + 1e-6)     # torch.nn.utils.clip_grad_norm_
            out.append(g * tf.minimum(coef, 1.0))
        return out
    raise ValueError(f"unknown SOLVER.CLIP_GRADIENTS.CLIP_TYPE {c.CLIP_TYPE!r}")


class DynamicLossScale(tf.Module):
    """Dynamic loss scaling for float16: halve on non-finite gradients, double after
    ``growth_interval`` finite steps (the update is skipped on non-finite gradients)."""

    def __init__(self, initial: float = 2.0 ** 15, growth_interval: int = 2000):
        super().__init__(name="loss_scale")
        self.scale = tf.Variable(initial, trainable=False, dtype=tf.float32, name="loss_scale")
        self.good_steps = tf.Variable(0, trainable=False, dtype=tf.int64, name="loss_scale_good_steps")
        self.growth_interval = growth_interval

    def update(self, finite) -> None:
        grow = tf.logical_and(finite, self.good_steps + 1 >= self.growth_interval)
        self.scale.assign(tf.where(finite, tf.where(grow, self.scale * 2.0, self.scale),
                                   tf.maximum(self.scale * 0.5, 1.0)))
        self.good_steps.assign(tf.where(finite, tf.where(grow, tf.constant(0, tf.int64),
                                                         self.good_steps + 1),
                                        tf.constant(0, tf.int64)))
