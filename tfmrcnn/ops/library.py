"""Loading of the compiled custom-op library `_tfmrcnn_ops.so` (built from custom_ops/ by
scripts/setup.sh), shared by every op wrapper in this package."""
import os
import threading

import tensorflow as tf

_LIB_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_tfmrcnn_ops.so")
_lib = None
_lock = threading.Lock()


def load_library():
    """The loaded custom-op module (loaded once; raises with the build command if missing)."""
    global _lib
    if _lib is None:
        with _lock:
            if _lib is None:
                if not os.path.exists(_LIB_PATH):
                    raise ImportError(
                        "tfmrcnn custom ops are not built: %s is missing. Build them with "
                        "`python custom_ops/build.py` from the repository root (scripts/setup.sh "
                        "does this)." % _LIB_PATH)
                try:
                    _lib = tf.load_op_library(_LIB_PATH)
                except tf.errors.NotFoundError as e:
                    raise ImportError(
                        "cannot load %s (%s). It was probably built against another TensorFlow: "
                        "rebuild with `python custom_ops/build.py --force`." % (_LIB_PATH, e)
                    ) from e
    return _lib
