"""tfmrcnn's weights file: an `.npz` of detectron2-named arrays in TensorFlow layout.

Convention: each entry is ``<detectron2 state-dict key> -> ndarray`` in the layout of the
model's `tf.Variable` (see `tfmrcnn.converter.layouts`); the optional entry ``__meta__`` is a
0-d unicode array holding a JSON object (``format_version``, ``source``, ...). Files are read
with ``allow_pickle=False``, so a weights file can never run code.

`write_npz` / `read_npz` are the one writer (atomic, `tfmrcnn.utils.file_io.atomic_write`) and
the one reader of every `.npz` tfmrcnn writes: weights files, checkpoints and their training
state (`tfmrcnn.checkpoint.checkpointer`), converted weights (`tfmrcnn.converter.convert`).
Every value must be finite: NaN or inf is refused when writing and is an error when reading
(so diverged weights can neither be saved nor silently predict nothing), and a file that
cannot be read completely (truncated, corrupted) is a `WeightsError` naming it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np

from tfmrcnn.utils.file_io import atomic_write

__all__ = [
    "FORMAT_VERSION", "META_KEY", "WeightsError", "LoadReport",
    "non_finite_keys", "write_npz", "read_npz", "save_weights", "read_weights", "read_meta", "load_weights",
]

FORMAT_VERSION = 1
META_KEY = "__meta__"


class WeightsError(ValueError):
    """A weights file does not match the model (names or shapes) or is malformed."""


def _as_named_arrays(named_arrays_or_model) -> Dict[str, np.ndarray]:
    if isinstance(named_arrays_or_model, Mapping):
        items = named_arrays_or_model.items()
    else:  # a tf.Module with detectron2-named variables
        from tfmrcnn.modeling.layers import named_variables
        items = named_variables(named_arrays_or_model).items()
    return {key: np.asarray(value.numpy() if hasattr(value, "numpy") else value)
            for key, value in items}


def non_finite_keys(arrays: Mapping[str, np.ndarray]) -> List[str]:
    """Keys of the floating-point arrays holding a NaN or an infinity, sorted."""
    return sorted(k for k, v in arrays.items()
                  if np.issubdtype(np.asarray(v).dtype, np.floating)
                  and not np.isfinite(v).all())


def write_npz(path: str, arrays: Mapping[str, np.ndarray], meta: dict) -> str:
    """Write `arrays` plus `meta` (as the ``__meta__`` JSON entry) to `path` with `atomic_write`.

    Non-finite values are refused (`WeightsError`), as `read_npz` would refuse them.
    """
    if META_KEY in arrays:
        raise WeightsError(f"'{META_KEY}' is reserved for the metadata entry")
    bad = non_finite_keys(arrays)
    if bad:
        raise WeightsError(f"Not writing {path}: " + _list("arrays with NaN or inf values", bad))
    entries = {**arrays, META_KEY: np.array(json.dumps(meta, sort_keys=True))}
    return atomic_write(path, lambda f: np.savez(f, **entries))


def read_npz(path: str) -> Tuple[Dict[str, np.ndarray], dict]:
    """(arrays without the metadata entry, metadata dict) of an `.npz` written by `write_npz`.

    Every array is read here, so a truncated or corrupted file fails now with a `WeightsError`
    naming `path`, and so do NaN or infinite values (a diverged training's weights).
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
        meta_arr = arrays.pop(META_KEY, None)
        meta = json.loads(str(meta_arr)) if meta_arr is not None else {}
    except OSError as e:  # missing, unreadable, a folder ...
        raise WeightsError(f"Cannot read {path}: {e}") from None
    except Exception as e:  # noqa: BLE001 - see below
        # Damaged bytes make zipfile/numpy raise almost anything: BadZipFile, EOFError,
        # ValueError, struct or zlib errors, NotImplementedError (garbled flag bits),
        # RuntimeError ("encrypted"), MemoryError (absurd sizes). All mean "unreadable file".
        raise WeightsError(f"Cannot read {path}, not a complete .npz weights file (truncated "
                           f"or corrupted?): {type(e).__name__}: {e}") from None
    if not isinstance(meta, dict):
        raise WeightsError(f"Cannot read {path}: its {META_KEY} entry is not a JSON object")
    bad = non_finite_keys(arrays)
    if bad:
        raise WeightsError(f"{path} is unusable: " + _list("arrays with NaN or inf values", bad))
    return arrays, meta


def save_weights(path: str, named_arrays_or_model, meta: Optional[dict] = None) -> str:
    """Write `{key: array}` (or a model's named variables) to `path` atomically (`atomic_write`)."""
    arrays = _as_named_arrays(named_arrays_or_model)
    return write_npz(path, arrays, {"format_version": FORMAT_VERSION, **(meta or {})})


def read_weights(path: str) -> Tuple[Dict[str, np.ndarray], dict]:
    """(arrays without the metadata entry, metadata dict) of a weights file."""
    arrays, meta = read_npz(path)
    version = meta.get("format_version", FORMAT_VERSION)
    if version > FORMAT_VERSION:
        raise WeightsError(f"{path} has format version {version}; this tfmrcnn reads up to "
                           f"{FORMAT_VERSION}")
    return arrays, meta


def read_meta(path: str) -> dict:
    """Only the metadata of a weights file."""
    return read_weights(path)[1]


@dataclass
class LoadReport:
    """What `load_weights` did. Shapes are (file shape, model shape)."""
    loaded: List[str] = field(default_factory=list)
    skipped_shape: Dict[str, Tuple[Tuple[int, ...], Tuple[int, ...]]] = field(default_factory=dict)
    missing: List[str] = field(default_factory=list)  # in the model, not in the file
    unexpected: List[str] = field(default_factory=list)  # in the file, not in the model
    meta: dict = field(default_factory=dict)

    def summary(self) -> str:
        lines = [f"loaded {len(self.loaded)} tensors"]
        for key, (got, want) in self.skipped_shape.items():
            lines.append(f"skipped {key}: file shape {got} != model shape {want}")
        if self.missing:
            lines.append(f"kept initial values of {len(self.missing)} tensors not in the file: "
                         + ", ".join(self.missing))
        return "\n".join(lines)


def _list(title: str, keys: List[str], limit: int = 30) -> str:
    more = f", ... ({len(keys) - limit} more)" if len(keys) > limit else ""
    shown = ", ".join(keys[:limit]) + more
    return f"{title} ({len(keys)}): {shown}"


def load_weights(model, path: str, skip_mismatch: bool = False,
                 allow_missing: bool = False, rename=None) -> LoadReport:
    """Assign the arrays of a weights file to `named_variables(model)`; returns a `LoadReport`.

    Every key must match a variable and every shape must agree, otherwise `WeightsError` lists
    all offending keys and nothing is assigned. `skip_mismatch=True` skips keys whose shape
    differs (e.g. box predictor with another class count) and reports them; `allow_missing=True`
    keeps the initial value of variables absent from the file (e.g. an ImageNet backbone file
    loaded into the full detector). Unexpected keys are always an error. `rename(file keys,
    model keys)` -> {file key: model key} renames keys first (an ImageNet backbone placed in a
    C4 model: `d2_names.place_backbone_weights`).
    """
    from tfmrcnn.modeling.layers import named_variables

    arrays, meta = read_weights(path)
    variables = named_variables(model)
    if rename is not None:
        moves = rename(list(arrays), list(variables))
        arrays = {moves.get(k, k): v for k, v in arrays.items()}
    report = LoadReport(meta=meta)
    report.missing = sorted(k for k in variables if k not in arrays)
    report.unexpected = sorted(k for k in arrays if k not in variables)
    mismatched = {k: (tuple(arrays[k].shape), tuple(variables[k].shape))
                  for k in arrays if k in variables
                  and tuple(arrays[k].shape) != tuple(variables[k].shape)}
    errors = []
    if report.unexpected:
        errors.append(_list("keys in the file but not in the model", report.unexpected))
    if report.missing and not allow_missing:
        errors.append(_list("model variables missing from the file", report.missing))
    if mismatched and not skip_mismatch:
        errors.append(_list("shape mismatches (file vs model)",
                            [f"{k} {got} vs {want}" for k, (got, want) in mismatched.items()]))
    if errors:
        raise WeightsError(f"Cannot load {path} into the model:\n  " + "\n  ".join(errors))
    report.skipped_shape = mismatched
    for key, var in variables.items():
        if key in arrays and key not in mismatched:
            var.assign(arrays[key].astype(var.dtype.as_numpy_dtype, copy=False))
            report.loaded.append(key)
    return report
