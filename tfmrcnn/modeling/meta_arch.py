"""GeneralizedRCNN: the whole Mask R-CNN, read top to bottom.

    images (B, Hp, Wp, 3) BGR 0..255, zero-padded bottom/right to a multiple of 32
      -> normalize: (images - PIXEL_MEAN) / PIXEL_STD, padding set back to 0 (detectron2 pads
         the normalized image with zeros)
      -> backbone (BACKBONE.NAME): ResNet bottom-up res2..res5 -> FPN p2..p6, or the ResNet
         alone up to the last of RESNETS.OUT_FEATURES (C4: res4)
      -> RPN on RPN.IN_FEATURES: proposals (B, P, 4) + objectness, losses in training
      -> ROI heads (ROI_HEADS.NAME) on ROI_HEADS.IN_FEATURES: box head/predictor (+ mask
         head); Res5ROIHeads runs res5 on the pooled regions for both
      -> losses (training) or detections (inference), see NOTES.md for both formats.

Mixed precision: with SOLVER.AMP.ENABLED the training forward runs backbone, FPN and heads in
TRAINER.AMP_DTYPE (layers cast their float32 weights to the input's dtype; norms compute their
statistics in float32); the RPN and ROI heads cast their outputs to float32, so anchors, box
decoding, proposals, sampling and losses stay float32. TEST.BF16_INFERENCE does the same for
inference in bfloat16. Variables are always float32. The ROI heads pool in float32 (the
RoiAlign kernels are float32-only) and cast the pooled features back, so the box and mask heads
run in the low dtype too; their logits and deltas are cast to float32.
"""
from __future__ import annotations

from typing import Dict, List

import tensorflow as tf

from tfmrcnn.modeling.backbone import build_resnet_backbone
from tfmrcnn.modeling.cascade_rcnn import CascadeROIHeads
from tfmrcnn.modeling.fpn import build_resnet_fpn_backbone
from tfmrcnn.modeling.layers import named_variables
from tfmrcnn.modeling.norm import norm_variables
from tfmrcnn.modeling.res5_roi_heads import Res5ROIHeads
from tfmrcnn.modeling.roi_heads import StandardROIHeads
from tfmrcnn.modeling.rpn import RPN

# MODEL.ROI_HEADS.NAME -> class built as cls(cfg, in_channels, strides of IN_FEATURES, winograd=)
ROI_HEADS = {"StandardROIHeads": StandardROIHeads, "CascadeROIHeads": CascadeROIHeads,
             "Res5ROIHeads": Res5ROIHeads}

# MODEL.BACKBONE.NAME -> builder(cfg, winograd=) of a module with `strides` {feature: stride}
# and `out_channels` (an int: every feature, or {feature: channels}). detectron2's names: the
# FPN holds the ResNet as backbone.bottom_up, the plain ResNet (C4, DC5) is backbone itself.
BACKBONES = {
    "build_resnet_fpn_backbone": build_resnet_fpn_backbone,
    "build_resnet_backbone": lambda cfg, winograd: build_resnet_backbone(
        cfg, prefix="backbone", winograd=winograd),
}


def feature_channels(backbone, names: List[str], key: str) -> int:
    """The channel count shared by the backbone features `names` (config key `key`)."""
    per_feature = backbone.out_channels
    channels = {per_feature if isinstance(per_feature, int) else per_feature[n] for n in names}
    if len(channels) != 1:
        raise ValueError(f"{key} {names}: the features differ in width ({sorted(channels)})")
    return channels.pop()


def _check_supported(cfg):
    m = cfg.MODEL
    unsupported = {
        "MODEL.META_ARCHITECTURE": (m.META_ARCHITECTURE, "GeneralizedRCNN"),
        "MODEL.PROPOSAL_GENERATOR.NAME": (m.PROPOSAL_GENERATOR.NAME, "RPN"),
        "MODEL.KEYPOINT_ON": (m.KEYPOINT_ON, False),
        "MODEL.LOAD_PROPOSALS": (m.LOAD_PROPOSALS, False),
    }
    for key, (value, supported) in unsupported.items():
        if value != supported:
            raise NotImplementedError(f"{key} = {value!r}: only {supported!r} is implemented")
    if m.BACKBONE.NAME not in BACKBONES:
        raise NotImplementedError(f"MODEL.BACKBONE.NAME = {m.BACKBONE.NAME!r}: implemented are "
                                  + ", ".join(map(repr, BACKBONES)))
    if m.ROI_HEADS.NAME not in ROI_HEADS:
        raise NotImplementedError(f"MODEL.ROI_HEADS.NAME = {m.ROI_HEADS.NAME!r}: implemented are "
                                  + ", ".join(map(repr, ROI_HEADS)))


def use_winograd(cfg) -> bool:
    """MODEL.WINOGRAD on a host where TF sees no GPU: the Winograd tile transforms are CPU
    ops, and cuDNN picks its own algorithm on GPUs."""
    return bool(cfg.MODEL.WINOGRAD) and not tf.config.list_logical_devices("GPU")


def _compute_dtype(enabled: bool, name: str) -> tf.DType:
    if not enabled:
        return tf.float32
    dtype = tf.dtypes.as_dtype(name)
    if dtype not in (tf.float16, tf.bfloat16):
        raise ValueError(f"mixed precision dtype must be float16 or bfloat16, got {name!r}")
    return dtype


class GeneralizedRCNN(tf.Module):
    """Mask R-CNN (Faster R-CNN with MODEL.MASK_ON False), ResNet-FPN or C4.

    Submodules carry detectron2's names: `backbone` (bottom_up + fpn_*, or the ResNet itself:
    stem, res2..), `proposal_generator`, `roi_heads`; every variable is named by its
    detectron2 state-dict key. Whether the 3x3
    convs use Winograd is decided once here (`use_winograd`) and passed to every builder; a
    model without it (e.g. a SavedModel for GPUs) is built from a config with
    MODEL.WINOGRAD False.
    """

    def __init__(self, cfg):
        super().__init__(name=None)
        _check_supported(cfg)
        self.mask_on = bool(cfg.MODEL.MASK_ON)
        self.pixel_mean = tuple(float(v) for v in cfg.MODEL.PIXEL_MEAN)
        self.pixel_std = tuple(float(v) for v in cfg.MODEL.PIXEL_STD)
        self.train_dtype = _compute_dtype(cfg.SOLVER.AMP.ENABLED, cfg.TRAINER.AMP_DTYPE)
        self.test_dtype = _compute_dtype(cfg.TEST.BF16_INFERENCE, "bfloat16")

        self.winograd = use_winograd(cfg)
        self.backbone = BACKBONES[cfg.MODEL.BACKBONE.NAME](cfg, winograd=self.winograd)
        self.rpn_in_features: List[str] = list(cfg.MODEL.RPN.IN_FEATURES)
        self.roi_in_features: List[str] = list(cfg.MODEL.ROI_HEADS.IN_FEATURES)
        strides = self.backbone.strides
        for key, names in (("MODEL.RPN.IN_FEATURES", self.rpn_in_features),
                           ("MODEL.ROI_HEADS.IN_FEATURES", self.roi_in_features)):
            unknown = [n for n in names if n not in strides]
            if unknown:
                raise ValueError(f"{key} {names}: {unknown} not among the backbone's outputs "
                                 f"{sorted(strides)} (MODEL.BACKBONE.NAME "
                                 f"{cfg.MODEL.BACKBONE.NAME!r})")
        self.proposal_generator = RPN(
            cfg, feature_channels(self.backbone, self.rpn_in_features, "MODEL.RPN.IN_FEATURES"),
            [strides[f] for f in self.rpn_in_features], winograd=self.winograd)
        self.roi_heads = ROI_HEADS[cfg.MODEL.ROI_HEADS.NAME](
            cfg, feature_channels(self.backbone, self.roi_in_features,
                                  "MODEL.ROI_HEADS.IN_FEATURES"),
            [strides[f] for f in self.roi_in_features], winograd=self.winograd)

    # ------------------------------------------------------------------ data flow
    def normalize(self, images, image_sizes, dtype=tf.float32):
        """(images - PIXEL_MEAN) / PIXEL_STD with the padding (beyond image_sizes) zeroed."""
        # images: (B, Hp, Wp, 3) BGR 0..255; image_sizes: (B, 2) int32 (h, w)
        x = (tf.cast(images, tf.float32) - self.pixel_mean) / self.pixel_std
        shape = tf.shape(x)
        sizes = tf.cast(image_sizes, tf.int32)
        rows = tf.range(shape[1])[None, :] < sizes[:, 0:1]  # (B, Hp)
        cols = tf.range(shape[2])[None, :] < sizes[:, 1:2]  # (B, Wp)
        inside = rows[:, :, None, None] & cols[:, None, :, None]  # (B, Hp, Wp, 1)
        return tf.cast(tf.where(inside, x, 0.0), dtype)

    def features(self, images, image_sizes, training: bool, dtype) -> Dict[str, tf.Tensor]:
        """Normalized image -> backbone features {name: (B, Hp / s, Wp / s, C)} in `dtype`
        (FPN: p2..p6; C4: res4)."""
        return self.backbone(self.normalize(images, image_sizes, dtype), training=training)

    def _roi_features(self, features) -> List[tf.Tensor]:
        # in their own dtype: the ROI heads pool in float32 and run the heads in this dtype
        return [features[f] for f in self.roi_in_features]

    def compute_losses(self, batch: Dict[str, tf.Tensor], training: bool = True,
                       return_metrics: bool = False):
        """Training batch (NOTES.md format) -> {loss name: float32 scalar}; with
        `return_metrics`, (losses, metrics): detectron2's training statistics (fast_rcnn/*,
        roi_head/*), float32 scalars to log, never to optimise.

        `training` selects batch statistics in BN/SyncBN layers; the RPN and ROI heads always
        run their training path (target assignment, sampling, train-time top-k).
        """
        image_sizes = tf.cast(batch["image_sizes"], tf.int32)  # (B, 2)
        gt_boxes = tf.cast(batch["gt_boxes"], tf.float32)  # (B, G, 4)
        gt_classes = tf.cast(batch["gt_classes"], tf.int32)  # (B, G), -1 = padding
        crowd_boxes = batch.get("crowd_boxes")  # (B, C, 4) or None
        gt_masks = batch.get("gt_masks") if self.mask_on else None  # (B, G, Hp, Wp)

        features = self.features(batch["images"], image_sizes, training, self.train_dtype)
        proposals, _, proposal_valid, rpn_losses = self.proposal_generator(
            [features[f] for f in self.rpn_in_features], image_sizes, training=True,
            gt_boxes=gt_boxes, gt_classes=gt_classes, crowd_boxes=crowd_boxes)
        roi_losses, metrics = self.roi_heads.losses(
            self._roi_features(features), proposals, proposal_valid, image_sizes,
            gt_boxes, gt_classes, gt_masks, crowd_boxes, training=training, return_metrics=True)
        losses = {k: tf.cast(v, tf.float32) for k, v in {**rpn_losses, **roi_losses}.items()}
        if return_metrics:
            return losses, {k: tf.cast(v, tf.float32) for k, v in metrics.items()}
        return losses

    def inference(self, images, image_sizes) -> Dict[str, tf.Tensor]:
        """images (B, Hp, Wp, 3), image_sizes (B, 2) -> detections in resized-image pixels:
        boxes (B, D, 4), scores (B, D), classes (B, D), num_detections (B,)
        [, masks (B, D, 28, 28) probabilities]; rows past num_detections are padding."""
        image_sizes = tf.cast(image_sizes, tf.int32)
        features = self.features(images, image_sizes, False, self.test_dtype)
        proposals, _, proposal_valid, _ = self.proposal_generator(
            [features[f] for f in self.rpn_in_features], image_sizes, training=False)
        return self.roi_heads.inference(self._roi_features(features), proposals, proposal_valid,
                                        image_sizes)

    def make_inference_fn(self, jit_compile: bool = False):
        """`inference` as a tf.function traced once for every batch and image size."""
        # autograph=False: the model has no Python control flow on tensors, and converting
        # every function costs most of the tracing time
        signature = [tf.TensorSpec([None, None, None, 3], tf.float32, name="images"),
                     tf.TensorSpec([None, 2], tf.int32, name="image_sizes")]
        return tf.function(self.inference, input_signature=signature, autograph=False,
                           jit_compile=jit_compile)

    # ------------------------------------------------------------------ variables
    def named_variables(self) -> Dict[str, tf.Variable]:
        """{detectron2 state-dict key: variable} of the whole model."""
        return named_variables(self)

    def norm_variables(self) -> List[tf.Variable]:
        """Variables of every norm layer (weight decay WEIGHT_DECAY_NORM, 0 by default)."""
        return norm_variables(self)
