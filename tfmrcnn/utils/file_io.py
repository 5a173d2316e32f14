"""Writing files so that a reader or a crash never sees half of one: the one atomic writer.

Convention: `atomic_write(path, write)` writes to a temporary file ``.tmp-<random><name>`` in
the folder of `path`, fsyncs it, renames it over `path` and fsyncs the folder (so the rename
itself survives a power cut). Every file tfmrcnn writes for others to read later (weights,
checkpoints, config.yaml, evaluation results and shards) goes through it.
"""
from __future__ import annotations

import codecs
import json
import math
import os
import tempfile
from typing import BinaryIO, Callable

__all__ = ["TEMP_PREFIX", "atomic_write", "write_json", "read_json", "to_jsonable"]

TEMP_PREFIX = ".tmp-"


def atomic_write(path: str, write: Callable[[BinaryIO], None]) -> str:
    """Call `write(file)` on a temporary file next to `path`, fsync it, rename it to `path`,
    fsync the folder. A reader never sees a partial file; a crash leaves the previous file."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=TEMP_PREFIX, suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)
    return path


def _fsync_dir(directory: str) -> None:
    # Makes the rename itself durable; not possible on every OS/filesystem, hence best effort.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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


def write_json(path: str, obj, indent=None, sanitize: bool = True) -> str:
    """Write obj as JSON to path with `atomic_write`.

    sanitize=False skips the NaN -> null walk for large, already plain objects (results lists).
    """
    obj = to_jsonable(obj) if sanitize else obj
    return atomic_write(path, lambda f: json.dump(obj, codecs.getwriter("utf-8")(f), indent=indent))


def read_json(path: str):
    with open(path) as f:
        return json.load(f)
