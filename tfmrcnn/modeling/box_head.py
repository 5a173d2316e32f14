"""Box head of the ROI heads: detectron2's FastRCNNConvFCHead (modeling/roi_heads/box_head.py).

Convention: pooled ROI features are NHWC. The first fc takes the NHWC flatten of (7, 7, C);
detectron2 flattens NCHW (C, 7, 7), so the checkpoint converter permutes the rows of the first
fc (or of the box predictor's layers without fcs) read from detectron2.
"""
from __future__ import annotations

from typing import Sequence

import tensorflow as tf

from tfmrcnn.modeling.layers import Conv2D, Linear
from tfmrcnn.modeling.norm import get_norm


class FastRCNNConvFCHead(tf.Module):
    """len(conv_dims) x (conv 3x3 [+ norm] + ReLU), then len(fc_dims) x (fc + ReLU).

    Covers detectron2's box heads by configuration: "2fc" (no conv, fc_dims [1024, 1024]) and
    "4conv1fc" (conv_dims [256] * 4, fc_dims [1024], conv_norm "GN"). Convs use c2_msra_fill
    and have no bias with a norm; fcs use c2_xavier_fill. Variables are ``{prefix}.conv{i}``
    and ``{prefix}.fc{i}`` (i from 1); `prefix` is ``roi_heads.box_head`` (a cascade stage s
    would use ``roi_heads.box_head.{s}``). The output is (R, output_dim), flattened even
    without fcs. `winograd` lets the 3x3 convs use Winograd (see `layers.Conv2D`).
    """

    def __init__(self, in_channels: int, resolution: int, conv_dims: Sequence[int] = (),
                 fc_dims: Sequence[int] = (1024, 1024), conv_norm: str = "",
                 prefix: str = "roi_heads.box_head", winograd: bool = False):
        super().__init__(name="box_head")
        self.convs, self.fcs = [], []
        c = in_channels
        for i, dim in enumerate(conv_dims):
            name = f"{prefix}.conv{i + 1}"
            self.convs.append(Conv2D(name, c, dim, 3, use_bias=not conv_norm,
                                     norm=get_norm(conv_norm, dim, f"{name}.norm"),
                                     activation=tf.nn.relu, init="msra", winograd=winograd))
            c = dim
        dim = c * resolution * resolution
        for i, fc_dim in enumerate(fc_dims):
            self.fcs.append(Linear(f"{prefix}.fc{i + 1}", dim, fc_dim, activation=tf.nn.relu,
                                   init="xavier"))
            dim = fc_dim
        self.output_dim = dim

    @classmethod
    def from_config(cls, cfg, in_channels: int, resolution: int, winograd: bool = False,
                    prefix: str = "roi_heads.box_head") -> "FastRCNNConvFCHead":
        """The head of MODEL.ROI_BOX_HEAD: NUM_CONV x CONV_DIM convs with NORM, NUM_FC x FC_DIM."""
        bcfg = cfg.MODEL.ROI_BOX_HEAD
        return cls(in_channels, resolution, conv_dims=[bcfg.CONV_DIM] * bcfg.NUM_CONV,
                   fc_dims=[bcfg.FC_DIM] * bcfg.NUM_FC, conv_norm=bcfg.NORM, prefix=prefix,
                   winograd=winograd)

    def __call__(self, x, training: bool = False):
        # x: (R, 7, 7, C) -> (R, output_dim)
        for conv in self.convs:
            x = conv(x, training=training)
        x = tf.reshape(x, [tf.shape(x)[0], -1])  # NHWC flatten, see the module docstring
        for fc in self.fcs:
            x = fc(x)
        return x
