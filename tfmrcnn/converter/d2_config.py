"""Read a detectron2 yaml (as ``cfg.dump()`` writes it, ``_BASE_`` files allowed) into our tree.

Convention: every leaf key of the detectron2 file falls in exactly one class:

- mapped: it changes what the model computes at inference and exists in tfmrcnn's tree with
  the same name; its value is copied (keys absent from the file take detectron2's default,
  which is not always tfmrcnn's, e.g. ``RPN.PRE_NMS_TOPK_TEST`` is 6000 in detectron2).
- required: it selects an architecture variant; only the values tfmrcnn implements are
  accepted (``PROPOSAL_GENERATOR.NAME: RRPN`` is an error naming the key; all refused keys of
  a file are named in one error). Those with several accepted values (``ROI_HEADS.NAME``, the
  ``POOLER_TYPE``s) are also copied into our tree (_SELECTED).
- layout: which features the backbone outputs and the RPN / ROI heads read (_LAYOUTS): checked
  together against the combinations tfmrcnn builds (FPN, C4, ...) and copied.
- ignored: it does not change inference (solver, datasets, training-only sampling/loss keys)
  or belongs to a module the required keys rule out (RetinaNet, keypoint head, ...).

Any other key is an error naming it: an unknown key may change results. A LazyConfig ``.py``
file is refused by name (`cfg_from_d2_config`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Tuple

from tfmrcnn.config import ConfigError, decode_value, get_cfg, load_yaml_with_base

from .d2_names import norm_suffixes

__all__ = ["D2ConfigError", "D2ConfigReport", "cfg_from_d2_config", "cfg_from_d2_dict",
           "D2_DEFAULTS", "MAPPED_KEYS", "REQUIRED_VALUES"]

_FPN_RES = ["res2", "res3", "res4", "res5"]

# detectron2's config/defaults.py values of the keys we map (used when the file omits a key).
_MAPPED_DEFAULTS: Dict[str, Any] = {
    "MODEL.MASK_ON": False,
    "MODEL.PIXEL_MEAN": [103.530, 116.280, 123.675],
    "MODEL.PIXEL_STD": [1.0, 1.0, 1.0],
    "MODEL.RESNETS.DEPTH": 50,
    "MODEL.RESNETS.NUM_GROUPS": 1,
    "MODEL.RESNETS.NORM": "FrozenBN",
    "MODEL.RESNETS.WIDTH_PER_GROUP": 64,
    "MODEL.RESNETS.STRIDE_IN_1X1": True,
    "MODEL.RESNETS.RES5_DILATION": 1,
    "MODEL.RESNETS.RES2_OUT_CHANNELS": 256,
    "MODEL.RESNETS.STEM_OUT_CHANNELS": 64,
    "MODEL.FPN.OUT_CHANNELS": 256,
    "MODEL.FPN.NORM": "",
    "MODEL.FPN.FUSE_TYPE": "sum",
    "MODEL.PROPOSAL_GENERATOR.MIN_SIZE": 0,
    "MODEL.ANCHOR_GENERATOR.SIZES": [[32, 64, 128, 256, 512]],
    "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS": [[0.5, 1.0, 2.0]],
    "MODEL.ANCHOR_GENERATOR.OFFSET": 0.0,
    "MODEL.RPN.BBOX_REG_WEIGHTS": [1.0, 1.0, 1.0, 1.0],
    "MODEL.RPN.PRE_NMS_TOPK_TEST": 6000,
    "MODEL.RPN.POST_NMS_TOPK_TEST": 1000,
    "MODEL.RPN.NMS_THRESH": 0.7,
    "MODEL.ROI_HEADS.NUM_CLASSES": 80,
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST": 0.05,
    "MODEL.ROI_HEADS.NMS_THRESH_TEST": 0.5,
    "MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS": [10.0, 10.0, 5.0, 5.0],
    "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION": 14,
    "MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO": 0,
    "MODEL.ROI_BOX_HEAD.NUM_FC": 0,
    "MODEL.ROI_BOX_HEAD.FC_DIM": 1024,
    "MODEL.ROI_BOX_HEAD.NUM_CONV": 0,
    "MODEL.ROI_BOX_HEAD.CONV_DIM": 256,
    "MODEL.ROI_BOX_HEAD.NORM": "",
    "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG": False,
    "MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS": [[10.0, 10.0, 5.0, 5.0],
                                                   [20.0, 20.0, 10.0, 10.0],
                                                   [30.0, 30.0, 15.0, 15.0]],
    "MODEL.ROI_BOX_CASCADE_HEAD.IOUS": [0.5, 0.6, 0.7],
    "MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION": 14,
    "MODEL.ROI_MASK_HEAD.POOLER_SAMPLING_RATIO": 0,
    "MODEL.ROI_MASK_HEAD.NUM_CONV": 0,
    "MODEL.ROI_MASK_HEAD.CONV_DIM": 256,
    "MODEL.ROI_MASK_HEAD.NORM": "",
    "MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK": False,
    "INPUT.FORMAT": "BGR",
    "INPUT.MIN_SIZE_TEST": 800,
    "INPUT.MAX_SIZE_TEST": 1333,
    "TEST.DETECTIONS_PER_IMAGE": 100,
}
MAPPED_KEYS = tuple(_MAPPED_DEFAULTS)

# key -> (detectron2 default, accepted values, why). Values are compared after list/tuple
# normalisation. A key whose check depends on another (the mask head name) is in _CONDITIONAL.
REQUIRED_VALUES: Dict[str, Tuple[Any, List[Any], str]] = {
    "MODEL.META_ARCHITECTURE": ("GeneralizedRCNN", ["GeneralizedRCNN"],
                                "only GeneralizedRCNN (Faster / Mask / Cascade R-CNN) is "
                                "implemented, not RetinaNet, ProposalNetwork (an RPN alone) or "
                                "PanopticFPN"),
    "MODEL.LOAD_PROPOSALS": (False, [False], "precomputed proposals are not supported"),
    "MODEL.KEYPOINT_ON": (False, [False], "the keypoint head is not implemented"),
    "MODEL.BACKBONE.NAME": ("build_resnet_backbone",
                            ["build_resnet_fpn_backbone", "build_resnet_backbone"],
                            "only the ResNet and ResNet-FPN backbones are implemented"),
    "MODEL.RESNETS.DEFORM_ON_PER_STAGE": ([False] * 4, [[False] * 4],
                                          "deformable convolutions are not implemented"),
    "MODEL.PROPOSAL_GENERATOR.NAME": ("RPN", ["RPN"], "only the RPN is implemented"),
    "MODEL.ANCHOR_GENERATOR.NAME": ("DefaultAnchorGenerator", ["DefaultAnchorGenerator"],
                                    "only axis-aligned default anchors are implemented"),
    "MODEL.RPN.HEAD_NAME": ("StandardRPNHead", ["StandardRPNHead"],
                            "only StandardRPNHead is implemented"),
    "MODEL.RPN.CONV_DIMS": ([-1], [[-1]], "the RPN head has one conv of the input width"),
    "MODEL.ROI_HEADS.NAME": ("Res5ROIHeads",
                             ["StandardROIHeads", "CascadeROIHeads", "Res5ROIHeads"],
                             "other ROI heads are not implemented"),
    "MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE": (False, [False],
                                          "sigmoid class scores are not implemented"),
    # ROIAlign: Detectron1's (aligned=False), in the Detectron1-Comparisons configs
    "MODEL.ROI_BOX_HEAD.POOLER_TYPE": ("ROIAlignV2", ["ROIAlignV2", "ROIAlign"],
                                       "only ROIAlignV2 and ROIAlign are implemented"),
    "MODEL.ROI_MASK_HEAD.POOLER_TYPE": ("ROIAlignV2", ["ROIAlignV2", "ROIAlign"],
                                        "only ROIAlignV2 and ROIAlign are implemented"),
    "TEST.AUG.ENABLED": (False, [False], "test-time augmentation is not implemented"),
}
_CONDITIONAL = {
    # checked only when MODEL.MASK_ON is true
    "MODEL.ROI_MASK_HEAD.NAME": ("MaskRCNNConvUpsampleHead", ["MaskRCNNConvUpsampleHead"],
                                 "only MaskRCNNConvUpsampleHead is implemented"),
    # checked only when the ROI heads have a box head (Res5ROIHeads runs res5 instead)
    "MODEL.ROI_BOX_HEAD.NAME": ("", ["FastRCNNConvFCHead"],
                                "only FastRCNNConvFCHead is implemented"),
}


def _conditional_applies(key: str, effective: Dict[str, Any]) -> bool:
    if key == "MODEL.ROI_MASK_HEAD.NAME":
        return bool(effective["MODEL.MASK_ON"])
    return effective["MODEL.ROI_HEADS.NAME"] != "Res5ROIHeads"


# --------------------------------------------------------------------------- feature layouts
# Keys wiring the backbone's outputs to the RPN and the ROI heads, with detectron2's defaults
# (those of a C4 model). They are checked together: their values (and ROI_HEADS.NAME) must
# be one of _LAYOUTS[BACKBONE.NAME] (name -> {key: accepted values}); then copied.
_LAYOUT_DEFAULTS: Dict[str, Any] = {
    "MODEL.RESNETS.OUT_FEATURES": ["res4"],
    "MODEL.FPN.IN_FEATURES": [],
    "MODEL.RPN.IN_FEATURES": ["res4"],
    "MODEL.ROI_HEADS.IN_FEATURES": ["res4"],
}
_LAYOUTS: Dict[str, Dict[str, Dict[str, List[Any]]]] = {
    "build_resnet_fpn_backbone": {
        "FPN": {"MODEL.RESNETS.OUT_FEATURES": [_FPN_RES], "MODEL.FPN.IN_FEATURES": [_FPN_RES],
                "MODEL.RPN.IN_FEATURES": [["p2", "p3", "p4", "p5", "p6"]],
                "MODEL.ROI_HEADS.IN_FEATURES": [["p2", "p3", "p4", "p5"]],
                "MODEL.ROI_HEADS.NAME": ["StandardROIHeads", "CascadeROIHeads"]},
    },
    "build_resnet_backbone": {
        # C4: RPN and ROI pooler on res4, res5 run by Res5ROIHeads on the pooled regions
        "C4": {"MODEL.RESNETS.OUT_FEATURES": [["res4"]], "MODEL.RPN.IN_FEATURES": [["res4"]],
               "MODEL.ROI_HEADS.IN_FEATURES": [["res4"]],
               "MODEL.ROI_HEADS.NAME": ["Res5ROIHeads"]},
        # DC5 (RESNETS.RES5_DILATION 2) and C5: RPN and ROI heads on res5
        "C5": {"MODEL.RESNETS.OUT_FEATURES": [["res5"]], "MODEL.RPN.IN_FEATURES": [["res5"]],
               "MODEL.ROI_HEADS.IN_FEATURES": [["res5"]],
               "MODEL.ROI_HEADS.NAME": ["StandardROIHeads", "CascadeROIHeads"]},
    },
}


def _check_layout(effective: Dict[str, Any], source: str) -> str:
    """The name of the _LAYOUTS entry the effective values form, or D2ConfigError naming
    MODEL.BACKBONE.NAME and the keys that differ from the nearest layout."""
    backbone = effective["MODEL.BACKBONE.NAME"]
    mismatches = {}
    for name, accepted in _LAYOUTS[backbone].items():
        wrong = [k for k, values in accepted.items()
                 if _normalise(effective[k]) not in [_normalise(v) for v in values]]
        if not wrong:
            return name
        mismatches[name] = wrong
    name, wrong = min(mismatches.items(), key=lambda item: len(item[1]))
    accepted = _LAYOUTS[backbone][name]
    raise D2ConfigError(
        f"{source}: MODEL.BACKBONE.NAME = {backbone!r} with "
        + ", ".join(f"{k} = {effective[k]!r}" for k in wrong)
        + f" is not a layout tfmrcnn builds; the {name} layout needs "
        + ", ".join(f"{k} in {accepted[k]!r}" for k in wrong))


# INPUT.SIZE_DIVISIBILITY (not a detectron2 key) by BACKBONE.NAME: what detectron2 pads its
# input batch to, its backbone's size_divisibility: the FPN's is the stride of res5 (32), a plain
# ResNet's (C4, DC5) is 0, i.e. the batch's largest image unrounded, tfmrcnn's 1. Rounding up to
# 32 instead would change the features near the bottom/right border.
_SIZE_DIVISIBILITY = {"build_resnet_fpn_backbone": 32, "build_resnet_backbone": 1}

# required keys whose value (one of the accepted) is copied into our tree, with the layout's
_SELECTED = ("MODEL.BACKBONE.NAME", "MODEL.ROI_HEADS.NAME", "MODEL.ROI_BOX_HEAD.POOLER_TYPE",
             "MODEL.ROI_MASK_HEAD.POOLER_TYPE", *_LAYOUT_DEFAULTS)
D2_DEFAULTS = {**_MAPPED_DEFAULTS, **_LAYOUT_DEFAULTS,
               **{k: v[0] for k, v in {**REQUIRED_VALUES, **_CONDITIONAL}.items()}}

# Keys (exact) and groups (prefix ending with '.') that do not change inference.
_IGNORED = (
    "VERSION", "OUTPUT_DIR", "SEED", "CUDNN_BENCHMARK", "VIS_PERIOD", "FLOAT32_PRECISION",
    "GLOBAL.", "SOLVER.", "DATASETS.", "DATALOADER.",
    "MODEL.DEVICE", "MODEL.WEIGHTS", "MODEL.BACKBONE.FREEZE_AT",
    "INPUT.MIN_SIZE_TRAIN", "INPUT.MIN_SIZE_TRAIN_SAMPLING", "INPUT.MAX_SIZE_TRAIN",
    "INPUT.RANDOM_FLIP", "INPUT.MASK_FORMAT", "INPUT.CROP.",
    "TEST.EVAL_PERIOD", "TEST.EXPECTED_RESULTS", "TEST.KEYPOINT_OKS_SIGMAS", "TEST.PRECISE_BN.",
    "TEST.AUG.MIN_SIZES", "TEST.AUG.MAX_SIZE", "TEST.AUG.FLIP",
    # training-only: matching, sampling, losses
    "MODEL.RPN.BOUNDARY_THRESH", "MODEL.RPN.IOU_THRESHOLDS", "MODEL.RPN.IOU_LABELS",
    "MODEL.RPN.BATCH_SIZE_PER_IMAGE", "MODEL.RPN.POSITIVE_FRACTION", "MODEL.RPN.BBOX_REG_LOSS_TYPE",
    "MODEL.RPN.BBOX_REG_LOSS_WEIGHT", "MODEL.RPN.SMOOTH_L1_BETA", "MODEL.RPN.LOSS_WEIGHT",
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN", "MODEL.RPN.POST_NMS_TOPK_TRAIN",
    "MODEL.ROI_HEADS.IOU_THRESHOLDS", "MODEL.ROI_HEADS.IOU_LABELS",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "MODEL.ROI_HEADS.POSITIVE_FRACTION",
    "MODEL.ROI_HEADS.PROPOSAL_APPEND_GT",
    "MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE", "MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_WEIGHT",
    "MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA", "MODEL.ROI_BOX_HEAD.TRAIN_ON_PRED_BOXES",
    "MODEL.ROI_BOX_HEAD.USE_FED_LOSS", "MODEL.ROI_BOX_HEAD.FED_LOSS_FREQ_WEIGHT_POWER",
    "MODEL.ROI_BOX_HEAD.FED_LOSS_NUM_CLASSES",
    # modules ruled out by the required keys above
    "MODEL.ROI_KEYPOINT_HEAD.", "MODEL.SEM_SEG_HEAD.", "MODEL.PANOPTIC_FPN.", "MODEL.RETINANET.",
    "MODEL.ANCHOR_GENERATOR.ANGLES",
    "MODEL.RESNETS.DEFORM_MODULATED", "MODEL.RESNETS.DEFORM_NUM_GROUPS",
)

# BN variants that compute the same thing at inference (running statistics).
_NORM_ALIASES = {"nnSyncBN": "SyncBN", "naiveSyncBN": "SyncBN", "naiveSyncBN_N": "SyncBN"}
_NORM_KEYS = ("MODEL.RESNETS.NORM", "MODEL.FPN.NORM", "MODEL.ROI_BOX_HEAD.NORM",
              "MODEL.ROI_MASK_HEAD.NORM")


class D2ConfigError(ConfigError):
    """The detectron2 config uses a key or value tfmrcnn cannot reproduce."""


@dataclass
class D2ConfigReport:
    """How each key of the detectron2 file was used."""
    mapped: Dict[str, Any] = field(default_factory=dict)  # key -> value written to our tree
    defaulted: List[str] = field(default_factory=list)  # mapped keys absent: detectron2 default
    checked: List[str] = field(default_factory=list)  # required keys present with a good value
    ignored: List[str] = field(default_factory=list)


def _flatten(tree: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    out = {}
    for key, value in tree.items():
        full = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, full + "."))
        else:
            out[full] = decode_value(value)
    return out


def _normalise(value):
    """Lists and tuples compare equal (yaml dumps tuples as lists)."""
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    return value


def _is_ignored(key: str) -> bool:
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in _IGNORED)


def _unsupported(key, value, spec) -> List[str]:
    """[why `key = value` is refused], or [] when the value is one of the accepted."""
    _, accepted, why = spec
    if _normalise(value) in [_normalise(a) for a in accepted]:
        return []
    return [f"{key} = {value!r} is not supported ({why}); accepted: "
            + ", ".join(repr(a) for a in accepted)]


def _nest(flat: Dict[str, Any]) -> Dict[str, Any]:
    tree: Dict[str, Any] = {}
    for key, value in flat.items():
        node = tree
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def cfg_from_d2_dict(values: Dict[str, Any], source: str = "<dict>", base_cfg=None):
    """(tfmrcnn cfg, D2ConfigReport) from a nested dict of detectron2 config values."""
    flat = _flatten(values)
    report = D2ConfigReport()
    for key in flat:
        if key in D2_DEFAULTS:
            continue
        if _is_ignored(key):
            report.ignored.append(key)
            continue
        raise D2ConfigError(f"{source}: unknown detectron2 config key '{key}': tfmrcnn does not "
                            "know whether it changes the model's results")
    effective = {k: flat.get(k, D2_DEFAULTS[k]) for k in D2_DEFAULTS}
    # every refused key at once (a panoptic dconv model is refused for both reasons)
    refused = [reason for key, spec in REQUIRED_VALUES.items()
               for reason in _unsupported(key, effective[key], spec)]
    refused += [reason for key, spec in _CONDITIONAL.items()
                if _conditional_applies(key, effective)
                for reason in _unsupported(key, effective[key], spec)]
    if refused:
        raise D2ConfigError(f"{source}: " + "; ".join(refused))
    report.checked = [key for key in REQUIRED_VALUES if key in flat]
    _check_layout(effective, source)
    mapped = {}
    for key in MAPPED_KEYS:
        value = effective[key]
        if key in _NORM_KEYS:
            value = _NORM_ALIASES.get(value, value)
            try:
                norm_suffixes(value)
            except ValueError as e:
                raise D2ConfigError(f"{source}: {key}: {e}") from None
        mapped[key] = value
        if key not in flat:
            report.defaulted.append(key)
    for key in _SELECTED:
        mapped[key] = effective[key]
    mapped["INPUT.SIZE_DIVISIBILITY"] = _SIZE_DIVISIBILITY[effective["MODEL.BACKBONE.NAME"]]
    cfg = (base_cfg.clone() if base_cfg is not None else get_cfg()).defrost()
    try:
        cfg.merge_from_dict(_nest(mapped))
    except ConfigError as e:
        raise D2ConfigError(f"{source}: {e}") from None
    report.mapped = mapped
    return cfg, report


def cfg_from_d2_config(path: str, base_cfg=None):
    """(tfmrcnn cfg, D2ConfigReport) from a detectron2 yaml file (``_BASE_`` chain resolved).

    A ``.py`` file is refused by name before it is read: detectron2's LazyConfig configs (the
    model zoo's ``*.py``, e.g. mask_rcnn_R_50_FPN_1x.py or the RegNet models) are Python
    programs building the model from code, with no yaml keys to map."""
    if str(path).endswith(".py"):
        raise D2ConfigError(
            f"{path}: a detectron2 LazyConfig Python program, not a yaml config; LazyConfig "
            "(.py) models are not supported: pass the model's yaml config or its cfg.dump()")
    return cfg_from_d2_dict(load_yaml_with_base(path), source=str(path), base_cfg=base_cfg)
