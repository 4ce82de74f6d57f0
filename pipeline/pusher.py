"""Pusher: publish a SavedModel as the next integer version, atomically.

TF Serving treats every numeric sub-directory of the model's base path as a
version and may poll in the middle of a write. So the version is written
under a dot-named sibling (never numeric, so never a version), completed with
its warmup records and explanation files, and only then renamed into place.

Usage: ``version_dir = push(model, "models/fashion_mnist", extras={...})``, or, to check the candidate
before it becomes a version, ``with staged(model, base) as candidate: ...; publish(candidate, extras={...})``
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import keras

from fmnist.common import names
from fmnist.pipeline import export


def versions(model_base: str | os.PathLike) -> list[int]:
    """The numeric version directories under a model's base path, ascending."""
    base = Path(model_base)
    if not base.is_dir():
        return []
    return sorted(int(p.name) for p in base.iterdir() if p.is_dir() and p.name.isdigit())


def latest_metrics(model_base: str | os.PathLike) -> tuple[int, dict] | None:
    """The newest pushed version that explains itself, with its metrics (None if none)."""
    for version in reversed(versions(model_base)):
        path = Path(model_base) / str(version) / names.ASSETS_EXTRA / names.METRICS_FILE
        if path.is_file():
            return version, json.loads(path.read_text())
    return None


@contextlib.contextmanager
def staged(
    model: keras.Model,
    model_base: str | os.PathLike,
    *,
    warmup: list | None = None,
    **export_kwargs,
) -> Iterator[Path]:
    """The SavedModel and its warmup records, written under a dot-named sibling of the versions (never a version).

    What :func:`publish` makes a version, or what the InfraValidator tries
    first; whatever is still there when the block ends is removed, so a
    refused or failed candidate leaves nothing behind. ``export_kwargs`` go to
    :func:`export.write_saved_model`.
    """
    base = Path(model_base)
    base.mkdir(parents=True, exist_ok=True)
    staging = base / f".staging-{os.getpid()}-{time.monotonic_ns()}"
    try:
        export.write_saved_model(model, staging, **export_kwargs)
        if warmup:
            export.write_warmup(staging, warmup)
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def publish(
    staging: Path,
    *,
    extras: Mapping[str, str | bytes | os.PathLike] | None = None,
    clock: Callable[[], float] = time.time,
    card: Callable[[Path, int], Mapping[str, str]] | None = None,
) -> Path:
    """Make ``staging`` (from :func:`staged`) the next version, atomically, and return its directory.

    The version is the clock's Unix seconds, bumped past any existing version.
    ``extras`` maps a file name to its content (text, bytes, or a file to copy)
    for ``assets.extra/``. ``card(version_dir, version)`` gives more such files
    once the SavedModel and extras are written and the version number is known
    (the model card).
    """
    base = staging.parent
    extra_dir = staging / names.ASSETS_EXTRA
    extra_dir.mkdir(exist_ok=True)
    for name, content in (extras or {}).items():
        target = extra_dir / name
        if isinstance(content, bytes):
            target.write_bytes(content)
        elif isinstance(content, str):
            target.write_text(content)
        else:
            shutil.copyfile(content, target)
    version = max([int(clock())] + [v + 1 for v in versions(base)])
    while True:
        target = base / str(version)
        if not target.exists():
            for name, text in (card(staging, version) if card else {}).items():  # names its version
                (extra_dir / name).write_text(text)
            try:
                os.rename(staging, target)  # atomic; fails if a rival filled the name first
                return target
            except OSError:
                if not target.exists():
                    raise
        version += 1


def push(
    model: keras.Model,
    model_base: str | os.PathLike,
    *,
    warmup: list | None = None,
    extras: Mapping[str, str | bytes | os.PathLike] | None = None,
    clock: Callable[[], float] = time.time,
    card: Callable[[Path, int], Mapping[str, str]] | None = None,
    **export_kwargs,
) -> Path:
    """Export ``model`` to ``<model_base>/<version>`` and return that directory: :func:`staged`, then :func:`publish`.

    On any failure nothing numeric is left behind.
    """
    with staged(model, model_base, warmup=warmup, **export_kwargs) as staging:
        return publish(staging, extras=extras, clock=clock, card=card)
