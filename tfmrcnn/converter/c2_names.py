"""Caffe2 / MSRA ImageNet backbone names -> detectron2 names.

Convention (Detectron1 / MSRA ResNet blobs):

=================================  ===================================================
Caffe2 blob                        detectron2 key (under ``backbone.bottom_up.``)
=================================  ===================================================
conv1_w                            stem.conv1.weight
res_conv1_bn_{s,b,rm,riv}          stem.conv1.norm.{weight,bias,running_mean,running_var}
res{S}_{i}_branch2{a,b,c}_w        res{S}.{i}.conv{1,2,3}.weight
res{S}_{i}_branch1_w               res{S}.{i}.shortcut.weight
..._bn_{s,b} / ..._gn_{s,b}        ....norm.{weight,bias}
=================================  ===================================================

``*_momentum`` blobs (optimizer state) and the ImageNet classifier (``fc1000_*``, ``pred_*``)
are not part of a detector and are dropped.

MSRA files fold BN into a scale ``_bn_s`` and a shift ``_bn_b``. Such a norm becomes detectron2's
FrozenBN with ``running_mean = 0`` and ``running_var = 1 - eps``, so that
``weight / sqrt(running_var + eps) = bn_s`` exactly. detectron2 ends up with the same values:
its FrozenBatchNorm2d buffers start at ``running_var = 1 - eps`` and its C2 loader
(``align_and_update_state_dicts``) leaves buffers the file does not have untouched.
"""
from __future__ import annotations

import re
from typing import Dict, List, Tuple

import numpy as np

from .d2_names import BOTTOM_UP

__all__ = ["looks_like_c2", "convert_c2_names", "FROZEN_BN_EPS"]

FROZEN_BN_EPS = 1e-5  # detectron2's FrozenBatchNorm2d eps

_BRANCH = {"branch1": "shortcut", "branch2a": "conv1", "branch2b": "conv2", "branch2c": "conv3"}
_NORM_PARAM = {"s": "weight", "b": "bias", "rm": "running_mean", "riv": "running_var"}
_CLASSIFIER = re.compile(r"^(fc1000|pred)_[wb]$")
_STEM_W = re.compile(r"^conv1_w$")
_STEM_NORM = re.compile(r"^res_conv1_(?:bn|gn)_(s|b|rm|riv)$")
_BLOCK = re.compile(r"^res(\d)_(\d+)_(branch1|branch2a|branch2b|branch2c)"
                    r"_(?:(w)|(?:bn|gn)_(s|b|rm|riv))$")


def looks_like_c2(names) -> bool:
    """True if the names are Caffe2 blobs rather than detectron2 keys."""
    names = set(names)
    return "conv1_w" in names or any(_BLOCK.match(n) for n in names)


def _rename(name: str):
    if _STEM_W.match(name):
        return f"{BOTTOM_UP}.stem.conv1.weight"
    m = _STEM_NORM.match(name)
    if m:
        return f"{BOTTOM_UP}.stem.conv1.norm.{_NORM_PARAM[m.group(1)]}"
    m = _BLOCK.match(name)
    if m:
        stage, block, branch, is_w, norm_param = m.groups()
        prefix = f"{BOTTOM_UP}.res{stage}.{block}.{_BRANCH[branch]}"
        return f"{prefix}.weight" if is_w else f"{prefix}.norm.{_NORM_PARAM[norm_param]}"
    return None


def _unfold_bn(renamed: Dict[str, np.ndarray], bn_norms: List[str]) -> int:
    """Identity statistics for folded BN norms (weight/bias only); returns how many norms."""
    folded = 0
    for prefix in bn_norms:
        mean, var = f"{prefix}.running_mean", f"{prefix}.running_var"
        if mean in renamed or var in renamed or f"{prefix}.weight" not in renamed:
            continue  # a file with statistics keeps them (a missing half is reported later)
        channels = renamed[f"{prefix}.weight"].shape
        renamed[mean] = np.zeros(channels, np.float32)
        renamed[var] = np.full(channels, 1.0 - FROZEN_BN_EPS, np.float32)
        folded += 1
    return folded


def convert_c2_names(blobs: Dict[str, np.ndarray]
                     ) -> Tuple[Dict[str, np.ndarray], List[str], List[str], int]:
    """(detectron2-named arrays, dropped blob names, unrecognised blob names, folded BN count)."""
    renamed: Dict[str, np.ndarray] = {}
    dropped, unknown, bn_norms = [], [], []
    for name in sorted(blobs):
        if name.endswith("_momentum") or _CLASSIFIER.match(name):
            dropped.append(name)
            continue
        new = _rename(name)
        if new is None:
            unknown.append(name)
            continue
        renamed[new] = blobs[name]
        if "_bn_" in name:
            bn_norms.append(new.rsplit(".", 1)[0])
    folded = _unfold_bn(renamed, sorted(set(bn_norms)))
    return renamed, dropped, unknown, folded
