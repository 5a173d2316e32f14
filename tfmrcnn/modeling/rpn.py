"""Region Proposal Network: head, anchor targets, losses and proposal selection (detectron2's RPN).

Conventions owned here
----------------------
- Per level, the head's outputs are flattened in order (y, x, anchor) to match
  `DefaultAnchorGenerator`: objectness (B, Hl*Wl*A), deltas (B, Hl*Wl*A, 4). The deltas conv has
  4A output channels read as (A, 4): channel a*4 + j is coordinate j of anchor a (detectron2
  views its NCHW (B, A*4, H, W) output as (B, A, 4, H, W)).
- Anchor labels: 1 foreground, 0 background, -1 ignored. Losses are sums over the sampled
  anchors divided by (images * BATCH_SIZE_PER_IMAGE), whatever the number actually sampled.
- Proposals are a fixed P = POST_NMS_TOPK rows per image sorted by decreasing objectness logit,
  with `proposal_valid` marking real rows; padded rows are zero. They carry no gradient.

Entry points are ``do_not_convert`` (no Python decisions on tensor values; see box_ops).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import tensorflow as tf

from tfmrcnn.modeling import box_ops
from tfmrcnn.modeling.anchors import DefaultAnchorGenerator
from tfmrcnn.modeling.layers import Conv2D, NamedModule
from tfmrcnn.modeling.matcher import Matcher
from tfmrcnn.modeling.sampling import subsample_labels

# anchors covered at least this much (intersection / anchor area) by a crowd region are ignored
CROWD_IOA_THRESH = 0.5


class RPNHead(NamedModule):
    """detectron2's StandardRPNHead: shared 3x3 conv + ReLU, then 1x1 objectness and 1x1 deltas."""

    def __init__(self, in_channels: int, num_anchors: int, box_dim: int = 4,
                 prefix: str = "proposal_generator.rpn_head", winograd: bool = False):
        super().__init__(prefix)
        self.num_anchors = num_anchors
        self.box_dim = box_dim
        init = "normal:0.01"
        self.conv = Conv2D(f"{prefix}.conv", in_channels, in_channels, 3,
                           activation=tf.nn.relu, init=init, winograd=winograd)
        self.objectness_logits = Conv2D(f"{prefix}.objectness_logits", in_channels, num_anchors,
                                        1, init=init)
        self.anchor_deltas = Conv2D(f"{prefix}.anchor_deltas", in_channels,
                                    num_anchors * box_dim, 1, init=init)

    @tf.autograph.experimental.do_not_convert
    def __call__(self, features: Sequence[tf.Tensor]) -> Tuple[List[tf.Tensor], List[tf.Tensor]]:
        """Per level (B, Hl, Wl, C) -> objectness [(B, Hl*Wl*A)], deltas [(B, Hl*Wl*A, 4)]."""
        objectness, deltas = [], []
        for x in features:
            t = self.conv(x)
            b = tf.shape(x)[0]
            # (B, H, W, A) -> (B, H*W*A); both casts keep losses/decoding in float32
            objectness.append(tf.reshape(tf.cast(self.objectness_logits(t), tf.float32), [b, -1]))
            # (B, H, W, A*4) -> (B, H, W, A, 4) -> (B, H*W*A, 4)
            deltas.append(tf.reshape(tf.cast(self.anchor_deltas(t), tf.float32),
                                     [b, -1, self.box_dim]))
        return objectness, deltas


class RPN(tf.Module):
    """detectron2's RPN on a list of feature maps, batched over images with padding.

    ``seed`` fixes the anchor sampling (see `subsample_labels`): for tests only. `winograd`
    lets the head's 3x3 conv use Winograd (see `layers.Conv2D`).
    """

    def __init__(self, cfg, in_channels: int, strides: Sequence[int], seed: Optional[int] = None,
                 winograd: bool = False):
        super().__init__(name=None)
        rcfg, acfg = cfg.MODEL.RPN, cfg.MODEL.ANCHOR_GENERATOR
        if list(getattr(rcfg, "CONV_DIMS", [-1])) != [-1]:
            raise NotImplementedError("only MODEL.RPN.CONV_DIMS = [-1] is supported")
        loss_type = getattr(rcfg, "BBOX_REG_LOSS_TYPE", "smooth_l1")
        if loss_type != "smooth_l1":
            raise NotImplementedError(f"RPN BBOX_REG_LOSS_TYPE {loss_type!r}: only smooth_l1")
        self.anchor_generator = DefaultAnchorGenerator(acfg.SIZES, acfg.ASPECT_RATIOS, strides,
                                                       acfg.OFFSET)
        num_anchors = set(self.anchor_generator.num_anchors)
        if len(num_anchors) != 1:
            raise ValueError("the shared RPN head needs the same number of anchors on every level")
        self.rpn_head = RPNHead(in_channels, num_anchors.pop(), winograd=winograd)
        self.box2box_transform = box_ops.Box2BoxTransform(tuple(rcfg.BBOX_REG_WEIGHTS))
        self.anchor_matcher = Matcher(list(rcfg.IOU_THRESHOLDS), list(rcfg.IOU_LABELS),
                                      allow_low_quality_matches=True)
        self.boundary_thresh = float(rcfg.BOUNDARY_THRESH)
        self.batch_size_per_image = int(rcfg.BATCH_SIZE_PER_IMAGE)
        self.positive_fraction = float(rcfg.POSITIVE_FRACTION)
        self.smooth_l1_beta = float(rcfg.SMOOTH_L1_BETA)
        weight = float(rcfg.LOSS_WEIGHT)
        self.loss_weight = {
            "loss_rpn_cls": weight,
            "loss_rpn_loc": float(getattr(rcfg, "BBOX_REG_LOSS_WEIGHT", 1.0)) * weight,
        }
        # keyed by `training`
        self.pre_nms_topk = {True: int(rcfg.PRE_NMS_TOPK_TRAIN),
                             False: int(rcfg.PRE_NMS_TOPK_TEST)}
        self.post_nms_topk = {True: int(rcfg.POST_NMS_TOPK_TRAIN),
                              False: int(rcfg.POST_NMS_TOPK_TEST)}
        self.nms_thresh = float(rcfg.NMS_THRESH)
        self.min_box_size = float(cfg.MODEL.PROPOSAL_GENERATOR.MIN_SIZE)
        self.seed = seed

    # ------------------------------------------------------------------ forward
    @tf.autograph.experimental.do_not_convert
    def __call__(self, features: Sequence[tf.Tensor], image_sizes, training: bool,
                 gt_boxes=None, gt_classes=None, crowd_boxes=None):
        """features: per level (B, Hl, Wl, C), finest first; image_sizes (B, 2) int32 (h, w).

        Returns proposals (B, P, 4) float32, proposal_scores (B, P) logits, proposal_valid
        (B, P) bool and losses ({} unless training).
        """
        training = bool(training)  # a Python flag: it picks the graph, not a tensor value
        objectness, deltas = self.rpn_head(features)
        anchors = self.anchor_generator([(tf.shape(f)[1], tf.shape(f)[2]) for f in features])
        losses: Dict[str, tf.Tensor] = {}
        if training:
            if gt_boxes is None:
                raise ValueError("training the RPN needs gt_boxes")
            all_anchors = tf.concat(anchors, axis=0)  # (NA, 4)
            gt_labels, matched_gt_boxes = self.label_and_sample_anchors(
                all_anchors, image_sizes, gt_boxes, gt_classes, crowd_boxes)
            losses = self.losses(all_anchors, gt_labels, matched_gt_boxes,
                                 tf.concat(objectness, axis=1), tf.concat(deltas, axis=1))
        proposals, scores, valid = self.find_top_proposals(anchors, objectness, deltas,
                                                           image_sizes, training)
        return proposals, scores, valid, losses

    # ------------------------------------------------------------------ targets
    @tf.autograph.experimental.do_not_convert
    def label_anchors(self, anchors, image_sizes, gt_boxes, gt_valid, crowd_boxes=None):
        """Match every anchor (NA, 4) to the gt (B, G, 4) of its image, before sampling.

        Returns labels (B, NA) int32 in {-1, 0, 1} and matches (B, NA) int32 gt indices.
        """
        iou = box_ops.pairwise_iou(gt_boxes, anchors)  # (B, G, NA)
        matches, labels = self.anchor_matcher(iou, gt_valid)
        if self.boundary_thresh >= 0:
            inside = self._inside_image(anchors, image_sizes)  # (B, NA)
            labels = tf.where(inside, labels, -1)
        if crowd_boxes is not None:
            crowd_boxes = tf.cast(crowd_boxes, tf.float32)
            crowd_valid = box_ops.nonempty_mask(crowd_boxes)  # (B, C)
            ioa = box_ops.pairwise_ioa(crowd_boxes, anchors)  # (B, C, NA) over anchor area
            crowded = tf.reduce_any((ioa >= CROWD_IOA_THRESH) & crowd_valid[..., None], axis=1)
            labels = tf.where(crowded & tf.not_equal(labels, 1), -1, labels)
        return labels, matches

    def _inside_image(self, anchors, image_sizes):
        # (NA, 4), (B, 2) -> (B, NA): anchors within BOUNDARY_THRESH pixels of the image
        t = self.boundary_thresh
        sizes = tf.cast(image_sizes, tf.float32)
        h, w = sizes[:, 0:1], sizes[:, 1:2]  # (B, 1)
        a = anchors[None]  # (1, NA, 4)
        return ((a[..., 0] >= -t) & (a[..., 1] >= -t) & (a[..., 2] < w + t) & (a[..., 3] < h + t))

    @tf.autograph.experimental.do_not_convert
    def label_and_sample_anchors(self, anchors, image_sizes, gt_boxes, gt_classes=None,
                                 crowd_boxes=None):
        """Labels (B, NA) int32 after balanced sampling (unsampled = -1) and the matched gt box
        (B, NA, 4) of every anchor (meaningful for positives only). No gradient."""
        gt_boxes = tf.cast(gt_boxes, tf.float32)
        if gt_classes is not None:
            gt_valid = tf.cast(gt_classes, tf.int32) >= 0
        else:
            gt_valid = box_ops.nonempty_mask(gt_boxes)
        labels, matches = self.label_anchors(anchors, image_sizes, gt_boxes, gt_valid, crowd_boxes)
        pos, neg = subsample_labels(labels, self.batch_size_per_image, self.positive_fraction,
                                    0, seed=self.seed)
        labels = tf.where(pos, 1, tf.where(neg, 0, -1))
        # a zero row keeps the gather in range when G == 0
        padded = tf.pad(gt_boxes, [[0, 0], [0, 1], [0, 0]])
        matched = tf.gather(padded, matches, batch_dims=1)  # (B, NA, 4)
        return tf.stop_gradient(labels), tf.stop_gradient(matched)

    # ------------------------------------------------------------------ losses
    @tf.autograph.experimental.do_not_convert
    def losses(self, anchors, gt_labels, matched_gt_boxes, pred_objectness, pred_deltas):
        """anchors (NA, 4), gt_labels (B, NA), matched_gt_boxes (B, NA, 4), predictions (B, NA)
        and (B, NA, 4) -> {"loss_rpn_cls", "loss_rpn_loc"}, scalars."""
        gt_labels = tf.stop_gradient(tf.cast(gt_labels, tf.int32))
        pos = tf.equal(gt_labels, 1)  # (B, NA)
        sampled = gt_labels >= 0
        gt_deltas = self.box2box_transform.get_deltas(anchors[None], matched_gt_boxes)
        # non-positive anchors may match a zero box (log 0): keep their targets finite
        gt_deltas = tf.stop_gradient(tf.where(pos[..., None], gt_deltas, 0.0))
        loc = box_ops.smooth_l1_loss(tf.cast(pred_deltas, tf.float32) - gt_deltas, self.smooth_l1_beta)
        loc = tf.reduce_sum(tf.where(pos[..., None], loc, 0.0))
        bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.cast(pos, tf.float32),
                                                      logits=tf.cast(pred_objectness, tf.float32))
        cls = tf.reduce_sum(tf.where(sampled, bce, 0.0))
        normalizer = tf.cast(tf.shape(gt_labels)[0] * self.batch_size_per_image, tf.float32)
        return {"loss_rpn_cls": cls / normalizer * self.loss_weight["loss_rpn_cls"],
                "loss_rpn_loc": loc / normalizer * self.loss_weight["loss_rpn_loc"]}

    # ------------------------------------------------------------------ proposals
    @tf.autograph.experimental.do_not_convert
    def find_top_proposals(self, anchors, objectness, deltas, image_sizes, training: bool):
        """detectron2's find_top_rpn_proposals, batched over images and levels.

        Per level: top-k logits (k = min(PRE_NMS_TOPK, Hl*Wl*A)), decode, clip, drop boxes
        with a side <= MIN_SIZE or non-finite values, NMS; then the POST_NMS_TOPK best over all
        levels per image. Every level is padded to PRE_NMS_TOPK so all (image, level) pairs
        go through one fixed-shape NMS per row. The NMS is torchvision's batched_nms over an
        image's valid boxes with idxs = level (see box_ops.nms_coordinates): raw coordinates
        above TORCHVISION_TRICK_MAX_BOXES valid boxes, else the offset ones; offset levels never
        overlap, so one NMS per (image, level) row equals it.
        """
        pre_k, post_k = self.pre_nms_topk[training], self.post_nms_topk[training]
        boxes, scores, valid = [], [], []
        for anchors_l, obj_l, deltas_l in zip(anchors, objectness, deltas):
            b, s, v = self._top_decoded(anchors_l, tf.stop_gradient(obj_l),
                                        tf.stop_gradient(deltas_l), pre_k)
            boxes.append(b)
            scores.append(s)
            valid.append(v)
        boxes = box_ops.clip_boxes(tf.stack(boxes, axis=1), image_sizes)  # (B, L, K, 4)
        scores = tf.stack(scores, axis=1)  # (B, L, K)
        valid = (tf.stack(valid, axis=1)
                 & box_ops.nonempty_mask(boxes, self.min_box_size)
                 & tf.reduce_all(tf.math.is_finite(boxes), axis=-1)
                 & tf.math.is_finite(scores))

        num_levels = len(anchors)
        batch = tf.shape(scores)[0]
        per_level = min(pre_k, post_k)  # no level can contribute more than post_k
        # detectron2: batched_nms over all levels of an image with idxs = level; the levels'
        # coordinates are the raw or the offset boxes as torchvision chooses per image
        levels = tf.broadcast_to(tf.range(num_levels)[:, None], [num_levels, pre_k])
        nms_boxes = box_ops.nms_coordinates(
            tf.reshape(boxes, [batch, num_levels * pre_k, 4]),
            tf.reshape(levels, [1, num_levels * pre_k]),
            tf.reshape(valid, [batch, num_levels * pre_k]))  # (B, L*K, 4)
        flat_boxes = tf.reshape(boxes, [-1, pre_k, 4])  # (B*L, K, 4)
        flat_scores = tf.reshape(scores, [-1, pre_k])
        keep, keep_valid = box_ops.nms_rows(
            tf.reshape(nms_boxes, [-1, pre_k, 4]), flat_scores, tf.reshape(valid, [-1, pre_k]),
            self.nms_thresh, per_level)  # (B*L, per_level) each
        kept_boxes = tf.reshape(tf.gather(flat_boxes, keep, batch_dims=1),
                                [batch, num_levels * per_level, 4])
        kept_scores = tf.reshape(tf.gather(flat_scores, keep, batch_dims=1),
                                 [batch, num_levels * per_level])
        kept_valid = tf.reshape(keep_valid, [batch, num_levels * per_level])

        top = min(post_k, num_levels * per_level)
        _, order = tf.math.top_k(tf.where(kept_valid, kept_scores, float("-inf")), k=top)
        out_valid = tf.gather(kept_valid, order, batch_dims=1)  # (B, top)
        out_boxes = tf.where(out_valid[..., None], tf.gather(kept_boxes, order, batch_dims=1), 0.0)
        out_scores = tf.where(out_valid, tf.gather(kept_scores, order, batch_dims=1), 0.0)
        pad = post_k - top
        if pad:
            out_boxes = tf.pad(out_boxes, [[0, 0], [0, pad], [0, 0]])
            out_scores = tf.pad(out_scores, [[0, 0], [0, pad]])
            out_valid = tf.pad(out_valid, [[0, 0], [0, pad]])
        return out_boxes, out_scores, out_valid

    def _top_decoded(self, anchors, objectness, deltas, k: int):
        """One level: the k best logits of each image and their decoded boxes.

        anchors (N, 4), objectness (B, N), deltas (B, N, 4) -> boxes (B, k, 4), scores (B, k),
        valid (B, k). Levels with N < k are padded (valid False); the static k keeps the
        shapes fixed for XLA.
        """
        n = tf.shape(objectness)[1]
        batch = tf.shape(objectness)[0]
        padded = tf.concat([objectness, tf.fill([batch, k], float("-inf"))], axis=1)
        scores, idx = tf.math.top_k(padded, k=k)  # (B, k)
        valid = idx < n
        idx = tf.minimum(idx, n - 1)
        boxes = self.box2box_transform.apply_deltas(tf.gather(deltas, idx, batch_dims=1),
                                                    tf.gather(anchors, idx))  # (B, k, 4)
        scores = tf.where(valid, scores, 0.0)
        return boxes, scores, valid
