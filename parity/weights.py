"""Seeded random detectron2 weights from a list of names and shapes (NumPy only).

Convention: tensor ``name`` of a state dict is drawn from its own generator, seeded with
SHA-256 of ``"<seed>:<name>"``, so a tensor depends only on (seed, name, shape, its calibration
scale): the same weights come out on any machine, whatever the order or the rest of the list.

The values are scaled so that a deep random network still gives detections whose scores spread
out (a network whose scores all sit near one value would hide differences):

- convs and linears: He normal, std = gain / sqrt(fan_in); gain sqrt(2) where a ReLU follows,
  1 for the FPN's linear convs, and a first guess per output layer (``_OUTPUT_GAINS``); the
  stem divides by the input's scale (pixels are 0..255 less the mean, divided by PIXEL_STD);
- calibration: how large the features reaching the class, box and mask predictors are depends
  on the architecture (GN heads, C4's res5 head, cascade stages), so their weights are then
  multiplied by ``scales`` that bring the outputs' RMS, measured by running detectron2 once
  (`calibration_scales`), to ``LOGIT_TARGETS``: class logits RMS 2.5 (R50-FPN: scores of the
  kept detections from 0.4 to 0.95), box deltas 1, mask logits 3.5. The scales are rounded to
  two significant digits and recorded, so the weights stay reproducible from (seed, scales);
- BN-family norms (FrozenBN, BN, SyncBN): running_var ~ U(0.5, 2), running_mean ~ N(0, 0.1),
  weight = sqrt(running_var + eps) * U(0.8, 1.2), so that each norm is nearly an identity
  with a little per-channel variation; GN: weight ~ U(0.8, 1.2);
- the last norm of each residual branch is scaled by ``RESIDUAL_GAIN`` so that activations grow
  only slowly over 33 blocks (R101) instead of doubling per block;
- output layers (logits, deltas) have rows summing to zero (a ReLU feature's positive mean
  would otherwise add one constant to all boxes and pixels);
- biases ~ N(0, 0.1) (0.5 for the class scores: per-class priors).
"""
from __future__ import annotations

import hashlib
import pickle
import re
from typing import Dict, Iterable, Mapping, Sequence, Tuple

import numpy as np

__all__ = ["generate_d2_weights", "calibrated_layers", "calibration_scales", "write_d2_pkl",
           "tensor_rng", "RESIDUAL_GAIN", "INPUT_SCALE", "LOGIT_TARGETS"]

BN_EPS = 1e-5  # detectron2's FrozenBatchNorm2d / BatchNorm2d eps
RESIDUAL_GAIN = 0.25
# Typical magnitude of (pixel - PIXEL_MEAN) for natural-looking images, in pixel units.
INPUT_SCALE = 50.0

# Output layers (name pattern -> gain before calibration); the features feeding them are not
# unit-RMS (R50-FPN's box head gives ~5), hence gains below 1.
_OUTPUT_GAINS: Tuple[Tuple[str, float], ...] = (
    (r"objectness_logits\.weight$", 1.0),
    (r"anchor_deltas\.weight$", 0.1),
    (r"cls_score\.weight$", 0.6),
    (r"bbox_pred\.weight$", 0.3),
    (r"mask_head\.predictor\.weight$", 1.0),
)
# Layers calibrated by running detectron2 once (name pattern -> target RMS of the output).
LOGIT_TARGETS: Tuple[Tuple[str, float], ...] = (
    (r"cls_score\.weight$", 2.5),
    (r"bbox_pred\.weight$", 1.0),
    (r"mask_head\.predictor\.weight$", 3.5),
)
_LINEAR_CONVS = re.compile(r"(fpn_lateral|fpn_output)\d*\.weight$")
_STEM = re.compile(r"stem\.conv1\.weight$")
_NORM = re.compile(r"^(.*)\.norm\.(weight|bias|running_mean|running_var|num_batches_tracked)$")
_BLOCK_CONV = re.compile(r"^(.*\.res\d\.\d+)\.(conv\d)\.norm$")


def tensor_rng(seed: int, name: str) -> np.random.Generator:
    """The generator of one tensor: depends only on (seed, name)."""
    digest = hashlib.sha256(f"{seed}:{name}".encode("utf-8")).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _fan_in(name: str, shape: Sequence[int]) -> int:
    if len(shape) == 4 and "deconv" in name:
        return int(shape[0])  # ConvTranspose2d (in, out, kh, kw), stride = kernel: one tap each
    return int(np.prod(shape[1:]))  # conv (out, in/groups, kh, kw), linear (out, in)


def _is_output_layer(name: str) -> bool:
    return any(re.search(pattern, name) for pattern, _ in _OUTPUT_GAINS)


def _weight_gain(name: str, input_scale: float) -> float:
    for pattern, gain in _OUTPUT_GAINS:
        if re.search(pattern, name):
            return gain
    if _LINEAR_CONVS.search(name):
        return 1.0
    if _STEM.search(name):
        return np.sqrt(2.0) / input_scale
    return np.sqrt(2.0)


def _last_norms_of_residual_branches(names: Iterable[str]) -> set:
    """Norm prefixes ``...resN.i.convK.norm`` with K the block's last conv (conv3 of a
    bottleneck, conv2 of a basic block)."""
    last: Dict[str, str] = {}
    for name in names:
        m = _BLOCK_CONV.match(name.rsplit(".", 1)[0])
        if m:
            block, conv = m.groups()
            last[block] = max(last.get(block, conv), conv)
    return {f"{block}.{conv}.norm" for block, conv in last.items()}


def _norm_tensor(seed, prefix, suffix, shape, dtype, has_stats, gain):
    rng = tensor_rng(seed, f"{prefix}.norm.{suffix}")
    if suffix == "num_batches_tracked":
        return np.zeros(shape, dtype)
    if suffix == "running_var":
        return rng.uniform(0.5, 2.0, shape)
    if suffix == "running_mean":
        return rng.normal(0.0, 0.1, shape)
    if suffix == "bias":
        return gain * rng.normal(0.0, 0.1, shape)
    scale = rng.uniform(0.8, 1.2, shape) * gain  # weight
    if has_stats:
        var = _norm_tensor(seed, prefix, "running_var", shape, dtype, has_stats, gain)
        scale = scale * np.sqrt(var + BN_EPS)
    return scale


def calibrated_layers(names: Iterable[str]) -> Dict[str, float]:
    """{weight name: target output RMS} of the layers `LOGIT_TARGETS` calibrates."""
    out = {}
    for name in names:
        for pattern, target in LOGIT_TARGETS:
            if re.search(pattern, name):
                out[name] = target
    return out


def calibration_scales(shapes: Mapping[str, Sequence[int]],
                       output_rms: Mapping[str, float]) -> Dict[str, float]:
    """{weight name: factor} from the measured output RMS of each calibrated layer (keyed by
    module name, the weight's name less ``.weight``), rounded to 2 significant digits."""
    scales = {}
    for name, target in calibrated_layers(shapes).items():
        rms = output_rms.get(name[:-len(".weight")])
        if rms:  # a layer that never ran (no detections) keeps its gain
            scales[name] = float(f"{target / rms:.2g}")
    return scales


def generate_d2_weights(shapes: Mapping[str, Sequence[int]], seed: int = 0,
                        input_scale: float = INPUT_SCALE,
                        dtypes: Mapping[str, str] = None,
                        scales: Mapping[str, float] = None) -> Dict[str, np.ndarray]:
    """{name: array} for detectron2's state-dict ``shapes`` (PyTorch layouts), see module doc.

    input_scale: magnitude of the stem's input, (pixel - mean) / PIXEL_STD.
    dtypes: name -> numpy dtype name (default float32; int64 for ``num_batches_tracked``).
    scales: weight name -> factor (`calibration_scales`).
    """
    dtypes = dict(dtypes or {})
    scales = dict(scales or {})
    last_norms = _last_norms_of_residual_branches(shapes)
    stat_norms = {m.group(1) for m in map(_NORM.match, shapes) if m and m.group(2) == "running_var"}
    out = {}
    for name, shape in shapes.items():
        shape = tuple(int(s) for s in shape)
        dtype = np.dtype(dtypes.get(name, "int64" if name.endswith("num_batches_tracked")
                                    else "float32"))
        norm = _NORM.match(name)
        if norm:
            prefix, suffix = norm.groups()
            gain = RESIDUAL_GAIN if f"{prefix}.norm" in last_norms else 1.0
            value = _norm_tensor(seed, prefix, suffix, shape, dtype, prefix in stat_norms, gain)
        elif len(shape) >= 2:
            std = (_weight_gain(name, input_scale) * scales.get(name, 1.0)
                   / np.sqrt(_fan_in(name, shape)))
            value = tensor_rng(seed, name).normal(0.0, std, shape)
            if _is_output_layer(name):
                # rows summing to zero: features after a ReLU share a positive mean, which would
                # otherwise give every class (mask) one constant logit for all boxes (pixels)
                value -= value.mean(axis=tuple(range(1, len(shape))), keepdims=True)
        else:
            bias_std = 0.5 if name.endswith("cls_score.bias") else 0.1
            value = tensor_rng(seed, name).normal(0.0, bias_std, shape)
        out[name] = np.asarray(value).astype(dtype)
    return out


def write_d2_pkl(path: str, state: Mapping[str, np.ndarray]) -> str:
    """detectron2 model-zoo format: what DetectionCheckpointer and tfmrcnn-convert read."""
    with open(path, "wb") as f:
        pickle.dump({"model": dict(state), "__author__": "tfmrcnn parity harness"}, f, protocol=4)
    return path
