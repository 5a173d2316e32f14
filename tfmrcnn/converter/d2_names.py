"""The detectron2 state dict of a ResNet-FPN or C4 (Mask/Faster) R-CNN, from the config alone.

Convention: names and shapes are detectron2's (PyTorch layouts: conv (out, in/groups, kh, kw),
deconv (in, out, kh, kw), linear (out, in)), derived from detectron2's documented architecture
(modeling/backbone/resnet.py, fpn.py, proposal_generator/rpn.py, roi_heads/box_head.py,
fast_rcnn.py, mask_head.py, roi_heads.py's Res5ROIHeads), independently of tfmrcnn's model
code, so that it can serve as the reference the model's variable names are checked against.
The ResNet is ``backbone.bottom_up`` inside an FPN and ``backbone`` itself otherwise (C4), with
the stages up to the last of RESNETS.OUT_FEATURES; a C4 model's res5 is ``roi_heads.res5``.
Buffers that are not weights (``num_batches_tracked``, anchors, pixel statistics) are not
listed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

__all__ = [
    "TensorSpec", "expected_d2_tensors", "expected_d2_state_dict_shapes", "norm_suffixes",
    "resnet_num_blocks", "box_head_prefixes", "backbone_prefix", "place_backbone_weights",
    "BOTTOM_UP", "FPN_STAGES", "RES5_HEAD",
]

BOTTOM_UP = "backbone.bottom_up"
FPN_STAGES = (2, 3, 4, 5)  # res2..res5 feed the FPN; P6 is a parameter-free max-pool
RES5_HEAD = "roi_heads.res5"  # Res5ROIHeads' res5 stage (3 bottleneck blocks, any depth)

# Norms that keep batch statistics at inference; detectron2's debugging variants of SyncBN
# (nnSyncBN, naiveSyncBN, naiveSyncBN_N) store exactly what SyncBN stores.
_STAT_NORMS = ("FrozenBN", "BN", "SyncBN", "nnSyncBN", "naiveSyncBN", "naiveSyncBN_N")

_RESNET_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3),
                  152: (3, 8, 36, 3)}


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of the state dict.

    kind: "conv" (out, in/groups, kh, kw), "deconv" (in, out, kh, kw), "linear" (out, in),
    "vector" (C,) for biases and norm tensors.
    nchw_input: for a linear layer fed by a flattened feature map, its (C, H, W); detectron2
    flattens NCHW, tfmrcnn NHWC, so the converter permutes the input rows.
    """
    shape: Tuple[int, ...]
    kind: str
    nchw_input: Optional[Tuple[int, int, int]] = None


def norm_suffixes(norm: str) -> Tuple[str, ...]:
    """Tensor names of one norm layer: 4 for the BN family, 2 for GN, none for ""."""
    if norm == "":
        return ()
    if norm in _STAT_NORMS:
        return ("weight", "bias", "running_mean", "running_var")
    if norm == "GN":
        return ("weight", "bias")
    raise ValueError(f"unsupported norm {norm!r} (supported: '', GN, {', '.join(_STAT_NORMS)})")


def resnet_num_blocks(depth: int) -> Tuple[int, int, int, int]:
    """Blocks in res2..res5 for a ResNet depth."""
    if depth not in _RESNET_BLOCKS:
        raise ValueError(f"unsupported MODEL.RESNETS.DEPTH {depth} "
                         f"(one of {sorted(_RESNET_BLOCKS)})")
    return _RESNET_BLOCKS[depth]


class _Builder:
    """Accumulates TensorSpecs in state-dict order."""

    def __init__(self):
        self.specs: Dict[str, TensorSpec] = {}

    def conv(self, name, cin, cout, k, groups=1, bias=True, norm=""):
        self.specs[f"{name}.weight"] = TensorSpec((cout, cin // groups, k, k), "conv")
        if bias:
            self.specs[f"{name}.bias"] = TensorSpec((cout,), "vector")
        for suffix in norm_suffixes(norm):
            self.specs[f"{name}.norm.{suffix}"] = TensorSpec((cout,), "vector")

    def deconv(self, name, cin, cout, k):
        self.specs[f"{name}.weight"] = TensorSpec((cin, cout, k, k), "deconv")
        self.specs[f"{name}.bias"] = TensorSpec((cout,), "vector")

    def linear(self, name, fin, fout, nchw_input=None):
        self.specs[f"{name}.weight"] = TensorSpec((fout, fin), "linear", nchw_input)
        self.specs[f"{name}.bias"] = TensorSpec((fout,), "vector")


def backbone_prefix(cfg) -> str:
    """Where detectron2 keeps the ResNet: ``backbone.bottom_up`` in an FPN, else ``backbone``."""
    return BOTTOM_UP if cfg.MODEL.BACKBONE.NAME == "build_resnet_fpn_backbone" else "backbone"


def place_backbone_weights(file_keys, model_keys) -> Dict[str, str]:
    """Where an ImageNet backbone file's tensors (``backbone.bottom_up.*``, as the converter
    names every backbone-only checkpoint) go in a model whose ResNet is not inside an FPN, as
    detectron2's matching heuristics place them: ``backbone.bottom_up.X`` -> ``backbone.X`` (C4,
    DC5), and a C4 model's res5 -> ``roi_heads.res5.*``. Returns {file key: model key} for the
    keys that move; every other key keeps its name."""
    model_keys = set(model_keys)
    moves = {}
    for key in file_keys:
        if key in model_keys or not key.startswith(BOTTOM_UP + "."):
            continue
        rest = key[len(BOTTOM_UP) + 1:]
        for target in (f"backbone.{rest}", f"roi_heads.{rest}"):
            if target in model_keys:
                moves[key] = target
                break
    return moves


def _last_stage(cfg) -> int:
    """detectron2 builds ResNet stages up to the last one in RESNETS.OUT_FEATURES."""
    return max(int(f[len("res"):]) for f in cfg.MODEL.RESNETS.OUT_FEATURES)


def _bottleneck(b: _Builder, p: str, in_ch: int, bottleneck: int, out_ch: int, groups: int,
                norm: str) -> None:
    # a 1x1 projection shortcut iff in_channels != out_channels (detectron2's blocks)
    if in_ch != out_ch:
        b.conv(f"{p}.shortcut", in_ch, out_ch, 1, bias=False, norm=norm)
    b.conv(f"{p}.conv1", in_ch, bottleneck, 1, bias=False, norm=norm)
    b.conv(f"{p}.conv2", bottleneck, bottleneck, 3, groups=groups, bias=False, norm=norm)
    b.conv(f"{p}.conv3", bottleneck, out_ch, 1, bias=False, norm=norm)


def _resnet(b: _Builder, cfg, prefix: str, last_stage: int) -> List[int]:
    """ResNet stem + res2..res{last_stage} named `prefix` (convs have no bias); returns the
    output channels of those stages."""
    r = cfg.MODEL.RESNETS
    depth, norm = r.DEPTH, r.NORM
    stem = r.STEM_OUT_CHANNELS
    b.conv(f"{prefix}.stem.conv1", 3, stem, 7, bias=False, norm=norm)
    basic = depth in (18, 34)
    # RES2_OUT_CHANNELS for basic blocks too: detectron2's config builder insists on 64 for
    # R18/R34, but its BasicBlock stages take any width, and so does tfmrcnn (narrow R18s).
    out_ch = r.RES2_OUT_CHANNELS
    bottleneck = r.NUM_GROUPS * r.WIDTH_PER_GROUP
    in_ch = stem
    outs = []
    for stage, n in zip(FPN_STAGES, resnet_num_blocks(depth)):
        if stage > last_stage:
            break
        for i in range(n):
            p = f"{prefix}.res{stage}.{i}"
            # detectron2's blocks have a 1x1 projection shortcut iff in_channels != out_channels
            # (ResNet stages double the width, so only a stage's first block can have one;
            # res2.0 has one unless the stem is as wide as res2, e.g. R18 with 64 and 64).
            if basic:
                if in_ch != out_ch:
                    b.conv(f"{p}.shortcut", in_ch, out_ch, 1, bias=False, norm=norm)
                b.conv(f"{p}.conv1", in_ch, out_ch, 3, bias=False, norm=norm)
                b.conv(f"{p}.conv2", out_ch, out_ch, 3, bias=False, norm=norm)
            else:
                _bottleneck(b, p, in_ch, bottleneck, out_ch, r.NUM_GROUPS, norm)
            in_ch = out_ch
        outs.append(out_ch)
        out_ch *= 2
        bottleneck *= 2
    return outs


def _fpn(b: _Builder, cfg, in_channels: List[int]) -> None:
    out, norm = cfg.MODEL.FPN.OUT_CHANNELS, cfg.MODEL.FPN.NORM
    use_bias = norm == ""
    # detectron2 registers laterals/outputs from the coarsest level down; we list them by
    # name order of the state dict (lateral2..5 then output2..5 is how they sort there).
    for stage, cin in zip(FPN_STAGES, in_channels):
        b.conv(f"backbone.fpn_lateral{stage}", cin, out, 1, bias=use_bias, norm=norm)
    for stage in FPN_STAGES:
        b.conv(f"backbone.fpn_output{stage}", out, out, 3, bias=use_bias, norm=norm)


def num_cell_anchors(cfg) -> int:
    """Anchors per location, which detectron2's RPN head requires equal on every level."""
    a = cfg.MODEL.ANCHOR_GENERATOR
    levels = len(cfg.MODEL.RPN.IN_FEATURES)
    sizes = list(a.SIZES) * levels if len(a.SIZES) == 1 else list(a.SIZES)
    ratios = list(a.ASPECT_RATIOS) * levels if len(a.ASPECT_RATIOS) == 1 else list(a.ASPECT_RATIOS)
    counts = {len(s) * len(r) for s, r in zip(sizes, ratios)}
    if len(counts) != 1:
        raise ValueError("MODEL.ANCHOR_GENERATOR: every RPN level needs the same number of "
                         f"anchors, got {sorted(counts)}")
    return counts.pop()


def _feature_channels(cfg, stage_channels: List[int]) -> int:
    """Width of the maps the RPN and the ROI heads read: the FPN's, or the ResNet stage's."""
    if cfg.MODEL.BACKBONE.NAME == "build_resnet_fpn_backbone":
        return cfg.MODEL.FPN.OUT_CHANNELS
    return stage_channels[-1]


def _res5_head(b: _Builder, cfg) -> int:
    """Res5ROIHeads._build_res5_block: 3 bottleneck blocks 8x res2's width; returns their
    output channels (the box predictor's input, after the spatial mean)."""
    r = cfg.MODEL.RESNETS
    out_ch = r.RES2_OUT_CHANNELS * 8
    in_ch, bottleneck = out_ch // 2, r.NUM_GROUPS * r.WIDTH_PER_GROUP * 8
    for i in range(3):
        _bottleneck(b, f"{RES5_HEAD}.{i}", in_ch, bottleneck, out_ch, r.NUM_GROUPS, r.NORM)
        in_ch = out_ch
    return out_ch


def _rpn(b: _Builder, cfg, c: int) -> None:
    if list(cfg.MODEL.RPN.CONV_DIMS) != [-1]:
        raise ValueError(f"MODEL.RPN.CONV_DIMS {cfg.MODEL.RPN.CONV_DIMS} unsupported (only [-1])")
    a = num_cell_anchors(cfg)
    p = "proposal_generator.rpn_head"
    b.conv(f"{p}.conv", c, c, 3)
    b.conv(f"{p}.objectness_logits", c, a, 1)
    b.conv(f"{p}.anchor_deltas", c, a * 4, 1)


def box_head_prefixes(cfg) -> List[Tuple[str, str]]:
    """(box head, box predictor) name prefixes: one pair, or one per stage for CascadeROIHeads
    (``roi_heads.box_head.{s}``, ``roi_heads.box_predictor.{s}``, one stage per
    ROI_BOX_CASCADE_HEAD.IOUS entry)."""
    if cfg.MODEL.ROI_HEADS.NAME == "CascadeROIHeads":
        return [(f"roi_heads.box_head.{s}", f"roi_heads.box_predictor.{s}")
                for s in range(len(cfg.MODEL.ROI_BOX_CASCADE_HEAD.IOUS))]
    return [("roi_heads.box_head", "roi_heads.box_predictor")]


def _box_head(b: _Builder, cfg, in_channels: int) -> None:
    h = cfg.MODEL.ROI_BOX_HEAD
    k = cfg.MODEL.ROI_HEADS.NUM_CLASSES
    prefixes = box_head_prefixes(cfg)
    # detectron2 registers every stage's head before the predictors (two ModuleLists)
    for head, _ in prefixes:
        c, res = in_channels, h.POOLER_RESOLUTION
        for i in range(h.NUM_CONV):
            b.conv(f"{head}.conv{i + 1}", c, h.CONV_DIM, 3, bias=h.NORM == "", norm=h.NORM)
            c = h.CONV_DIM
        spatial: Optional[Tuple[int, int, int]] = (c, res, res)
        width = c * res * res
        for i in range(h.NUM_FC):
            b.linear(f"{head}.fc{i + 1}", width, h.FC_DIM, nchw_input=spatial)
            width, spatial = h.FC_DIM, None
    reg_classes = 1 if h.CLS_AGNOSTIC_BBOX_REG else k
    for _, predictor in prefixes:
        b.linear(f"{predictor}.cls_score", width, k + 1, nchw_input=spatial)
        b.linear(f"{predictor}.bbox_pred", width, reg_classes * 4, nchw_input=spatial)


def _box_predictor(b: _Builder, cfg, width: int,
                   prefix: str = "roi_heads.box_predictor") -> None:
    """A predictor on a (width,) vector: Res5ROIHeads' (spatial mean of res5)."""
    k = cfg.MODEL.ROI_HEADS.NUM_CLASSES
    reg_classes = 1 if cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG else k
    b.linear(f"{prefix}.cls_score", width, k + 1)
    b.linear(f"{prefix}.bbox_pred", width, reg_classes * 4)


def _mask_head(b: _Builder, cfg, in_channels: int) -> None:
    h = cfg.MODEL.ROI_MASK_HEAD
    c = in_channels
    for i in range(h.NUM_CONV):
        b.conv(f"roi_heads.mask_head.mask_fcn{i + 1}", c, h.CONV_DIM, 3, bias=h.NORM == "",
               norm=h.NORM)
        c = h.CONV_DIM
    b.deconv("roi_heads.mask_head.deconv", c, h.CONV_DIM, 2)
    mask_classes = 1 if h.CLS_AGNOSTIC_MASK else cfg.MODEL.ROI_HEADS.NUM_CLASSES
    b.conv("roi_heads.mask_head.predictor", h.CONV_DIM, mask_classes, 1)


def expected_d2_tensors(cfg, backbone_only: bool = False) -> Dict[str, TensorSpec]:
    """Every weight tensor detectron2 stores for this config, in state-dict order.

    backbone_only: only the ResNet res2..res5 as ``backbone.bottom_up`` (what an ImageNet
    checkpoint provides, whatever the architecture).
    """
    b = _Builder()
    if backbone_only:
        _resnet(b, cfg, BOTTOM_UP, FPN_STAGES[-1])
        return b.specs
    stage_channels = _resnet(b, cfg, backbone_prefix(cfg), _last_stage(cfg))
    if cfg.MODEL.BACKBONE.NAME == "build_resnet_fpn_backbone":
        _fpn(b, cfg, stage_channels)
    channels = _feature_channels(cfg, stage_channels)
    _rpn(b, cfg, channels)
    if cfg.MODEL.ROI_HEADS.NAME == "Res5ROIHeads":
        channels = _res5_head(b, cfg)
        _box_predictor(b, cfg, channels)
    else:
        _box_head(b, cfg, channels)
    if cfg.MODEL.MASK_ON:
        _mask_head(b, cfg, channels)
    return b.specs


def expected_d2_state_dict_shapes(cfg, backbone_only: bool = False) -> Dict[str, Tuple[int, ...]]:
    """name -> PyTorch shape of every weight tensor detectron2 stores for this config."""
    return {name: spec.shape for name, spec in expected_d2_tensors(cfg, backbone_only).items()}
