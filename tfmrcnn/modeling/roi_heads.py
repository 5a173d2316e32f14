"""ROI heads of Mask R-CNN (detectron2's StandardROIHeads), batched over images.

Conventions
-----------
- Classes are contiguous 0..K-1; the background label is K (detectron2), never 0 (tensorpack).
  ``cls_score`` has K+1 outputs with background LAST; ``bbox_pred`` has 4K outputs (class k at
  columns 4k..4k+3), or 4 with CLS_AGNOSTIC_BBOX_REG.
- Boxes are xyxy in resized-image pixels; ROI deltas use weights (10, 10, 5, 5) and the
  log(1000/16) clamp of detectron2's Box2BoxTransform.
- Pooled ROI features are NHWC. The first box-head fc takes the NHWC flatten of (7, 7, C);
  detectron2 flattens NCHW (C, 7, 7), so the checkpoint converter permutes the rows of
  ``roi_heads.box_head.fc1.weight``.
- Training samples a fixed S = BATCH_SIZE_PER_IMAGE slots per image: foreground first, then
  background, then padding (validity 0). subsample_labels caps the foreground at
  int(S * POSITIVE_FRACTION) = F, so the first F slots hold every foreground ROI; the mask
  head runs on the foreground rows gathered from those F slots (a dynamic count).
- Both box losses are divided by the number of sampled ROIs of all images together
  (detectron2's ``gt_classes.numel()``).
"""
from __future__ import annotations

from typing import Dict, List, NamedTuple

import tensorflow as tf

from tfmrcnn.modeling import box_ops
from tfmrcnn.modeling.layers import Conv2D, Linear
from tfmrcnn.modeling.mask_head import (MaskRCNNConvUpsampleHead, mask_rcnn_inference,
                                        mask_rcnn_loss, mask_rcnn_targets)
from tfmrcnn.modeling.matcher import Matcher, subsample_labels
from tfmrcnn.modeling.norm import get_norm
from tfmrcnn.modeling.poolers import ROIPooler

# detectron2's _DEFAULT_SCALE_CLAMP: largest dw/dh applied when decoding
SCALE_CLAMP = box_ops.DEFAULT_SCALE_CLAMP
# proposals covered at least this much by a crowd region are never background samples
CROWD_IOA_THRESH = 0.5


class FastRCNNConvFCHead(tf.Module):
    """NUM_CONV x (conv 3x3 [+ norm] + ReLU) then NUM_FC x (fc + ReLU) on pooled ROI features.

    Convs use c2_msra_fill (no bias with a norm), fcs c2_xavier_fill. Variables are
    ``roi_heads.box_head.conv{i}`` and ``roi_heads.box_head.fc{i}``.
    """

    def __init__(self, cfg, in_channels: int, resolution: int):
        super().__init__(name="box_head")
        bcfg = cfg.MODEL.ROI_BOX_HEAD
        prefix = "roi_heads.box_head"
        self.convs, self.fcs = [], []
        c = in_channels
        for i in range(bcfg.NUM_CONV):
            name = f"{prefix}.conv{i + 1}"
            self.convs.append(Conv2D(name, c, bcfg.CONV_DIM, 3, use_bias=not bcfg.NORM,
                                     norm=get_norm(bcfg.NORM, bcfg.CONV_DIM, f"{name}.norm"),
                                     activation=tf.nn.relu, init="msra"))
            c = bcfg.CONV_DIM
        dim = c * resolution * resolution
        for i in range(bcfg.NUM_FC):
            self.fcs.append(Linear(f"{prefix}.fc{i + 1}", dim, bcfg.FC_DIM,
                                   activation=tf.nn.relu, init="xavier"))
            dim = bcfg.FC_DIM
        self.output_dim = dim

    def __call__(self, x, training: bool = False):
        # x: (R, 7, 7, C) -> (R, FC_DIM)
        for conv in self.convs:
            x = conv(x, training=training)
        x = tf.reshape(x, [tf.shape(x)[0], -1])  # NHWC flatten, see the module docstring
        for fc in self.fcs:
            x = fc(x)
        return x


class ROISamples(NamedTuple):
    """Fixed-size per-image training samples, (B, S, ...) each; see the module docstring."""
    boxes: tf.Tensor  # (B, S, 4) proposal boxes, zero rows for padding
    classes: tf.Tensor  # (B, S) int32: GT class of foreground, K for background and padding
    gt_boxes: tf.Tensor  # (B, S, 4) matched GT box (meaningful for foreground only)
    gt_indices: tf.Tensor  # (B, S) int32 index into G of the matched GT
    valid: tf.Tensor  # (B, S) bool: a sampled ROI (foreground or background)
    foreground: tf.Tensor  # (B, S) bool


class ROISampler:
    """detectron2's label_and_sample_proposals, batched with padding.

    Candidates = proposals (+ valid GT boxes with PROPOSAL_APPEND_GT). Each is matched to the GT
    of highest IoU (thresholds IOU_THRESHOLDS / IOU_LABELS, no low-quality matches); matched
    foreground takes the GT class, the rest the background label K. Non-foreground candidates
    whose IoA (intersection / candidate area) with a crowd box is >= 0.5, and invalid ones,
    are labelled -1 (never sampled). subsample_labels then draws at most S * POSITIVE_FRACTION
    foreground and fills up to S with background.
    """

    def __init__(self, cfg, seed=None):
        hcfg = cfg.MODEL.ROI_HEADS
        self.num_classes = hcfg.NUM_CLASSES
        self.batch_size_per_image = hcfg.BATCH_SIZE_PER_IMAGE
        self.positive_fraction = hcfg.POSITIVE_FRACTION
        self.append_gt = hcfg.PROPOSAL_APPEND_GT
        self.matcher = Matcher(list(hcfg.IOU_THRESHOLDS), list(hcfg.IOU_LABELS),
                               allow_low_quality_matches=False)
        self.seed = seed

    @property
    def max_foreground(self) -> int:
        return int(self.batch_size_per_image * self.positive_fraction)

    def label(self, boxes, valid, gt_boxes, gt_classes, crowd_boxes):
        """Labels (B, N) int32 of candidates: class, K for background, -1 ignored; and matches."""
        k = self.num_classes
        gt_valid = gt_classes >= 0  # (B, G)
        iou = box_ops.pairwise_iou(gt_boxes, boxes)  # (B, G, N)
        matches, match_labels = self.matcher(iou, gt_valid)  # (B, N) each
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

    def __call__(self, proposals, proposal_valid, gt_boxes, gt_classes, crowd_boxes) -> ROISamples:
        proposals = tf.stop_gradient(tf.cast(proposals, tf.float32))  # (B, P, 4)
        gt_boxes = tf.cast(gt_boxes, tf.float32)  # (B, G, 4)
        gt_classes = tf.cast(gt_classes, tf.int32)  # (B, G)
        valid = tf.cast(proposal_valid, tf.bool)
        boxes = proposals
        if self.append_gt:
            boxes = tf.concat([proposals, gt_boxes], axis=1)  # (B, N = P + G, 4)
            valid = tf.concat([valid, gt_classes >= 0], axis=1)
        # a padding GT slot keeps every gather below in range when G == 0
        gt_boxes = tf.pad(gt_boxes, [[0, 0], [0, 1], [0, 0]])
        gt_classes = tf.pad(gt_classes, [[0, 0], [0, 1]], constant_values=-1)
        labels, matches = self.label(boxes, valid, gt_boxes, gt_classes,
                                     tf.cast(crowd_boxes, tf.float32))
        pos, neg = subsample_labels(labels, self.batch_size_per_image, self.positive_fraction,
                                    self.num_classes, seed=self.seed)
        return self._gather_samples(boxes, labels, matches, gt_boxes, pos, neg)

    def _gather_samples(self, boxes, labels, matches, gt_boxes, pos, neg) -> ROISamples:
        """Foreground, then background, then padding into S slots per image."""
        s = self.batch_size_per_image
        # S extra padding candidates make the first S slots exist even with few proposals
        pad = [[0, 0], [0, s]]
        boxes = tf.pad(boxes, pad + [[0, 0]])
        labels = tf.pad(labels, pad, constant_values=-1)
        matches = tf.pad(matches, pad)
        pos, neg = tf.pad(pos, pad), tf.pad(neg, pad)
        rank = tf.where(pos, 0, tf.where(neg, 1, 2))  # (B, N + S)
        order = tf.argsort(rank, axis=1, stable=True)[:, :s]  # (B, S)
        fg = tf.gather(pos, order, batch_dims=1)
        sampled = fg | tf.gather(neg, order, batch_dims=1)
        classes = tf.where(sampled, tf.gather(labels, order, batch_dims=1), self.num_classes)
        gt_indices = tf.where(fg, tf.gather(matches, order, batch_dims=1), 0)
        return ROISamples(
            boxes=tf.gather(boxes, order, batch_dims=1),
            classes=classes,
            gt_boxes=tf.gather(gt_boxes, gt_indices, batch_dims=1),
            gt_indices=gt_indices,
            valid=sampled,
            foreground=fg)


def classification_metrics(logits, samples: ROISamples) -> Dict[str, tf.Tensor]:
    """detectron2's training statistics (_log_classification_stats + sample counts).

    Accuracies are over the sampled ROIs of all images; fg ones are 0 without foreground.
    Sample counts are per-image means.
    """
    valid = tf.cast(samples.valid, tf.float32)  # (B, S)
    fg = tf.cast(samples.foreground, tf.float32)
    k = tf.shape(logits)[-1] - 1
    pred = tf.argmax(logits, axis=-1, output_type=tf.int32)  # (B, S)
    correct = tf.cast(tf.equal(pred, samples.classes), tf.float32)
    num_fg = tf.reduce_sum(fg)
    return {
        "fast_rcnn/cls_accuracy": tf.math.divide_no_nan(tf.reduce_sum(correct * valid),
                                                        tf.reduce_sum(valid)),
        "fast_rcnn/fg_cls_accuracy": tf.math.divide_no_nan(tf.reduce_sum(correct * fg), num_fg),
        "fast_rcnn/false_negative": tf.math.divide_no_nan(
            tf.reduce_sum(tf.cast(tf.equal(pred, k), tf.float32) * fg), num_fg),
        "roi_head/num_fg_samples": tf.reduce_mean(tf.reduce_sum(fg, axis=1)),
        "roi_head/num_bg_samples": tf.reduce_mean(tf.reduce_sum(valid - fg, axis=1)),
    }


class FastRCNNOutputLayers(tf.Module):
    """detectron2's FastRCNNOutputLayers: cls_score / bbox_pred, their losses and inference."""

    def __init__(self, cfg, input_dim: int):
        super().__init__(name="box_predictor")
        bcfg = cfg.MODEL.ROI_BOX_HEAD
        hcfg = cfg.MODEL.ROI_HEADS
        if bcfg.BBOX_REG_LOSS_TYPE != "smooth_l1":
            raise ValueError(f"unsupported BBOX_REG_LOSS_TYPE {bcfg.BBOX_REG_LOSS_TYPE!r}")
        self.num_classes = k = hcfg.NUM_CLASSES
        self.agnostic = bcfg.CLS_AGNOSTIC_BBOX_REG
        num_reg = 1 if self.agnostic else k
        self.cls_score = Linear("roi_heads.box_predictor.cls_score", input_dim, k + 1,
                                init="normal:0.01")
        self.bbox_pred = Linear("roi_heads.box_predictor.bbox_pred", input_dim, 4 * num_reg,
                                init="normal:0.001")
        self.box2box = box_ops.Box2BoxTransform(tuple(bcfg.BBOX_REG_WEIGHTS), SCALE_CLAMP)
        self.smooth_l1_beta = bcfg.SMOOTH_L1_BETA
        self.box_loss_weight = bcfg.BBOX_REG_LOSS_WEIGHT
        self.score_thresh = hcfg.SCORE_THRESH_TEST
        self.nms_thresh = hcfg.NMS_THRESH_TEST
        self.detections_per_image = cfg.TEST.DETECTIONS_PER_IMAGE

    def __call__(self, x):
        # x: (R, D) -> class logits (R, K+1), deltas (R, 4K) or (R, 4)
        return self.cls_score(x), self.bbox_pred(x)

    # ------------------------------------------------------------------ training
    def losses(self, logits, deltas, samples: ROISamples) -> Dict[str, tf.Tensor]:
        """logits (B, S, K+1), deltas (B, S, 4K'); losses normalised by the sampled count."""
        valid = tf.cast(samples.valid, tf.float32)  # (B, S)
        num_sampled = tf.maximum(tf.reduce_sum(valid), 1.0)
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=samples.classes, logits=tf.cast(logits, tf.float32))  # (B, S)
        loss_cls = tf.reduce_sum(ce * valid) / num_sampled

        fg = samples.foreground
        # background / padding rows get unit boxes: their (unused) deltas stay finite
        unit = tf.constant([0.0, 0.0, 1.0, 1.0])
        src = tf.where(fg[..., None], samples.boxes, unit)
        tgt = tf.where(fg[..., None], samples.gt_boxes, unit)
        target = tf.stop_gradient(self.box2box.get_deltas(src, tgt))  # (B, S, 4)
        pred = self._class_deltas(tf.cast(deltas, tf.float32), samples.classes)  # (B, S, 4)
        l1 = tf.reduce_sum(box_ops.smooth_l1_loss(pred - target, self.smooth_l1_beta), axis=-1)
        loss_box = tf.reduce_sum(tf.where(fg, l1, 0.0)) / num_sampled
        return {"loss_cls": loss_cls, "loss_box_reg": loss_box * self.box_loss_weight}

    def _class_deltas(self, deltas, classes):
        """(..., 4K') deltas of each ROI's class (classes clamped: background rows are unused)."""
        if self.agnostic:
            return deltas
        shape = tf.concat([tf.shape(deltas)[:-1], [self.num_classes, 4]], 0)
        per_class = tf.reshape(deltas, shape)  # (B, S, K, 4)
        idx = tf.minimum(classes, self.num_classes - 1)
        return tf.gather(per_class, idx, axis=-2, batch_dims=len(deltas.shape) - 1)

    # ------------------------------------------------------------------ inference
    def predict_boxes(self, deltas, proposals, image_sizes):
        """Decoded, clipped boxes (B, P, K', 4) of every proposal and regression class."""
        b, p = tf.shape(proposals)[0], tf.shape(proposals)[1]
        num_reg = 1 if self.agnostic else self.num_classes
        flat = self.box2box.apply_deltas(tf.reshape(tf.cast(deltas, tf.float32), [-1, 4 * num_reg]),
                                         tf.reshape(tf.cast(proposals, tf.float32), [-1, 4]))
        boxes = tf.reshape(flat, tf.stack([b, p, num_reg, 4]))
        return box_ops.clip_boxes(boxes, image_sizes)  # (B, P, K', 4)

    def inference(self, logits, deltas, proposals, proposal_valid, image_sizes):
        """detectron2's fast_rcnn_inference, padded to D = DETECTIONS_PER_IMAGE per image.

        Returns boxes (B, D, 4), scores (B, D), classes (B, D) int32, num_detections (B,) int32;
        rows past num_detections are zero.
        """
        probs = tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)[..., :-1]  # (B, P, K)
        boxes = self.predict_boxes(deltas, proposals, image_sizes)  # (B, P, K', 4)
        d = self.detections_per_image
        out = tf.map_fn(self._detect_one, (boxes, probs, tf.cast(proposal_valid, tf.bool)),
                        fn_output_signature=(tf.TensorSpec([d, 4], tf.float32),
                                             tf.TensorSpec([d], tf.float32),
                                             tf.TensorSpec([d], tf.int32),
                                             tf.TensorSpec([], tf.int32)))
        return dict(zip(("boxes", "scores", "classes", "num_detections"), out))

    @tf.autograph.experimental.do_not_convert
    def _detect_one(self, args):
        """One image: threshold, per-class NMS, top D, then drop empty boxes (padded to D)."""
        boxes, probs, valid = args  # (P, K', 4), (P, K), (P,)
        finite = (tf.reduce_all(tf.math.is_finite(boxes), axis=[1, 2])
                  & tf.reduce_all(tf.math.is_finite(probs), axis=1) & valid)  # (P,)
        probs = tf.where(finite[:, None], probs, 0.0)
        cand = tf.where(probs > self.score_thresh)  # (M, 2) [proposal, class], row-major
        classes = tf.cast(cand[:, 1], tf.int32)
        box_index = cand * ([1, 0] if self.agnostic else [1, 1])
        cand_boxes = tf.gather_nd(boxes, box_index)  # (M, 4)
        cand_scores = tf.gather_nd(probs, cand)  # (M,)
        d = self.detections_per_image
        keep = box_ops.batched_nms(cand_boxes, cand_scores, classes, self.nms_thresh, d)
        keep = keep[:d]  # (<= D,) sorted by decreasing score
        kept_boxes = tf.gather(cand_boxes, keep)
        # detectron2 drops empty boxes after the top-D cut (detector_postprocess), so an empty
        # box still takes its slot in the top D
        nonempty = box_ops.nonempty_mask(kept_boxes)
        kept_boxes = tf.boolean_mask(kept_boxes, nonempty)
        kept_scores = tf.boolean_mask(tf.gather(cand_scores, keep), nonempty)
        kept_classes = tf.boolean_mask(tf.gather(classes, keep), nonempty)
        n = tf.shape(kept_scores)[0]
        pad = d - n
        return (tf.pad(kept_boxes, [[0, pad], [0, 0]]), tf.pad(kept_scores, [[0, pad]]),
                tf.pad(kept_classes, [[0, pad]]), n)


def _flatten_rois(boxes):
    """(B, R, 4) -> boxes (B*R, 4) and the image index of each (B*R,) int32."""
    b, r = tf.shape(boxes)[0], tf.shape(boxes)[1]
    indices = tf.repeat(tf.range(b, dtype=tf.int32), r)
    return tf.reshape(boxes, [-1, 4]), indices


class StandardROIHeads(tf.Module):
    """Box head + predictor (+ mask head with MASK_ON) on FPN features, detectron2's layout.

    features_list: NHWC maps finest first with the given `strides` (P2..P5: 4, 8, 16, 32).
    """

    def __init__(self, cfg, in_channels: int, strides: List[int], seed=None):
        super().__init__(name="roi_heads")
        bcfg, mcfg = cfg.MODEL.ROI_BOX_HEAD, cfg.MODEL.ROI_MASK_HEAD
        for pooler_type in (bcfg.POOLER_TYPE,) + ((mcfg.POOLER_TYPE,) if cfg.MODEL.MASK_ON else ()):
            if pooler_type != "ROIAlignV2":
                raise ValueError(f"only ROIAlignV2 pooling is supported, got {pooler_type!r}")
        scales = [1.0 / s for s in strides]
        self.sampler = ROISampler(cfg, seed=seed)
        self.box_pooler = ROIPooler(bcfg.POOLER_RESOLUTION, scales, bcfg.POOLER_SAMPLING_RATIO)
        self.box_head = FastRCNNConvFCHead(cfg, in_channels, bcfg.POOLER_RESOLUTION)
        self.box_predictor = FastRCNNOutputLayers(cfg, self.box_head.output_dim)
        self.mask_on = cfg.MODEL.MASK_ON
        if self.mask_on:
            self.mask_pooler = ROIPooler(mcfg.POOLER_RESOLUTION, scales,
                                         mcfg.POOLER_SAMPLING_RATIO)
            self.mask_head = MaskRCNNConvUpsampleHead(cfg, in_channels)
            self.mask_size = 2 * mcfg.POOLER_RESOLUTION

    @staticmethod
    def _pool(pooler, features_list, boxes, indices):
        """ROIAlign in float32 (its kernels are float32-only, as torchvision's autocast pools),
        the pooled (R, h, w, C) cast back to the features' dtype: under mixed precision the
        heads then run in bfloat16 / float16."""
        x = pooler([tf.cast(f, tf.float32) for f in features_list], boxes, indices)
        return tf.cast(x, features_list[0].dtype)

    def _box_outputs(self, features_list, boxes, training: bool):
        """boxes (B, R, 4) -> float32 class logits (B, R, K+1), deltas (B, R, 4K')."""
        flat, indices = _flatten_rois(boxes)
        x = self._pool(self.box_pooler, features_list, flat, indices)  # (B*R, 7, 7, C)
        logits, deltas = self.box_predictor(self.box_head(x, training=training))
        b, r = tf.shape(boxes)[0], tf.shape(boxes)[1]
        # box decoding, scores and losses stay float32
        return (tf.reshape(tf.cast(logits, tf.float32), tf.stack([b, r, -1])),
                tf.reshape(tf.cast(deltas, tf.float32), tf.stack([b, r, -1])))

    def _mask_logits(self, features_list, boxes, training: bool):
        """boxes (B, R, 4) -> mask logits (B*R, 28, 28, K') in the features' dtype."""
        flat, indices = _flatten_rois(boxes)
        x = self._pool(self.mask_pooler, features_list, flat, indices)  # (B*R, 14, 14, C)
        return self.mask_head(x, training=training)

    # No Python control flow depends on tensor values here, so AutoGraph is skipped: converting
    # the heads' code costs several seconds of tracing for nothing.
    @tf.autograph.experimental.do_not_convert
    def losses(self, features_list, proposals, proposal_valid, image_sizes, gt_boxes,
               gt_classes, gt_masks=None, crowd_boxes=None, training: bool = True,
               return_metrics: bool = False):
        """Training losses: dict(loss_cls, loss_box_reg[, loss_mask]); with return_metrics,
        (losses, classification_metrics) for logging.

        proposals (B, P, 4) with proposal_valid (B, P); image_sizes (B, 2) (unused: proposals
        and GT are already inside the image); gt_boxes (B, G, 4), gt_classes (B, G) with -1
        padding, gt_masks (B, G, Hp, Wp) 0/1, crowd_boxes (B, C, 4) zero-padded.
        """
        del image_sizes
        if crowd_boxes is None:
            crowd_boxes = tf.zeros(tf.stack([tf.shape(gt_boxes)[0], 0, 4]), tf.float32)
        samples = self.sampler(proposals, proposal_valid, gt_boxes, gt_classes, crowd_boxes)
        logits, deltas = self._box_outputs(features_list, samples.boxes, training)
        out = self.box_predictor.losses(logits, deltas, samples)
        if self.mask_on:
            out["loss_mask"] = self._mask_loss(features_list, samples, gt_masks, training)
        if return_metrics:
            return out, classification_metrics(tf.stop_gradient(logits), samples)
        return out

    def _mask_loss(self, features_list, samples: ROISamples, gt_masks, training: bool):
        """Mask loss on the foreground ROIs of all images, gathered into N = #foreground rows
        (a dynamic count, as in detectron2): background and padding slots never reach the mask
        head. Without foreground the loss is 0."""
        f = self.sampler.max_foreground  # every foreground ROI sits in the first F slots
        fg = samples.foreground[:, :f]  # (B, F) bool
        n = tf.reduce_sum(tf.cast(fg, tf.int32))
        # at least one row (slot (0, 0), weight 0): an empty batch would reach the convs, whose
        # CPU kernels return a wrong spatial shape for 0 rows
        rows = tf.concat([tf.cast(tf.where(fg), tf.int32), tf.zeros([1, 2], tf.int32)], 0)
        rows = rows[:tf.maximum(n, 1)]  # (N', 2) (image, slot)
        weights = tf.cast(tf.range(tf.shape(rows)[0]) < n, tf.float32)  # (N',)
        image = rows[:, 0]
        boxes = tf.gather_nd(samples.boxes, rows)  # (N', 4)
        classes = tf.gather_nd(samples.classes, rows)  # (N',)
        x = self._pool(self.mask_pooler, features_list, boxes, image)  # (N', 14, 14, C)
        logits = self.mask_head(x, training=training)  # (N', M, M, K')
        # targets: the B images' G masks as one stack of B*G, indexed per row
        shape = tf.shape(gt_masks)  # (B, G, Hp, Wp)
        stack_index = image * shape[1] + tf.gather_nd(samples.gt_indices, rows)  # (N',)
        stack = tf.reshape(gt_masks, tf.stack([1, shape[0] * shape[1], shape[2], shape[3]]))
        targets = mask_rcnn_targets(stack, boxes[None], stack_index[None],
                                    self.mask_size)[0]  # (N', M, M)
        return mask_rcnn_loss(logits, classes, targets, weights)

    @tf.autograph.experimental.do_not_convert
    def inference(self, features_list, proposals, proposal_valid, image_sizes):
        """Detections per image, padded to D: dict(boxes, scores, classes, num_detections
        [, masks (B, D, 28, 28) probabilities of the predicted class]); padding rows are zero."""
        logits, deltas = self._box_outputs(features_list, proposals, training=False)
        out = self.box_predictor.inference(logits, deltas, proposals, proposal_valid, image_sizes)
        if self.mask_on:
            boxes = out["boxes"]  # (B, D, 4)
            mask_logits = self._mask_logits(features_list, boxes, training=False)
            probs = mask_rcnn_inference(mask_logits, tf.reshape(out["classes"], [-1]))
            b, d = tf.shape(boxes)[0], tf.shape(boxes)[1]
            probs = tf.reshape(probs, tf.stack([b, d, self.mask_size, self.mask_size]))
            real = tf.range(d)[None, :] < out["num_detections"][:, None]  # (B, D)
            out["masks"] = tf.where(real[:, :, None, None], probs, 0.0)
        return out
