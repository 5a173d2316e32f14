"""Box predictor of the ROI heads: detectron2's FastRCNNOutputLayers (modeling/roi_heads/
fast_rcnn.py) with its losses, fast_rcnn_inference and training statistics.

Conventions
-----------
- Classes are contiguous 0..K-1; the background label is K (detectron2), never 0 (tensorpack).
  ``cls_score`` has K+1 outputs with background LAST; ``bbox_pred`` has 4K outputs (class k at
  columns 4k..4k+3), or 4 with a class-agnostic regression.
- Boxes are xyxy in resized-image pixels; ROI deltas use weights (10, 10, 5, 5) by default and
  the log(1000/16) clamp of detectron2's Box2BoxTransform.
- Both losses are divided by the number of sampled ROIs of all images together (detectron2's
  ``gt_classes.numel()``); the training samples are `sampling.ROISamples`.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import tensorflow as tf

from tfmrcnn.modeling import box_ops
from tfmrcnn.modeling.layers import Linear
from tfmrcnn.modeling.sampling import ROISamples

# detectron2's _DEFAULT_SCALE_CLAMP: largest dw/dh applied when decoding
SCALE_CLAMP = box_ops.DEFAULT_SCALE_CLAMP


def classification_metrics(logits, samples: ROISamples) -> Dict[str, tf.Tensor]:
    """detectron2's _log_classification_stats: fast_rcnn/{cls_accuracy, fg_cls_accuracy,
    false_negative} of logits (B, S, K+1) on the sampled ROIs of all images.

    The fg ones are 0 without foreground (detectron2 logs nothing then).
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
    }


class FastRCNNOutputLayers(tf.Module):
    """cls_score / bbox_pred linear layers on the box head's output, their losses and inference.

    Variables are ``{prefix}.cls_score`` (normal std 0.01) and ``{prefix}.bbox_pred`` (normal
    std 0.001), prefix ``roi_heads.box_predictor`` (a cascade stage s: ``...box_predictor.{s}``).
    """

    def __init__(self, input_dim: int, num_classes: int,
                 bbox_reg_weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0),
                 cls_agnostic_bbox_reg: bool = False, smooth_l1_beta: float = 0.0,
                 box_reg_loss_weight: float = 1.0, test_score_thresh: float = 0.05,
                 test_nms_thresh: float = 0.5, test_topk_per_image: int = 100,
                 prefix: str = "roi_heads.box_predictor"):
        super().__init__(name="box_predictor")
        self.num_classes = k = num_classes
        self.agnostic = cls_agnostic_bbox_reg
        num_reg = 1 if self.agnostic else k
        self.cls_score = Linear(f"{prefix}.cls_score", input_dim, k + 1, init="normal:0.01")
        self.bbox_pred = Linear(f"{prefix}.bbox_pred", input_dim, 4 * num_reg,
                                init="normal:0.001")
        self.box2box = box_ops.Box2BoxTransform(tuple(bbox_reg_weights), SCALE_CLAMP)
        self.smooth_l1_beta = smooth_l1_beta
        self.box_loss_weight = box_reg_loss_weight
        self.score_thresh = test_score_thresh
        self.nms_thresh = test_nms_thresh
        self.detections_per_image = test_topk_per_image

    @classmethod
    def from_config(cls, cfg, input_dim: int, prefix: str = "roi_heads.box_predictor",
                    bbox_reg_weights: Optional[Sequence[float]] = None
                    ) -> "FastRCNNOutputLayers":
        """The predictor of MODEL.ROI_BOX_HEAD / MODEL.ROI_HEADS / TEST.DETECTIONS_PER_IMAGE;
        `bbox_reg_weights` replaces ROI_BOX_HEAD.BBOX_REG_WEIGHTS (a cascade stage's own)."""
        bcfg, hcfg = cfg.MODEL.ROI_BOX_HEAD, cfg.MODEL.ROI_HEADS
        if bcfg.BBOX_REG_LOSS_TYPE != "smooth_l1":
            raise ValueError(f"unsupported BBOX_REG_LOSS_TYPE {bcfg.BBOX_REG_LOSS_TYPE!r}")
        if bbox_reg_weights is None:
            bbox_reg_weights = bcfg.BBOX_REG_WEIGHTS
        return cls(input_dim, hcfg.NUM_CLASSES, bbox_reg_weights=bbox_reg_weights,
                   cls_agnostic_bbox_reg=bcfg.CLS_AGNOSTIC_BBOX_REG,
                   smooth_l1_beta=bcfg.SMOOTH_L1_BETA,
                   box_reg_loss_weight=bcfg.BBOX_REG_LOSS_WEIGHT,
                   test_score_thresh=hcfg.SCORE_THRESH_TEST,
                   test_nms_thresh=hcfg.NMS_THRESH_TEST,
                   test_topk_per_image=cfg.TEST.DETECTIONS_PER_IMAGE, prefix=prefix)

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
        return self.detect(self.predict_boxes(deltas, proposals, image_sizes),
                           self.predict_probs(logits), proposal_valid)

    @staticmethod
    def predict_probs(logits):
        """Class probabilities (B, P, K+1) of logits (B, P, K+1), background last."""
        return tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)

    def detect(self, boxes, probs, proposal_valid):
        """fast_rcnn_inference proper on decoded, clipped boxes (B, P, K', 4) and probabilities
        (B, P, K+1) (the cascade passes its stage average); output as `inference`."""
        probs = probs[..., :-1]  # (B, P, K): background dropped
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
