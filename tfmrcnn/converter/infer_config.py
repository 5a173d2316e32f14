"""Guess the architecture config from the tensor shapes of a detectron2 state dict.

Convention: shapes are detectron2's (PyTorch layouts). What the weights determine is read from
them (depth, widths, groups, norms, FPN width, head sizes, class count, mask head, agnostic
heads); what they cannot tell (STRIDE_IN_1X1, test-time thresholds, input format, anchor sizes)
is taken from tfmrcnn's defaults, which are detectron2's mask_rcnn_R_50_FPN settings, and listed
in the returned assumptions so the CLI can print them.
"""
from __future__ import annotations

import math
import re
from typing import Dict, List, Optional, Tuple

from tfmrcnn.config import get_cfg

from .d2_names import BOTTOM_UP, RES5_HEAD, resnet_num_blocks

__all__ = ["InferenceError", "infer_cfg_from_shapes"]

Shapes = Dict[str, Tuple[int, ...]]


class InferenceError(ValueError):
    """The shapes do not describe a ResNet-FPN R-CNN we can build."""


def _count(shapes: Shapes, pattern: str) -> int:
    """Number of distinct integers captured by `pattern` (one group) over all names."""
    regex = re.compile(pattern)
    return len({m.group(1) for name in shapes for m in [regex.match(name)] if m})


def _norm_of(shapes: Shapes, prefix: str, stat_norm: str) -> str:
    """Norm type from how many tensors `prefix.norm.*` has: 4 -> stat_norm, 2 -> GN, 0 -> ''."""
    n = sum(1 for name in shapes if name.startswith(prefix + ".norm."))
    if n not in (0, 2, 4):
        raise InferenceError(f"{prefix}.norm has {n} tensors (expected 0, 2 or 4)")
    return {0: "", 2: "GN", 4: stat_norm}[n]


def _depth(shapes: Shapes, prefix: str, stages) -> int:
    basic = f"{prefix}.res2.0.conv3.weight" not in shapes
    blocks = tuple(_count(shapes, rf"^{re.escape(prefix)}\.res{s}\.(\d+)\.") for s in stages)
    for depth in ((18, 34) if basic else (50, 101, 152)):
        if resnet_num_blocks(depth)[:len(stages)] == blocks:
            return depth
    raise InferenceError(f"no ResNet depth has {blocks} blocks in res{stages[0]}..res"
                         f"{stages[-1]} ({'basic' if basic else 'bottleneck'} blocks)")


def _c4_layout(shapes: Shapes, cfg, notes: List[str]) -> bool:
    """A C4 checkpoint (ResNet ``backbone.*`` up to res4, ``roi_heads.res5.*``): sets
    detectron2's C4 wiring (Base-RCNN-C4.yaml with detectron2's defaults) and says so."""
    if f"{RES5_HEAD}.0.conv1.weight" not in shapes:
        return False
    m = cfg.MODEL
    m.BACKBONE.NAME = "build_resnet_backbone"
    m.RESNETS.OUT_FEATURES = ["res4"]
    m.RPN.IN_FEATURES = ["res4"]
    m.ROI_HEADS.IN_FEATURES = ["res4"]
    m.ROI_HEADS.NAME = "Res5ROIHeads"
    m.ANCHOR_GENERATOR.SIZES = [[32, 64, 128, 256, 512]]
    m.RPN.PRE_NMS_TOPK_TEST, m.RPN.POST_NMS_TOPK_TEST = 6000, 1000
    m.RPN.PRE_NMS_TOPK_TRAIN, m.RPN.POST_NMS_TOPK_TRAIN = 12000, 2000
    m.ROI_BOX_HEAD.POOLER_RESOLUTION = 14
    notes.append("C4 model (roi_heads.res5): RPN and Res5ROIHeads on res4, anchors "
                 "[[32, 64, 128, 256, 512]], RPN top-k 6000 / 1000 at test, pooler 14 x 14 "
                 "assumed (detectron2's Base-RCNN-C4)")
    return True


def _dc5_layout(shapes: Shapes, cfg, notes: List[str]) -> bool:
    """A DC5 checkpoint (ResNet ``backbone.*`` up to res5, no FPN, no ``roi_heads.res5``): sets
    detectron2's Base-RCNN-DilatedC5 wiring and says so. The dilation is not in the weights:
    2 is assumed (a C5 without dilation is in no model zoo)."""
    if "backbone.stem.conv1.weight" not in shapes or f"{RES5_HEAD}.0.conv1.weight" in shapes:
        return False
    m = cfg.MODEL
    m.BACKBONE.NAME = "build_resnet_backbone"
    m.RESNETS.OUT_FEATURES = ["res5"]
    m.RESNETS.RES5_DILATION = 2
    m.FPN.IN_FEATURES = []
    m.RPN.IN_FEATURES = ["res5"]
    m.ROI_HEADS.IN_FEATURES = ["res5"]
    m.ANCHOR_GENERATOR.SIZES = [[32, 64, 128, 256, 512]]
    m.RPN.PRE_NMS_TOPK_TEST, m.RPN.POST_NMS_TOPK_TEST = 6000, 1000
    m.RPN.PRE_NMS_TOPK_TRAIN, m.RPN.POST_NMS_TOPK_TRAIN = 12000, 2000
    notes.append("DC5 model (ResNet backbone.* without FPN, heads on res5): "
                 "MODEL.RESNETS.RES5_DILATION = 2, anchors [[32, 64, 128, 256, 512]], RPN top-k "
                 "6000 / 1000 at test assumed (detectron2's Base-RCNN-DilatedC5)")
    return True


def _backbone(shapes: Shapes, cfg, notes: List[str], backbone_only: bool = False) -> None:
    r = cfg.MODEL.RESNETS
    c4 = not backbone_only and _c4_layout(shapes, cfg, notes)
    dc5 = not backbone_only and not c4 and _dc5_layout(shapes, cfg, notes)
    if c4 or dc5:  # detectron2 pads for a plain ResNet to the largest image, unrounded
        cfg.INPUT.SIZE_DIVISIBILITY = 1
    prefix = "backbone" if c4 or dc5 else BOTTOM_UP
    r.DEPTH = _depth(shapes, prefix, (2, 3, 4) if c4 else (2, 3, 4, 5))
    r.NORM = _norm_of(shapes, f"{prefix}.stem.conv1", "FrozenBN")
    r.STEM_OUT_CHANNELS = shapes[f"{prefix}.stem.conv1.weight"][0]
    if r.DEPTH >= 50:
        conv2 = shapes[f"{prefix}.res2.0.conv2.weight"]  # (width, width / groups, 3, 3)
        r.NUM_GROUPS = conv2[0] // conv2[1]
        r.WIDTH_PER_GROUP = conv2[0] // r.NUM_GROUPS
        r.RES2_OUT_CHANNELS = shapes[f"{prefix}.res2.0.conv3.weight"][0]
    else:  # basic blocks: conv1 is (out, in, 3, 3); narrow R18/R34 are not 64 wide
        r.RES2_OUT_CHANNELS = shapes[f"{prefix}.res2.0.conv1.weight"][0]
    if r.NORM == "FrozenBN":
        notes.append("backbone norm: 4 tensors per norm read as FrozenBN (BN/SyncBN compute the "
                     "same at inference)")
    notes.append(f"MODEL.RESNETS.STRIDE_IN_1X1 = {r.STRIDE_IN_1X1} assumed "
                 "(not visible in the weights)")


def _fpn(shapes: Shapes, cfg) -> None:
    cfg.MODEL.FPN.OUT_CHANNELS = shapes["backbone.fpn_output2.weight"][0]
    cfg.MODEL.FPN.NORM = _norm_of(shapes, "backbone.fpn_lateral2", "SyncBN")


def _rpn(shapes: Shapes, cfg) -> None:
    anchors = shapes["proposal_generator.rpn_head.objectness_logits.weight"][0]
    a = cfg.MODEL.ANCHOR_GENERATOR
    default = len(a.SIZES[0]) * len(a.ASPECT_RATIOS[0])
    if anchors != default:
        raise InferenceError(f"the RPN predicts {anchors} anchors per location, the default "
                             f"anchors give {default}: pass the detectron2 config (--d2-config)")


def _cascade_stages(shapes: Shapes, cfg, notes: List[str]) -> int:
    """Stages of a CascadeROIHeads checkpoint (``roi_heads.box_head.{s}.*``), 0 for one head;
    sets ROI_HEADS.NAME. The weights do not show the stages' IoU thresholds and box-delta
    weights: detectron2's defaults are assumed, so the stage count must be theirs."""
    stages = _count(shapes, r"^roi_heads\.box_head\.(\d+)\.")
    if not stages:
        return 0
    cascade = cfg.MODEL.ROI_BOX_CASCADE_HEAD
    if stages != len(cascade.IOUS):
        raise InferenceError(f"the checkpoint has {stages} cascade stages (roi_heads.box_head.N)"
                             f"; without a config only detectron2's {len(cascade.IOUS)} are "
                             "known: pass the detectron2 config (--d2-config)")
    cfg.MODEL.ROI_HEADS.NAME = "CascadeROIHeads"
    notes.append(f"CascadeROIHeads with {stages} stages: MODEL.ROI_BOX_CASCADE_HEAD.IOUS = "
                 f"{list(cascade.IOUS)}, BBOX_REG_WEIGHTS = "
                 f"{[list(w) for w in cascade.BBOX_REG_WEIGHTS]} assumed (detectron2's defaults)")
    return stages


def _box_head(shapes: Shapes, cfg, notes: List[str]) -> int:
    """Fills ROI_BOX_HEAD, NUM_CLASSES (and the cascade, `_cascade_stages`); returns the class
    count. A cascade's stages share one architecture: stage 0's tensors are read."""
    h = cfg.MODEL.ROI_BOX_HEAD
    if cfg.MODEL.ROI_HEADS.NAME == "Res5ROIHeads":  # the predictor is on res5's mean
        return _box_predictor(shapes, cfg, "roi_heads.box_predictor", cascade=False)
    stage = ".0" if _cascade_stages(shapes, cfg, notes) else ""
    p = f"roi_heads.box_head{stage}"
    predictor = f"roi_heads.box_predictor{stage}"
    h.NUM_CONV = _count(shapes, rf"^{p}\.conv(\d+)\.weight$")
    h.NUM_FC = _count(shapes, rf"^{p}\.fc(\d+)\.weight$")
    channels = cfg.MODEL.FPN.OUT_CHANNELS
    if cfg.MODEL.BACKBONE.NAME == "build_resnet_backbone":  # DC5: on res5, 8x res2's width
        channels = cfg.MODEL.RESNETS.RES2_OUT_CHANNELS * 8
    if h.NUM_CONV:
        h.CONV_DIM = shapes[f"{p}.conv1.weight"][0]
        h.NORM = _norm_of(shapes, f"{p}.conv1", "SyncBN")
        channels = h.CONV_DIM
    first = f"{p}.fc1.weight" if h.NUM_FC else f"{predictor}.cls_score.weight"
    if h.NUM_FC:
        h.FC_DIM = shapes[f"{p}.fc1.weight"][0]
    side = math.isqrt(shapes[first][1] // channels)
    if side * side * channels != shapes[first][1]:
        raise InferenceError(f"{first} input width {shapes[first][1]} is not {channels} x R x R")
    h.POOLER_RESOLUTION = side
    return _box_predictor(shapes, cfg, predictor, cascade=bool(stage))


def _box_predictor(shapes: Shapes, cfg, predictor: str, cascade: bool) -> int:
    """NUM_CLASSES and CLS_AGNOSTIC_BBOX_REG from the predictor; returns the class count."""
    classes = shapes[f"{predictor}.cls_score.weight"][0] - 1
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = classes
    reg_outputs = shapes[f"{predictor}.bbox_pred.weight"][0]
    # one class: both readings are the same model; a cascade must be class-agnostic
    cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = reg_outputs == 4 and (classes > 1 or cascade)
    return classes


def _mask_head(shapes: Shapes, cfg, classes: int) -> None:
    p = "roi_heads.mask_head"
    cfg.MODEL.MASK_ON = f"{p}.deconv.weight" in shapes
    if not cfg.MODEL.MASK_ON:
        return
    h = cfg.MODEL.ROI_MASK_HEAD
    h.NUM_CONV = _count(shapes, rf"^{p}\.mask_fcn(\d+)\.weight$")
    h.CONV_DIM = shapes[f"{p}.deconv.weight"][1]
    if h.NUM_CONV:
        h.NORM = _norm_of(shapes, f"{p}.mask_fcn1", "SyncBN")
    h.CLS_AGNOSTIC_MASK = classes > 1 and shapes[f"{p}.predictor.weight"][0] == 1


def _summary(cfg, backbone_only: bool) -> str:
    m = cfg.MODEL
    r = m.RESNETS
    parts = [f"RESNETS.DEPTH={r.DEPTH}", f"NORM={r.NORM!r}", f"NUM_GROUPS={r.NUM_GROUPS}",
             f"WIDTH_PER_GROUP={r.WIDTH_PER_GROUP}"]
    if not backbone_only and m.ROI_HEADS.NAME == "Res5ROIHeads":
        parts += ["C4 (Res5ROIHeads)", f"NUM_CLASSES={m.ROI_HEADS.NUM_CLASSES}",
                  f"MASK_ON={m.MASK_ON}"]
    elif not backbone_only and m.BACKBONE.NAME == "build_resnet_backbone":
        parts += [f"DC5 (RES5_DILATION={m.RESNETS.RES5_DILATION})",
                  f"NUM_CLASSES={m.ROI_HEADS.NUM_CLASSES}", f"MASK_ON={m.MASK_ON}"]
    elif not backbone_only:
        parts += [f"FPN.OUT_CHANNELS={m.FPN.OUT_CHANNELS}", f"FPN.NORM={m.FPN.NORM!r}",
                  f"NUM_CLASSES={m.ROI_HEADS.NUM_CLASSES}", f"MASK_ON={m.MASK_ON}",
                  f"box head {m.ROI_BOX_HEAD.NUM_CONV} conv + {m.ROI_BOX_HEAD.NUM_FC} fc"]
    return ", ".join(parts)


def infer_cfg_from_shapes(shapes: Shapes, backbone_only: bool = False,
                          pixel_stats: Optional[Dict[str, list]] = None, base_cfg=None):
    """(cfg, assumptions) for a detectron2 state dict given as name -> PyTorch shape.

    pixel_stats: ``{"pixel_mean": [...], "pixel_std": [...]}`` when the checkpoint stores them.
    """
    cfg = (base_cfg.clone() if base_cfg is not None else get_cfg()).defrost()
    notes: List[str] = []
    try:
        _backbone(shapes, cfg, notes, backbone_only)
        if not backbone_only:
            if cfg.MODEL.BACKBONE.NAME == "build_resnet_fpn_backbone":
                _fpn(shapes, cfg)
            _rpn(shapes, cfg)
            classes = _box_head(shapes, cfg, notes)
            _mask_head(shapes, cfg, classes)
    except KeyError as e:
        raise InferenceError(f"cannot infer the architecture: tensor {e} is missing") from None
    notes.insert(0, "inferred from the weights: " + _summary(cfg, backbone_only))
    for key, cfg_key in (("pixel_mean", "PIXEL_MEAN"), ("pixel_std", "PIXEL_STD")):
        if pixel_stats and key in pixel_stats:
            cfg.MODEL[cfg_key] = [float(v) for v in pixel_stats[key]]
            notes.append(f"MODEL.{cfg_key} = {cfg.MODEL[cfg_key]} read from the checkpoint")
        else:
            notes.append(f"MODEL.{cfg_key} = {list(cfg.MODEL[cfg_key])} assumed")
    notes.append(f"INPUT.FORMAT = {cfg.INPUT.FORMAT}, anchors, test thresholds and top-k assumed "
                 "= detectron2's mask_rcnn_R_50_FPN values (pass --d2-config to set them)")
    if backbone_only:
        notes.append("backbone only: FPN/RPN/ROI heads keep tfmrcnn's defaults")
    return cfg, notes
