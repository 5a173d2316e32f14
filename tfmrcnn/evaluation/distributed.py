"""The few Horovod facts evaluation needs: rank/size, a barrier, atomic shard files.

Evaluation never moves Python objects through Horovod: each rank writes its results to a file
in a directory all ranks can see, a barrier (a tiny ``hvd.allreduce``) orders the writes before
the reads, and rank 0 merges. Without an initialised Horovod everything is a single process.
"""
from __future__ import annotations

import json
import math
import os
import sys

__all__ = ["world", "barrier", "write_json_atomic", "read_json", "to_jsonable"]


def _horovod():
    """horovod.tensorflow if it was imported and initialised by the caller, else None.

    Looking in sys.modules avoids importing Horovod (slow, optional) just to learn that a
    single-process run never initialised it.
    """
    hvd = sys.modules.get("horovod.tensorflow")
    if hvd is None:
        return None
    try:
        return hvd if hvd.is_initialized() else None
    except Exception:  # noqa: BLE001 - a half-initialised Horovod counts as absent
        return None


def world():
    """(rank, size) of this process; (0, 1) without Horovod."""
    hvd = _horovod()
    return (hvd.rank(), hvd.size()) if hvd is not None else (0, 1)


def barrier(name):
    """Block until every rank reaches the barrier of this name (no-op for a single process)."""
    hvd = _horovod()
    if hvd is None or hvd.size() == 1:
        return
    import tensorflow as tf

    # The returned sum is read on the host, so the collective has completed on every rank.
    hvd.allreduce(tf.constant([1.0]), op=hvd.Sum, name=name).numpy()


def to_jsonable(value):
    """Replace NaN / inf floats by None (json null) recursively; numpy scalars become Python."""
    if isinstance(value, dict):
        return {k: to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json_atomic(path, obj, indent=None, sanitize=True):
    """Write obj as json to path via a temporary file and a rename, so readers never see half.

    sanitize=False skips the NaN -> null walk for large, already plain objects (results lists).
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(to_jsonable(obj) if sanitize else obj, f, indent=indent)
    os.replace(tmp, path)


def read_json(path):
    with open(path) as f:
        return json.load(f)
