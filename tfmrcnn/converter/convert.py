"""detectron2 / Caffe2 checkpoints -> tfmrcnn weights file + config, and our models back.

Convention: a conversion accounts for every tensor. The checkpoint's names must be exactly the
names `expected_d2_tensors(cfg)` lists, with those shapes; anything left over or missing is an
error listing the names. The only tolerated extras are buffers that are not weights:
``proposal_generator.anchor_generator.cell_anchors.*``, ``pixel_mean``, ``pixel_std`` and
``*.num_batches_tracked``.

Inputs:
- detectron2 ``.pkl`` (model zoo, ``{"model": {name: ndarray}, "__author__": ...}``), read
  with the restricted unpickler;
- Caffe2/MSRA ImageNet ``.pkl`` (``{"blobs": {...}}`` or flat blobs, BN folded into scale
  ``_bn_s`` and shift ``_bn_b``): converted to the bottom-up backbone only; a folded BN becomes
  FrozenBN with identity statistics (``running_var = 1 - eps``, see `c2_names`);
- ``.pth`` when PyTorch is installed.
"""
from __future__ import annotations

import os
import pickle
import re
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from .c2_names import FROZEN_BN_EPS, convert_c2_names, looks_like_c2
from .d2_config import cfg_from_d2_config
from .d2_names import BOTTOM_UP, TensorSpec, expected_d2_tensors
from .infer_config import infer_cfg_from_shapes
from .layouts import to_d2, to_tf
from .safe_pickle import UnsafePickleError, safe_load
from tfmrcnn.checkpoint.model_dir import (CONFIG_FILENAME, WEIGHTS_FILENAME, ModelDirError,
                                          model_dir_paths, write_classes, write_model_dir)
from tfmrcnn.data.class_metadata import training_classes
from tfmrcnn.checkpoint.weights_io import read_weights
from tfmrcnn.config import load_config
from tfmrcnn.utils.file_io import atomic_write

__all__ = [
    "ConversionError", "Checkpoint", "ConversionResult", "FROZEN_BN_EPS",
    "read_checkpoint", "check_names_and_shapes", "d2_to_tf", "tf_to_d2", "export_d2_pkl",
    "export_model_dir", "convert_checkpoint",
]

_KNOWN_EXTRAS = re.compile(
    r"^(proposal_generator\.anchor_generator\.cell_anchors\..*|pixel_mean|pixel_std"
    r"|.*\.num_batches_tracked)$")


_BACKBONE_SHORT = re.compile(r"^(stem|res[2-5])\.")
_TORCHVISION_FC = re.compile(r"^stem\.fc\.(weight|bias)$")


class ConversionError(ValueError):
    """The checkpoint cannot be converted exactly; the message lists every offending tensor."""


@dataclass
class Checkpoint:
    """A checkpoint's tensors in detectron2 names and PyTorch layouts."""
    state: Dict[str, np.ndarray]
    fmt: str  # "detectron2", "caffe2" or "torch"
    source: str
    author: str = ""
    matching_heuristics: bool = False
    extras: Dict[str, np.ndarray] = field(default_factory=dict)  # tolerated non-weights
    dropped: List[str] = field(default_factory=list)  # ImageNet classifier, optimizer state
    folded_bn: int = 0  # C2 norms given identity statistics (see c2_names)
    backbone_only: bool = False  # an ImageNet initialisation: bottom-up ResNet only


@dataclass
class ConversionResult:
    weights_path: str
    config_path: str
    cfg: object
    checkpoint: Checkpoint
    notes: List[str]


# ------------------------------------------------------------------------------- reading
def _as_array(name: str, value, source: str) -> np.ndarray:
    if hasattr(value, "detach"):  # torch tensor
        value = value.detach().cpu().numpy()
    arr = np.asarray(value)
    if arr.dtype.kind not in "fiub":
        raise ConversionError(f"{source}: tensor {name} has dtype {arr.dtype}, expected numbers")
    return arr


def _split_extras(state: Dict[str, object], source: str):
    weights, extras = {}, {}
    for name, value in state.items():
        if not isinstance(name, str):
            raise ConversionError(f"{source}: state dict key {name!r} is not a string")
        arr = _as_array(name, value, source)
        (extras if _KNOWN_EXTRAS.match(name) else weights)[name] = arr
    return weights, extras


def _read_pth(path: str):
    try:
        import torch
    except ImportError:
        raise ConversionError(
            f"{path}: reading .pth files needs PyTorch, which is not installed. Install torch, or "
            "save the state dict as a detectron2 .pkl ({'model': {name: tensor.numpy()}, "
            "'__author__': ...}) and convert that.") from None
    return torch.load(path, map_location="cpu", weights_only=True)


def read_checkpoint(path: str) -> Checkpoint:
    """Load a detectron2 .pkl / .pth or a Caffe2 ImageNet .pkl into detectron2 names."""
    path = str(path)
    if path.endswith(".pth") or path.endswith(".pt"):
        data, fmt = _read_pth(path), "torch"
    else:
        try:
            data = safe_load(path)
        except UnsafePickleError:
            raise
        except (pickle.UnpicklingError, EOFError) as e:
            raise ConversionError(f"{path}: {e}") from None
        fmt = None
    if not isinstance(data, dict):
        raise ConversionError(f"{path}: expected a dict, got {type(data).__name__}")
    author = str(data.get("__author__", ""))
    heuristics = bool(data.get("matching_heuristics", False))
    if "model" in data and isinstance(data["model"], dict):
        state = data["model"]
    elif "blobs" in data and isinstance(data["blobs"], dict):
        state = data["blobs"]
    else:
        state = {k: v for k, v in data.items() if k not in ("__author__", "matching_heuristics")}
    if fmt is None:
        fmt = "caffe2" if looks_like_c2(state) else "detectron2"
    if fmt == "caffe2":
        blobs = {k: _as_array(k, v, path) for k, v in state.items()}
        renamed, dropped, unknown, folded = convert_c2_names(blobs)
        if unknown:
            raise ConversionError(f"{path}: Caffe2 blobs that are not ResNet backbone weights "
                                  f"({len(unknown)}): " + ", ".join(unknown))
        return Checkpoint(renamed, fmt, path, author or "Caffe2", dropped=dropped,
                          folded_bn=folded, backbone_only=True)
    weights, extras = _split_extras(state, path)
    dropped = []
    if heuristics:
        weights, dropped = _prefix_backbone_names(weights)
    backbone_only = bool(weights) and all(k.startswith(BOTTOM_UP + ".") for k in weights)
    return Checkpoint(weights, fmt, path, author, heuristics, extras, dropped,
                      backbone_only=backbone_only)


def _prefix_backbone_names(state: Dict[str, np.ndarray]):
    """Backbone files that detectron2 loads with `matching_heuristics` (its torchvision and C2
    conversion tools) name tensors ``stem.*`` / ``res2.*``: give them the full
    ``backbone.bottom_up.`` prefix, drop torchvision's ImageNet classifier (``stem.fc.*``)."""
    out, dropped = {}, []
    for name, value in state.items():
        if _TORCHVISION_FC.match(name):
            dropped.append(name)
        else:
            out[f"{BOTTOM_UP}.{name}" if _BACKBONE_SHORT.match(name) else name] = value
    return out, dropped


# ------------------------------------------------------------------------------- mapping
def _apply_matching_heuristics(state: Dict[str, np.ndarray], expected) -> Dict[str, np.ndarray]:
    """detectron2's rule for `matching_heuristics` files: a key may be a '.'-suffix of the model's
    name. Only unambiguous suffixes are renamed; the rest is left for the exact check to report."""
    out = {}
    for name, value in state.items():
        if name in expected:
            out[name] = value
            continue
        candidates = [e for e in expected if e.endswith("." + name)]
        out[candidates[0] if len(candidates) == 1 else name] = value
    return out


def _class_count_hint(state, specs) -> str:
    key = "roi_heads.box_predictor.cls_score.weight"
    if key in state and key in specs and state[key].shape[0] != specs[key].shape[0]:
        return (f"\n  the checkpoint has {state[key].shape[0] - 1} classes ({key} has "
                f"{state[key].shape[0]} rows incl. background) but the config says "
                f"MODEL.ROI_HEADS.NUM_CLASSES = {specs[key].shape[0] - 1}")
    return ""


def _listing(title: str, items: List[str], limit: int = 40) -> str:
    shown = items[:limit] + ([f"... ({len(items) - limit} more)"] if len(items) > limit else [])
    return f"{title} ({len(items)}):\n    " + "\n    ".join(shown)


def check_names_and_shapes(state: Dict[str, np.ndarray], specs: Dict[str, TensorSpec],
                           source: str) -> None:
    """Raise ConversionError listing missing, unexpected and wrongly shaped tensors."""
    missing = [n for n in specs if n not in state]
    unexpected = sorted(n for n in state if n not in specs)
    wrong = [f"{n}: checkpoint {tuple(state[n].shape)} vs expected {specs[n].shape}"
             for n in specs if n in state and tuple(state[n].shape) != specs[n].shape]
    problems = []
    if missing:
        problems.append(_listing("missing tensors", missing))
    if unexpected:
        problems.append(_listing("unexpected tensors", unexpected))
    if wrong:
        problems.append(_listing("shape mismatches", wrong))
    if problems:
        raise ConversionError(f"{source} does not match the architecture of the config:\n  "
                              + "\n  ".join(problems) + _class_count_hint(state, specs))


def d2_to_tf(state: Dict[str, np.ndarray], cfg, backbone_only: bool = False,
             source: str = "checkpoint") -> Dict[str, np.ndarray]:
    """detectron2 names/layouts -> {name: float32 array in tfmrcnn layout}; exact and complete."""
    specs = expected_d2_tensors(cfg, backbone_only)
    check_names_and_shapes(state, specs, source)
    return {name: to_tf(state[name], spec).astype(np.float32, copy=False)
            for name, spec in specs.items()}


def tf_to_d2(named_arrays: Dict[str, np.ndarray], cfg,
             backbone_only: bool = False) -> Dict[str, np.ndarray]:
    """Inverse of `d2_to_tf`: tfmrcnn layouts -> detectron2 layouts (same names)."""
    specs = expected_d2_tensors(cfg, backbone_only)
    missing = [n for n in specs if n not in named_arrays]
    unexpected = sorted(n for n in named_arrays if n not in specs)
    if missing or unexpected:
        raise ConversionError("weights do not match the config: " + _listing("missing", missing)
                              + "; " + _listing("unexpected", unexpected))
    return {name: to_d2(np.asarray(named_arrays[name]), spec) for name, spec in specs.items()}


def _d2_shapes_of_tf(named_arrays: Dict[str, np.ndarray]) -> Dict[str, Tuple[int, ...]]:
    # conv HWIO and deconv (kh, kw, out, in) map back with the same axis order; linear transposes
    out = {}
    for name, value in named_arrays.items():
        s = tuple(np.shape(value))
        out[name] = (s[3], s[2], s[0], s[1]) if len(s) == 4 else (s[1], s[0]) if len(s) == 2 else s
    return out


def export_d2_pkl(named_arrays, path: str, cfg=None) -> str:
    """Write tfmrcnn-layout weights as a detectron2 model-zoo style `.pkl` (atomic).

    cfg: the architecture; inferred from the shapes when omitted.
    """
    if not isinstance(named_arrays, dict):
        from tfmrcnn.modeling.layers import named_variables
        named_arrays = {k: v.numpy() for k, v in named_variables(named_arrays).items()}
    if cfg is None:
        cfg, _ = infer_cfg_from_shapes(_d2_shapes_of_tf(named_arrays))
    state = tf_to_d2(named_arrays, cfg)
    payload = {"model": state, "__author__": "tfmrcnn"}
    atomic_write(path, lambda f: pickle.dump(payload, f, protocol=4))
    return path


def export_model_dir(source: str, path: str, log: Callable[[str], None] = print) -> str:
    """A model directory (config.yaml + model_final.npz, e.g. a training OUTPUT_DIR), or a
    weights file in one (a checkpoint ``model_0004999.npz``), -> detectron2 `.pkl` at `path`.

    The architecture is the folder's config.yaml; every tensor of it must be in the weights.
    """
    if os.path.isdir(source):
        config_path, weights_path = model_dir_paths(source)
    else:
        weights_path = source
        config_path = os.path.join(os.path.dirname(os.path.abspath(source)), CONFIG_FILENAME)
        if not os.path.isfile(weights_path) or not os.path.isfile(config_path):
            raise ModelDirError(f"{source}: expected a model directory, or a weights file with "
                                f"{CONFIG_FILENAME} next to it")
    arrays, _ = read_weights(weights_path)
    try:
        export_d2_pkl(arrays, path, load_config(config_path))
    except ConversionError as e:
        raise ConversionError(f"{weights_path} (architecture of {config_path}): {e}") from None
    log(f"wrote {len(arrays)} tensors of {weights_path} to {path} (detectron2 names and layouts)")
    return path


# ------------------------------------------------------------------------------- end to end
def _build_cfg(ckpt: Checkpoint, d2_config: Optional[str], notes: List[str]):
    if d2_config:
        cfg, report = cfg_from_d2_config(d2_config)
        notes.append(f"config from {d2_config}: {len(report.mapped)} keys mapped "
                     f"({len(report.defaulted)} at detectron2 defaults), "
                     f"{len(report.ignored)} ignored (no effect on inference)")
        return cfg
    shapes = {k: tuple(v.shape) for k, v in ckpt.state.items()}
    stats = {k: v.reshape(-1).tolist() for k, v in ckpt.extras.items()
             if k in ("pixel_mean", "pixel_std")}
    cfg, assumed = infer_cfg_from_shapes(shapes, ckpt.backbone_only, stats)
    notes.extend(assumed)
    return cfg


def convert_checkpoint(model_path: str, output_dir: str, d2_config: Optional[str] = None,
                       log: Callable[[str], None] = print) -> ConversionResult:
    """Convert a checkpoint to OUTDIR/model_final.npz + OUTDIR/config.yaml (our config tree)."""
    ckpt = read_checkpoint(model_path)
    notes: List[str] = [f"{model_path}: {ckpt.fmt} checkpoint"
                        + (f" by {ckpt.author}" if ckpt.author else "")]
    if ckpt.dropped:
        notes.append(f"dropped {len(ckpt.dropped)} tensors that are not detector weights "
                     f"(optimizer momentum, ImageNet classifier): " + ", ".join(ckpt.dropped[:5])
                     + (", ..." if len(ckpt.dropped) > 5 else ""))
    if ckpt.folded_bn:
        notes.append(f"BN folded in the Caffe2 file: {ckpt.folded_bn} norms get running_mean=0, "
                     f"running_var=1-{FROZEN_BN_EPS} (FrozenBN scale stays exactly bn_s)")
    if ckpt.extras:
        notes.append("ignored non-weight buffers: " + ", ".join(sorted(ckpt.extras)))
    try:
        cfg = _build_cfg(ckpt, d2_config, notes)
        specs = expected_d2_tensors(cfg, ckpt.backbone_only)
    except ValueError as e:
        raise ConversionError(str(e)) from None
    state = dict(ckpt.state)
    if ckpt.matching_heuristics:
        state = _apply_matching_heuristics(state, specs)
    arrays = d2_to_tf(state, cfg, ckpt.backbone_only, source=model_path)
    cfg.MODEL.WEIGHTS = os.path.abspath(os.path.join(output_dir, WEIGHTS_FILENAME))
    config_path, weights_path = write_model_dir(output_dir, arrays, cfg.dump(), meta={
        "source": os.path.basename(model_path), "source_format": ckpt.fmt,
        "backbone_only": ckpt.backbone_only, "num_tensors": len(arrays)})
    notes.append(f"wrote {len(arrays)} tensors "
                 f"({sum(a.size for a in arrays.values()):,} values) to {weights_path}")
    notes.append(f"wrote {config_path}")
    # a detector's classes: COCO's 80 for a COCO model (DATASETS.TRAIN), unknown for others
    classes = None if ckpt.backbone_only else training_classes(cfg)
    if classes is not None:
        notes.append(f"wrote {write_classes(output_dir, classes)} ({len(classes)} classes of "
                     f"{', '.join(classes.datasets)})")
    for line in notes:
        log(line)
    return ConversionResult(weights_path, config_path, cfg.freeze(), ckpt, notes)
