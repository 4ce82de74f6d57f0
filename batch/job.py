"""``fmnist batch``: an Apache Beam job that classifies folders of images, one record per file.

Files matched by ``--input`` (folders recursively, globs where ``**/`` also
matches no folder, any Beam file system) are read and header-checked on workers, sent in fixed-size batches to
the served model (``predict_images``: encoded bytes, decoded in the graph), or
run in-process through ``RunInference`` with ``--in-process MODEL_DIR``.
Records go to sharded ``predictions-*`` files (JSONL, CSV, Parquet, or TFRecords
of TF Serving ``PredictionLog``s), failures to ``errors-*``, and the launcher
writes ``summary.json``, ``report.html`` (:mod:`batch.report`),
``confusion_matrix.png`` for labelled folders, and ``_SUCCESS``. Besides its own options the job takes
Beam's pipeline options (any other is refused), so the same job runs on Flink,
Spark or Dataflow. An ``--output`` holding an earlier run's results is refused
unless ``--overwrite``; an interrupted run's scratch files go with the next run.
Each classified batch's outcomes are saved as the job goes (``_resume/`` in
``--output``, removed when the run finishes), so ``--resume`` finishes an
interrupted run without classifying those files again.
Its steps (matching and reading files, tallies, the output-folder rule, the
CLI boundary) are public for ``fmnist compare`` (:mod:`batch.compare`), which
is the same kind of job.

Usage::

    fmnist batch --input images/ --output out/ --server localhost:8500 [--format parquet|tfrecord]
    fmnist batch --input images/ --output out/ --server localhost:8500 --resume   # after an interrupted run
    fmnist batch --input 'gs://b/imgs/*.png' --output gs://b/out --server 10.0.0.2:8500 \\
        --runner DataflowRunner --project p --region r --temp_location gs://b/tmp
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import json
import logging
import os
import re
import shutil
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TextIO, TypeVar

import apache_beam as beam
import grpc
from apache_beam.io import fileio
from apache_beam.io.filesystem import BeamIOError, CompressionTypes, FileMetadata
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, RunInference
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.portability.api import beam_provision_api_pb2
from apache_beam.runners.portability.fn_api_runner import fn_runner
from apache_beam.runners.portability.portable_runner import JobServiceHandle
from apache_beam.runners.runner import PipelineResult, PipelineState

from fmnist.batch import io, progress, report, summary
from fmnist.batch.behind import OneBehind
from fmnist.batch.inference import (
    NAMESPACE,
    BatchFailed,
    ImageBatches,
    LocalModel,
    ServerSettings,
    SignatureHandler,
    dead_letters,
)
from fmnist.batch.outcomes import Classified, Failed, Image, Outcome
from fmnist.common import names, quiet
from fmnist.common.client import PredictionClient, ServingError

_LOG = logging.getLogger(__name__)
R = TypeVar("R")  # what a command's work returns to its finish (run_cli)
_ERRORS = "errors"
_TALLIES = "tallies"
_GALLERY = "gallery"
_COUNTS_FILE = "_counts.jsonl"  # the pipeline's tallies, read and removed by the launcher
_GALLERY_FILE = "_gallery.json"  # the report's gallery candidates, read and removed by the launcher
# Each classified batch's outcomes, one checkpoint file per batch (io.write_checkpoint): what --resume
# takes from an interrupted run. Removed once the run's _SUCCESS is written.
CHECKPOINTS = "_resume"
_CHECKPOINT_READERS = 16  # threads reading checkpoints in the launcher (object stores answer slowly, in parallel)
# A run's results in --output (replaced only with --overwrite); see clear_output for its scratch.
_RESULTS = ("predictions-*", "errors-*", summary.SUMMARY_FILE, summary.CONFUSION_FILE, report.REPORT_FILE, io.SUCCESS)
# Codes meaning "the server, not this input": the hint for what to do says so.
_SERVER_CODES = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "CANCELLED")
_INTERRUPT_GRACE = 5.0  # seconds a Ctrl-C'd job may take to wind down before the process leaves anyway
_NOT_FOUND_GRACE = 3.0  # seconds a server that answers may say NOT_FOUND for the model (still loading it)


class JobError(Exception):
    """The job could not run or did not finish; the message says why, naming the server or path."""


class OutputInUse(JobError):
    """``--output`` holds an earlier run's results and ``--overwrite`` was not given (a usage error: exit 2)."""


@dataclass(frozen=True)
class JobConfig:
    inputs: tuple[str, ...]
    output: str
    server: ServerSettings | None  # exactly one of server and in_process
    in_process: LocalModel | None
    signature: str = names.PREDICT_IMAGES  # of the in-process model; the client always calls predict_images
    file_format: str = "jsonl"
    batch_size: int = 64
    top_k: int = 3
    limits: io.Limits = field(default_factory=io.Limits)
    max_request_bytes: int = 32 << 20  # half the client's 64 MiB message limit
    progress_seconds: float = 10.0
    overwrite: bool = False  # replace an earlier run's results in output
    resume: bool = False  # finish the interrupted run in output, keeping what its checkpoints hold
    verbose: bool = False  # the CLI shows Beam's own logs and its workers' standard error


@dataclass(frozen=True)
class JobResult:
    summary: summary.Summary | None  # None: --resume found the run in output finished, and ran nothing
    pipeline: PipelineResult | None  # for Beam metrics: pipeline.metrics().query()
    files: tuple[str, ...]  # every result file written, sorted


@dataclass(frozen=True)
class Resumption:
    """What ``--resume`` takes from an interrupted run: its checkpoints, each with the paths in it not to take
    (another checkpoint's later outcome for the same file, or a file no longer among the inputs), normally none."""

    checkpoints: tuple[tuple[str, tuple[str, ...]], ...]
    done: int  # inputs whose outcome they hold: not classified again


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parse_args(argv: list[str] | None, prog: str | None = None) -> tuple[JobConfig, list[str]]:
    """(config, Beam pipeline arguments); an option that is neither this job's nor Beam's is an error."""
    parser = beam_command_parser(
        prog, "Classify image files in bulk with Apache Beam.", "where records, errors and the summary go"
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--server", metavar="HOST:PORT", help="TF Serving gRPC address of the served model")
    source.add_argument(
        "--in-process",
        metavar="MODEL_DIR",
        help="run this SavedModel (a version dir, or a base path of versions) with RunInference instead",
    )
    parser.add_argument(
        "--signature",
        default=names.PREDICT_IMAGES,
        choices=[names.PREDICT_IMAGES],
        help="the signature that takes encoded image bytes",
    )
    parser.add_argument(
        "--format",
        default="jsonl",
        choices=io.FORMATS,
        dest="file_format",
        help="of predictions-*: jsonl, csv or parquet rows (errors-* in the same format), or tfrecord: "
        "one TF Serving PredictionLog per classified file, its replayable Predict request and the "
        "response, with the file's path in log_metadata.request_origin (errors-* stay jsonl); "
        "default jsonl",
    )
    parser.add_argument(
        "--top-k",
        type=_positive,
        default=3,
        help="classes listed per record (default 3); a tfrecord response holds every probability",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help=f"finish the interrupted run in --output: the files its checkpoints ({CHECKPOINTS}/) "
        "hold are not classified again, and the results cover every input once",
    )
    args, beam_args = parse_with_beam_options(parser, argv)
    if args.top_k > names.NUM_CLASSES:
        parser.error(f"--top-k: at most {names.NUM_CLASSES}")
    if args.resume and args.overwrite:
        parser.error("--resume keeps what an interrupted run did, --overwrite removes it: give one of them")
    server = args.server and ServerSettings(args.server, args.model_name, timeout=args.timeout, retries=args.retries)
    config = JobConfig(
        inputs=tuple(args.input),
        output=args.output,
        server=server or None,
        in_process=_local_model(parser, args.in_process, args.model_name),
        signature=args.signature,
        file_format=args.file_format,
        batch_size=args.batch_size,
        top_k=args.top_k,
        limits=io.Limits(max_pixels=args.max_image_pixels),
        progress_seconds=args.progress_seconds,
        overwrite=args.overwrite,
        resume=args.resume,
        verbose=args.verbose,
    )
    return config, beam_args


def beam_command_parser(prog: str | None, description: str, output_help: str) -> argparse.ArgumentParser:
    """A parser with the options every Beam command over image files shares (inputs, output, calls, display)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        allow_abbrev=False,  # "--dir..." must not swallow a Beam option that merely starts alike
        description=description + " Besides the options below it takes Beam's pipeline options (--runner, "
        "--direct_num_workers, --project, ...); without --runner the job runs locally.",
    )
    parser.add_argument(
        "--input",
        action="append",
        required=True,
        metavar="PATTERN_OR_DIR",
        help="a folder (every file below it), a glob (* and ? within a folder name, ** across "
        "folders: 'imgs/**/*.png' matches imgs/a.png and imgs/x/y/b.png), or a file; repeatable; "
        "any Beam file system",
    )
    parser.add_argument(
        "--output",
        required=True,
        metavar="DIR",
        help=f"{output_help}; refused if it holds another run's results, unless --overwrite",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="remove an earlier run's results from --output first (other files there are kept)",
    )
    parser.add_argument("--model-name", default=names.MODEL_NAME)
    parser.add_argument("--batch-size", type=_positive, default=64, help="images per request (default 64)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        help="deadline of each request, and the longest wait for the server at start, seconds (default 30)",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=3,
        help="retries, with backoff, of a request the server could not answer (UNAVAILABLE, "
        "DEADLINE_EXCEEDED, ...; default 3)",
    )
    parser.add_argument(
        "--max-image-pixels",
        type=_positive,
        default=names.MAX_IMAGE_PIXELS,
        metavar="N",
        help="refuse an image whose header claims more pixels, as the server does (default 4096x4096)",
    )
    parser.add_argument("--verbose", action="store_true", help="show Beam's own logs, worker tracebacks included")
    parser.add_argument(
        "--progress-seconds",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="without a terminal, log the job's progress this often (on a terminal: a progress bar); default 10",
    )
    return parser


def parse_with_beam_options(
    parser: argparse.ArgumentParser, argv: list[str] | None
) -> tuple[argparse.Namespace, list[str]]:
    """(this command's arguments, Beam's); an option that is neither is a usage error, with a guess."""
    args, beam_args = parser.parse_known_args(argv)
    unknown = _not_beam_options(beam_args)
    if unknown:
        ours = [option for option in parser._option_string_actions if option.startswith("--")]
        guesses = difflib.get_close_matches(unknown[0].split("=")[0], ours, n=1)
        parser.error(
            f"unrecognized arguments: {' '.join(unknown)} (neither an option of this command nor a "
            f"Beam pipeline option{f'; did you mean {guesses[0]}?' if guesses else ''})"
        )
    return args, beam_args


def _not_beam_options(beam_args: list[str]) -> list[str]:
    """The arguments Beam's own option parser would discard (it only warns, then runs with defaults)."""
    parsers = []
    PipelineOptions([]).get_all_options(add_extra_args_fn=parsers.append)  # the parser of every Beam option
    return parsers[0].parse_known_args(beam_args)[1]


def _local_model(parser: argparse.ArgumentParser, model_dir: str | None, model_name: str) -> LocalModel | None:
    if model_dir is None:
        return None
    try:
        return LocalModel.resolve(model_dir, model_name)
    except FileNotFoundError as error:
        parser.error(f"--in-process: {error}")


def local_runner(options: PipelineOptions) -> beam.runners.PipelineRunner:
    """The runner when the user names none: Beam's FnApiRunner, what DirectRunner uses for batch jobs.

    Since Beam 2.68 ``DirectRunner`` (``SwitchingDirectRunner``) first tries
    the Prism runner, which downloads a Go binary from GitHub and, offline,
    falls back only after that attempt. The FnApiRunner needs no network and
    honours ``--direct_num_workers`` and ``--direct_running_mode``
    (``multi_processing`` included); the options are passed to its workers
    as DirectRunner passes them.
    """
    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    info = fn_runner.ExtendedProvisionInfo(beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded))
    return fn_runner.FnApiRunner(provision_info=info)


def make_pipeline(beam_args: list[str]) -> beam.Pipeline:
    options = PipelineOptions(beam_args)
    if options.view_as(StandardOptions).runner is None:
        return beam.Pipeline(runner=local_runner(options), options=options)
    return beam.Pipeline(options=options)


def _path_and_size(metadata: FileMetadata) -> tuple[str, int]:
    return metadata.path, metadata.size_in_bytes


def _any(copies):
    """One of a file's matches; overlapping inputs must not classify a file twice."""
    return next(iter(copies))


class _Account(OneBehind):
    """Lists of outcomes → blocks of output records (main: ``to_record`` of each classified file, a row or
    a serialized PredictionLog, in the ``records`` :class:`~batch.io.Blocks`) and of error records
    (``errors``, in the ``errors`` Blocks), none empty; the tallies of the summary (``tallies``: (key,
    count) per list) and the report's gallery candidates (``gallery``, of lists with classified files);
    counts files for Beam's metrics. The work, formatting included, runs in a thread one list behind
    (:class:`~batch.behind.OneBehind`), while the stage waits for the model.
    """

    def __init__(self, to_record: Callable[[Classified], dict | bytes], records: io.Blocks, errors: io.Blocks):
        self._to_record = to_record
        self.records = records
        self.errors = errors

    def setup(self) -> None:
        super().setup()
        self._images = Metrics.counter(NAMESPACE, "images")
        self._errors = Metrics.counter(NAMESPACE, "errors")

    def work(self, outcomes: list[Outcome]) -> list:
        records, errors, tallies = [], [], Counter()
        for outcome in outcomes:
            tallies.update(summary.tally(outcome))
            if isinstance(outcome, Classified):
                records.append(self._to_record(outcome))
            else:
                errors.append(io.error_record(outcome))
        outputs = [beam.pvalue.TaggedOutput(_TALLIES, tally) for tally in tallies.items()]
        if records:
            outputs += [self.records(records), beam.pvalue.TaggedOutput(_GALLERY, report.candidates(outcomes))]
        if errors:
            outputs.append(beam.pvalue.TaggedOutput(_ERRORS, self.errors(errors)))
        return outputs

    def emitted(self, outcomes: list[Outcome], outputs: list) -> None:
        # Beam's metrics belong to the stage's thread (its state sampler), so they are counted here.
        failed = Counter(outcome.reason for outcome in outcomes if isinstance(outcome, Failed))
        self._images.inc(len(outcomes) - failed.total())
        self._errors.inc(failed.total())
        for reason, count in failed.items():
            Metrics.counter(NAMESPACE, f"errors_{reason}").inc(count)


class _Checkpoint(OneBehind):
    """Lists of outcomes just classified, passed on once saved: each list as one checkpoint in ``folder``
    (:func:`io.write_checkpoint`), what ``--resume`` takes if this run does not finish. Saved in a thread one
    list behind (:class:`~batch.behind.OneBehind`), while the stage waits for the model. Counts the files
    for the launcher's progress display (:mod:`batch.progress`): files done are files saved.
    """

    def __init__(self, folder: str, progress_address: tuple[str, int] | None, with_data: bool = False):
        self._folder = folder
        self._progress_address = progress_address
        self._with_data = with_data  # keep the images' bytes: the output (PredictionLogs) holds them

    def setup(self) -> None:
        super().setup()
        self._progress = progress.Reporter(self._progress_address)

    def work(self, outcomes: list[Outcome]) -> list[list[Outcome]]:
        if outcomes:
            io.write_checkpoint(self._folder, outcomes, self._with_data)
        return [outcomes]

    def emitted(self, outcomes: list[Outcome], outputs: list) -> None:
        self._progress.add(len(outcomes))

    def finish_bundle(self) -> Iterator:
        yield from super().finish_bundle()
        self._progress.flush()

    def teardown(self) -> None:
        super().teardown()
        self._progress.close()


def _resumed_outcomes(checkpoint: tuple[str, tuple[str, ...]]) -> Iterator[list[Outcome]]:
    """A checkpoint's outcomes as one list, as the classification step emits them, less the paths not to take."""
    path, left_out = checkpoint
    outcomes = io.read_checkpoint(path)
    if left_out:
        dropped = set(left_out)
        outcomes = [outcome for outcome in outcomes if outcome.path not in dropped]
    if outcomes:
        yield outcomes


class _Paths(beam.CombineFn):
    """Lists of outcomes → the set of their paths (the files resumed, which the job does not read again)."""

    def create_accumulator(self) -> set[str]:
        return set()

    def add_input(self, paths: set[str], outcomes: list[Outcome]) -> set[str]:
        paths.update(outcome.path for outcome in outcomes)
        return paths

    def merge_accumulators(self, accumulators) -> set[str]:
        merged = set()
        for paths in accumulators:
            merged |= paths
        return merged

    def extract_output(self, paths: set[str]) -> frozenset[str]:
        return frozenset(paths)


def _file_not_done(path_and_size: tuple[str, int], done: frozenset[str]) -> bool:
    return path_and_size[0] not in done


def _image_not_done(item: Image | Failed, done: frozenset[str]) -> bool:
    return item.path not in done


def images_handler(config: JobConfig) -> ModelHandler:
    """The handler of encoded images the job's ``RunInference`` calls: the served model's, or the local SavedModel's."""
    if config.in_process:
        return SignatureHandler(config.in_process, signature=config.signature)
    return config.server.handler()


def classify(
    batches: beam.PCollection, handler: ModelHandler, max_request_bytes: int
) -> tuple[beam.PCollection, beam.PCollection]:
    """Read batches → (their lists of outcomes, the lists of :class:`Failed` of the batches given up on).

    The two stay apart: Beam's local runner executes a Flatten of several
    inputs itself, holding everything that reaches it, so merging them here
    would keep every outcome of the job in memory before accounting began.
    """
    outcomes, failed = batches | "RunInference" >> RunInference(
        ImageBatches(handler, max_request_bytes=max_request_bytes)
    ).with_exception_handling(exc_class=BatchFailed)
    return outcomes, failed.failed_inferences | "DeadLetters" >> beam.Map(dead_letters)


def build(
    pipeline: beam.Pipeline,
    config: JobConfig,
    *,
    handler: ModelHandler | None = None,
    progress_address: tuple[str, int] | None = None,
    resumption: Resumption | None = None,
) -> None:
    """Add the job's transforms to ``pipeline``; outputs land under ``config.output``.

    Files are elements only until they are batched (match, de-duplicate);
    from reading to writing, one element is one batch of ``batch_size`` files.
    Request logs (``--input`` ending in ``.tfrecord``) give one element per
    logged image, batched the same way. ``handler`` (a Beam model handler of
    encoded images) replaces :func:`images_handler`'s. Each classified batch
    is saved as a checkpoint under ``config.output``/``_resume`` before it is
    accounted for. Workers report files done to ``progress_address`` (a
    :class:`progress.Progress`).

    With a ``resumption``, its checkpoints' outcomes are read back (one list
    per checkpoint, as classification gives them), their files are still
    counted as inputs but neither read nor classified, and both kinds of
    outcome are accounted for together: the results cover every input once.
    (Beam's local runner holds what reaches a Flatten of several inputs, so a
    resumed run keeps its new outcomes in memory until accounting.)
    """
    resumed = skip = None
    if resumption and resumption.checkpoints:
        resumed = (
            pipeline
            | "Checkpoints" >> beam.Create(resumption.checkpoints)
            | "ReadCheckpoints" >> beam.FlatMap(_resumed_outcomes)
        )
        skip = beam.pvalue.AsSingleton(resumed | "ResumedPaths" >> beam.CombineGlobally(_Paths()))
    counted, batches = read_inputs(pipeline, config.inputs, config.batch_size, config.limits, skip=skip)
    checkpoints = FileSystems.join(config.output, CHECKPOINTS)
    keep_data = config.file_format == io.TFRECORD  # a PredictionLog's request holds the image
    classified, dead = classify(batches, handler or images_handler(config), config.max_request_bytes)
    outcomes, dead = (
        found | f"Checkpoint{name}" >> beam.ParDo(_Checkpoint(checkpoints, progress_address, keep_data))
        for name, found in (("", classified), ("DeadLetters", dead))
    )
    if resumed is not None:
        outcomes = (outcomes, resumed) | "WithResumed" >> beam.Flatten()
    to_record = io.output_record(config.file_format, config.top_k, config.signature)
    account = _Account(
        to_record,
        io.Blocks(config.file_format, io.PREDICTION_SCHEMA),
        io.Blocks(
            io.errors_format(config.file_format), io.ERROR_SCHEMA
        ),  # JSONL beside TFRecords: errors are no predictions
    )
    routed, dead_routed = (
        found | f"Account{name}" >> beam.ParDo(account).with_outputs(_ERRORS, _TALLIES, _GALLERY, main="records")
        for name, found in (("", outcomes), ("DeadLetters", dead))
    )
    write_gallery(routed[_GALLERY] | "Gallery" >> beam.CombineGlobally(report.Gallery()), config.output)
    routed.records | "WritePredictions" >> io.Write.formatted_by(account.records, config.output, "predictions")
    # Dead letters hold no records; their errors join the others' after accounting, where a Flatten holds only errors.
    errors = (routed[_ERRORS], dead_routed[_ERRORS]) | "AllErrors" >> beam.Flatten()
    errors | "WriteErrors" >> io.Write.formatted_by(account.errors, config.output, "errors")
    write_tallies(counted, (routed[_TALLIES], dead_routed[_TALLIES]), config.output)


def read_inputs(
    pipeline: beam.Pipeline,
    inputs: Sequence[str],
    batch_size: int,
    limits: io.Limits,
    *,
    skip: beam.pvalue.AsSideInput | None = None,
) -> tuple[list[beam.PCollection], beam.PCollection]:
    """(the batches to count as inputs, lists of ``batch_size`` :class:`Image` or :class:`Failed` over the workers).

    Image files are matched (each distinct file once, even where ``--input``s
    overlap), batched as (path, size), and read on the workers; request logs
    (``--input`` ending in ``.tfrecord``) give one element per logged image,
    batched the same way. min = max: full batches, where BatchElements would
    otherwise start at 1 and grow slowly. The batches, not the files, are
    spread over the workers: one shuffle per batch. Inputs are counted as
    matched, by a combiner (a partial count per bundle), not one element per
    file: those went through the tallies' Flatten, which Beam's local runner
    executes itself. Paths in ``skip`` (a side input of one set: the files a
    resumed run has outcomes for) are counted but left out of the batches:
    image files before they are read, logged images once their log is read
    (which names them).
    """
    patterns = _patterns(inputs)
    files, logs = [p for p in patterns if not io.is_request_log(p)], [p for p in patterns if io.is_request_log(p)]
    batching = dict(min_batch_size=batch_size, max_batch_size=batch_size)
    counted, read = [], []
    if files:
        matched = (
            pipeline
            | "Inputs" >> beam.Create(files)
            | "Match" >> fileio.MatchAll(fileio.EmptyMatchTreatment.DISALLOW)
            | "PathAndSize" >> beam.Map(_path_and_size)
        )
        if len(files) > 1:  # one glob matches a file once; overlapping ones must not classify it twice
            matched = matched | "Deduplicate" >> beam.CombinePerKey(_any)
        counted.append(matched)
        if skip is not None:
            matched = matched | "NotDone" >> beam.Filter(_file_not_done, skip)
        batches = matched | "Batch" >> beam.BatchElements(**batching) | "Spread" >> beam.Reshuffle()
        read.append(batches | "Read" >> beam.ParDo(io.ReadImages(limits)))
    if logs:
        logged = (
            pipeline
            | "Logs" >> beam.Create(logs)
            | "ReadLogs" >> beam.io.ReadAllFromTFRecord(with_filename=True)
            | "LoggedImages" >> beam.ParDo(io.LoggedImages(limits))
        )
        counted.append(logged)
        if skip is not None:
            logged = logged | "LoggedNotDone" >> beam.Filter(_image_not_done, skip)
        read.append(logged | "BatchLogged" >> beam.BatchElements(**batching) | "SpreadLogged" >> beam.Reshuffle())
    return counted, tuple(read) | "AllRead" >> beam.Flatten()


def write_tallies(counted: Sequence[beam.PCollection], tallies: Sequence[beam.PCollection], output: str) -> None:
    """Sum (key, count) tallies with ``summary.INPUT`` counting the elements of ``counted`` into the scratch
    :func:`read_counts` reads."""
    (
        # Inputs are counted as matched, apart from the outcomes, so a file lost on the way shows in the summary.
        (
            *(
                found
                | f"InputCounts{i}" >> beam.combiners.Count.Globally()
                | f"AsInputCount{i}" >> beam.Map(lambda n: (summary.INPUT, n))
                for i, found in enumerate(counted)
            ),
            # Summed per key where made first: Beam lifts that sum into the producing stage, so the Flatten
            # (which the local runner materialises) gets a few sums, not every batch's dozens of keys.
            *(found | f"Tallied{i}" >> beam.CombinePerKey(sum) for i, found in enumerate(tallies)),
        )
        | "Tallies" >> beam.Flatten()
        | "Count" >> beam.CombinePerKey(sum)
        | "CountsAsJson" >> beam.MapTuple(lambda key, n: json.dumps([list(key), n]))
        | "WriteCounts" >> beam.io.WriteToText(FileSystems.join(output, _COUNTS_FILE), shard_name_template="")
    )


def write_gallery(gallery: beam.PCollection, output: str) -> None:
    """The report's one gallery element (JSON-ready) into the scratch :func:`read_gallery` reads."""
    (
        gallery
        | "GalleryAsJson" >> beam.Map(json.dumps)
        | "WriteGallery" >> beam.io.WriteToText(FileSystems.join(output, _GALLERY_FILE), shard_name_template="")
    )


def _check_source(config: JobConfig, client_factory: Callable[..., PredictionClient]) -> str:
    """Fail before launching when the model cannot answer; returns how the summary names the source."""
    if config.in_process:
        return f"in-process {config.in_process.path}"
    wait_for_server(config.server, client_factory)
    return f"server {config.server.target}"


def wait_for_server(server: ServerSettings, client_factory: Callable[..., PredictionClient]) -> None:
    """Wait up to the server's timeout for it to serve ``server.model_name``; :class:`JobError` naming it otherwise."""
    client = server.connect(client_factory)
    try:
        client.wait_until_available(timeout=server.timeout, not_found_grace=min(_NOT_FOUND_GRACE, server.timeout))
    except ServingError as error:
        if error.code == grpc.StatusCode.NOT_FOUND:
            raise JobError(
                f"the server at {server.target} has no model named {server.model_name!r} "
                f"(NOT_FOUND: {error.details}); check --model-name"
            ) from error
        raise JobError(f"the server at {server.target} did not answer: {error}") from error
    except Exception as error:  # whatever a custom factory's client raises
        raise JobError(f"the server at {server.target} did not answer: {error}") from error
    finally:
        client.close()


def _patterns(inputs: Sequence[str]) -> list[str]:
    return sorted({pattern for spec in inputs for pattern in io.input_patterns(spec)})


def match_inputs(inputs: Sequence[str]) -> tuple[set[str], set[str]]:
    """(image files, request logs) the inputs match now, as the pipeline will name them; a clear error for none."""
    files, logs = set(), set()
    for pattern in _patterns(inputs):
        try:
            found = [m.path for m in FileSystems.match([pattern])[0].metadata_list]
        except BeamIOError as error:
            raise JobError(f"cannot list {pattern}: {_last_line(error)}") from error
        (logs if io.is_request_log(pattern) else files).update(found)
    if not files and not logs:
        raise JobError(f"no file matches {', '.join(inputs)}")
    return files, logs


def count_matches(inputs: Sequence[str]) -> tuple[int, int]:
    """(image files, request logs) the inputs match now: the progress display's total, and a clear error for none."""
    files, logs = match_inputs(inputs)
    return len(files), len(logs)


def _describe(files: int, logs: int) -> str:
    return f"{files:,} files" + (f" and {logs:,} request logs" if logs else "")


def describe_matches(inputs: Sequence[str]) -> tuple[str, int | None]:
    """("N files and M request logs", the progress total: None with logs, whose images are counted as read)."""
    files, logs = count_matches(inputs)
    return _describe(files, logs), None if logs else files


def written(output: str, result_patterns: Sequence[str]) -> tuple[str, ...]:
    """Every result file in ``output``, sorted: what a finished run lists."""
    return tuple(sorted(path for pattern in result_patterns for path in _listed(output, pattern)))


def _listed(output: str, pattern: str) -> list[str]:
    try:
        return [m.path for m in FileSystems.match([FileSystems.join(output, pattern)])[0].metadata_list]
    except BeamIOError:  # no such folder yet
        return []


def check_output(output: str, overwrite: bool, result_patterns: Sequence[str] = _RESULTS) -> list[str]:
    """An earlier run's results in ``output``; refused (:class:`OutputInUse`) unless overwriting."""
    results = [path for pattern in result_patterns for path in _listed(output, pattern)]
    if results and not overwrite:
        shown = ", ".join(FileSystems.split(path)[1] for path in sorted(results)[:3])
        raise OutputInUse(
            f"--output {output} holds another run's results ({shown}{', ...' if len(results) > 3 else ''}); "
            "choose another folder, or add --overwrite to replace them"
        )
    return results


def clear_output(output: str, results: list[str]) -> None:
    """Remove ``results`` (being overwritten) and the scratch an interrupted run left.

    Scratch (Beam's ``beam-temp-*`` folders, the tallies) always goes: it is
    no one's result, and a run that finished removed its own. Files that are
    not the job's are never touched.
    """
    # Beam's match lists files, so a temp folder goes with its files; locally, empty ones go too.
    scratch = [path for pattern in ("beam-temp-**", _COUNTS_FILE, _GALLERY_FILE) for path in _listed(output, pattern)]
    if results or scratch:
        FileSystems.delete(results + scratch)
    if os.path.isdir(output):
        for name in os.listdir(output):
            if name.startswith("beam-temp-"):
                shutil.rmtree(os.path.join(output, name), ignore_errors=True)


def _check_job_output(config: JobConfig) -> tuple[list[str], bool]:
    """(an earlier run's results to remove before this run, whether this run resumes an interrupted one).

    An interrupted run is one whose checkpoints are there without its
    ``_SUCCESS``: refused unless ``--resume`` (its results, if it got as far
    as writing some, are written again, whole) or ``--overwrite``.
    """
    saved = _listed(config.output, f"{CHECKPOINTS}/*")
    if saved and not _listed(config.output, io.SUCCESS) and not config.overwrite:
        if not config.resume:
            count = sum(io.is_checkpoint(FileSystems.split(path)[1]) for path in saved)
            raise OutputInUse(
                f"--output {config.output} holds an interrupted run ({count:,} checkpoints in "
                f"{CHECKPOINTS}/); add --resume to finish it, or --overwrite to start again"
            )
        return [path for pattern in _RESULTS for path in _listed(config.output, pattern)], True
    try:
        return check_output(config.output, config.overwrite), False
    except OutputInUse as error:
        if config.resume:
            raise OutputInUse(f"{error}; --resume has nothing to finish there (no {CHECKPOINTS}/)") from error
        raise


def _checkpoint_paths(path: str) -> list[str] | ValueError:
    """The paths a checkpoint holds outcomes for, or why it is damaged."""
    try:
        return [outcome.path for outcome in io.read_checkpoint(path)]
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
        listed = FileSystems.match([FileSystems.join(folder, "*")])[0].metadata_list
    except BeamIOError:
        listed = []
    temporary = [m.path for m in listed if FileSystems.split(m.path)[1].startswith(io.CHECKPOINT_TEMP_PREFIX)]
    saved = sorted(
        (m for m in listed if io.is_checkpoint(FileSystems.split(m.path)[1])),
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
            f"resuming: {gone:,} files the checkpoints hold are no longer among the inputs: left out",
            file=stream,
            flush=True,
        )
    if temporary or damaged:
        FileSystems.delete(temporary + damaged)
    return Resumption(tuple(checkpoints), done)


def _remove_checkpoints(output: str) -> None:
    """Remove the checkpoint folder: the run finished, or is being overwritten."""
    saved = _listed(output, f"{CHECKPOINTS}/*")
    if saved:
        FileSystems.delete(saved)
    folder = os.path.join(output, CHECKPOINTS)
    if os.path.isdir(folder):  # a local folder outlives its files
        shutil.rmtree(folder, ignore_errors=True)


def read_file(path: str) -> bytes:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as file:
        return file.read()


def read_counts(output: str) -> dict[tuple, int]:
    """The tallies :func:`write_tallies` summed, removing their scratch file."""
    path = FileSystems.join(output, _COUNTS_FILE)
    with FileSystems.open(path) as file:
        rows = [json.loads(line) for line in file.read().decode().splitlines() if line]
    FileSystems.delete([path])
    return {tuple(key): n for key, n in rows}


def read_gallery(output: str) -> dict | list:
    """The gallery :func:`write_gallery` wrote, removing its scratch file."""
    path = FileSystems.join(output, _GALLERY_FILE)
    with FileSystems.open(path) as file:
        gallery = json.loads(file.read())
    FileSystems.delete([path])
    return gallery


def execute(
    pipeline: beam.Pipeline,
    build_into: Callable[[beam.Pipeline, tuple[str, int]], None],
    total: int,
    *,
    progress_seconds: float,
    stream: TextIO,
) -> PipelineResult:
    """Build the job with ``build_into(pipeline, progress_address)`` and run it to the end, showing its progress."""
    with progress.Progress(total, every=progress_seconds, stream=stream) as shown:
        build_into(pipeline, shown.address)
        result = pipeline.run()
        state = result.wait_until_finish()
    if state != PipelineState.DONE:
        raise JobError(f"the pipeline ended {state}")
    return result


def run(
    argv: list[str] | None = None,
    test_pipeline: beam.Pipeline | None = None,
    *,
    prog: str | None = None,
    client_factory: Callable[..., PredictionClient] = PredictionClient,
    handler: ModelHandler | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> JobResult:
    """Run the job to completion and write its summary; raises :class:`JobError` when it cannot.

    ``test_pipeline`` (a ``TestPipeline``, say) replaces the pipeline built
    from the Beam arguments in ``argv``, as in Beam's own examples.
    ``client_factory`` makes the client the launcher checks the server with;
    ``handler`` replaces the model handler the workers classify with.
    """
    config, beam_args = parse_args(argv, prog)
    return run_config(config, beam_args, test_pipeline, client_factory=client_factory, handler=handler, clock=clock)


def run_config(
    config: JobConfig,
    beam_args: list[str],
    test_pipeline: beam.Pipeline | None = None,
    *,
    client_factory: Callable[..., PredictionClient] = PredictionClient,
    handler: ModelHandler | None = None,
    clock: Callable[[], float] = time.monotonic,
    stream: TextIO | None = None,
) -> JobResult:
    """:func:`run` for parsed arguments. Progress goes to ``stream`` (standard error by default): a bar
    on a terminal, a line every ``--progress-seconds`` otherwise."""
    stream = stream or sys.stderr
    if config.resume and _listed(config.output, io.SUCCESS):
        print(f"nothing to resume: --output {config.output} holds a finished run", file=stream, flush=True)
        return JobResult(None, None, written(config.output, _RESULTS))
    results, resuming = _check_job_output(config)
    source = _check_source(config, client_factory)
    files, logs, resumption = _match_and_plan(config, resuming, stream)
    if config.overwrite:
        _remove_checkpoints(config.output)
    clear_output(config.output, results)
    print(f"matched {_describe(files, logs)}; classifying them via {source}", file=stream, flush=True)
    total = None if logs else files  # with logs, their images are counted as read
    done = resumption.done if resumption else 0
    if resumption:
        of = f" of {files:,} files" if total is not None else " of the files and logged images"
        print(f"resuming: {done:,}{of} already classified", file=stream, flush=True)
        total = total and total - done
    started = clock()
    result = execute(
        test_pipeline or make_pipeline(beam_args),
        lambda pipeline, address: build(
            pipeline, config, handler=handler, progress_address=address, resumption=resumption
        ),
        total,
        progress_seconds=config.progress_seconds,
        stream=stream,
    )
    result_summary = summary.summarize(read_counts(config.output), clock() - started, source, resumed=done)
    io.write_bytes(FileSystems.join(config.output, summary.SUMMARY_FILE), summary.to_json(result_summary).encode())
    if result_summary.evaluation:
        io.write_bytes(FileSystems.join(config.output, summary.CONFUSION_FILE), summary.confusion_png(result_summary))
    page = report.render(result_summary, read_gallery(config.output), read=read_file)
    io.write_bytes(FileSystems.join(config.output, report.REPORT_FILE), page.encode())
    io.write_bytes(FileSystems.join(config.output, io.SUCCESS), b"")
    _remove_checkpoints(config.output)  # the run is whole: nothing left to resume
    return JobResult(result_summary, result, written(config.output, _RESULTS))


def _match_and_plan(config: JobConfig, resuming: bool, stream: TextIO) -> tuple[int, int, Resumption | None]:
    """(files matched, request logs matched, the ``--resume`` plan). Only the counts outlive this call: the
    matched paths (100,000 files: about 15 MiB) must not stay in memory while the pipeline runs."""
    files, logs = match_inputs(config.inputs)
    return len(files), len(logs), plan_resumption(config.output, files, logs, stream) if resuming else None


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """CLI entry (``fmnist batch``): 0 when every file is accounted for, 1 when the job failed, 2 for usage.

    Ctrl-C raises KeyboardInterrupt (exit 130 in ``fmnist``'s entry point),
    even where a Beam worker thread caught it and failed the job with it.
    Beam's own logs, worker tracebacks and whatever worker processes write to
    standard error show with ``--verbose`` only; otherwise standard error has
    the job's progress and, on failure, one line saying why.
    """
    prog = prog or "batch"
    config, beam_args = parse_args(argv, prog)  # usage errors (exit 2) before standard error is redirected

    def finish(result: JobResult) -> int:
        if result.summary is not None:  # None: --resume found nothing to do
            print(summary.render(result.summary))
        print_outputs(result.files)
        return 0

    return run_cli(
        prog, config.verbose, lambda stream: run_config(config, beam_args, stream=stream), finish, rerun="--resume"
    )


def run_cli(
    prog: str, verbose: bool, work: Callable[[TextIO], R], finish: Callable[[R], int], *, rerun: str = "--overwrite"
) -> int:
    """A Beam command's CLI boundary: ``work(progress_stream)``, then ``finish(result)`` gives the exit code.

    On failure one line on stderr and 1 (2 for :class:`OutputInUse`); when the server was lost, the line
    says to run the job again with ``rerun`` (the option that lets it reuse its ``--output``). Ctrl-C
    ends the process with one line and 130, even where a Beam worker thread
    caught the KeyboardInterrupt and carried on, or left threads that would
    keep the interpreter from exiting: if the job has not wound down
    ``_INTERRUPT_GRACE`` seconds later, or at a second Ctrl-C, it leaves
    anyway (an interrupted run's scratch goes with the next run). Without
    ``verbose`` Beam's logs and whatever worker processes write to standard
    error are hidden.
    """
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("fmnist.batch").setLevel(logging.INFO)
    interrupted = threading.Event()
    stderr = os.dup(2)  # the terminal, even while descriptor 2 is hushed
    leaving = threading.Lock()

    def leave() -> None:
        if leaving.acquire(blocking=False):  # one line, whoever gets here first
            os.write(stderr, f"\n{prog}: interrupted\n".encode())
            os._exit(130)

    def note_interrupt(signum, frame):
        if interrupted.is_set():
            leave()
        interrupted.set()
        timer = threading.Timer(_INTERRUPT_GRACE, leave)
        timer.daemon = True
        timer.start()
        signal.default_int_handler(signum, frame)

    logging.getLogger("apache_beam").setLevel(logging.INFO if verbose else logging.CRITICAL)
    previous = signal.signal(signal.SIGINT, note_interrupt)
    try:
        with contextlib.nullcontext(sys.stderr) if verbose else quiet.stderr_silenced() as stream:
            result = work(stream)
    except OutputInUse as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    except BaseException as error:  # the CLI boundary: one clear line, not a worker's traceback
        if interrupted.is_set():
            leave()
        if not isinstance(error, Exception):
            raise
        print(f"{prog}: error: {_explained(_last_line(error), rerun)}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, previous)
    if interrupted.is_set():  # Beam swallowed the interrupt and finished: the user still asked to stop
        leave()
    os.close(stderr)
    return finish(result)


def print_outputs(files: Sequence[str]) -> None:
    print("outputs:\n" + "\n".join(f"  {path}" for path in files))


def _explained(line: str, rerun: str = "--overwrite") -> str:
    """The error line, with what to do when it is about the server rather than the input."""
    if any(f": {code}:" in f": {line}" for code in _SERVER_CODES) and "did not answer" not in line:
        return f"lost the server: {line}; check that it is running and reachable, then run the job again with {rerun}"
    return line


# A worker's exception class, as its traceback's last line names it (the ServingError types in
# fmnist.common.errors are named by their status, without an Error suffix), and the step it ran in.
_WORKER_DECORATION = re.compile(
    r"^(?:(?:[\w.]+(?:Error|Exception)|fmnist\.common\.errors\.\w+): )+|\s*\[while running '[^']*'\]$"
)


def _last_line(error: BaseException) -> str:
    """The line that says what went wrong: Beam puts a worker's traceback first and the error last.

    Beam also prefixes the worker's exception class and suffixes the step it
    ran in; the user needs neither to act on "the server at … did not answer".
    """
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return _WORKER_DECORATION.sub("", lines[-1]) if lines else type(error).__name__


if __name__ == "__main__":
    sys.exit(main())
