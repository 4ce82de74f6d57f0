"""The command lines of ``fmnist batch`` and ``fmnist compare``: their options, Beam's, and the frozen configs.

Both commands share the options of a Beam job over image files
(:func:`beam_command_parser`: inputs, output, the calls to the model, the
display) and take Beam's pipeline options besides their own, so the same job
runs on Flink, Spark or Dataflow; an option that is neither theirs nor Beam's
is a usage error with a guess (Beam itself would only warn, then run with
defaults). Parsing ends in a frozen :class:`JobConfig` or
:class:`CompareConfig` and the Beam arguments, or exits 2 before any work.

Usage::

    config, beam_args = parse_job_args(["--input", "images/", "--output", "out/", "--server", "h:8500"])
    config, beam_args = parse_compare_args([..., "--baseline", "1", "--candidate", "2"], prog="fmnist compare")
"""

from __future__ import annotations

import argparse
import functools
from dataclasses import dataclass, field

from apache_beam.options.pipeline_options import PipelineOptions

from fmnist.batch import records
from fmnist.batch.inference import LocalModel, ServerSettings
from fmnist.batch.output import CHECKPOINTS
from fmnist.common import names
from fmnist.common.imagefile import Limits
from fmnist.common.usage import CommandParser

MAX_REQUEST_BYTES = 32 << 20  # of images in one request: half the client's 64 MiB message limit


@dataclass(frozen=True)
class JobConfig:
    """``fmnist batch``'s options."""

    inputs: tuple[str, ...]
    output: str
    server: ServerSettings | None  # exactly one of server and in_process
    in_process: LocalModel | None
    signature: str = names.PREDICT_IMAGES  # of the in-process model; the client always calls predict_images
    file_format: str = "jsonl"
    batch_size: int = 64
    in_flight: int = 4  # batches each worker has at the model at once
    top_k: int = 3
    limits: Limits = field(default_factory=Limits)
    max_request_bytes: int = MAX_REQUEST_BYTES
    progress_seconds: float = 10.0
    overwrite: bool = False  # replace an earlier run's results in output
    resume: bool = False  # finish the interrupted run in output, keeping what its checkpoints hold
    verbose: bool = False  # the CLI shows Beam's own logs and its workers' standard error


@dataclass(frozen=True)
class Version:
    """What ``--baseline`` or ``--candidate`` names: a version number, or a version label."""

    number: int | None = None
    label: str | None = None

    @classmethod
    def parse(cls, text: str) -> Version:
        return cls(number=int(text)) if text.isdigit() else cls(label=text)

    def __str__(self) -> str:
        return f"version {self.number}" if self.number is not None else f"label {self.label!r}"


@dataclass(frozen=True)
class CompareConfig:
    """``fmnist compare``'s options."""

    inputs: tuple[str, ...]
    output: str
    server: ServerSettings
    baseline: Version
    candidate: Version
    max_disagreement: float = 1.0  # the gate: at most this share of compared files may differ (1.0: no limit)
    min_accuracy_delta: float | None = None  # the gate, labelled folders only: candidate − baseline accuracy
    batch_size: int = 64
    limits: Limits = field(default_factory=Limits)
    max_request_bytes: int = MAX_REQUEST_BYTES
    progress_seconds: float = 10.0
    overwrite: bool = False
    verbose: bool = False


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return value


def parse_job_args(argv: list[str] | None, prog: str | None = None) -> tuple[JobConfig, list[str]]:
    """``fmnist batch``'s (config, Beam pipeline arguments); an option that is neither the job's nor Beam's is an
    error."""
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
        choices=records.FORMATS,
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
        "--in-flight",
        type=_positive,
        default=JobConfig.in_flight,
        metavar="N",
        help="batches each worker has at the model at once (default %(default)s)",
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
        in_flight=args.in_flight,
        top_k=args.top_k,
        limits=Limits(max_file_bytes=args.max_image_bytes, max_pixels=args.max_image_pixels),
        progress_seconds=args.progress_seconds,
        overwrite=args.overwrite,
        resume=args.resume,
        verbose=args.verbose,
    )
    return config, beam_args


def _local_model(parser: argparse.ArgumentParser, model_dir: str | None, model_name: str) -> LocalModel | None:
    if model_dir is None:
        return None
    try:
        return LocalModel.resolve(model_dir, model_name)
    except FileNotFoundError as error:
        parser.error(f"--in-process: {error}")


def parse_compare_args(argv: list[str] | None, prog: str | None = None) -> tuple[CompareConfig, list[str]]:
    """``fmnist compare``'s (config, Beam pipeline arguments); an option that is neither the job's nor Beam's is
    an error."""
    parser = beam_command_parser(
        prog,
        "Send the same images to two versions of the served model and compare their answers.",
        "where comparison.json, disagreements, errors and report.html go",
    )
    parser.add_argument(
        "--server", required=True, metavar="HOST:PORT", help="TF Serving gRPC address of the served model"
    )
    parser.add_argument(
        "--baseline",
        required=True,
        metavar="V",
        type=Version.parse,
        help="the version serving now: a number, or a version label such as stable",
    )
    parser.add_argument(
        "--candidate",
        required=True,
        metavar="V",
        type=Version.parse,
        help="the version to promote: a number, or a version label such as canary",
    )
    parser.add_argument(
        "--max-disagreement",
        type=_fraction,
        default=1.0,
        metavar="F",
        help="fail (exit 3) when more than this share of compared files differ (default 1.0: no limit)",
    )
    parser.add_argument(
        "--min-accuracy-delta",
        type=float,
        default=None,
        metavar="F",
        help="fail (exit 3) when, on labelled folders, candidate accuracy minus baseline accuracy "
        "is below this (e.g. 0, or -0.01); not checked without labelled folders",
    )
    args, beam_args = parse_with_beam_options(parser, argv)
    config = CompareConfig(
        inputs=tuple(args.input),
        output=args.output,
        server=ServerSettings(args.server, args.model_name, timeout=args.timeout, retries=args.retries),
        baseline=args.baseline,
        candidate=args.candidate,
        max_disagreement=args.max_disagreement,
        min_accuracy_delta=args.min_accuracy_delta,
        batch_size=args.batch_size,
        limits=Limits(max_file_bytes=args.max_image_bytes, max_pixels=args.max_image_pixels),
        progress_seconds=args.progress_seconds,
        overwrite=args.overwrite,
        verbose=args.verbose,
    )
    return config, beam_args


def beam_command_parser(prog: str | None, description: str, output_help: str) -> argparse.ArgumentParser:
    """A parser with the options every Beam command over image files shares (inputs, output, calls, display);
    Beam's pipeline options pass through it (:class:`~fmnist.common.usage.CommandParser`'s ``passes_on``)."""
    parser = CommandParser(
        prog=prog,
        passes_on=_beam_parser()._option_string_actions,
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
        help="deadline of each request, and the longest wait for a server that is starting, seconds (default 30)",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=3,
        help="retries, with backoff, of a request the server could not answer (UNAVAILABLE, "
        "DEADLINE_EXCEEDED, ...; default 3)",
    )
    parser.add_argument(
        "--max-image-bytes",
        type=_positive,
        default=names.MAX_IMAGE_BYTES,
        metavar="N",
        help="refuse a file of more bytes before sending it, as the server would (default 16 MiB, the server's); "
        "raising it here alone lets the server refuse it",
    )
    parser.add_argument(
        "--max-image-pixels",
        type=_positive,
        default=names.MAX_IMAGE_PIXELS,
        metavar="N",
        help="refuse an image whose header claims more pixels before sending it, as the server would (default "
        "4096x4096, the server's and the model's); raising it here alone lets the server refuse it",
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
    """(this command's arguments, Beam's); an option that is neither is a usage error, with a guess (the parser's
    own check), and so is anything else Beam's own parser would discard."""
    args, beam_args = parser.parse_known_args(argv)
    if args.max_image_bytes > MAX_REQUEST_BYTES:
        parser.error(f"--max-image-bytes: at most {MAX_REQUEST_BYTES:,}, the most one request carries")
    unknown = _beam_parser().parse_known_args(beam_args)[1]
    if unknown:
        parser.error(f"unexpected argument{'s' if len(unknown) > 1 else ''}: {' '.join(unknown)}")
    return args, beam_args


@functools.cache
def _beam_parser() -> argparse.ArgumentParser:
    """The parser of every Beam pipeline option; Beam's own use of it only warns of what it discards, then runs
    with defaults."""
    parsers = []
    PipelineOptions([]).get_all_options(add_extra_args_fn=parsers.append)
    return parsers[0]
