"""Crash-safe training checkpoints in OUTPUT_DIR (detectron2 file names, our file format).

A checkpoint after iteration ``i`` (0-based, ``i + 1`` iterations done) is two files:

* ``model_{i:07d}.npz`` (or ``model_final.npz``): the weights, a plain weights file of
  ``tfmrcnn.checkpoint.weights_io`` (detectron2 names), so it is also a valid MODEL.WEIGHTS;
  its metadata holds ``iteration`` and the config (YAML).
* ``model_{i:07d}.train_state.npz``: ``optimizer/<slot name>`` arrays (momentum buffers, loss
  scale ...) and ``__meta__`` JSON: ``iteration`` (= iterations done), ``data_positions``
  (batches consumed per rank), ``seed``, ``world_size``.

Both are written with `tfmrcnn.checkpoint.weights_io.write_npz` (a temporary file in OUTPUT_DIR,
fsync'ed and renamed: `tfmrcnn.utils.file_io.atomic_write`);
then the pointer file ``last_checkpoint`` (holding the weights file name) is replaced the same
way. Reading tries the pointer's checkpoint, then every other one from the newest down, and
skips any that cannot be read completely (a checkpoint interrupted mid-write, a truncated file)
or holds NaN/inf values; ``.tmp-*`` leftovers never match the checkpoint names (and are removed
by `atomic_write` once stale).

Which states become checkpoints is the trainer's decision (`tfmrcnn.engine.trainer`: only
finite, non-exploding ones); `snapshot` + `write` let it copy a state now and write it once
the next iteration has shown that those weights give a healthy loss.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from typing import Dict, List

import numpy as np
import tensorflow as tf

from tfmrcnn.checkpoint.model_dir import WEIGHTS_FILENAME
from tfmrcnn.checkpoint.weights_io import (WeightsError, load_weights, non_finite_keys, read_npz,
                                           read_weights, save_weights, write_npz)
from tfmrcnn.converter.d2_names import place_backbone_weights
from tfmrcnn.converter.zoo import resolve_weights
from tfmrcnn.modeling.layers import named_variables
from tfmrcnn.utils.file_io import atomic_write

__all__ = ["Checkpointer", "CheckpointSnapshot", "POINTER_FILE", "checkpoint_name"]

logger = logging.getLogger(__name__)

POINTER_FILE = "last_checkpoint"
STATE_SUFFIX = ".train_state.npz"
_NAME_RE = re.compile(r"^model_(\d{7}|final)\.npz$")


def checkpoint_name(iteration_done: int, final: bool = False) -> str:
    """File name of the weights after ``iteration_done`` iterations (detectron2 numbering)."""
    return WEIGHTS_FILENAME if final else f"model_{iteration_done - 1:07d}.npz"


def _state_path(weights_path: str) -> str:
    return weights_path[:-len(".npz")] + STATE_SUFFIX


@dataclass
class CheckpointSnapshot:
    """One checkpoint in host memory: detectron2-named weights, ``optimizer/<name>`` state
    arrays, the train-state metadata and the config text (see the module docstring)."""
    iteration: int
    weights: Dict[str, np.ndarray]
    state: Dict[str, np.ndarray]
    meta: dict
    config_text: str = ""

    def non_finite_keys(self) -> List[str]:
        return non_finite_keys({**self.weights, **self.state})


class Checkpointer:
    """Saves and restores model weights + named optimizer/trainer variables in ``output_dir``.

    ``model`` is a tf.Module with detectron2-named variables; ``state_variables`` maps names to
    the other variables to restore exactly (optimizer slots, loss scale).
    """

    def __init__(self, output_dir: str, model, state_variables: Dict[str, tf.Variable]):
        self.output_dir = output_dir
        self.model = model
        self.state_variables = dict(state_variables)

    # ------------------------------------------------------------------ writing
    def snapshot(self, iteration_done: int, data_positions: List[int], seed: int,
                 config_text: str = "") -> "CheckpointSnapshot":
        """The current weights and state copied to host memory, to `write` now or later."""
        meta = {"iteration": int(iteration_done),
                "data_positions": [int(p) for p in data_positions],
                "seed": int(seed), "world_size": len(data_positions)}
        return CheckpointSnapshot(
            iteration=int(iteration_done),
            weights={k: v.numpy() for k, v in named_variables(self.model).items()},
            state={f"optimizer/{k}": v.numpy() for k, v in self.state_variables.items()},
            meta=meta, config_text=config_text)

    def write(self, snap: "CheckpointSnapshot", final: bool = False) -> str:
        """Write a snapshot as a checkpoint (rank 0 only), then point ``last_checkpoint`` at it;
        returns the weights path. Non-finite values are refused before anything is written."""
        path = os.path.join(self.output_dir, checkpoint_name(snap.iteration, final))
        bad = snap.non_finite_keys()
        if bad:
            raise WeightsError(f"Not writing {path}: NaN or inf in {', '.join(bad[:10])}")
        write_npz(_state_path(path), snap.state, snap.meta)
        save_weights(path, snap.weights, meta={"iteration": snap.iteration,
                                               "source": "tfmrcnn-train",
                                               "config": snap.config_text})
        pointer = os.path.join(self.output_dir, POINTER_FILE)
        atomic_write(pointer, lambda f: f.write(os.path.basename(path).encode()))
        logger.info("Saved checkpoint %s (iteration %d)", path, snap.iteration)
        return path

    def save(self, iteration_done: int, data_positions: List[int], seed: int,
             config_text: str = "", final: bool = False) -> str:
        """`snapshot` then `write` at once (rank 0 only); returns the weights path."""
        return self.write(self.snapshot(iteration_done, data_positions, seed, config_text), final)

    # ------------------------------------------------------------------ reading
    def candidates(self) -> List[str]:
        """Checkpoint weights paths, most recent first (the pointer's one leads)."""
        if not os.path.isdir(self.output_dir):
            return []
        # model_final first, then by iteration, newest first
        found = sorted((f for f in os.listdir(self.output_dir) if _NAME_RE.match(f)),
                       key=lambda f: (0, 0) if f == WEIGHTS_FILENAME else (1, -int(f[6:13])))
        pointer = os.path.join(self.output_dir, POINTER_FILE)
        try:
            with open(pointer) as f:
                named = f.read().strip()
            if named in found:
                found.remove(named)
                found.insert(0, named)
        except OSError:
            pass
        return [os.path.join(self.output_dir, f) for f in found]

    def _read(self, path: str):
        """(optimizer arrays, meta) of a complete checkpoint; raises when anything is unreadable."""
        arrays, wmeta = read_weights(path)          # reads every array: catches truncation
        state_path = _state_path(path)
        state, meta = read_npz(state_path)
        if wmeta.get("iteration") != meta["iteration"]:
            raise WeightsError(f"{path} and {state_path} are from different iterations")
        return {k[len("optimizer/"):]: v for k, v in state.items()}, meta

    def find_latest(self):
        """(weights path, optimizer arrays, meta) of the newest readable checkpoint, or None."""
        for path in self.candidates():
            try:
                state, meta = self._read(path)
            except Exception as e:  # noqa: BLE001 - any unreadable file means "skip it"
                logger.warning("Ignoring checkpoint %s: %s", path, e)
                continue
            return path, state, meta
        return None

    def has_checkpoint(self) -> bool:
        return bool(self.candidates())

    def restore(self, path: str, state: Dict[str, np.ndarray]) -> None:
        """Assign weights (strict) and the named state variables from a checkpoint."""
        load_weights(self.model, path)
        missing = sorted(set(self.state_variables) - set(state))
        if missing:
            raise WeightsError(f"{_state_path(path)} lacks optimizer state: {missing[:5]} ...")
        for key, var in self.state_variables.items():
            value = state[key]
            if tuple(value.shape) != tuple(var.shape):
                raise WeightsError(f"optimizer state {key}: shape {value.shape} != {var.shape}")
            var.assign(value.astype(var.dtype.as_numpy_dtype, copy=False))

    def load_initial_weights(self, path: str) -> None:
        """MODEL.WEIGHTS: a weights .npz, a detectron2 / Caffe2 checkpoint (.pkl, .pth) or a
        detectron2:// name (downloaded and converted into the cache once: `resolve_weights`).
        Shape mismatches (another class count) are skipped and reported by name, variables
        absent from the file keep their initialisation. An ImageNet backbone goes where the
        model has its ResNet (`place_backbone_weights`: C4 / DC5 models)."""
        path = resolve_weights(path, log=logger.info)
        report = load_weights(self.model, path, skip_mismatch=True, allow_missing=True,
                              rename=place_backbone_weights)
        logger.info("Initial weights from %s: %s", path, report.summary())
        for key, (got, want) in report.skipped_shape.items():
            logger.warning("Not loaded (shape %s in the file, %s in the model): %s", got, want, key)
