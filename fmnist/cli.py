"""``fmnist``: one console script, one subcommand per stage.

Each subcommand is the ``main(argv, prog)`` of the module that does the work,
imported only when chosen, so ``fmnist classify`` never pays for importing
training code and ``fmnist --help`` answers at once.

Usage: ``fmnist {train,images,serve,classify,batch,compare,label,demo} --help``
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

from fmnist.common import logs, quiet, usage

# subcommand → (module whose main(argv, prog) runs it, one-line summary)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("fmnist.pipeline.exporter", "train, evaluate, bless and push a versioned SavedModel"),
    "images": ("fmnist.pipeline.images", "write Fashion-MNIST images as PNG files, one folder per class"),
    "serve": ("fmnist.serving.serve", "serve models over TF Serving's gRPC API (embedded, or the real binary)"),
    "classify": ("fmnist.serving.classify", "classify image files through a running server"),
    "batch": ("fmnist.batch.job", "classify folders of images in bulk with Apache Beam"),
    "compare": ("fmnist.batch.compare", "compare two served versions on the same images before promoting one"),
    "label": (
        "fmnist.serving.label",
        "point a version label (stable, canary) at a version, in a config file and a server",
    ),
    "demo": ("fmnist.demo", "train → push → serve → batch on sample images, end to end"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()]
    return (
        "usage: fmnist <command> [options]\n\ncommands:\n"
        + "\n".join(lines)
        + ("\n\nRun 'fmnist <command> --help' for a command's options.")
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        guess = usage.closest(command, COMMANDS)
        return usage.refuse("fmnist", f"unknown command {command!r}" + (f" (did you mean {guess}?)" if guess else ""))
    logs.configure()  # before the command's libraries are imported: one of them may log as it loads
    try:
        module = _quiet_import(COMMANDS[command][0])
        return module.main(rest, prog=f"fmnist {command}")
    except KeyboardInterrupt:  # Ctrl-C: one line and the shell's code for SIGINT, not a traceback
        print(f"\nfmnist {command}: interrupted", file=sys.stderr)
        return 130


def _quiet_import(name: str) -> ModuleType:
    """Import a command's module with file descriptor 2 pointed at /dev/null (see :mod:`fmnist.quiet`).

    A module that imports TensorFlow gets its device query here too, so the
    banner of either stays off the command's stderr. An ImportError still
    surfaces, after the descriptor is restored.
    """
    with quiet.stderr_silenced():
        module = importlib.import_module(name)
    if "tensorflow.python" in sys.modules:  # the real TensorFlow ran, not just serving.apis' protos
        quiet.import_tensorflow()
    return module


if __name__ == "__main__":
    sys.exit(main())
