"""The batch jobs' inputs: which files an ``--input`` names, and reading them into images on the workers.

Reading checks each file locally before anything is sent, with the check
``fmnist classify`` makes (:func:`fmnist.common.imagefile.check`: its size,
and its header without decoding pixels), so empty files, non-images,
unsupported formats and decompression bombs become :class:`Failed` outcomes
here rather than failed requests. Request logs (``--input`` ending in
``.tfrecord``) give one image per logged encoded image. Everything goes
through Beam's ``FileSystems``, so ``gs://``, ``s3://`` and the others work
wherever their Beam extra is installed.

Usage::

    patterns = [p for spec in ["images/", "more/**/*.png"] for p in input_patterns(spec)]
    read = batches_of_paths_and_sizes | beam.ParDo(ReadImages(limits))
    files, logs = match_inputs(["images/"])   # in the launcher: what the pipeline will read

Thread safety: :class:`ReadImages` reads in a thread of its own (:class:`~batch.threaded.ThreadedDoFn`);
each DoFn instance is used by one stage at a time, as Beam does.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
from collections.abc import Iterator, Sequence
from typing import BinaryIO

import apache_beam as beam
from apache_beam.io.filesystem import BeamIOError, CompressionTypes, FileSystem
from apache_beam.io.filesystems import FileSystems

from fmnist.batch.errors import JobError, NoInput
from fmnist.batch.outcomes import Failed, Image, Reason, uncarried
from fmnist.batch.summary import counted
from fmnist.batch.threaded import ThreadedDoFn
from fmnist.common import imagefile, names
from fmnist.common.apis import prediction_log_pb2  # the protos alone (no TensorFlow runtime)
from fmnist.common.imagefile import Limits

_WILDCARD = re.compile(r"[*?\[]")


def input_patterns(spec: str) -> list[str]:
    """The file patterns for one ``--input``: folders recursively, globs with ``**/`` matching zero folders too.

    Beam's ``**`` matches any characters, ``/`` included, so ``imgs/**/*.png``
    alone would need at least one folder below ``imgs``; users (and shells with
    globstar) expect it to match ``imgs/a.png`` as well, so each ``**/`` also
    yields the pattern without it. A plain path is a folder when the local file
    system says so; elsewhere, when no file has exactly that name (object
    stores have no folders, only prefixes).
    """
    if _WILDCARD.search(spec):
        return sorted(_zero_or_more_folders(spec))
    if _is_local(spec):
        return [os.path.join(spec.rstrip("/"), "**")] if os.path.isdir(spec) else [spec]
    if any(m.path == spec for m in FileSystems.match([spec])[0].metadata_list):
        return [spec]
    return [FileSystems.join(spec.rstrip("/"), "**")]


def _is_local(path: str) -> bool:
    """Whether ``path`` is on this machine's file system (Beam's scheme-less paths), not behind a URL scheme."""
    return FileSystems.get_scheme(path) is None


def matched_files(pattern: str) -> Iterator[tuple[str, int]]:
    """(path, size) of each file ``pattern`` matches, as the job names and reads them; the pattern's syntax is
    Beam's (:meth:`FileSystem.translate_pattern`).

    Locally, links are followed, to folders too, except into a folder the
    link is in (a loop); a link to nothing is a file of size 0, whose reading
    says what it is (:class:`ReadImages`), so it is accounted for like any
    other file. Elsewhere, Beam's match. A folder that cannot be listed raises
    ``OSError`` (or Beam's ``BeamIOError``).
    """
    if not _is_local(pattern):
        yield from ((m.path, m.size_in_bytes) for m in FileSystems.match([pattern])[0].metadata_list)
        return
    wildcard = _WILDCARD.search(pattern)
    if not wildcard:
        if os.path.lexists(pattern) and not os.path.isdir(pattern):
            yield pattern, _size(pattern)
        return
    regex = re.compile(FileSystem.translate_pattern(pattern))
    for path, size in _files_below(os.path.dirname(pattern[: wildcard.start()])):
        if regex.match(path):
            yield path, size


def _files_below(folder: str) -> Iterator[tuple[str, int]]:
    """(path, size) of every regular file, and every link to nothing, below ``folder`` ("": the working folder,
    its files named as relative paths), following links to folders but never into one it is already in."""
    if not os.path.isdir(folder or "."):
        return
    stack = [(folder, frozenset({_identity(folder or ".")}))]
    while stack:
        current, ancestors = stack.pop()
        with os.scandir(current or ".") as entries:
            for entry in entries:
                path = os.path.join(current, entry.name) if current else entry.name
                if entry.is_dir():  # a link to a folder too
                    identity = _identity(path)
                    if identity not in ancestors:  # a link to a folder above it would loop
                        stack.append((path, ancestors | {identity}))
                elif entry.is_file() or not os.path.exists(path):  # a regular file, or a link to nothing
                    yield path, _size(path)


def _identity(folder: str) -> tuple[int, int]:
    """What tells folders apart, whatever links lead to them: (device, inode)."""
    status = os.stat(folder)
    return status.st_dev, status.st_ino


def _size(path: str) -> int:
    """A file's size; 0 for a link to nothing."""
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def _zero_or_more_folders(pattern: str) -> set[str]:
    """``pattern`` with each ``**/`` kept or dropped, every combination."""
    head, globstar, tail = pattern.partition("**/")
    if not globstar:
        return {pattern}
    return {head + rest for rest in _zero_or_more_folders(tail)} | {
        head + globstar + rest for rest in _zero_or_more_folders(tail)
    }


def is_request_log(pattern: str) -> bool:
    """Whether an input pattern names request logs (PredictionLog TFRecords) rather than image files."""
    return pattern.endswith(names.REQUEST_LOG_SUFFIX)


def patterns_of(inputs: Sequence[str]) -> list[str]:
    """Every ``--input``'s patterns (:func:`input_patterns`), each once, sorted."""
    return sorted({pattern for spec in inputs for pattern in input_patterns(spec)})


def match_inputs(inputs: Sequence[str]) -> tuple[set[str], set[str]]:
    """(image files, request logs) the inputs match now, as the pipeline will name them.

    Each ``--input`` must match a file: one that matches none is a usage
    error (:class:`~batch.errors.NoInput`) saying whether the path does not
    exist, is a folder holding no files, or is a pattern matching none.
    """
    files, logs = set(), set()
    for spec in inputs:
        found = set()
        for pattern in input_patterns(spec):
            try:
                found.update(path for path, _ in matched_files(pattern))
            except (BeamIOError, OSError) as error:
                raise JobError(f"cannot list {pattern}: {_reason(error)}") from error
        if not found:
            raise NoInput(_nothing_in(spec))
        (logs if is_request_log(spec) else files).update(found)
    return files, logs


def _nothing_in(spec: str) -> str:
    """Why an ``--input`` gives no file, as its one line."""
    if _WILDCARD.search(spec) or not _is_local(spec):
        return f"no file matches {spec}"
    if not os.path.lexists(spec):
        return f"no such folder or file: {spec}"
    return f"no image files under {spec}"


def _reason(error: Exception) -> str:
    """An error's one-line reason: an OS error's own words (not the path again), else its message."""
    return error.strerror if isinstance(error, OSError) and error.strerror else str(error)


def describe(files: int, logs: int) -> str:
    """ "N files and M request logs", for the line the launcher writes once it has matched them."""
    return counted(files, "file") + (f" and {counted(logs, 'request log')}" if logs else "")


def describe_matches(inputs: Sequence[str]) -> tuple[str, int | None]:
    """(:func:`describe` of what the inputs match, the progress total: None with logs, whose images are
    counted as read)."""
    files, logs = (len(found) for found in match_inputs(inputs))
    return describe(files, logs), None if logs else files


@functools.lru_cache(maxsize=4096)
def _label_of_folder(folder: str) -> int | None:
    """The class id a folder is named after (``names.folder_name``), if any; a folder holds thousands of files."""
    return names.class_id_from_folder(FileSystems.split(folder)[1])


class LoggedImages(beam.DoFn):
    """(log file, serialized PredictionLog) → an :class:`Image` or :class:`Failed` per encoded image it logged.

    A Predict request carries them in its ``image_bytes`` input, a Classify
    request in each tf.Example's ``image`` feature. A record that names where
    its request came from (``log_metadata.request_origin``: the file's path,
    in what ``--format tfrecord`` writes) names its image so, and the image's
    label is the class that path's folder names, as for a file; a record with
    several images names them ``<origin>#<n>``. A server's request log names
    no origin: its images are named ``<log file>#<digest of the record>-<n>``,
    the digest keeping the name the same from one replay to the next. Every
    image goes through the same header check as a file.
    """

    def __init__(self, limits: Limits):
        self._limits = limits

    def process(self, element: tuple[str, bytes]) -> Iterator[Image | Failed]:
        filename, record = element
        logged = prediction_log_pb2.PredictionLog.FromString(record)
        if logged.HasField("predict_log"):
            tensor = logged.predict_log.request.inputs.get(names.INPUT_IMAGE_BYTES)
            images = list(tensor.string_val) if tensor is not None else []
        elif logged.HasField("classify_log"):
            examples = logged.classify_log.request.input.example_list.examples
            images = [data for e in examples for data in e.features.feature[names.FEATURE_IMAGE].bytes_list.value]
        else:
            images = []
        origin = logged.log_metadata.request_origin
        digest = "" if origin else hashlib.sha1(record).hexdigest()[:12]
        for n, data in enumerate(images):
            if origin:
                path = origin if len(images) == 1 else f"{origin}#{n}"
                folder = os.path.dirname(path)
                label = _label_of_folder(folder) if folder else None
            else:
                path, label = f"{filename}#{digest}-{n}", None
            problem = imagefile.check(data, self._limits)
            yield Failed(path, *problem) if problem else Image(path, data, label)


class ReadImages(ThreadedDoFn):
    """A batch of (path, matched size) → one list holding each file's :class:`Image` or :class:`Failed`; each path
    as :func:`~batch.outcomes.carried` gives it.

    From here to the writers a batch, not a file, is the element: Beam's
    per-element work in the Python SDK (a few microseconds per step) was
    most of the job's time per file. One batch is read ahead, in a thread of
    its own (:class:`~batch.threaded.ThreadedDoFn`): while the batch before it is
    classified downstream (RunInference waits for the model's answer, the GIL
    released), the next batch's files are opened and read, so the worker's
    reading and the model's work overlap.
    """

    def __init__(self, limits: Limits):
        self._limits = limits

    def setup(self) -> None:
        super().setup()
        self._file_systems: dict[str | None, FileSystem] = {}

    def work(self, batch: list[tuple[bytes, int]]) -> list[list[Image | Failed]]:
        return [[self._read(uncarried(path), size) for path, size in batch]]

    def _file_system(self, path: str) -> FileSystem:
        """One file system per scheme: ``FileSystems`` makes a new one for every call (a tenth of the job's time)."""
        scheme = FileSystems.get_scheme(path)
        if scheme not in self._file_systems:
            self._file_systems[scheme] = FileSystems.get_filesystem(path)
        return self._file_systems[scheme]

    def _open(self, path: str) -> BinaryIO:
        """The file, opened for reading as stored: a local one straight from the OS (Beam's local file system
        costs as much again per file as the reading, for the same ``open``), another through Beam's, with
        UNCOMPRESSED, as Beam would otherwise gunzip a "x.gz" behind our back."""
        if _is_local(path):
            return open(path, "rb")
        return self._file_system(path).open(path, compression_type=CompressionTypes.UNCOMPRESSED)

    def _read(self, path: str, matched_size: int) -> Image | Failed:
        try:
            with self._open(path) as file:
                # One byte past the limit is enough for the check to see a file over it.
                data = read_at_most(file, self._limits.max_file_bytes + 1, matched_size)
        except OSError as error:
            if isinstance(error, FileNotFoundError) and _is_local(path) and os.path.islink(path):
                return Failed(path, Reason.UNREADABLE, f"a symbolic link to {os.readlink(path)}, which does not exist")
            return Failed(path, Reason.UNREADABLE, f"{type(error).__name__}: {error}")
        problem = imagefile.check(data, self._limits)
        # os.path.dirname, not the file system's split, which normalises the path again (8 % of the job).
        return Failed(path, *problem) if problem else Image(path, data, _label_of_folder(os.path.dirname(path)))


def read_at_most(file: BinaryIO, limit: int, matched_size: int) -> bytes:
    """The file's first ``limit`` bytes, in a buffer sized by the size it was matched with.

    ``read(limit)`` alone allocates ``limit`` bytes (16 MiB) for every
    300-byte file; that was the costliest line of the job. One byte more than
    matched is asked for, so a file that grew since is still read whole.
    """
    data = file.read(min(matched_size + 1, limit))
    if len(data) > matched_size:
        data += file.read(limit - len(data))
    return data
