"""The one place dqnlab imports TensorFlow and Keras.

TF 2.21 writes INFO lines to stderr while it loads (oneDNN notes, "Could not find cuda drivers" on a
CPU-only machine) before its logging is initialised, so TF_CPP_MIN_LOG_LEVEL cannot hide them. They are
noise to a dqnlab user, so the import runs with the stderr file descriptor pointed at /dev/null; an import
*error* still raises normally. Set DQNLAB_TF_LOGS=1 to see everything.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _import_quietly():
    if os.environ.get("DQNLAB_TF_LOGS") == "1" or "tensorflow" in sys.modules:
        import keras
        import tensorflow

        return tensorflow, keras
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import keras
        import tensorflow

        # Probing for GPUs is where TF logs the failed cuInit call on CPU-only machines: do it here too.
        tensorflow.config.list_physical_devices("GPU")
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    return tensorflow, keras


tf, keras = _import_quietly()
