"""The restricted unpickler: arrays and containers load, anything executable is refused."""
import builtins
import collections
import os
import pickle
import struct

import numpy as np
import pytest

from tfmrcnn.converter.safe_pickle import (MalformedPickleError, UnsafePickleError, safe_load,
                                          safe_loads)


class _RunsShell:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


class _Arbitrary:
    pass


class _CallsEval:
    def __reduce__(self):
        return (builtins.eval, ("1 + 1",))


class _CallsGetattr:
    def __reduce__(self):
        return (builtins.getattr, ("text", "upper"))


def test_malicious_reduce_is_refused_and_not_run(tmp_path):
    target = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"model": {"w": np.zeros(2)}, "x": _RunsShell(target)}))
    with pytest.raises(UnsafePickleError) as err:
        safe_load(str(path))
    assert "system" in str(err.value) and str(path) in str(err.value)
    assert not target.exists()


@pytest.mark.parametrize("obj, refused", [
    (_Arbitrary(), "_Arbitrary"), (_CallsEval(), "builtins.eval"),
    (_CallsGetattr(), "builtins.getattr"),
])
def test_other_globals_are_refused(obj, refused):
    with pytest.raises(UnsafePickleError, match=refused):
        safe_loads(pickle.dumps(obj), source="x.pkl")


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_arrays_and_containers_round_trip(protocol):
    data = {
        "model": collections.OrderedDict(w=np.arange(12, dtype=np.float32).reshape(3, 4),
                                         n=np.array([1, 2], dtype=np.int64)),
        "__author__": "someone", "s": {1, 2}, "t": (1.5, None, True, b"\xff\x00"),
        "scalar": np.float32(2.5), "lst": [np.float64(1.0)],
    }
    out = safe_loads(pickle.dumps(data, protocol=protocol))
    assert isinstance(out["model"], collections.OrderedDict)
    np.testing.assert_array_equal(out["model"]["w"], data["model"]["w"])
    assert out["model"]["w"].dtype == np.float32 and out["model"]["n"].dtype == np.int64
    assert out["s"] == {1, 2} and out["t"] == (1.5, None, True, b"\xff\x00")
    assert out["scalar"] == np.float32(2.5) and out["__author__"] == "someone"


def _py2_pickle(name: str, values: np.ndarray) -> bytes:
    """A protocol-2 pickle as Python 2 cPickle writes it: py2 `str` buffers, `__builtin__`."""
    raw = values.astype("<f4").tobytes()

    def string(b):  # SHORT_BINSTRING / BINSTRING: a Python 2 str
        if len(b) < 256:
            return b"U" + bytes([len(b)]) + b
        return b"T" + struct.pack("<i", len(b)) + b

    array = (b"cnumpy.core.multiarray\n_reconstruct\n" + b"cnumpy\nndarray\n" + b"K\x00\x85"
             + string(b"b") + b"\x87R"
             + b"(K\x01" + b"".join(b"K" + bytes([d]) for d in values.shape) + b"\x86"
             + b"cnumpy\ndtype\n" + string(b"f4") + b"K\x00K\x01\x87R"
             + b"\x89" + string(raw) + b"tb")
    blobs = b"}" + string(name.encode()) + array + b"s"
    tags = b"c__builtin__\nset\n]" + string(b"a") + b"a\x85R"
    return b"\x80\x02}" + string(b"blobs") + blobs + b"s" + string(b"tags") + tags + b"s."


def test_python2_caffe2_pickle_needs_latin1(tmp_path):
    # bytes >= 0x80 in the buffer: only latin1 maps each byte to one code point and back
    values = np.array([[-1.5, 2.0, 3.25], [1e-3, -7.0, 255.5]], dtype=np.float32)
    data = _py2_pickle("conv1_w", values)
    out = safe_loads(data, source="r50.pkl")
    np.testing.assert_array_equal(out["blobs"]["conv1_w"], values)
    assert out["tags"] == {"a"}
    with pytest.raises(MalformedPickleError, match="r50.pkl .*UnicodeDecodeError"):
        safe_loads(data, source="r50.pkl", encoding="ascii")
    path = tmp_path / "r50.pkl"
    path.write_bytes(data)
    np.testing.assert_array_equal(safe_load(str(path))["blobs"]["conv1_w"], values)


def test_codecs_encode_only_latin1():
    # protocol 2 under Python 3 writes bytes as _codecs.encode(str, 'latin1'); other codecs refused
    evil = b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x05\x00\x00\x00rot13\x86R."
    with pytest.raises(UnsafePickleError, match="latin1"):
        safe_loads(evil)


def test_damaged_pickles_name_the_file(tmp_path):
    """Issue 20: truncated or corrupted pickles gave raw tracebacks (EOFError,
    UnicodeDecodeError, MemoryError ...); every one is now a MalformedPickleError naming the file,
    which tfmrcnn-convert reports as an error line."""
    from tfmrcnn.converter.convert import ConversionError, read_checkpoint

    good = pickle.dumps({"model": {"a.weight": np.ones((4, 3), np.float32)}}, protocol=2)
    rng = np.random.default_rng(0)
    path = tmp_path / "damaged.pkl"
    for trial in range(200):
        data = bytearray(good)
        for _ in range(int(rng.integers(1, 4))):
            data[int(rng.integers(len(data)))] = int(rng.integers(256))
        if trial % 3 == 0:
            data = data[:int(rng.integers(1, len(data)))]
        path.write_bytes(bytes(data))
        try:
            read_checkpoint(str(path))
        except (ConversionError, UnsafePickleError) as e:
            assert str(path) in str(e)
    with pytest.raises(MalformedPickleError, match="damaged.pkl is not a readable pickle"):
        path.write_bytes(good[:20])
        safe_load(str(path))
