"""One logging set-up for every ``fmnist`` command: one line format on stderr, libraries kept quiet.

Every line a command logs reads the same, whichever command runs the code
(``fmnist demo`` runs the others' in one process)::

    2026-01-01 12:00:00,000 WARNING fmnist.pipeline.plots: graphviz is not installed; ...

The CLI (:mod:`fmnist.cli`) calls :func:`configure` before it imports the
command's module: a library that logs at import through the root-level
``logging.warning`` (Beam does) would otherwise set up its own
``WARNING:name:message`` format first. Each command's ``main`` calls it
again with its own level, which also sets the format up when ``main`` is
called without the CLI.

Usage: ``logs.configure(logging.INFO)`` (or a level's name, as ``--log-level`` gives it)

Thread safety: call from the main thread, before the command's other threads log.
"""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Libraries that log routine work at INFO (TensorFlow: every asset a SavedModel export writes).
QUIET_LIBRARIES = ("tensorflow",)


def configure(level: int | str = logging.INFO) -> None:
    """Records at ``level`` and above to stderr in :data:`FORMAT`; the quiet libraries' at WARNING and above.

    The first call gives the root logger its one handler; a root logger that has one already
    keeps it (the CLI's from before the command was imported, or a test runner's), and only the
    levels change.
    """
    logging.basicConfig(format=FORMAT)
    logging.getLogger().setLevel(level)
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.WARNING)
