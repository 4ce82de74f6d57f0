"""The steps ``fmnist batch`` and ``fmnist compare`` share: reading the inputs in batches, and the scratch the
launcher turns into the summary and the report.

Files are elements only until they are batched (match, de-duplicate); from
reading to writing, one element is one batch of files, and the jobs' outputs
are lists of records per batch. What the launcher needs besides the records
(the tallies of the summary, the report's gallery) is reduced in the
pipeline to a few elements and written as scratch into the output folder
(:mod:`batch.output` reads and removes it).

Usage::

    inputs = pipeline | "ReadInputs" >> ReadInputs(config.inputs, batch_size=64, limits=Limits())
    inputs.batches | ...                                  # lists of Image or Failed, spread over the workers
    (inputs.tallies, *other_tallies) | WriteTallies(output)
    gallery_candidates | WriteGallery(output, report.Gallery())
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from fmnist.batch import readers, summary
from fmnist.batch.outcomes import Failed, Image, carried, json_uncarried, uncarried
from fmnist.batch.output import COUNTS_FILE, GALLERY_FILE, write_bytes
from fmnist.common.imagefile import Limits

# The tags of the outputs of the steps that turn outcomes into records; the main output is the records.
RECORDS, ERRORS, TALLIES, GALLERY = "records", "errors", "tallies", "gallery"


class Inputs(NamedTuple):
    """What :class:`ReadInputs` gives."""

    tallies: beam.PCollection  # one (summary.INPUT, n): every input as matched (image files and logged images)
    batches: beam.PCollection  # lists of batch_size Image or Failed, spread over the workers


class ReadInputs(beam.PTransform):
    """The pipeline's start → :class:`Inputs`: every input counted, and read in lists of ``batch_size``.

    Image files are matched in one step, which lists them in batches of
    (path, size) (each distinct file once, even where ``--input``s overlap;
    locally, following links: :func:`~batch.readers.matched_files`): no file
    is ever an element of its own, since Beam's Python SDK spends a few
    microseconds per element and step. The batches are spread over the
    workers (one shuffle per batch) and read there
    (:class:`~batch.readers.ReadImages`). Request logs (``--input`` ending in
    ``.tfrecord``) give one element per logged image, batched by
    ``BatchElements`` (min = max: full batches, where it would otherwise
    start at 1 and grow slowly). Inputs are counted as matched, per batch or
    by a combiner.

    Args:
        skip: a side input of one set, the files a resumed run has outcomes
            for: counted, but left out of the batches (image files before
            they are read, logged images once their log is read, which names them).
    """

    def __init__(
        self,
        inputs: Sequence[str],
        *,
        batch_size: int,
        limits: Limits,
        skip: beam.pvalue.AsSideInput | None = None,
    ):
        super().__init__()
        self._patterns = readers.patterns_of(inputs)
        self._batch_size = batch_size
        self._limits = limits
        self._skip = skip

    def expand(self, start: beam.pvalue.PBegin) -> Inputs:
        files = [p for p in self._patterns if not readers.is_request_log(p)]
        logs = [p for p in self._patterns if readers.is_request_log(p)]
        counts, read = [], []
        if files:
            # Each --input matched a file in the launcher (readers.match_inputs), so a pattern may match none
            # here: imgs/*.png, made for imgs/**/*.png's **/ matching no folder, where imgs/ holds only folders.
            batches = (
                start
                | "Inputs" >> beam.Create([tuple(files)])
                | "Match" >> beam.FlatMap(_matched_batches, self._batch_size)
            )
            counts.append(batches | "InputCount" >> beam.Map(len))
            if self._skip is not None:
                batches = batches | "NotDone" >> beam.FlatMap(_files_not_done, self._skip)
            read.append(batches | "Spread" >> beam.Reshuffle() | "Read" >> beam.ParDo(readers.ReadImages(self._limits)))
        if logs:
            logged = (
                start
                | "Logs" >> beam.Create(logs)
                | "ReadLogs" >> beam.io.ReadAllFromTFRecord(with_filename=True)
                | "LoggedImages" >> beam.ParDo(readers.LoggedImages(self._limits))
            )
            counts.append(logged | "LoggedCount" >> beam.combiners.Count.Globally())
            if self._skip is not None:
                logged = logged | "LoggedNotDone" >> beam.Filter(_image_not_done, self._skip)
            batching = dict(min_batch_size=self._batch_size, max_batch_size=self._batch_size)
            read.append(logged | "BatchLogged" >> beam.BatchElements(**batching) | "SpreadLogged" >> beam.Reshuffle())
        tallies = (
            _merged(counts, "AllInputCounts")
            | "InputTotal" >> beam.CombineGlobally(sum)
            | "AsInputTally" >> beam.Map(lambda n: (summary.INPUT, n))
        )
        return Inputs(tallies, _merged(read, "AllRead"))


def _merged(pcollections: list[beam.PCollection], label: str) -> beam.PCollection:
    """The one PCollection, or a Flatten of several: the local runner executes a Flatten itself, element by element."""
    return pcollections[0] if len(pcollections) == 1 else tuple(pcollections) | label >> beam.Flatten()


def _matched_batches(patterns: Sequence[str], batch_size: int) -> Iterator[list[tuple[bytes, int]]]:
    """Lists of ``batch_size`` (path, size), the last one shorter, of the files the patterns match
    (:func:`batch.readers.matched_files`), each path :func:`~batch.outcomes.carried`. A file several patterns
    match is listed once: overlapping inputs must not classify it twice."""
    seen: set[str] = set()
    batch: list[tuple[bytes, int]] = []
    for pattern in patterns:
        for path, size in readers.matched_files(pattern):
            if len(patterns) > 1:
                if path in seen:
                    continue
                seen.add(path)
            batch.append((carried(path), size))
            if len(batch) == batch_size:
                yield batch
                batch = []
    if batch:
        yield batch


def _files_not_done(batch: list[tuple[bytes, int]], done: frozenset[str]) -> Iterator[list[tuple[bytes, int]]]:
    """The batch less the files a resumed run has outcomes for; nothing when none is left."""
    left = [item for item in batch if uncarried(item[0]) not in done]
    if left:
        yield left


def _image_not_done(item: Image | Failed, done: frozenset[str]) -> bool:
    return item.path not in done


class WriteTallies(beam.PTransform):
    """PCollections of (key, count) tallies → their sums per key, in the scratch :func:`batch.output.read_counts`
    reads; inputs are counted apart from the outcomes (:class:`Inputs`), so a file lost on the way shows."""

    def __init__(self, output: str):
        super().__init__()
        self._path = FileSystems.join(output, COUNTS_FILE)

    def expand(self, tallies: Sequence[beam.PCollection]) -> beam.PCollection:
        return (
            # Summed per key where made first: Beam lifts that sum into the producing stage, so the Flatten
            # (which the local runner materialises) gets a few sums, not every batch's dozens of keys.
            tuple(found | f"Tallied{i}" >> beam.CombinePerKey(sum) for i, found in enumerate(tallies))
            | "Tallies" >> beam.Flatten()
            | "Count" >> beam.CombinePerKey(sum)
            | "CountsAsJson" >> beam.MapTuple(lambda key, n: json.dumps([list(key), n]))
            | "AllCounts" >> beam.combiners.ToList()
            | "WriteCounts" >> beam.Map(_write_lines, self._path)
        )


class WriteGallery(beam.PTransform):
    """Lists of gallery candidates → the report's one gallery (``combine``'s output, JSON-ready but for paths,
    which travel :func:`~batch.outcomes.carried`), in the scratch :func:`batch.output.read_gallery` reads."""

    def __init__(self, output: str, combine: beam.CombineFn):
        super().__init__()
        self._path = FileSystems.join(output, GALLERY_FILE)
        self._combine = combine

    def expand(self, candidates: beam.PCollection) -> beam.PCollection:
        return (
            candidates
            | "Gallery" >> beam.CombineGlobally(self._combine)
            | "GalleryAsJson" >> beam.Map(json.dumps, default=json_uncarried)
            | "WriteGallery" >> beam.Map(lambda line, path: _write_lines([line], path), self._path)
        )


def _write_lines(lines: list[str], path: str) -> str:
    """``lines`` as the one file ``path`` (a few small lines of scratch: Beam's sharded text sink, with its
    temporary folder and finalize steps, costs the job more than the file takes to write); gives ``path``."""
    write_bytes(path, "".join(line + "\n" for line in lines).encode())
    return path
