"""PyTorch (detectron2) <-> TensorFlow (tfmrcnn) tensor layouts.

=====================  ==========================  ==========================
kind                   detectron2 (PyTorch)        tfmrcnn (TensorFlow)
=====================  ==========================  ==========================
conv                   (out, in, kh, kw)           (kh, kw, in, out)  HWIO
deconv                 (in, out, kh, kw)           (kh, kw, out, in)  conv2d_transpose
linear                 (out, in)                   (in, out)
linear on a map        input index c*H*W + h*W + w  input index (h*W + w)*C + c
vector                 (C,)                        (C,)
=====================  ==========================  ==========================

The "linear on a map" row is a linear layer fed by a flattened (C, H, W) feature map:
detectron2 flattens NCHW, tfmrcnn NHWC, so besides the transpose its input rows are permuted.
Both directions are exact permutations (no arithmetic), so a round trip is the identity.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

from .d2_names import TensorSpec

__all__ = ["to_tf", "to_d2", "tf_shape"]

# conv (O, I, kh, kw) -> (kh, kw, I, O) and deconv (I, O, kh, kw) -> (kh, kw, O, I) are the
# same axis permutation: spatial axes first, then the two channel axes swapped.
_SPATIAL_FIRST = (2, 3, 1, 0)
_SPATIAL_LAST = (3, 2, 0, 1)  # its inverse


def tf_shape(spec: TensorSpec) -> Tuple[int, ...]:
    """Shape of the tensor in tfmrcnn's layout."""
    s = spec.shape
    if spec.kind in ("conv", "deconv"):
        return tuple(s[i] for i in _SPATIAL_FIRST)
    if spec.kind == "linear":
        return (s[1], s[0])
    return tuple(s)


def _nchw_rows_to_nhwc(w_in_out: np.ndarray, chw: Tuple[int, int, int]) -> np.ndarray:
    c, h, w = chw
    out = w_in_out.shape[1]
    return w_in_out.reshape(c, h, w, out).transpose(1, 2, 0, 3).reshape(c * h * w, out)


def _nhwc_rows_to_nchw(w_in_out: np.ndarray, chw: Tuple[int, int, int]) -> np.ndarray:
    c, h, w = chw
    out = w_in_out.shape[1]
    return w_in_out.reshape(h, w, c, out).transpose(2, 0, 1, 3).reshape(c * h * w, out)


def to_tf(value: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """detectron2 layout -> tfmrcnn layout (a contiguous copy)."""
    value = np.asarray(value)
    if value.shape != tuple(spec.shape):
        raise ValueError(f"shape {value.shape} != expected {tuple(spec.shape)}")
    if spec.kind in ("conv", "deconv"):
        out = value.transpose(_SPATIAL_FIRST)
    elif spec.kind == "linear":
        out = value.T
        if spec.nchw_input is not None:
            out = _nchw_rows_to_nhwc(out, spec.nchw_input)
    else:
        out = value
    return np.ascontiguousarray(out)


def to_d2(value: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """tfmrcnn layout -> detectron2 layout (inverse of `to_tf`)."""
    value = np.asarray(value)
    if value.shape != tf_shape(spec):
        raise ValueError(f"shape {value.shape} != expected {tf_shape(spec)}")
    if spec.kind in ("conv", "deconv"):
        out = value.transpose(_SPATIAL_LAST)
    elif spec.kind == "linear":
        if spec.nchw_input is not None:
            value = _nhwc_rows_to_nchw(value, spec.nchw_input)
        out = value.T
    else:
        out = value
    return np.ascontiguousarray(out)
