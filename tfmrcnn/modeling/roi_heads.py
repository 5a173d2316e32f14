"""ROI heads of Mask R-CNN, batched over images: detectron2's ROIHeads (proposal labelling and
sampling) and StandardROIHeads (box head + box predictor + mask head on FPN features).

The box head is `box_head.FastRCNNConvFCHead`, the box predictor with its losses and inference
`fast_rcnn.FastRCNNOutputLayers`, the balanced sampling and the fixed-size sample layout
`sampling.sample_proposals` / `sampling.ROISamples`, the mask head `mask_head`.

Conventions
-----------
- Classes are contiguous 0..K-1 and the background label is K (detectron2).
- Training samples a fixed S = BATCH_SIZE_PER_IMAGE slots per image (see `sampling`): the mask
  head runs on the foreground rows gathered from the first F = int(S * POSITIVE_FRACTION)
  slots (a dynamic count).
"""
from __future__ import annotations

from typing import Dict, List, Optional

import tensorflow as tf

from tfmrcnn.modeling import box_ops
from tfmrcnn.modeling.box_head import FastRCNNConvFCHead
from tfmrcnn.modeling.fast_rcnn import FastRCNNOutputLayers, classification_metrics
from tfmrcnn.modeling.mask_head import (MaskRCNNConvUpsampleHead, mask_rcnn_inference,
                                        mask_rcnn_loss, mask_rcnn_targets)
from tfmrcnn.modeling.matcher import Matcher
from tfmrcnn.modeling.poolers import ROIPooler, aligned_for_pooler_type
from tfmrcnn.modeling.sampling import ROISamples, sample_proposals

# proposals covered at least this much by a crowd region are never background samples
CROWD_IOA_THRESH = 0.5


def pad_gt(gt_boxes, gt_classes):
    """One more padding GT slot (zero box, class -1): (B, G + 1, 4), (B, G + 1). It keeps every
    gather by matched index in range when an image (or the batch) has no GT, G == 0."""
    return (tf.pad(gt_boxes, [[0, 0], [0, 1], [0, 0]]),
            tf.pad(gt_classes, [[0, 0], [0, 1]], constant_values=-1))


def sample_count_metrics(samples: ROISamples) -> Dict[str, tf.Tensor]:
    """detectron2's roi_head/num_fg_samples and roi_head/num_bg_samples: per-image means."""
    valid = tf.cast(samples.valid, tf.float32)  # (B, S)
    fg = tf.cast(samples.foreground, tf.float32)
    return {"roi_head/num_fg_samples": tf.reduce_mean(tf.reduce_sum(fg, axis=1)),
            "roi_head/num_bg_samples": tf.reduce_mean(tf.reduce_sum(valid - fg, axis=1))}


class ROIHeads(tf.Module):
    """detectron2's ROIHeads base: label_and_sample_proposals, shared by every ROI-head kind.

    Candidates = proposals (+ valid GT boxes with PROPOSAL_APPEND_GT). Each is matched to the GT
    of highest IoU (thresholds IOU_THRESHOLDS / IOU_LABELS, no low-quality matches); matched
    foreground takes the GT class, the rest the background label K. Non-foreground candidates
    whose IoA (intersection / candidate area) with a crowd box is >= 0.5, and invalid ones,
    are labelled -1 (never sampled). `sampling.sample_proposals` then draws at most
    S * POSITIVE_FRACTION foreground and fills up to S with background.

    ``seed`` fixes the sampling (see `sampling.subsample_labels`): for tests only.
    """

    def __init__(self, cfg, seed: Optional[int] = None):
        super().__init__(name="roi_heads")
        hcfg = cfg.MODEL.ROI_HEADS
        self.num_classes = hcfg.NUM_CLASSES
        self.batch_size_per_image = hcfg.BATCH_SIZE_PER_IMAGE
        self.positive_fraction = hcfg.POSITIVE_FRACTION
        self.proposal_append_gt = hcfg.PROPOSAL_APPEND_GT
        self.proposal_matcher = Matcher(list(hcfg.IOU_THRESHOLDS), list(hcfg.IOU_LABELS),
                                        allow_low_quality_matches=False)
        self.seed = seed

    @property
    def max_foreground(self) -> int:
        """F: every foreground sample sits in the first F slots."""
        return int(self.batch_size_per_image * self.positive_fraction)

    def label_proposals(self, boxes, valid, gt_boxes, gt_classes, crowd_boxes,
                        matcher: Optional[Matcher] = None):
        """Labels (B, N) int32 of candidates: class, K for background, -1 ignored; and matches.
        `matcher` replaces proposal_matcher (a cascade stage's own IoU threshold)."""
        k = self.num_classes
        gt_valid = gt_classes >= 0  # (B, G)
        iou = box_ops.pairwise_iou(gt_boxes, boxes)  # (B, G, N)
        matcher = matcher or self.proposal_matcher
        matches, match_labels = matcher(iou, gt_valid)  # (B, N) each
        matches = tf.cast(matches, tf.int32)
        matched_classes = tf.gather(gt_classes, matches, batch_dims=1)  # (B, N)
        labels = tf.where(match_labels == 1, matched_classes, k)
        labels = tf.where(match_labels < 0, -1, labels)
        labels = tf.where(valid, labels, -1)
        crowded = self._inside_crowd(boxes, crowd_boxes)  # (B, N)
        labels = tf.where(crowded & tf.equal(labels, k), -1, labels)
        return tf.cast(labels, tf.int32), matches

    @staticmethod
    def _inside_crowd(boxes, crowd_boxes):
        """(B, N) bool: candidate area covered >= CROWD_IOA_THRESH by one (real) crowd box."""
        crowd_valid = box_ops.nonempty_mask(crowd_boxes)  # (B, C)
        ioa = box_ops.pairwise_ioa(crowd_boxes, boxes)  # (B, C, N) intersection / area(boxes)
        hit = (ioa >= CROWD_IOA_THRESH) & crowd_valid[:, :, None]
        return tf.reduce_any(hit, axis=1)

    @tf.autograph.experimental.do_not_convert
    def label_and_sample_proposals(self, proposals, proposal_valid, gt_boxes, gt_classes,
                                   crowd_boxes) -> ROISamples:
        """proposals (B, P, 4) with proposal_valid (B, P); gt_boxes (B, G, 4), gt_classes (B, G)
        with -1 padding; crowd_boxes (B, C, 4) zero-padded -> ROISamples (B, S, ...)."""
        proposals = tf.stop_gradient(tf.cast(proposals, tf.float32))  # (B, P, 4)
        gt_boxes = tf.cast(gt_boxes, tf.float32)  # (B, G, 4)
        gt_classes = tf.cast(gt_classes, tf.int32)  # (B, G)
        valid = tf.cast(proposal_valid, tf.bool)
        boxes = proposals
        if self.proposal_append_gt:
            boxes = tf.concat([proposals, gt_boxes], axis=1)  # (B, N = P + G, 4)
            valid = tf.concat([valid, gt_classes >= 0], axis=1)
        gt_boxes, gt_classes = pad_gt(gt_boxes, gt_classes)
        labels, matches = self.label_proposals(boxes, valid, gt_boxes, gt_classes,
                                               tf.cast(crowd_boxes, tf.float32))
        return sample_proposals(boxes, labels, matches, gt_boxes, self.batch_size_per_image,
                                self.positive_fraction, self.num_classes, seed=self.seed)


def flatten_rois(boxes):
    """(B, R, 4) -> boxes (B*R, 4) and the image index of each (B*R,) int32."""
    b, r = tf.shape(boxes)[0], tf.shape(boxes)[1]
    indices = tf.repeat(tf.range(b, dtype=tf.int32), r)
    return tf.reshape(boxes, [-1, 4]), indices


def pool_rois(pooler, features_list, boxes, indices):
    """ROIAlign in float32 (its kernels are float32-only, as torchvision's autocast pools),
    the pooled (R, h, w, C) cast back to the features' dtype: under mixed precision the
    heads then run in bfloat16 / float16."""
    x = pooler([tf.cast(f, tf.float32) for f in features_list], boxes, indices)
    return tf.cast(x, features_list[0].dtype)


def foreground_rows(samples: ROISamples, max_foreground: int):
    """The foreground sample slots of all images as rows (N', 2) int32 (image, slot) and
    weights (N',) float32: N' = max(N, 1) for N foreground rows (a dynamic count, as in
    detectron2); the extra row when N == 0 is slot (0, 0) with weight 0, because an empty
    batch would reach the mask head's convs, whose CPU kernels return a wrong spatial shape
    for 0 rows. Every foreground ROI sits in the first `max_foreground` slots."""
    fg = samples.foreground[:, :max_foreground]  # (B, F) bool
    n = tf.reduce_sum(tf.cast(fg, tf.int32))
    rows = tf.concat([tf.cast(tf.where(fg), tf.int32), tf.zeros([1, 2], tf.int32)], 0)
    rows = rows[:tf.maximum(n, 1)]  # (N', 2) (image, slot)
    weights = tf.cast(tf.range(tf.shape(rows)[0]) < n, tf.float32)  # (N',)
    return rows, weights


def foreground_mask_loss(mask_logits, samples: ROISamples, rows, weights, gt_masks,
                         mask_size: int):
    """detectron2's mask loss of the `foreground_rows` (rows, weights) given their mask logits
    (N', M, M, K'): targets cropped from the matched instance's mask gt_masks (B, G, Hp, Wp)
    at the sample box, BCE on the GT class's channel."""
    image = rows[:, 0]
    boxes = tf.gather_nd(samples.boxes, rows)  # (N', 4)
    classes = tf.gather_nd(samples.classes, rows)  # (N',)
    # targets: the B images' G masks as one stack of B*G, indexed per row
    shape = tf.shape(gt_masks)  # (B, G, Hp, Wp)
    stack_index = image * shape[1] + tf.gather_nd(samples.gt_indices, rows)  # (N',)
    stack = tf.reshape(gt_masks, tf.stack([1, shape[0] * shape[1], shape[2], shape[3]]))
    targets = mask_rcnn_targets(stack, boxes[None], stack_index[None], mask_size)[0]
    return mask_rcnn_loss(mask_logits, classes, targets, weights)  # targets: (N', M, M)


def add_detection_masks(out, mask_logits, mask_size: int):
    """Adds masks (B, D, M, M) to the detections `out` from the mask logits (B*D, M, M, K') of
    their boxes: probabilities of the predicted class, padding rows zero."""
    probs = mask_rcnn_inference(mask_logits, tf.reshape(out["classes"], [-1]))
    b, d = tf.shape(out["boxes"])[0], tf.shape(out["boxes"])[1]
    probs = tf.reshape(probs, tf.stack([b, d, mask_size, mask_size]))
    real = tf.range(d)[None, :] < out["num_detections"][:, None]  # (B, D)
    out["masks"] = tf.where(real[:, :, None, None], probs, 0.0)
    return out


class StandardROIHeads(ROIHeads):
    """Box head + predictor (+ mask head with MASK_ON) on FPN features, detectron2's layout.

    features_list: NHWC maps finest first with the given `strides` (P2..P5: 4, 8, 16, 32).
    `winograd` lets the heads' 3x3 convs use Winograd (see `layers.Conv2D`).
    """

    def __init__(self, cfg, in_channels: int, strides: List[int], seed: Optional[int] = None,
                 winograd: bool = False):
        super().__init__(cfg, seed=seed)
        bcfg, mcfg = cfg.MODEL.ROI_BOX_HEAD, cfg.MODEL.ROI_MASK_HEAD
        scales = [1.0 / s for s in strides]
        self.box_pooler = ROIPooler(
            bcfg.POOLER_RESOLUTION, scales, bcfg.POOLER_SAMPLING_RATIO,
            aligned=aligned_for_pooler_type(bcfg.POOLER_TYPE, "MODEL.ROI_BOX_HEAD.POOLER_TYPE"))
        self._init_box_head(cfg, in_channels, winograd)
        self.mask_on = cfg.MODEL.MASK_ON
        if self.mask_on:
            self.mask_pooler = ROIPooler(
                mcfg.POOLER_RESOLUTION, scales, mcfg.POOLER_SAMPLING_RATIO,
                aligned=aligned_for_pooler_type(mcfg.POOLER_TYPE,
                                                "MODEL.ROI_MASK_HEAD.POOLER_TYPE"))
            self.mask_head = MaskRCNNConvUpsampleHead(cfg, in_channels, winograd=winograd)
            self.mask_size = 2 * mcfg.POOLER_RESOLUTION

    def _init_box_head(self, cfg, in_channels: int, winograd: bool):
        """box_head and box_predictor (CascadeROIHeads builds one of each per stage)."""
        resolution = cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION
        self.box_head = FastRCNNConvFCHead.from_config(cfg, in_channels, resolution,
                                                       winograd=winograd)
        self.box_predictor = FastRCNNOutputLayers.from_config(cfg, self.box_head.output_dim)

    @staticmethod
    def _pool(pooler, features_list, boxes, indices):
        return pool_rois(pooler, features_list, boxes, indices)

    def _box_outputs(self, features_list, boxes, training: bool, stage: int = 0):
        """boxes (B, R, 4) -> float32 class logits (B, R, K+1), deltas (B, R, 4K')."""
        flat, indices = flatten_rois(boxes)
        x = self._pool(self.box_pooler, features_list, flat, indices)  # (B*R, 7, 7, C)
        logits, deltas = self._box_predictions(x, training, stage)
        b, r = tf.shape(boxes)[0], tf.shape(boxes)[1]
        # box decoding, scores and losses stay float32
        return (tf.reshape(tf.cast(logits, tf.float32), tf.stack([b, r, -1])),
                tf.reshape(tf.cast(deltas, tf.float32), tf.stack([b, r, -1])))

    def _box_predictions(self, x, training: bool, stage: int):
        """Pooled (R, 7, 7, C) -> logits (R, K+1), deltas (R, 4K'); `stage` is the cascade's."""
        del stage
        return self.box_predictor(self.box_head(x, training=training))

    def _mask_logits(self, features_list, boxes, training: bool):
        """boxes (B, R, 4) -> mask logits (B*R, 28, 28, K') in the features' dtype."""
        flat, indices = flatten_rois(boxes)
        x = self._pool(self.mask_pooler, features_list, flat, indices)  # (B*R, 14, 14, C)
        return self.mask_head(x, training=training)

    # No Python control flow depends on tensor values here, so AutoGraph is skipped: converting
    # the heads' code costs several seconds of tracing for nothing.
    @tf.autograph.experimental.do_not_convert
    def losses(self, features_list, proposals, proposal_valid, image_sizes, gt_boxes,
               gt_classes, gt_masks=None, crowd_boxes=None, training: bool = True,
               return_metrics: bool = False):
        """Training losses: dict(loss_cls, loss_box_reg[, loss_mask]); with return_metrics,
        (losses, metrics): detectron2's fast_rcnn/* and roi_head/* training statistics.

        proposals (B, P, 4) with proposal_valid (B, P); image_sizes (B, 2) (unused: proposals
        and GT are already inside the image); gt_boxes (B, G, 4), gt_classes (B, G) with -1
        padding, gt_masks (B, G, Hp, Wp) 0/1, crowd_boxes (B, C, 4) zero-padded.
        """
        del image_sizes
        if crowd_boxes is None:
            crowd_boxes = tf.zeros(tf.stack([tf.shape(gt_boxes)[0], 0, 4]), tf.float32)
        samples = self.label_and_sample_proposals(proposals, proposal_valid, gt_boxes,
                                                  gt_classes, crowd_boxes)
        logits, deltas = self._box_outputs(features_list, samples.boxes, training)
        out = self.box_predictor.losses(logits, deltas, samples)
        if self.mask_on:
            out["loss_mask"] = self._mask_loss(features_list, samples, gt_masks, training)
        if return_metrics:
            metrics = {**classification_metrics(tf.stop_gradient(logits), samples),
                       **sample_count_metrics(samples)}
            return out, metrics
        return out

    def _mask_loss(self, features_list, samples: ROISamples, gt_masks, training: bool):
        """Mask loss on the foreground ROIs of all images, gathered into N = #foreground rows
        (a dynamic count, as in detectron2): background and padding slots never reach the mask
        head. Without foreground the loss is 0."""
        rows, weights = foreground_rows(samples, self.max_foreground)  # (N', 2), (N',)
        boxes = tf.gather_nd(samples.boxes, rows)  # (N', 4)
        x = self._pool(self.mask_pooler, features_list, boxes, rows[:, 0])  # (N', 14, 14, C)
        logits = self.mask_head(x, training=training)  # (N', M, M, K')
        return foreground_mask_loss(logits, samples, rows, weights, gt_masks, self.mask_size)

    @tf.autograph.experimental.do_not_convert
    def inference(self, features_list, proposals, proposal_valid, image_sizes):
        """Detections per image, padded to D: dict(boxes, scores, classes, num_detections
        [, masks (B, D, 28, 28) probabilities of the predicted class]); padding rows are zero."""
        logits, deltas = self._box_outputs(features_list, proposals, training=False)
        out = self.box_predictor.inference(logits, deltas, proposals, proposal_valid, image_sizes)
        return self._mask_inference(features_list, out)

    def _mask_inference(self, features_list, out):
        """detectron2's forward_with_given_boxes: adds masks (B, D, 28, 28) to the detections
        `out` (with MASK_ON; probabilities of the predicted class, padding rows zero)."""
        if self.mask_on:
            mask_logits = self._mask_logits(features_list, out["boxes"], training=False)
            out = add_detection_masks(out, mask_logits, self.mask_size)
        return out
