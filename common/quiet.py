"""Importing TensorFlow without its C++ start-up banner on the command's stderr.

Importing TensorFlow and its first device query make its C++ runtime log a
banner (CPU features, missing CUDA) that TF_CPP_MIN_LOG_LEVEL no longer
silences; a command's stderr is for its own errors. The commands that need
TensorFlow from the start import it through ``fmnist.cli``; the ones that
need it only on some paths (``fmnist batch --in-process``) import it here,
when they get there, so the other paths never pay for it.

Usage: ``tf = import_tensorflow()``; ``with stderr_silenced() as stderr: print("mine", file=stderr)``
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import TextIO


@contextmanager
def stderr_silenced() -> Iterator[TextIO]:
    """File descriptor 2 points at /dev/null inside, so C++ logging is dropped too; restored after, even on error.

    Yields a text stream on what descriptor 2 was before, for the command's own
    messages while it lasts (``fmnist batch`` writes its progress there while
    Beam's worker processes, which write to descriptor 2 directly, are hushed).
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    saved = os.dup(2)
    stream = os.fdopen(os.dup(saved), "w", buffering=1, encoding=sys.stderr.encoding or "utf-8", errors="replace")
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield stream
    finally:
        stream.close()
        os.dup2(saved, 2)
        os.close(saved)


def import_tensorflow() -> ModuleType:
    """``tensorflow``, with stderr silenced while it is imported (if not yet) and queried for devices.

    The query is what logs the CUDA error on CPU-only hosts; it is cheap once
    TensorFlow is initialised, so callers need not track whether it ran.
    """
    with stderr_silenced():
        import tensorflow as tf

        tf.config.list_physical_devices()
    return tf
