"""Cascade R-CNN's ROI heads: detectron2's CascadeROIHeads (modeling/roi_heads/cascade_rcnn.py),
batched like `roi_heads.StandardROIHeads`, whose pooler, sampling and mask head it shares.

Stages
------
N = len(ROI_BOX_CASCADE_HEAD.IOUS) stages (detectron2: IoU 0.5 / 0.6 / 0.7, box-delta weights
(10, 10, 5, 5) / (20, 20, 10, 10) / (30, 30, 15, 15)). Stage s has its own box head
``roi_heads.box_head.{s}`` and predictor ``roi_heads.box_predictor.{s}`` (class-agnostic
regression, required as in detectron2) on the one box pooler.

- Stage 0 runs on the proposals; in training on the samples of `label_and_sample_proposals`
  (GT appended, IoU >= IOUS[0] foreground, S slots per image).
- Stage s > 0 runs on the boxes stage s - 1 regressed from its own input boxes, decoded with
  stage s - 1's weights and clipped to the image, without gradient (like RPN proposals). In
  training, empty boxes are dropped and the rest labelled by stage s's matcher: foreground when
  the best IoU with a GT is >= IOUS[s] (no low-quality matches), every box used, none resampled,
  no GT appended. At test time nothing is dropped: the stages' scores stay aligned by row.
- The pooled features entering each stage's box head keep their value but get 1/N of their
  gradient (detectron2's _ScaleGradient): the heads learn from the sum of the stage losses, the
  backbone from their average, as in the original averaged-loss formulation.
- Losses ``loss_cls_stage{s}`` and ``loss_box_reg_stage{s}``, each normalised by the boxes of
  its own stage; ``loss_mask`` on stage 0's foreground samples (detectron2 trains the mask head
  on the sampled proposals, not on refined boxes).
- Inference: the softmax probabilities of the N stages averaged, the boxes of the last stage's
  regression, then fast_rcnn_inference (`FastRCNNOutputLayers.detect`); the mask head runs on
  the final detections.

Layout: every stage keeps the rows of stage 0, (B, S) in training and (B, P) at test; a
stage-s > 0 training row is `ROISamples` with valid = the row was valid before, its box is
nonempty and it is not ignored. Its slots keep stage 0's order (they are not re-sorted
foreground first): they feed the box losses only, never the mask head.

Crowd regions (tfmrcnn keeps them as ignore regions, see NOTES.md; detectron2 drops them) are
applied at every stage: a refined background box covered >= 0.5 by a crowd box is not trained.
"""
from __future__ import annotations

from typing import Dict

import tensorflow as tf

from tfmrcnn.modeling import box_ops
from tfmrcnn.modeling.box_head import FastRCNNConvFCHead
from tfmrcnn.modeling.fast_rcnn import FastRCNNOutputLayers, classification_metrics
from tfmrcnn.modeling.matcher import Matcher
from tfmrcnn.modeling.roi_heads import StandardROIHeads, pad_gt, sample_count_metrics
from tfmrcnn.modeling.sampling import ROISamples


def scale_gradient(x, scale: float):
    """Identity on x whose gradient is multiplied by `scale` (detectron2's _ScaleGradient)."""

    @tf.custom_gradient
    def _scaled(t):
        def grad(dy):
            return dy * tf.cast(scale, dy.dtype)

        return tf.identity(t), grad

    return _scaled(x)


class CascadeROIHeads(StandardROIHeads):
    """N box stages of increasing IoU threshold, then the mask head (see the module docstring).

    Attributes: box_heads / box_predictors (one per stage), stage_matchers (stage s: IoU
    threshold IOUS[s], labels background / foreground), num_stages.
    """

    def _init_box_head(self, cfg, in_channels: int, winograd: bool):
        ccfg = cfg.MODEL.ROI_BOX_CASCADE_HEAD
        ious, weights = list(ccfg.IOUS), [tuple(w) for w in ccfg.BBOX_REG_WEIGHTS]
        if not ious or len(ious) != len(weights):
            raise ValueError("MODEL.ROI_BOX_CASCADE_HEAD: IOUS and BBOX_REG_WEIGHTS need one "
                             f"entry per stage, got {len(ious)} and {len(weights)}")
        if not cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG:
            raise ValueError("CascadeROIHeads needs MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG "
                             "True (detectron2 only implements class-agnostic cascade stages)")
        if ious[0] != cfg.MODEL.ROI_HEADS.IOU_THRESHOLDS[0]:
            raise ValueError(f"MODEL.ROI_BOX_CASCADE_HEAD.IOUS[0] = {ious[0]} must equal "
                             "MODEL.ROI_HEADS.IOU_THRESHOLDS[0] = "
                             f"{cfg.MODEL.ROI_HEADS.IOU_THRESHOLDS[0]} (as in detectron2)")
        resolution = cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION
        self.num_stages = len(ious)
        self.box_heads = [FastRCNNConvFCHead.from_config(cfg, in_channels, resolution,
                                                         winograd=winograd,
                                                         prefix=f"roi_heads.box_head.{s}")
                          for s in range(self.num_stages)]
        self.box_predictors = [
            FastRCNNOutputLayers.from_config(cfg, head.output_dim,
                                             prefix=f"roi_heads.box_predictor.{s}",
                                             bbox_reg_weights=w)
            for s, (head, w) in enumerate(zip(self.box_heads, weights))]
        self.stage_matchers = [Matcher([iou], [0, 1], allow_low_quality_matches=False)
                               for iou in ious]
        # stage 0 labels the sampled proposals with its own matcher, as detectron2 does
        self.proposal_matcher = self.stage_matchers[0]

    def _box_predictions(self, x, training: bool, stage: int):
        # x: pooled (R, 7, 7, C) -> logits (R, K+1), deltas (R, 4) of this stage
        x = scale_gradient(x, 1.0 / self.num_stages)
        return self.box_predictors[stage](self.box_heads[stage](x, training=training))

    def _next_boxes(self, stage: int, deltas, boxes, image_sizes):
        """Input boxes (B, R, 4) of stage + 1: stage's regression of its boxes, clipped, without
        gradient. deltas (B, R, 4) are the stage's (class-agnostic)."""
        pred = self.box_predictors[stage].predict_boxes(deltas, boxes, image_sizes)  # (B,R,1,4)
        return tf.stop_gradient(pred[:, :, 0])

    def _match_and_label_boxes(self, stage: int, boxes, valid, gt_boxes, gt_classes,
                               crowd_boxes) -> ROISamples:
        """Training rows of stage > 0: boxes (B, R, 4) with valid (B, R) from the stage before;
        gt_boxes / gt_classes padded by `pad_gt`. Empty boxes are dropped as in detectron2."""
        valid = valid & box_ops.nonempty_mask(boxes)
        labels, matches = self.label_proposals(boxes, valid, gt_boxes, gt_classes, crowd_boxes,
                                               matcher=self.stage_matchers[stage])  # (B, R)
        k = self.num_classes
        valid = labels >= 0  # drops the invalid and the crowd-covered background rows
        fg = valid & (labels < k)
        gt_indices = tf.where(fg, matches, 0)
        return ROISamples(boxes=boxes, classes=tf.where(valid, labels, k),
                          gt_boxes=tf.gather(gt_boxes, gt_indices, batch_dims=1),
                          gt_indices=gt_indices, valid=valid, foreground=fg)

    @tf.autograph.experimental.do_not_convert
    def losses(self, features_list, proposals, proposal_valid, image_sizes, gt_boxes,
               gt_classes, gt_masks=None, crowd_boxes=None, training: bool = True,
               return_metrics: bool = False):
        """Training losses: loss_cls_stage{s}, loss_box_reg_stage{s} for every stage
        [, loss_mask]; with return_metrics, (losses, metrics): detectron2's roi_head/* of the
        sampling, stage{s}/roi_head/* of the later stages' labelling and stage{s}/fast_rcnn/*.

        Arguments as `StandardROIHeads.losses`; image_sizes (B, 2) clip the refined boxes.
        """
        gt_boxes = tf.cast(gt_boxes, tf.float32)
        gt_classes = tf.cast(gt_classes, tf.int32)
        if crowd_boxes is None:
            crowd_boxes = tf.zeros(tf.stack([tf.shape(gt_boxes)[0], 0, 4]), tf.float32)
        crowd_boxes = tf.cast(crowd_boxes, tf.float32)
        samples = self.label_and_sample_proposals(proposals, proposal_valid, gt_boxes,
                                                  gt_classes, crowd_boxes)
        stages = self.training_stages(features_list, samples, image_sizes, gt_boxes,
                                      gt_classes, crowd_boxes, training)
        out: Dict[str, tf.Tensor] = {}
        metrics = sample_count_metrics(samples)
        for s, (stage_samples, logits, deltas) in enumerate(stages):
            stage_losses = self.box_predictors[s].losses(logits, deltas, stage_samples)
            out.update({f"{k}_stage{s}": v for k, v in stage_losses.items()})
            stats = classification_metrics(tf.stop_gradient(logits), stage_samples)
            if s > 0:
                stats.update(sample_count_metrics(stage_samples))
            metrics.update({f"stage{s}/{k}": v for k, v in stats.items()})
        if self.mask_on:
            out["loss_mask"] = self._mask_loss(features_list, samples, gt_masks, training)
        return (out, metrics) if return_metrics else out

    def training_stages(self, features_list, samples: ROISamples, image_sizes, gt_boxes,
                        gt_classes, crowd_boxes, training: bool):
        """[(rows, logits (B, S, K+1), deltas (B, S, 4))] of every stage: stage 0 on the
        sampled proposals `samples`, stage s > 0 on the boxes stage s - 1 regressed, labelled by
        `_match_and_label_boxes`. gt_boxes (B, G, 4), gt_classes (B, G), crowd_boxes (B, C, 4)
        as in `losses`."""
        gt_boxes, gt_classes = pad_gt(gt_boxes, gt_classes)
        rows, stages = samples, []
        for s in range(self.num_stages):
            if s > 0:
                _, _, deltas = stages[-1]
                boxes = self._next_boxes(s - 1, deltas, rows.boxes, image_sizes)
                rows = self._match_and_label_boxes(s, boxes, rows.valid, gt_boxes, gt_classes,
                                                   crowd_boxes)
            logits, deltas = self._box_outputs(features_list, rows.boxes, training, stage=s)
            stages.append((rows, logits, deltas))
        return stages

    def stage_outputs(self, features_list, proposals, image_sizes):
        """Test-time pass of every stage: lists (one per stage) of input boxes (B, P, 4) and
        probabilities (B, P, K+1), and the last stage's decoded, clipped boxes (B, P, 1, 4).
        The boxes stage s regressed are the input boxes of stage s + 1."""
        boxes = tf.cast(proposals, tf.float32)
        inputs, probs = [], []
        for s in range(self.num_stages):
            if s > 0:
                boxes = self._next_boxes(s - 1, deltas, boxes, image_sizes)
            logits, deltas = self._box_outputs(features_list, boxes, training=False, stage=s)
            inputs.append(boxes)
            probs.append(self.box_predictors[s].predict_probs(logits))
        return inputs, probs, self.box_predictors[-1].predict_boxes(deltas, boxes, image_sizes)

    @tf.autograph.experimental.do_not_convert
    def inference(self, features_list, proposals, proposal_valid, image_sizes):
        """Detections as `StandardROIHeads.inference`, from the stage-averaged probabilities and
        the last stage's boxes."""
        _, probs, boxes = self.stage_outputs(features_list, proposals, image_sizes)
        scores = probs[0]
        for p in probs[1:]:  # summed in stage order, then scaled: detectron2's arithmetic
            scores = scores + p
        scores = scores * (1.0 / self.num_stages)  # (B, P, K+1)
        out = self.box_predictors[-1].detect(boxes, scores, proposal_valid)
        return self._mask_inference(features_list, out)
