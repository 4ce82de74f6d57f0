"""The batch jobs' output folder: what a run leaves there, what it may replace, and what ``--resume`` takes from it.

A finished run's results (:data:`BATCH_RESULTS`, :data:`COMPARE_RESULTS`)
end with ``_SUCCESS``; another run into the folder is refused
(:class:`~batch.errors.OutputInUse`) unless ``--overwrite``, and files that
are not a run's are never touched. Besides them the pipeline writes scratch
the launcher reads and removes: the tallies of the summary, the report's
gallery, and :class:`FailureNotes` (why a worker stopped the job); an
interrupted run's scratch and Beam's ``beam-temp-*`` go with the next run.

``fmnist batch`` saves each classified batch's outcomes as a checkpoint in
``_resume/`` (:data:`CHECKPOINTS`) as it goes, removed once ``_SUCCESS`` is
written: a folder with checkpoints and no ``_SUCCESS`` holds an interrupted
run, which ``--resume`` finishes (:func:`plan_resumption`) and which only
``--overwrite`` may replace. Everything goes through Beam's ``FileSystems``.

Usage::

    results, resuming = check_job_output(output, overwrite=False, resume=False)
    clear_output(output, results)
    write_checkpoint(folder, outcomes); read_checkpoint(path) == outcomes
    plan = plan_resumption(output, files, logs, sys.stderr)

Thread safety: workers write checkpoints and failure notes under names of their own (a digest, a uuid);
the launcher alone reads and removes them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TextIO

import grpc
from apache_beam.io.filesystem import BeamIOError, CompressionTypes
from apache_beam.io.filesystems import FileSystems

from fmnist.batch import report, summary
from fmnist.batch.errors import OutputInUse, OutputUnwritable
from fmnist.batch.outcomes import Outcome, from_json, to_json
from fmnist.common import errors

# Sharded outputs, <name>-SSSSS-of-NNNNN.<format>
PREDICTIONS, ERRORS, DISAGREEMENTS = "predictions", "errors", "disagreements"
COMPARISON_FILE = "comparison.json"
SUCCESS = "_SUCCESS"
# A run's results in --output (replaced only with --overwrite); see clear_output for its scratch.
BATCH_RESULTS = (
    f"{PREDICTIONS}-*",
    f"{ERRORS}-*",
    summary.SUMMARY_FILE,
    summary.CONFUSION_FILE,
    report.REPORT_FILE,
    SUCCESS,
)
COMPARE_RESULTS = (f"{DISAGREEMENTS}-*", f"{ERRORS}-*", COMPARISON_FILE, report.REPORT_FILE, SUCCESS)
COUNTS_FILE = "_counts.jsonl"  # the pipeline's tallies, read and removed by the launcher (read_counts)
GALLERY_FILE = "_gallery.json"  # the report's gallery candidates, read and removed by the launcher (read_gallery)
_FAILURE_PREFIX = "_failed-"  # FailureNotes
# Each classified batch's outcomes, one checkpoint file per batch (write_checkpoint): what --resume
# takes from an interrupted run. Removed once the run's _SUCCESS is written.
CHECKPOINTS = "_resume"
CHECKPOINT_SUFFIX = ".jsonl"
CHECKPOINT_TEMP_PREFIX = "tmp-"  # a checkpoint being written: never read, removed by the next --resume
_CHECKPOINT_NAME = re.compile(r"^[0-9a-f]{32}" + re.escape(CHECKPOINT_SUFFIX) + "$")
_CHECKPOINT_READERS = 16  # threads reading checkpoints in the launcher (object stores answer slowly, in parallel)


def listed(output: str, pattern: str) -> list[str]:
    """The paths in ``output`` matching ``pattern``; none when there is no such folder yet."""
    try:
        return [m.path for m in FileSystems.match([FileSystems.join(output, pattern)])[0].metadata_list]
    except BeamIOError:
        return []


def result_files(output: str, result_patterns: Sequence[str]) -> tuple[str, ...]:
    """Every result file in ``output``, sorted: what a finished run lists."""
    return tuple(sorted(path for pattern in result_patterns for path in listed(output, pattern)))


def check_output(output: str, overwrite: bool, result_patterns: Sequence[str]) -> list[str]:
    """An earlier run's results in ``output``; refused (:class:`OutputInUse`) unless overwriting."""
    results = [path for pattern in result_patterns for path in listed(output, pattern)]
    if results and not overwrite:
        shown = ", ".join(FileSystems.split(path)[1] for path in sorted(results)[:3])
        raise OutputInUse(
            f"--output {output} holds another run's results ({shown}{', ...' if len(results) > 3 else ''}); "
            "choose another folder, or add --overwrite to replace them"
        )
    return results


def check_writable(output: str) -> None:
    """Refuse (:class:`~batch.errors.OutputUnwritable`) a local ``output`` the job could not write, before any work.

    The deepest part of the path that exists must be a folder the job can
    create a file in (a temporary file, made and gone at once): there the job
    makes whatever folders are missing, then writes. Other file systems are
    Beam's to judge, when the job writes.
    """
    if FileSystems.get_scheme(output) is not None:
        return
    existing = os.path.abspath(output)
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if os.path.islink(existing) and not os.path.exists(existing):
        raise OutputUnwritable(f"--output {output}: {existing} is a symbolic link to nothing")
    if not os.path.isdir(existing):
        raise OutputUnwritable(f"--output {output}: {existing} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise OutputUnwritable(f"--output {output}: cannot write in {existing}: {error.strerror or error}") from error


def check_job_output(output: str, overwrite: bool, resume: bool) -> tuple[list[str], bool]:
    """``fmnist batch``'s :func:`check_output`: (an earlier run's results to remove before this run, whether
    this run resumes an interrupted one).

    An interrupted run is one whose checkpoints are there without its
    ``_SUCCESS``: refused unless ``resume`` (its results, if it got as far
    as writing some, are written again, whole) or ``overwrite``.
    """
    saved = listed(output, f"{CHECKPOINTS}/*")
    if saved and not listed(output, SUCCESS) and not overwrite:
        if not resume:
            count = sum(is_checkpoint(FileSystems.split(path)[1]) for path in saved)
            raise OutputInUse(
                f"--output {output} holds an interrupted run ({summary.counted(count, 'checkpoint')} in "
                f"{CHECKPOINTS}/); add --resume to finish it, or --overwrite to start again"
            )
        return [path for pattern in BATCH_RESULTS for path in listed(output, pattern)], True
    try:
        return check_output(output, overwrite, BATCH_RESULTS), False
    except OutputInUse as error:
        if resume:
            raise OutputInUse(f"{error}; --resume has nothing to finish there (no {CHECKPOINTS}/)") from error
        raise


def is_finished(output: str) -> bool:
    """Whether ``output`` holds a finished run (its ``_SUCCESS``)."""
    return bool(listed(output, SUCCESS))


def clear_output(output: str, results: list[str]) -> None:
    """Remove ``results`` (being overwritten) and the scratch an interrupted run left (:func:`remove_scratch`)."""
    if results:
        FileSystems.delete(results)
    remove_scratch(output)


def remove_scratch(output: str) -> None:
    """Remove the scratch in ``output``: Beam's ``beam-temp-*`` folders, the tallies, the gallery, failure notes.

    It is no one's result: a run that finishes removes its own, a run that
    fails too (:func:`scratch_removed_on_failure`), and the next run removes
    what an interrupted one left. Files that are not the job's are never touched.
    """
    # Beam's match lists files, so a temp folder goes with its files; locally, empty ones go too.
    patterns = ("beam-temp-**", COUNTS_FILE, GALLERY_FILE, f"{_FAILURE_PREFIX}*")
    scratch = [path for pattern in patterns for path in listed(output, pattern)]
    if scratch:
        FileSystems.delete(scratch)
    if os.path.isdir(output):
        for name in os.listdir(output):
            if name.startswith("beam-temp-"):
                shutil.rmtree(os.path.join(output, name), ignore_errors=True)


@contextlib.contextmanager
def scratch_removed_on_failure(output: str) -> Iterator[None]:
    """Around a run: if it fails, remove its scratch (:func:`remove_scratch`) and, when the run made ``output``
    and left nothing else in it, the folder too. Checkpoints stay, for ``--resume``."""
    existed = os.path.isdir(output)
    try:
        yield
    except BaseException:
        remove_scratch(output)
        if not existed and os.path.isdir(output) and not os.listdir(output):
            os.rmdir(output)
        raise


def write_bytes(path: str, data: bytes) -> None:
    """Write a whole file through Beam's FileSystems (local or remote)."""
    with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as file:
        file.write(data)


def read_file(path: str) -> bytes:
    """A whole file through Beam's FileSystems, as stored (a ``.gz`` is not unpacked)."""
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as file:
        return file.read()


def read_counts(output: str) -> dict[tuple, int]:
    """The tallies :class:`~batch.steps.WriteTallies` summed, removing their scratch file."""
    path = FileSystems.join(output, COUNTS_FILE)
    with FileSystems.open(path) as file:
        rows = [json.loads(line) for line in file.read().decode().splitlines() if line]
    FileSystems.delete([path])
    return {tuple(key): n for key, n in rows}


def read_gallery(output: str) -> dict | list:
    """The gallery :class:`~batch.steps.WriteGallery` wrote, removing its scratch file."""
    path = FileSystems.join(output, GALLERY_FILE)
    with FileSystems.open(path) as file:
        gallery = json.loads(file.read())
    FileSystems.delete([path])
    return gallery


@dataclass(frozen=True)
class FailureNotes:
    """Where workers note the serving error they stop the job on, and where the launcher finds it as a type.

    Beam gives the launcher a worker's failure as text, so the status travels
    beside it: one small JSON file per note (code, details, target) in
    ``output``, under a name of its own; :meth:`taken` makes it
    the :mod:`fmnist.common.errors` type of its code again. Picklable, so a
    DoFn or model handler holds one.
    """

    output: str

    def note(self, error: errors.ServingError) -> None:
        """Save ``error``'s status (anything with a gRPC ``code``, ``details`` and ``target``)."""
        note = {"code": error.code.name, "details": error.details, "target": error.target}
        # One write of a few bytes, finished before the worker raises: the launcher reads it only after that.
        write_bytes(
            FileSystems.join(self.output, f"{_FAILURE_PREFIX}{uuid.uuid4().hex}.json"), json.dumps(note).encode()
        )

    def taken(self) -> errors.ServingError | None:
        """The error of the first note (by name; several workers may each note one), removing every note."""
        paths = sorted(listed(self.output, f"{_FAILURE_PREFIX}*"))
        if not paths:
            return None
        note = json.loads(read_file(paths[0]))
        FileSystems.delete(paths)
        return errors.from_code(grpc.StatusCode[note["code"]], note["details"], target=note["target"])


def checkpoint_name(paths: Iterable[str]) -> str:
    """A batch's checkpoint file name: a digest of its sorted paths, so a retried batch rewrites the same file."""
    return hashlib.sha256(json.dumps(sorted(paths)).encode()).hexdigest()[:32] + CHECKPOINT_SUFFIX


def is_checkpoint(name: str) -> bool:
    """Whether a file name in the checkpoint folder is a complete checkpoint's (not one being written)."""
    return bool(_CHECKPOINT_NAME.match(name))


def write_checkpoint(folder: str, outcomes: Sequence[Outcome], with_data: bool = False) -> str:
    """Save a batch's outcomes under ``folder`` as one JSON line each (:func:`batch.outcomes.to_json`, with the
    images' bytes ``with_data``); returns the path.

    Written whole under a temporary name in the same folder, then renamed, so
    the checkpoint's name never stands for half a file; on object stores the
    rename is a copy of the whole object. The name is :func:`checkpoint_name`.
    """
    path = FileSystems.join(folder, checkpoint_name(outcome.path for outcome in outcomes))
    temporary = FileSystems.join(folder, f"{CHECKPOINT_TEMP_PREFIX}{uuid.uuid4().hex}")
    write_bytes(temporary, "".join(to_json(outcome, with_data) + "\n" for outcome in outcomes).encode())
    FileSystems.rename([temporary], [path])
    return path


def read_checkpoint(path: str) -> list[Outcome]:
    """The outcomes :func:`write_checkpoint` saved in ``path``; ``ValueError`` for a damaged one.

    Every line must be an outcome, and the paths must give the file's own
    name back, so a file cut short (even at a line's end) or edited is refused.
    """
    outcomes = [from_json(line) for line in read_file(path).decode().splitlines()]
    paths = [outcome.path for outcome in outcomes]
    name = FileSystems.split(path)[1]
    if not outcomes or len(set(paths)) < len(paths) or checkpoint_name(paths) != name:
        raise ValueError(f"{name} does not hold the outcomes it was written with")
    return outcomes


@dataclass(frozen=True)
class Resumption:
    """What ``--resume`` takes from an interrupted run: its checkpoints, each with the paths in it not to take
    (another checkpoint's later outcome for the same file, or a file no longer among the inputs), normally none."""

    checkpoints: tuple[tuple[str, tuple[str, ...]], ...]
    done: int  # inputs whose outcome they hold: not classified again


def _checkpoint_paths(path: str) -> list[str] | ValueError:
    """The paths a checkpoint holds outcomes for, or why it is damaged."""
    try:
        return [outcome.path for outcome in read_checkpoint(path)]
    except ValueError as error:
        return error


def plan_resumption(output: str, files: set[str], logs: set[str], stream: TextIO) -> Resumption:
    """Read the checkpoints in ``output`` for ``--resume``: which outcomes to take, and how many inputs they cover.

    A file in several checkpoints (a batch redone with other companions) is
    taken from the newest; one no longer among the inputs (``files``, or a
    ``logs`` file's images) is left out. Checkpoints being written when the
    run stopped, and damaged ones, are removed: their files are classified again.
    """
    folder = FileSystems.join(output, CHECKPOINTS)
    try:
        found = FileSystems.match([FileSystems.join(folder, "*")])[0].metadata_list
    except BeamIOError:
        found = []
    temporary = [m.path for m in found if FileSystems.split(m.path)[1].startswith(CHECKPOINT_TEMP_PREFIX)]
    saved = sorted(
        (m for m in found if is_checkpoint(FileSystems.split(m.path)[1])),
        key=lambda m: (m.last_updated_in_seconds, m.path),
    )
    with ThreadPoolExecutor(_CHECKPOINT_READERS) as pool:
        contents = list(pool.map(_checkpoint_paths, [m.path for m in saved]))
    damaged = []
    owner: dict[str, int] = {}  # path → the checkpoint its outcome is taken from: the newest holding it
    for i, (metadata, paths) in enumerate(zip(saved, contents, strict=True)):
        if isinstance(paths, ValueError):
            print(
                f"ignoring a damaged checkpoint, {metadata.path}: {paths}; its files are classified again",
                file=stream,
                flush=True,
            )
            damaged.append(metadata.path)
            continue
        owner.update(dict.fromkeys(paths, i))

    def is_input(path: str) -> bool:
        log, hash_sign, _ = path.rpartition("#")
        return path in files or (bool(hash_sign) and log in logs)

    checkpoints, done = [], 0
    for i, (metadata, paths) in enumerate(zip(saved, contents, strict=True)):
        if isinstance(paths, ValueError):
            continue
        left_out = tuple(path for path in paths if owner[path] != i or not is_input(path))
        if len(left_out) < len(paths):
            checkpoints.append((metadata.path, left_out))
            done += len(paths) - len(left_out)
    gone = sum(not is_input(path) for path in owner)
    if gone:
        print(
            f"resuming: {summary.counted(gone, 'file')} in the checkpoints, no longer among the inputs, left out",
            file=stream,
            flush=True,
        )
    if temporary or damaged:
        FileSystems.delete(temporary + damaged)
    return Resumption(tuple(checkpoints), done)


def remove_checkpoints(output: str) -> None:
    """Remove the checkpoint folder: the run finished, or is being overwritten."""
    saved = listed(output, f"{CHECKPOINTS}/*")
    if saved:
        FileSystems.delete(saved)
    folder = os.path.join(output, CHECKPOINTS)
    if os.path.isdir(folder):  # a local folder outlives its files
        shutil.rmtree(folder, ignore_errors=True)
