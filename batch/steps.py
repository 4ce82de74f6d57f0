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
from fmnist.batch.output import COUNTS_FILE, GALLERY_FILE
from fmnist.common.imagefile import Limits

# The tags of the outputs of the steps that turn outcomes into records; the main output is the records.
RECORDS, ERRORS, TALLIES, GALLERY = "records", "errors", "tallies", "gallery"


class Inputs(NamedTuple):
    """What :class:`ReadInputs` gives."""

    tallies: beam.PCollection  # (summary.INPUT, n): the inputs as matched, n per source (image files, request logs)
    batches: beam.PCollection  # lists of batch_size Image or Failed, spread over the workers


class ReadInputs(beam.PTransform):
    """The pipeline's start → :class:`Inputs`: every input counted, and read in lists of ``batch_size``.

    Image files are matched (each distinct file once, even where ``--input``s
    overlap; locally, following links: :func:`~batch.readers.matched_files`),
    batched as (path, size), and read on the workers
    (:class:`~batch.readers.ReadImages`); request logs (``--input`` ending in
    ``.tfrecord``) give one element per logged image, batched the same way.
    min = max: full batches, where BatchElements would otherwise start at 1
    and grow slowly. The batches, not the files, are spread over the workers:
    one shuffle per batch. Inputs are counted as matched, by a combiner (a
    partial count per bundle), not one element per file: those would go
    through the tallies' Flatten, which Beam's local runner executes itself.

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
        batching = dict(min_batch_size=self._batch_size, max_batch_size=self._batch_size)
        counted, read = [], []
        if files:
            # Each --input matched a file in the launcher (readers.match_inputs), so a pattern may match none
            # here: imgs/*.png, made for imgs/**/*.png's **/ matching no folder, where imgs/ holds only folders.
            matched = start | "Inputs" >> beam.Create(files) | "Match" >> beam.FlatMap(_matched)
            if len(files) > 1:  # one glob matches a file once; overlapping ones must not classify it twice
                matched = matched | "Deduplicate" >> beam.CombinePerKey(_first_copy)
            counted.append(matched)
            if self._skip is not None:
                matched = matched | "NotDone" >> beam.Filter(_file_not_done, self._skip)
            batches = matched | "Batch" >> beam.BatchElements(**batching) | "Spread" >> beam.Reshuffle()
            read.append(batches | "Read" >> beam.ParDo(readers.ReadImages(self._limits)))
        if logs:
            logged = (
                start
                | "Logs" >> beam.Create(logs)
                | "ReadLogs" >> beam.io.ReadAllFromTFRecord(with_filename=True)
                | "LoggedImages" >> beam.ParDo(readers.LoggedImages(self._limits))
            )
            counted.append(logged)
            if self._skip is not None:
                logged = logged | "LoggedNotDone" >> beam.Filter(_image_not_done, self._skip)
            read.append(logged | "BatchLogged" >> beam.BatchElements(**batching) | "SpreadLogged" >> beam.Reshuffle())
        tallies = tuple(
            found
            | f"InputCounts{i}" >> beam.combiners.Count.Globally()
            | f"AsInputCount{i}" >> beam.Map(lambda n: (summary.INPUT, n))
            for i, found in enumerate(counted)
        )
        return Inputs(tallies | "AllInputCounts" >> beam.Flatten(), tuple(read) | "AllRead" >> beam.Flatten())


def _matched(pattern: str) -> Iterator[tuple[bytes, int]]:
    """(path, size) of each file ``pattern`` matches (:func:`batch.readers.matched_files`), the path
    :func:`~batch.outcomes.carried`."""
    for path, size in readers.matched_files(pattern):
        yield carried(path), size


def _first_copy(copies):
    """One of a file's matches; overlapping inputs must not classify a file twice."""
    return next(iter(copies))


def _file_not_done(path_and_size: tuple[bytes, int], done: frozenset[str]) -> bool:
    return uncarried(path_and_size[0]) not in done


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
            | "WriteCounts" >> beam.io.WriteToText(self._path, shard_name_template="")
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
            | "WriteGallery" >> beam.io.WriteToText(self._path, shard_name_template="")
        )
