"""Shared by the box-head, fast_rcnn, sampling, ROI-heads and fast-path tests: small ROI-head
configs, random boxes, hand-built samples and batches, and NumPy IoU written from detectron2's
definition (pairwise_iou: intersection / union, 0 for no overlap)."""
import numpy as np
import tensorflow as tf

from tfmrcnn.config import get_cfg
from tfmrcnn.modeling import roi_heads as rh
from tfmrcnn.modeling.sampling import ROISamples

STRIDES = [4, 8, 16, 32]


# ---------------------------------------------------------------- NumPy references
def np_area(b):
    return (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])


def np_inter(a, b):
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    return np.clip(iw, 0, None) * np.clip(ih, 0, None)


def np_iou(a, b):
    inter = np_inter(a, b)
    union = np_area(a)[:, None] + np_area(b)[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(inter > 0, inter / union, 0.0)


# ---------------------------------------------------------------- configs and boxes
def small_cfg(k=3, s=16, frac=0.25, d=10, fc=16, mask=True, agnostic=False, num_conv=0):
    cfg = get_cfg()
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = k
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = s
    cfg.MODEL.ROI_HEADS.POSITIVE_FRACTION = frac
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = fc
    cfg.MODEL.ROI_BOX_HEAD.NUM_CONV = num_conv
    cfg.MODEL.ROI_BOX_HEAD.CONV_DIM = 8
    cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = agnostic
    cfg.MODEL.ROI_MASK_HEAD.CONV_DIM = 8
    cfg.MODEL.ROI_MASK_HEAD.NUM_CONV = 2
    cfg.MODEL.MASK_ON = mask
    cfg.TEST.DETECTIONS_PER_IMAGE = d
    return cfg


def random_boxes(rng, n, size=64.0, lo=4.0, hi=30.0):
    xy = rng.uniform(0, size - lo, (n, 2))
    wh = rng.uniform(lo, hi, (n, 2))
    return np.concatenate([xy, np.minimum(xy + wh, size)], -1).astype(np.float32)


def jitter(rng, box, n, scale=0.08):
    w, h = box[2] - box[0], box[3] - box[1]
    return (box[None] + rng.normal(0, scale, (n, 4)) * [w, h, w, h]).astype(np.float32)


def hand_samples():
    """2 images x 4 slots: 3 foreground, 3 background, 2 padding."""
    boxes = np.array([[[0, 0, 10, 10], [5, 5, 20, 30], [1, 2, 3, 4], [0, 0, 0, 0]],
                      [[10, 10, 40, 30], [2, 2, 9, 9], [0, 0, 5, 5], [0, 0, 0, 0]]], np.float32)
    gt = np.array([[[1, 1, 11, 12], [4, 6, 22, 28], [0, 0, 0, 0], [0, 0, 0, 0]],
                   [[12, 8, 38, 33], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]], np.float32)
    fg = np.array([[1, 1, 0, 0], [1, 0, 0, 0]], bool)
    valid = np.array([[1, 1, 1, 0], [1, 1, 1, 0]], bool)
    classes = np.array([[2, 0, 3, 3], [1, 3, 3, 3]], np.int32)
    samples = ROISamples(boxes=tf.constant(boxes), classes=tf.constant(classes),
                         gt_boxes=tf.constant(gt), gt_indices=tf.zeros([2, 4], tf.int32),
                         valid=tf.constant(valid), foreground=tf.constant(fg))
    return samples, boxes, gt, fg, valid, classes


# ---------------------------------------------------------------- StandardROIHeads inputs
def features(rng, b, c=8, size=64):
    return [tf.constant(rng.normal(0, 1, (b, size // s, size // s, c)).astype(np.float32))
            for s in STRIDES]


def build_heads(cfg, seed=0):
    tf.random.set_seed(seed)
    heads = rh.StandardROIHeads(cfg, 8, STRIDES)
    # larger predictor weights than the init so scores are well separated (no near-ties)
    rng = np.random.default_rng(seed)
    for lin, std in ((heads.box_predictor.cls_score, 0.3), (heads.box_predictor.bbox_pred, 0.05)):
        lin.weight.assign(rng.normal(0, std, lin.weight.shape).astype(np.float32))
    return heads


def train_batch(rng, b=2, g=3, p=20, size=64):
    gt = np.zeros((b, g, 4), np.float32)
    gt_classes = np.full((b, g), -1, np.int32)
    masks = np.zeros((b, g, size, size), np.uint8)
    proposals = np.zeros((b, p, 4), np.float32)
    for i in range(b):
        n = g - i  # image 1 has one padding GT row
        gt[i, :n] = random_boxes(rng, n, size, 12, 30)
        gt_classes[i, :n] = rng.integers(0, 3, n)
        for j in range(n):
            x0, y0, x1, y1 = gt[i, j].astype(int)
            masks[i, j, y0:y1, x0:x1] = rng.random((y1 - y0, x1 - x0)) < 0.7
        proposals[i] = np.concatenate([jitter(rng, gt[i, 0], 4), random_boxes(rng, p - 4, size)])
    valid = np.ones((b, p), bool)
    valid[1, -3:] = False
    crowd = np.zeros((b, 1, 4), np.float32)
    return [tf.constant(x) for x in (proposals, valid, gt, gt_classes, masks, crowd)]
