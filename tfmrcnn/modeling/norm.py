"""Normalization layers on NHWC tensors, named like detectron2's `layers.get_norm`.

Every norm is a `tf.Module` called as ``norm(x, training)`` and owns variables named
``{prefix}.weight``, ``{prefix}.bias`` (+ ``{prefix}.running_mean``, ``{prefix}.running_var`` for
the batch norms), all (C,). Statistics are computed in float32 whatever the input dtype (mixed
precision) and the result is cast back to ``x.dtype``.

Norm variables are excluded from weight decay (detectron2's WEIGHT_DECAY_NORM = 0): every norm
module derives from `Norm`, and `is_norm_variable(v)` recognises their variables by name.
"""
from __future__ import annotations

from typing import Optional

import tensorflow as tf

from tfmrcnn import distributed
from tfmrcnn.modeling.layers import NamedModule, variable_key

EPS = 1e-5
# detectron2 builds nn.BatchNorm2d with PyTorch's momentum 0.1: moving = 0.9 moving + 0.1 batch
BN_MOMENTUM = 0.9
GN_GROUPS = 32

NORM_SUFFIXES = ("norm.weight", "norm.bias", "norm.running_mean", "norm.running_var")


def staged_mean(x, axes, keepdims: bool = False):
    """Mean of float32 `x` over `axes`, summed one axis at a time (the last axis first).

    Why: one `reduce_mean` over several axes of a feature map adds its values into one
    float32 accumulator after another, so the rounding error grows with the count. On a
    200 x 272 stem map (435,200 values per GN group) that put GN's variance 6e-4 off
    (relative) and the backbone's output 1.5e-4 off PyTorch's, which sums in a cascade;
    detections near a top-k or NMS boundary then came out differently. Summing one axis at a
    time keeps every accumulation a few hundred values long (~1e-7 relative), at the same cost.
    """
    count = tf.cast(tf.reduce_prod(tf.gather(tf.shape(x), axes)), x.dtype)
    for axis in sorted(axes, reverse=True):
        x = tf.reduce_sum(x, axis=axis, keepdims=True)
    if not keepdims:
        x = tf.squeeze(x, axis=axes)
    return x / count


def staged_moments(x, axes, keepdims: bool = False):
    """(mean, biased variance) of float32 `x` over `axes`, both by `staged_mean`; the
    variance is the mean squared deviation (two passes, no E[x^2] - E[x]^2 cancellation)."""
    mean = staged_mean(x, axes, keepdims=True)
    var = staged_mean(tf.math.squared_difference(x, tf.stop_gradient(mean)), axes,
                      keepdims=keepdims)
    if not keepdims:
        mean = tf.squeeze(mean, axis=axes)
    return mean, var


class Norm(NamedModule):
    """Base class of every normalization: its variables are never weight-decayed."""

    frozen = False

    def __init__(self, prefix: str, channels: int):
        super().__init__(prefix)
        self.channels = channels

    def fixed_affine(self):
        """float32 (C,) (scale, shift) when this norm is the fixed map y = x * scale + shift,
        which a conv folds into its weights (`layers.Conv2D`); None when the output depends on
        statistics of the input (BN in training, GN) or on a switch (BN's test statistics)."""
        return None


class FrozenBN(Norm):
    """detectron2's FrozenBatchNorm2d: fixed affine map from stored BN statistics.

    y = x * scale + shift with scale = weight / sqrt(running_var + eps) and
    shift = bias - running_mean * scale; all four tensors are non-trainable.
    """

    frozen = True

    def __init__(self, prefix: str, channels: int):
        super().__init__(prefix, channels)
        self.weight = self._param("weight", tf.ones([channels]), trainable=False)
        self.bias = self._param("bias", tf.zeros([channels]), trainable=False)
        self.running_mean = self._param("running_mean", tf.zeros([channels]), trainable=False)
        # detectron2 initialises running_var to ones - eps so a fresh FrozenBN is the identity
        self.running_var = self._param("running_var", tf.fill([channels], 1.0 - EPS),
                                       trainable=False)

    def __call__(self, x, training: bool = False):
        # x: (N, H, W, C); training is ignored, a frozen BN never uses batch statistics
        scale, shift = self.fixed_affine()
        return x * tf.cast(scale, x.dtype) + tf.cast(shift, x.dtype)

    def fixed_affine(self):
        """float32 (C,) scale and shift with y = x * scale + shift (also folded into convs)."""
        scale = self.weight * tf.math.rsqrt(self.running_var + EPS)
        return scale, self.bias - self.running_mean * scale


class BatchNorm(Norm):
    """PyTorch's BatchNorm2d (detectron2 "BN"): batch statistics in training, moving ones at test.

    The moving variance is updated with the unbiased batch variance (n / (n - 1)), as PyTorch
    does; normalisation uses the biased one.

    ``test_batch_statistics`` (set by `use_batch_statistics_at_test`, a diagnostic) makes the
    test-time call normalise with the statistics of the batch it is given, like training, but
    without touching the moving averages: it shows how much a model loses because its moving
    averages do not stand in for the batch statistics it was trained with.
    """

    test_batch_statistics = False

    def __init__(self, prefix: str, channels: int, trainable: bool = True):
        super().__init__(prefix, channels)
        self.weight = self._param("weight", tf.ones([channels]), trainable=trainable)
        self.bias = self._param("bias", tf.zeros([channels]), trainable=trainable)
        self.running_mean = self._param("running_mean", tf.zeros([channels]), trainable=False)
        self.running_var = self._param("running_var", tf.ones([channels]), trainable=False)

    def _batch_moments(self, x):
        """Per-channel (mean, biased var, var used for the moving update) of x (N, H, W, C)."""
        mean, var = staged_moments(x, axes=[0, 1, 2])
        n = tf.cast(tf.reduce_prod(tf.shape(x)[:3]), tf.float32)
        return mean, var, var * n / tf.maximum(n - 1.0, 1.0)

    def __call__(self, x, training: bool = False):
        # x: (N, H, W, C)
        dtype = x.dtype
        x = tf.cast(x, tf.float32)
        if training:
            mean, var, moving_var = self._batch_moments(x)
            m = BN_MOMENTUM
            self.running_mean.assign(m * self.running_mean + (1.0 - m) * tf.stop_gradient(mean))
            self.running_var.assign(m * self.running_var + (1.0 - m) * tf.stop_gradient(moving_var))
        elif self.test_batch_statistics:
            # this rank's batch only (BatchNorm's, also for SyncBN: no collective at test time)
            mean, var, _ = BatchNorm._batch_moments(self, x)
        else:
            mean, var = self.running_mean, self.running_var
        y = tf.nn.batch_normalization(x, mean, var, self.bias, self.weight, EPS)
        return tf.cast(y, dtype)


class SyncBatchNorm(BatchNorm):
    """detectron2's NaiveSyncBatchNorm on Horovod: statistics averaged over all ranks.

    Each rank computes the per-channel mean and mean of squares of its own batch; these are
    averaged over the ranks with `hvd.allreduce` with EQUAL weight per rank (detectron2's default
    stats_mode "", exact when every rank holds the same number of pixels, i.e. same batch and
    padded size). var = E[x^2] - E[x]^2 (biased), which also updates the moving variance, as
    NaiveSyncBatchNorm does. Gradients flow through the allreduce. Without Horovod, or with a
    single rank, this is exactly `BatchNorm`. Whether Horovod is active is decided when traced.
    """

    def _batch_moments(self, x):
        hvd = distributed.horovod_if_distributed()
        if hvd is None:
            return super()._batch_moments(x)
        mean = staged_mean(x, axes=[0, 1, 2])  # (C,)
        meansqr = staged_mean(tf.square(x), axes=[0, 1, 2])  # (C,)
        both = hvd.allreduce(tf.concat([mean, meansqr], 0), op=hvd.Average)  # (2C,)
        mean, meansqr = both[: self.channels], both[self.channels:]
        var = tf.nn.relu(meansqr - tf.square(mean))
        return mean, var, var


class GroupNorm(Norm):
    """torch.nn.GroupNorm(32, C): statistics over H, W and the C/32 channels of each group."""

    def __init__(self, prefix: str, channels: int, num_groups: int = GN_GROUPS,
                 trainable: bool = True):
        super().__init__(prefix, channels)
        if channels % num_groups:
            raise ValueError(f"GN: {channels} channels not divisible by {num_groups} groups")
        self.num_groups = num_groups
        self.weight = self._param("weight", tf.ones([channels]), trainable=trainable)
        self.bias = self._param("bias", tf.zeros([channels]), trainable=trainable)

    def __call__(self, x, training: bool = False):
        # x: (N, H, W, C)
        dtype = x.dtype
        shape = tf.shape(x)
        g = self.num_groups
        xg = tf.reshape(tf.cast(x, tf.float32),
                        tf.stack([shape[0], shape[1], shape[2], g, self.channels // g]))
        mean, var = staged_moments(xg, axes=[1, 2, 4], keepdims=True)  # (N, 1, 1, G, 1)
        xg = (xg - mean) * tf.math.rsqrt(var + EPS)
        y = tf.reshape(xg, shape) * self.weight + self.bias
        return tf.cast(y, dtype)


_BATCH_NORMS = {"BN": BatchNorm, "SyncBN": SyncBatchNorm, "nnSyncBN": SyncBatchNorm,
                "naiveSyncBN": SyncBatchNorm}


def is_sync_norm(kind: Optional[str]) -> bool:
    """True for the detectron2 norm names that average statistics over ranks (SyncBN)."""
    return _BATCH_NORMS.get(kind) is SyncBatchNorm


def uses_sync_bn(cfg) -> bool:
    """True when any norm of the config averages statistics over ranks (SyncBN); Horovod is
    then started for it (`tfmrcnn.distributed.init_horovod(sync_bn=...)`)."""
    m = cfg.MODEL
    norms = (m.RESNETS.NORM, m.FPN.NORM, m.ROI_BOX_HEAD.NORM, m.ROI_MASK_HEAD.NORM)
    return any(is_sync_norm(n) for n in norms)


def get_norm(kind: Optional[str], channels: int, prefix: str,
             frozen: bool = False) -> Optional[Norm]:
    """The norm called `kind` (detectron2's names), or None for "" / None.

    `frozen` mirrors detectron2's freezing of a stage: batch norms become FrozenBN
    (FrozenBatchNorm2d.convert_frozen_batchnorm), GN keeps its type with non-trainable variables.
    """
    if not kind:
        return None
    if kind == "FrozenBN" or (frozen and kind in _BATCH_NORMS):
        return FrozenBN(prefix, channels)
    if kind in _BATCH_NORMS:
        return _BATCH_NORMS[kind](prefix, channels)
    if kind == "GN":
        return GroupNorm(prefix, channels, trainable=not frozen)
    raise ValueError(f"unknown norm {kind!r}")


def use_batch_statistics_at_test(module: tf.Module, enabled: bool = True) -> int:
    """Make every (Sync)BatchNorm of `module` use batch statistics at test time (see
    `BatchNorm`); returns how many layers were switched. Call before tracing inference."""
    layers = [m for m in module.submodules if isinstance(m, BatchNorm)]
    for m in layers:
        m.test_batch_statistics = bool(enabled)
    return len(layers)


def is_norm_variable(v: tf.Variable) -> bool:
    """True for the variables of a norm layer (excluded from weight decay)."""
    return variable_key(v).endswith(NORM_SUFFIXES)


def norm_variables(module: tf.Module):
    """All variables owned by `Norm` submodules of `module` (each once)."""
    seen, out = set(), []
    for m in module.submodules:
        if isinstance(m, Norm):
            for v in m.variables:
                if id(v) not in seen:
                    seen.add(id(v))
                    out.append(v)
    return out
