"""Importing TensorFlow only where a command needs it, without its C++ start-up banner on stderr.

Importing TensorFlow and its first device query make its C++ runtime log a
banner (CPU features, missing CUDA) that TF_CPP_MIN_LOG_LEVEL no longer
silences. ``fmnist.cli`` imports a command's module with descriptor 2 on
/dev/null, which covers the commands that import TensorFlow from the start;
``fmnist batch`` imports it only for ``--in-process``, when it resolves and
loads the model (in the launcher or a worker), so the served path never pays
for it. This is that import, silenced the same way (:mod:`fmnist.terminal`).

Usage: ``tf = import_tensorflow()``
"""

from __future__ import annotations

import os
from types import ModuleType

from fmnist import terminal


def import_tensorflow() -> ModuleType:
    """``tensorflow``, with descriptor 2 silenced while it is imported (if not yet) and queried for devices.

    The query is what logs the CUDA error on CPU-only hosts; it is cheap once
    TensorFlow is initialised, so callers need not track whether it ran.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # what fmnist.cli sets, for callers outside it
    with terminal.fd2_silenced():
        import tensorflow as tf

        tf.config.list_physical_devices()
    return tf
