"""ROI heads of the C4 R-CNNs: detectron2's Res5ROIHeads (modeling/roi_heads/roi_heads.py),
batched over images like `roi_heads.StandardROIHeads`.

The box and mask heads share one per-ROI transform, the ResNet's fifth stage run on pooled
regions (ResNet paper, appendix A):

    res4 (B, H/16, W/16, C)            one feature map, MODEL.ROI_HEADS.IN_FEATURES = [res4]
      -> ROIAlignV2 R x R              ROI_BOX_HEAD.POOLER_{RESOLUTION (14), SAMPLING_RATIO, TYPE},
                                       scale 1 / stride; ROI_MASK_HEAD's pooler keys are unused
      -> res5: 3 bottleneck blocks     ``roi_heads.res5.{0,1,2}``, stride 2 in the first (in its
                                       1x1 or 3x3 conv per RESNETS.STRIDE_IN_1X1), RESNETS.NORM,
                                       widths 8x res2's (2048 out, 512 bottleneck for R50/R101)
      -> (n, R', R', 2048), R' = ceil(R / 2) = 7
      box:  mean over R' x R' -> FastRCNNOutputLayers (cls_score / bbox_pred on 2048)
      mask: MaskRCNNConvUpsampleHead on the same (n, R', R', 2048) (NUM_CONV 0 in detectron2's
            C4 configs: deconv + predictor) -> (n, 2R', 2R', K') logits: masks are 14 x 14.

Which ROIs reach the mask head (detectron2's behaviour):
- training: the foreground rows of the sampled proposals, their res5 features gathered from
  the box branch's (no second pooling: the gradient of the mask loss reaches res5 and the
  backbone through the same features);
- inference: the final detections' boxes, pooled and run through res5 again
  (forward_with_given_boxes).

Sampling, labelling and the box losses are `roi_heads.ROIHeads` / `fast_rcnn`'s; the res5
blocks are `backbone.make_stage` with detectron2's stage arguments (`build_res5_head`). Res5
is never frozen (MODEL.BACKBONE.FREEZE_AT freezes backbone stages only); with NORM FrozenBN its
norms are fixed affine maps anyway.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import tensorflow as tf

from tfmrcnn.modeling.backbone import BottleneckBlock, make_stage
from tfmrcnn.modeling.fast_rcnn import FastRCNNOutputLayers, classification_metrics
from tfmrcnn.modeling.mask_head import MaskRCNNConvUpsampleHead
from tfmrcnn.modeling.poolers import ROIPooler, aligned_for_pooler_type
from tfmrcnn.modeling.roi_heads import (ROIHeads, add_detection_masks, flatten_rois,
                                        foreground_mask_loss, foreground_rows, pool_rois,
                                        sample_count_metrics)

RES5_PREFIX = "roi_heads.res5"
RES5_CHANNEL_FACTOR = 8  # res5 is 8x as wide as res2 (detectron2's stage_channel_factor)
RES5_NUM_BLOCKS = 3  # every ResNet depth detectron2 builds has 3 blocks in res5


def build_res5_head(cfg, winograd: bool = False) -> Tuple[List[tf.Module], int]:
    """detectron2's Res5ROIHeads._build_res5_block: (blocks ``roi_heads.res5.{i}``, output
    channels) from MODEL.RESNETS (NUM_GROUPS, WIDTH_PER_GROUP, RES2_OUT_CHANNELS,
    STRIDE_IN_1X1, NORM); bottleneck blocks whatever RESNETS.DEPTH, input 4x res2's width."""
    r = cfg.MODEL.RESNETS
    out_channels = r.RES2_OUT_CHANNELS * RES5_CHANNEL_FACTOR
    blocks = make_stage(
        BottleneckBlock, RES5_NUM_BLOCKS, RES5_PREFIX, out_channels // 2, out_channels, 2,
        r.NORM, bottleneck_channels=r.NUM_GROUPS * r.WIDTH_PER_GROUP * RES5_CHANNEL_FACTOR,
        num_groups=r.NUM_GROUPS, stride_in_1x1=r.STRIDE_IN_1X1, winograd=winograd)
    return blocks, out_channels


class Res5ROIHeads(ROIHeads):
    """Pooler on one feature map, res5 shared by box predictor and mask head (module doc).

    features_list: one NHWC map [(B, H / s, W / s, C)] with C = RESNETS.RES2_OUT_CHANNELS * 4,
    `strides` = [s]. Training rows and outputs are `StandardROIHeads`' (fixed S slots per
    image, foreground in the first F); masks are (B, D, M, M) with M = 2 * ceil(R / 2).
    ``seed`` fixes the sampling (tests only); `winograd` lets res5's 3x3 convs (stride 1) use
    Winograd (see `layers.Conv2D`).
    """

    def __init__(self, cfg, in_channels: int, strides: List[int], seed: Optional[int] = None,
                 winograd: bool = False):
        super().__init__(cfg, seed=seed)
        bcfg = cfg.MODEL.ROI_BOX_HEAD
        if len(strides) != 1:
            raise ValueError("Res5ROIHeads pools one feature map: MODEL.ROI_HEADS.IN_FEATURES "
                             f"has {len(strides)}")
        self.pooler = ROIPooler(
            bcfg.POOLER_RESOLUTION, [1.0 / strides[0]], bcfg.POOLER_SAMPLING_RATIO,
            aligned=aligned_for_pooler_type(bcfg.POOLER_TYPE, "MODEL.ROI_BOX_HEAD.POOLER_TYPE"))
        self.res5, out_channels = build_res5_head(cfg, winograd)
        if in_channels != out_channels // 2:
            raise ValueError(f"Res5ROIHeads: the pooled feature has {in_channels} channels, res5 "
                             f"takes {out_channels // 2} (MODEL.RESNETS.RES2_OUT_CHANNELS * 4)")
        self.box_predictor = FastRCNNOutputLayers.from_config(cfg, out_channels)
        self.mask_on = bool(cfg.MODEL.MASK_ON)
        if self.mask_on:
            self.mask_head = MaskRCNNConvUpsampleHead(cfg, out_channels, winograd=winograd)
            # res5's stride-2 conv (1x1, or 3x3 with padding 1) maps R to ceil(R / 2)
            self.mask_size = 2 * ((bcfg.POOLER_RESOLUTION + 1) // 2)

    # ------------------------------------------------------------------ shared transform
    def _shared_roi_transform(self, features_list, boxes, indices, training: bool):
        """boxes (n, 4) of images `indices` (n,) -> res5 features (n, R', R', 2048) in the
        features' dtype (pooled in float32, see `roi_heads.pool_rois`)."""
        x = pool_rois(self.pooler, features_list, boxes, indices)  # (n, R, R, C)
        for block in self.res5:
            x = block(x, training=training)
        return x

    def _box_outputs(self, res5_features, batch_shape):
        """res5 features (B*R, R', R', 2048) -> float32 logits (B, R, K+1), deltas (B, R, 4K')."""
        # the spatial mean in float32 (49 terms), then the predictor in the features' dtype
        x = tf.reduce_mean(tf.cast(res5_features, tf.float32), axis=[1, 2])  # (B*R, 2048)
        logits, deltas = self.box_predictor(tf.cast(x, res5_features.dtype))
        b, r = batch_shape[0], batch_shape[1]
        return (tf.reshape(tf.cast(logits, tf.float32), tf.stack([b, r, -1])),
                tf.reshape(tf.cast(deltas, tf.float32), tf.stack([b, r, -1])))

    # ------------------------------------------------------------------ training
    @tf.autograph.experimental.do_not_convert
    def losses(self, features_list, proposals, proposal_valid, image_sizes, gt_boxes,
               gt_classes, gt_masks=None, crowd_boxes=None, training: bool = True,
               return_metrics: bool = False):
        """Training losses dict(loss_cls, loss_box_reg[, loss_mask]) (and metrics), arguments
        and statistics as `StandardROIHeads.losses`."""
        del image_sizes
        if crowd_boxes is None:
            crowd_boxes = tf.zeros(tf.stack([tf.shape(gt_boxes)[0], 0, 4]), tf.float32)
        samples = self.label_and_sample_proposals(proposals, proposal_valid, gt_boxes,
                                                  gt_classes, crowd_boxes)
        flat, indices = flatten_rois(samples.boxes)  # (B*S, 4), (B*S,)
        x = self._shared_roi_transform(features_list, flat, indices, training)  # (B*S, 7, 7, C)
        logits, deltas = self._box_outputs(x, tf.shape(samples.boxes))
        out = self.box_predictor.losses(logits, deltas, samples)
        if self.mask_on:
            out["loss_mask"] = self._mask_loss(x, samples, gt_masks, training)
        if return_metrics:
            metrics = {**classification_metrics(tf.stop_gradient(logits), samples),
                       **sample_count_metrics(samples)}
            return out, metrics
        return out

    def _mask_loss(self, res5_features, samples, gt_masks, training: bool):
        """Mask loss of the foreground rows on their res5 features, taken from the box
        branch's (B*S, R', R', C) rather than pooled again (detectron2 shares them)."""
        rows, weights = foreground_rows(samples, self.max_foreground)  # (N', 2), (N',)
        slots = tf.shape(samples.boxes)[1]
        x = tf.gather(res5_features, rows[:, 0] * slots + rows[:, 1])  # (N', R', R', C)
        logits = self.mask_head(x, training=training)  # (N', M, M, K')
        return foreground_mask_loss(logits, samples, rows, weights, gt_masks, self.mask_size)

    # ------------------------------------------------------------------ inference
    @tf.autograph.experimental.do_not_convert
    def inference(self, features_list, proposals, proposal_valid, image_sizes):
        """Detections as `StandardROIHeads.inference`; masks (B, D, M, M) from res5 run on the
        detected boxes (detectron2's forward_with_given_boxes)."""
        flat, indices = flatten_rois(tf.cast(proposals, tf.float32))
        x = self._shared_roi_transform(features_list, flat, indices, training=False)
        logits, deltas = self._box_outputs(x, tf.shape(proposals))
        out = self.box_predictor.inference(logits, deltas, proposals, proposal_valid, image_sizes)
        if self.mask_on:
            flat, indices = flatten_rois(out["boxes"])  # (B*D, 4)
            x = self._shared_roi_transform(features_list, flat, indices, training=False)
            out = add_detection_masks(out, self.mask_head(x, training=False), self.mask_size)
        return out
