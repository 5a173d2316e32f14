"""Loading of the compiled custom-op library `_tfmrcnn_ops.so`, shared by every op wrapper in
this package.

The library is built from custom_ops/ by ``custom_ops/build.py`` (called by scripts/setup.sh and
by ``pip install .``) against one TensorFlow: a custom op loads only with the C++ ABI of the TF
it was compiled for. The build writes ``_build_info.json`` next to it ({"tf_version",
"tf_distribution", "cuda"}); loading checks it first, so that another TF gives an error naming
both versions and the rebuild command instead of an undefined-symbol message (or a crash).
"""
import json
import os
import sys
import threading

import tensorflow as tf

_DIR = os.path.dirname(os.path.abspath(__file__))
_LIB_PATH = os.path.join(_DIR, "_tfmrcnn_ops.so")
BUILD_INFO_NAME = "_build_info.json"   # written by custom_ops/build.py
_lib = None
_lock = threading.Lock()


def rebuild_command() -> str:
    """How to (re)build the library for this installation and its TensorFlow."""
    source = os.path.dirname(os.path.dirname(_DIR))
    build_script = os.path.join(source, "custom_ops", "build.py")
    if os.path.exists(build_script):   # a source tree (editable install, scripts/setup.sh)
        return f"{sys.executable} {build_script} --force"
    return (f"{sys.executable} -m pip install --no-build-isolation --no-deps --force-reinstall "
            "<the tfmrcnn source folder>  (compiles the op against the installed TensorFlow)")


def check_build_info(info: dict, tf_version: str, library: str) -> None:
    """Raise ImportError when the library at `library` was built for another TF version."""
    built_for = info.get("tf_version")
    if built_for != tf_version:
        raise ImportError(
            f"tfmrcnn's custom ops ({library}) were built for TensorFlow {built_for}, but "
            f"TensorFlow {tf_version} is installed. Rebuild them: {rebuild_command()}")


# Called from op wrappers inside traced code: AutoGraph would otherwise try to convert this
# function and the os.path calls of `_load`, and warn (Python 3.11 gives no source for them)
@tf.autograph.experimental.do_not_convert
def load_library():
    """The loaded custom-op module (loaded once; raises with the build command if missing or
    built for another TensorFlow)."""
    global _lib
    if _lib is None:
        with _lock:
            if _lib is None:
                _lib = _load(_LIB_PATH)
    return _lib


def _load(path):
    if not os.path.exists(path):
        raise ImportError(f"tfmrcnn custom ops are not built: {path} is missing. Build them "
                          f"with: {rebuild_command()}  (scripts/setup.sh does this).")
    info_path = os.path.join(os.path.dirname(path), BUILD_INFO_NAME)
    if os.path.exists(info_path):
        with open(info_path) as f:
            check_build_info(json.load(f), tf.__version__, path)
    try:
        return tf.load_op_library(path)
    except tf.errors.NotFoundError as e:
        raise ImportError(f"cannot load {path} ({e}). It was probably built against another "
                          f"TensorFlow: rebuild it with: {rebuild_command()}") from e
