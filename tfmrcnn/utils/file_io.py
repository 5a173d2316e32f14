"""Writing files so that a reader or a crash never sees half of one: the one atomic writer.

Convention: `atomic_write(path, write)` writes to a temporary file
``.tmp-<host>-<pid>-<8 hex>-<name>`` in the folder of `path`, fsyncs it, renames it over `path`
and fsyncs the folder (so the rename itself survives a power cut). Every file tfmrcnn writes for
others to read later (weights, checkpoints, config.yaml, evaluation results and shards) goes
through it. Files are created with mode 0666 minus the umask, like ``open(path, "w")``.

A process killed mid-write leaves its temporary file behind. The first `atomic_write` of a
process into a folder removes the *stale* temporary files of ours there: those untouched for
`STALE_AFTER_S` (a live writer keeps writing, then renames at once) whose writer is gone,
i.e. the named process no longer runs on this host, or, for files of another host (whose
processes cannot be seen from here), untouched for `STALE_OTHER_HOST_AFTER_S`.
"""
from __future__ import annotations

import codecs
import json
import logging
import math
import os
import re
import secrets
import socket
import time
from typing import BinaryIO, Callable, List, Optional

__all__ = ["TEMP_PREFIX", "atomic_write", "remove_stale_temp_files", "write_json", "read_json",
           "to_jsonable"]

logger = logging.getLogger(__name__)

TEMP_PREFIX = ".tmp-"
STALE_AFTER_S = 60.0
STALE_OTHER_HOST_AFTER_S = 24 * 3600.0
# host may itself contain "-": the shortest host followed by -<pid>-<8 hex>- is the writer's
_TEMP_RE = re.compile(r"^\.tmp-(?P<host>.+?)-(?P<pid>\d+)-[0-9a-f]{8}-.")
_cleaned_dirs = set()


def _host() -> str:
    return socket.gethostname() or "localhost"


def _temp_path(directory: str, name: str) -> str:
    return os.path.join(directory, f"{TEMP_PREFIX}{_host()}-{os.getpid()}-"
                                   f"{secrets.token_hex(4)}-{name}")


def atomic_write(path: str, write: Callable[[BinaryIO], None]) -> str:
    """Call `write(file)` on a temporary file next to `path`, fsync it, rename it to `path`,
    fsync the folder. A reader never sees a partial file; a crash leaves the previous file."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    if directory not in _cleaned_dirs:
        _cleaned_dirs.add(directory)
        remove_stale_temp_files(directory)
    while True:
        tmp = _temp_path(directory, os.path.basename(path))
        try:  # O_EXCL: never reuse a file; 0o666 is reduced by the umask as for open(..., "w")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:
            continue
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


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _is_stale(name: str, idle_s: float, host: str) -> bool:
    match = _TEMP_RE.match(name)
    if match is None or idle_s < STALE_AFTER_S:
        return False
    if match["host"] == host:
        pid = int(match["pid"])
        return pid != os.getpid() and not _process_exists(pid)
    return idle_s >= STALE_OTHER_HOST_AFTER_S


def remove_stale_temp_files(directory: str, now: Optional[float] = None) -> List[str]:
    """Delete the stale temporary files of `atomic_write` in `directory` (see the module
    docstring for what is stale); returns their paths. Never raises."""
    now = time.time() if now is None else now
    host, removed = _host(), []
    try:
        names = [n for n in os.listdir(directory) if n.startswith(TEMP_PREFIX)]
    except OSError:
        return removed
    for name in names:
        path = os.path.join(directory, name)
        try:
            if _is_stale(name, now - os.stat(path).st_mtime, host):
                os.unlink(path)
                removed.append(path)
        except OSError:  # vanished meanwhile, or not ours to delete
            continue
    if removed:
        logger.info("Removed %d temporary file(s) left by interrupted writes in %s: %s",
                    len(removed), directory, ", ".join(os.path.basename(p) for p in removed))
    return removed


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
