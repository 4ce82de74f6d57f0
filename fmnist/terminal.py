"""Keeping a command's standard error for its own messages while libraries write to file descriptor 2.

TensorFlow's C++ runtime and Beam's worker subprocesses write to descriptor 2
directly, past Python's ``sys.stderr`` and its logging settings. A command
that wants one clear line per event points the descriptor at /dev/null
while such code runs and writes its own messages to a copy of the original.

Usage::

    with fd2_silenced() as stderr:     # stderr: the terminal (or pipe) descriptor 2 was
        print("progress ...", file=stderr)
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import TextIO


@contextlib.contextmanager
def fd2_silenced() -> Iterator[TextIO]:
    """Descriptor 2 on /dev/null inside the block; yields a text stream on what it was before."""
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
