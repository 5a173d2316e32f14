"""A restricted unpickler for checkpoint files we did not write (`.pkl` from the internet).

Convention: a pickle may only rebuild NumPy arrays, NumPy scalars/dtypes and plain builtin
containers. `pickle.load` would call any global the file names (``os.system`` through
``__reduce__``), so every global is looked up in a fixed allow-list of objects instead of being
imported; anything else raises `UnsafePickleError` naming the global and the file.

Files written by Python 2 / Caffe2 (detectron2's ImageNet backbones) store NumPy buffers as
Python 2 ``str``; they are read with ``encoding="latin1"``, as detectron2 does, which maps each
byte to one code point so the buffers come back unchanged.
"""
from __future__ import annotations

import collections
import io
import pickle
from typing import Any, Callable, Dict, Tuple

import numpy as np

__all__ = ["UnsafePickleError", "MalformedPickleError", "safe_load", "safe_loads"]


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle refers to a global outside the allow-list."""


class MalformedPickleError(pickle.UnpicklingError):
    """The file is not a complete, well-formed pickle (truncated or corrupted)."""


def _numpy_core():
    # numpy >= 2 moved the package to numpy._core; files name numpy.core or numpy._core.
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray, numeric
    return multiarray, numeric


def _latin1_encode(text, encoding="latin1", errors="strict"):
    """`_codecs.encode` limited to what pickle protocol 2 uses for `bytes`: str -> latin1."""
    if not isinstance(text, str) or encoding.lower().replace("-", "") != "latin1":
        raise UnsafePickleError(
            f"_codecs.encode is only allowed as encode(str, 'latin1'), got encoding {encoding!r}")
    return text.encode("latin1", errors)


def _allowed_globals() -> Dict[Tuple[str, str], Any]:
    multiarray, numeric = _numpy_core()
    allowed: Dict[Tuple[str, str], Any] = {}
    for core in ("numpy.core", "numpy._core"):
        allowed[(core + ".multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(core + ".multiarray", "scalar")] = multiarray.scalar
        # protocol 5 rebuilds arrays from a byte buffer
        allowed[(core + ".numeric", "_frombuffer")] = numeric._frombuffer
    allowed[("numpy", "ndarray")] = np.ndarray
    allowed[("numpy", "dtype")] = np.dtype
    # Python 3 writes "builtins", Python 2 "__builtin__" (find_class sees the raw name).
    for module in ("builtins", "__builtin__"):
        for obj in (dict, list, tuple, set, frozenset, str, bytes, int, float, bool):
            allowed[(module, obj.__name__)] = obj
    allowed[("collections", "OrderedDict")] = collections.OrderedDict
    # Protocol 2 under Python 3 pickles `bytes` (ndarray buffers) as _codecs.encode(s, 'latin1').
    allowed[("_codecs", "encode")] = _latin1_encode
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, source: str, encoding: str):
        super().__init__(file, encoding=encoding)
        self._source = source
        self._allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Callable:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"Refused to unpickle global '{module}.{name}' in {self._source}: only NumPy "
                "arrays and plain containers are allowed in checkpoint files.") from None

    def persistent_load(self, pid):
        raise UnsafePickleError(
            f"Refused persistent id {pid!r} in {self._source} (torch zip/pth storage is not "
            "a plain pickle; read .pth files with torch).")


def safe_load(path: str, encoding: str = "latin1") -> Any:
    """Unpickle `path` allowing only NumPy arrays and builtin containers."""
    with open(path, "rb") as f:
        return _load(_RestrictedUnpickler(f, str(path), encoding), str(path))


def safe_loads(data: bytes, source: str = "<bytes>", encoding: str = "latin1") -> Any:
    """`safe_load` for in-memory bytes; `source` names the data in errors."""
    return _load(_RestrictedUnpickler(io.BytesIO(data), source, encoding), source)


def _load(unpickler: "_RestrictedUnpickler", source: str) -> Any:
    """unpickler.load(); damaged bytes raise MalformedPickleError naming the source.

    A corrupted pickle makes the unpickler raise almost anything (EOFError, UnicodeDecodeError,
    MemoryError for a bogus length, ValueError, ...), which used to surface as a raw traceback.
    """
    try:
        return unpickler.load()
    except UnsafePickleError:
        raise
    except Exception as e:  # noqa: BLE001 - see the docstring
        raise MalformedPickleError(f"{source} is not a readable pickle (truncated or corrupted?): "
                                   f"{type(e).__name__}: {e}") from None
