"""Feature Pyramid Network on top of the ResNet, as detectron2's `build_resnet_fpn_backbone`.

Variables: ``backbone.fpn_lateral{2..5}`` (1x1) and ``backbone.fpn_output{2..5}`` (3x3), with a
bias when MODEL.FPN.NORM is "" and a norm otherwise, c2_xavier_fill init; the ResNet lives under
``backbone.bottom_up``.

The top-down path upsamples by exactly 2 (nearest), so every level must be exactly twice the next
coarser one: the data pipeline pads images to a multiple of 32 (SIZE_DIVISIBILITY), which
guarantees it. Nothing checks it here (no graph assertion in the hot path).
"""
from __future__ import annotations

import math
from typing import Dict, List

import tensorflow as tf

from tfmrcnn.modeling.backbone import ResNet, build_resnet_backbone
from tfmrcnn.modeling.layers import Conv2D
from tfmrcnn.modeling.norm import get_norm


def upsample_nearest_2x(x):
    """F.interpolate(scale_factor=2, mode="nearest") on NHWC: every pixel becomes a 2x2 block."""
    # x: (N, H, W, C) -> (N, 2H, 2W, C)
    shape = tf.shape(x)
    x = tf.tile(x[:, :, None, :, None, :], [1, 1, 2, 1, 2, 1])  # (N, H, 2, W, 2, C)
    return tf.reshape(x, tf.stack([shape[0], 2 * shape[1], 2 * shape[2], shape[3]]))


def last_level_max_pool(x):
    """detectron2's LastLevelMaxPool: max_pool2d(kernel 1, stride 2) = keep every other pixel."""
    # x: (N, H, W, C) -> (N, ceil(H / 2), ceil(W / 2), C)
    return x[:, ::2, ::2, :]


class FPN(tf.Module):
    """ResNet features res2..res5 -> {p2..p5, p6}, strides 4..64, `out_channels` each.

    Output feature names and strides follow detectron2: p{log2(stride)}; P6 is a max-pool of P5.
    `winograd` lets the 3x3 output convs use Winograd (see `layers.Conv2D`).
    """

    def __init__(self, bottom_up: ResNet, in_features: List[str], out_channels: int = 256,
                 norm: str = "", fuse_type: str = "sum", prefix: str = "backbone",
                 winograd: bool = False):
        super().__init__()
        if fuse_type not in ("sum", "avg"):
            raise ValueError(f"FPN.FUSE_TYPE {fuse_type!r} not in ('sum', 'avg')")
        self.bottom_up = bottom_up
        self.in_features = list(in_features)
        self.fuse_type = fuse_type
        strides = [bottom_up.strides[f] for f in self.in_features]
        self.stages = [int(math.log2(s)) for s in strides]
        self.lateral_convs, self.output_convs = [], []
        for f, stage in zip(self.in_features, self.stages):
            cin = bottom_up.out_channels[f]
            lat, out = f"{prefix}.fpn_lateral{stage}", f"{prefix}.fpn_output{stage}"
            self.lateral_convs.append(Conv2D(
                lat, cin, out_channels, 1, use_bias=not norm,
                norm=get_norm(norm, out_channels, f"{lat}.norm"), init="xavier"))
            self.output_convs.append(Conv2D(
                out, out_channels, out_channels, 3, use_bias=not norm,
                norm=get_norm(norm, out_channels, f"{out}.norm"), init="xavier",
                winograd=winograd))
        self.output_names = [f"p{s}" for s in self.stages] + [f"p{self.stages[-1] + 1}"]
        self.strides = {name: 2 ** int(name[1:]) for name in self.output_names}
        self.out_channels = out_channels

    def __call__(self, x, training: bool = False) -> Dict[str, tf.Tensor]:
        # x: (N, H, W, 3) normalised image, H and W multiples of 32
        bottom_up = self.bottom_up(x, training=training)
        feats = [bottom_up[f] for f in self.in_features]  # fine to coarse
        prev = self.lateral_convs[-1](feats[-1], training=training)
        results = [self.output_convs[-1](prev, training=training)]
        for feat, lateral_conv, output_conv in zip(
                feats[-2::-1], self.lateral_convs[-2::-1], self.output_convs[-2::-1]):
            # add_n: fused into the lateral conv's epilogue (see _ResidualBlock.__call__)
            prev = tf.add_n([lateral_conv(feat, training=training), upsample_nearest_2x(prev)])
            if self.fuse_type == "avg":
                prev = prev / 2.0
            results.insert(0, output_conv(prev, training=training))
        results.append(last_level_max_pool(results[-1]))
        return dict(zip(self.output_names, results))


def build_resnet_fpn_backbone(cfg, winograd: bool = False) -> FPN:
    """ResNet + FPN from cfg.MODEL.RESNETS / cfg.MODEL.FPN (detectron2 keys)."""
    bottom_up = build_resnet_backbone(cfg, prefix="backbone.bottom_up", winograd=winograd)
    f = cfg.MODEL.FPN
    return FPN(bottom_up, f.IN_FEATURES, out_channels=f.OUT_CHANNELS, norm=f.NORM,
               fuse_type=f.FUSE_TYPE, prefix="backbone", winograd=winograd)
