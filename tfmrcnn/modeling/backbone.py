"""ResNet bottom-up network, as detectron2's `build_resnet_backbone` (NHWC).

Variables are named ``{prefix}.stem.conv1.weight``, ``{prefix}.res2.0.conv1.weight``,
``{prefix}.res2.0.shortcut.weight``, ``....norm.*`` with prefix ``backbone.bottom_up`` inside the
FPN. Convolutions carry no bias when they have a norm and are initialised with c2_msra_fill.

Freezing (MODEL.BACKBONE.FREEZE_AT = k): the stem (k >= 1) and stages res2..res{k} are frozen,
i.e. their variables are created with trainable=False and their batch norms are FrozenBN (what
detectron2's `freeze()` + `convert_frozen_batchnorm` do). Stages after the last OUT_FEATURES
entry are not built, as in detectron2.
"""
from __future__ import annotations

from typing import Dict, List, Sequence

import tensorflow as tf

from tfmrcnn.modeling.layers import Conv2D
from tfmrcnn.modeling.norm import get_norm

# ResNet depth -> blocks per stage res2..res5
NUM_BLOCKS = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3],
              152: [3, 8, 36, 3]}


class _Conv(Conv2D):
    """Conv2D whose variables are optionally created non-trainable (a frozen stage)."""

    def __init__(self, *args, trainable: bool = True, **kwargs):
        self._trainable = trainable
        super().__init__(*args, **kwargs)

    def _param(self, suffix, initial_value, trainable=True):
        return super()._param(suffix, initial_value, trainable=trainable and self._trainable)


def conv_norm(prefix: str, cin: int, cout: int, k: int, stride: int = 1, norm: str = "",
              frozen: bool = False, groups: int = 1, dilation: int = 1, relu: bool = False,
              winograd: bool = False):
    """A detectron2 `Conv2d(bias=not norm, norm=get_norm(norm))` named `prefix`, msra init
    (`winograd`, `groups`: see `layers.Conv2D`; a grouped weight is (k, k, cin / groups, cout)).
    """
    return _Conv(prefix, cin, cout, k, stride=stride, use_bias=not norm,
                 norm=get_norm(norm, cout, f"{prefix}.norm", frozen=frozen),
                 activation=tf.nn.relu if relu else None, init="msra", dilation=dilation,
                 trainable=not frozen, winograd=winograd, groups=groups)


def max_pool_3x3_s2_p1(x):
    """PyTorch's MaxPool2d(3, stride=2, padding=1): padding never wins the max (-inf)."""
    # x: (N, H, W, C) -> (N, floor((H - 1) / 2) + 1, floor((W - 1) / 2) + 1, C)
    x = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]], constant_values=float("-inf"))
    return tf.nn.max_pool2d(x, ksize=3, strides=2, padding="VALID")


class BasicStem(tf.Module):
    """7x7/2 conv (no bias) + norm + ReLU, then 3x3/2 max-pool: stride 4."""

    def __init__(self, prefix: str, in_channels: int, out_channels: int, norm: str,
                 frozen: bool):
        super().__init__()
        self.conv1 = conv_norm(f"{prefix}.conv1", in_channels, out_channels, 7, stride=2,
                               norm=norm, frozen=frozen, relu=True)

    def __call__(self, x, training: bool = False):
        return max_pool_3x3_s2_p1(self.conv1(x, training=training))


class _ResidualBlock(tf.Module):
    """A residual branch plus an identity or 1x1 projection shortcut, ReLU after the sum."""

    def _make_shortcut(self, prefix, cin, cout, stride, norm, frozen):
        # detectron2 projects when channels change; a stride change without a channel change
        # never happens in its ResNets but would need the projection too
        if cin != cout or stride != 1:
            return conv_norm(f"{prefix}.shortcut", cin, cout, 1, stride=stride, norm=norm,
                             frozen=frozen)
        return None

    def _branch(self, x, training):
        raise NotImplementedError

    def __call__(self, x, training: bool = False):
        short = x if self.shortcut is None else self.shortcut(x, training=training)
        # add_n, not +: TF's CPU remapper fuses Conv2D+BiasAdd+AddN+Relu into one oneDNN
        # conv (the shortcut summed in its epilogue), but an AddV2 only when it can prove both
        # shapes equal, which it cannot with our dynamic image sizes. -5 % fp32 inference
        # (paired A/B, NOTES.md "Applied optimisations"); same values.
        return tf.nn.relu(tf.add_n([self._branch(x, training), short]))


class BasicBlock(_ResidualBlock):
    """ResNet-18/34 block: 3x3 (stride) -> 3x3."""

    def __init__(self, prefix, in_channels, out_channels, stride, norm, frozen,
                 winograd=False, **unused):
        super().__init__()
        self.shortcut = self._make_shortcut(prefix, in_channels, out_channels, stride, norm,
                                            frozen)
        self.conv1 = conv_norm(f"{prefix}.conv1", in_channels, out_channels, 3, stride=stride,
                               norm=norm, frozen=frozen, relu=True, winograd=winograd)
        self.conv2 = conv_norm(f"{prefix}.conv2", out_channels, out_channels, 3, norm=norm,
                               frozen=frozen, winograd=winograd)

    def _branch(self, x, training):
        return self.conv2(self.conv1(x, training=training), training=training)


class BottleneckBlock(_ResidualBlock):
    """ResNet-50+ block: 1x1 -> 3x3 (groups, dilation) -> 1x1.

    STRIDE_IN_1X1 = True (MSRA/Caffe2 weights) puts the stride in the first 1x1, else in the 3x3.
    """

    def __init__(self, prefix, in_channels, out_channels, stride, norm, frozen,
                 bottleneck_channels, num_groups=1, stride_in_1x1=True, dilation=1,
                 winograd=False):
        super().__init__()
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.shortcut = self._make_shortcut(prefix, in_channels, out_channels, stride, norm,
                                            frozen)
        self.conv1 = conv_norm(f"{prefix}.conv1", in_channels, bottleneck_channels, 1,
                               stride=s1, norm=norm, frozen=frozen, relu=True)
        self.conv2 = conv_norm(f"{prefix}.conv2", bottleneck_channels, bottleneck_channels, 3,
                               stride=s3, norm=norm, frozen=frozen, groups=num_groups,
                               dilation=dilation, relu=True, winograd=winograd)
        self.conv3 = conv_norm(f"{prefix}.conv3", bottleneck_channels, out_channels, 1,
                               norm=norm, frozen=frozen)

    def _branch(self, x, training):
        for conv in (self.conv1, self.conv2, self.conv3):
            x = conv(x, training=training)
        return x


def make_stage(block_class, num_blocks: int, prefix: str, in_channels: int,
               out_channels: int, first_stride: int, norm: str, frozen: bool = False,
               **block_kwargs) -> List[tf.Module]:
    """detectron2's ResNet.make_stage: blocks ``{prefix}.{i}``, the first taking `in_channels`
    with stride `first_stride`, the others `out_channels` with stride 1. Used by `ResNet` and
    by the res5 head of Res5ROIHeads (``roi_heads.res5``); `block_kwargs` go to every block."""
    return [block_class(f"{prefix}.{i}", in_channels if i == 0 else out_channels, out_channels,
                        first_stride if i == 0 else 1, norm, frozen=frozen, **block_kwargs)
            for i in range(num_blocks)]


class ResNet(tf.Module):
    """Stem + stages res2..res5; returns {name: (N, H / stride, W / stride, C)} for out_features.

    Strides: res2 4, res3 8, res4 16, res5 32 (16 with res5_dilation 2). `winograd` lets the
    blocks' 3x3 convs use Winograd (see `layers.Conv2D`).
    """

    def __init__(self, depth: int = 50,
                 out_features: Sequence[str] = ("res2", "res3", "res4", "res5"),
                 norm: str = "FrozenBN", freeze_at: int = 2, num_groups: int = 1,
                 width_per_group: int = 64, stride_in_1x1: bool = True,
                 res2_out_channels: int = 256, stem_out_channels: int = 64,
                 res5_dilation: int = 1, in_channels: int = 3,
                 prefix: str = "backbone.bottom_up", winograd: bool = False):
        super().__init__()
        if depth not in NUM_BLOCKS:
            raise ValueError(f"ResNet depth {depth} not in {sorted(NUM_BLOCKS)}")
        if res5_dilation not in (1, 2):
            raise ValueError("RES5_DILATION must be 1 or 2")
        if depth < 50 and (res5_dilation != 1 or num_groups != 1):
            # detectron2's rule: BasicBlock has neither (it would ignore them silently)
            raise ValueError(f"ResNet-{depth} (basic blocks) needs MODEL.RESNETS.RES5_DILATION "
                             f"1 and NUM_GROUPS 1, got {res5_dilation} and {num_groups}")
        self.out_features = list(out_features)
        self.stem = BasicStem(f"{prefix}.stem", in_channels, stem_out_channels, norm,
                              frozen=freeze_at >= 1)
        block_class = BottleneckBlock if depth >= 50 else BasicBlock
        last_stage = max(int(f[3:]) for f in self.out_features)

        self.stage_names: List[str] = []
        self.stages: List[List[tf.Module]] = []
        self.out_channels: Dict[str, int] = {}
        self.strides: Dict[str, int] = {}
        cin, cout = stem_out_channels, res2_out_channels
        bottleneck = num_groups * width_per_group
        stride = 4
        for stage, n in zip(range(2, last_stage + 1), NUM_BLOCKS[depth]):
            dilation = res5_dilation if stage == 5 else 1
            first_stride = 1 if stage == 2 or dilation == 2 else 2
            stride *= first_stride
            name = f"res{stage}"
            blocks = make_stage(block_class, n, f"{prefix}.{name}", cin, cout, first_stride,
                                norm, frozen=freeze_at >= stage, bottleneck_channels=bottleneck,
                                num_groups=num_groups, stride_in_1x1=stride_in_1x1,
                                dilation=dilation, winograd=winograd)
            cin = cout
            self.stage_names.append(name)
            self.stages.append(blocks)
            self.out_channels[name] = cout
            self.strides[name] = stride
            cout *= 2
            bottleneck *= 2

    def __call__(self, x, training: bool = False) -> Dict[str, tf.Tensor]:
        # x: (N, H, W, 3) normalised image
        outputs = {}
        x = self.stem(x, training=training)  # (N, H/4, W/4, C)
        for name, blocks in zip(self.stage_names, self.stages):
            for block in blocks:
                x = block(x, training=training)
            if name in self.out_features:
                outputs[name] = x
        return outputs


def build_resnet_backbone(cfg, prefix: str = "backbone.bottom_up",
                          winograd: bool = False) -> ResNet:
    """ResNet from cfg.MODEL.RESNETS / cfg.MODEL.BACKBONE.FREEZE_AT (detectron2 keys)."""
    r = cfg.MODEL.RESNETS
    return ResNet(depth=r.DEPTH, out_features=r.OUT_FEATURES, norm=r.NORM,
                  freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT, num_groups=r.NUM_GROUPS,
                  width_per_group=r.WIDTH_PER_GROUP, stride_in_1x1=r.STRIDE_IN_1X1,
                  res2_out_channels=r.RES2_OUT_CHANNELS,
                  stem_out_channels=r.STEM_OUT_CHANNELS, res5_dilation=r.RES5_DILATION,
                  in_channels=len(cfg.MODEL.PIXEL_MEAN), prefix=prefix, winograd=winograd)
