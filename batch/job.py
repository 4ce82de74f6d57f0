"""``fmnist batch``: an Apache Beam job that classifies folders of images, one record per file.

Files matched by ``--input`` (folders recursively, globs, any Beam file
system) are read and header-checked on workers, sent in fixed-size batches to
the served model (``predict_images``: encoded bytes, decoded in the graph), or
run in-process through ``RunInference`` with ``--in-process MODEL_DIR``.
Records go to sharded ``predictions-*`` files, failures to ``errors-*``, and
the launcher writes ``summary.json`` (plus ``confusion_matrix.png`` for
labelled folders) and ``_SUCCESS``. Options this parser does not know are
Beam pipeline options, so the same job runs on Flink, Spark or Dataflow.

Usage::

    fmnist batch --input images/ --output out/ --server localhost:8500 [--format parquet]
    fmnist batch --input 'gs://b/imgs/*.png' --output gs://b/out --server 10.0.0.2:8500 \\
        --runner DataflowRunner --project p --region r --temp_location gs://b/tmp
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystem import FileMetadata
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import RunInference
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.portability.api import beam_provision_api_pb2
from apache_beam.runners.portability.fn_api_runner import fn_runner
from apache_beam.runners.portability.portable_runner import JobServiceHandle
from apache_beam.runners.runner import PipelineResult, PipelineState

from batch import io, summary
from batch.inference import NAMESPACE, LocalModel, SavedModelHandler, ServedClassify, ServerSettings
from batch.outcomes import Classified, Outcome
from fmnist import names
from serving.client import PredictionClient

_LOG = logging.getLogger(__name__)
_ERRORS = "errors"
_TALLIES = "tallies"
_COUNTS_FILE = "_counts.jsonl"  # the pipeline's tallies, read and removed by the launcher


class JobError(Exception):
    """The job could not run or did not finish; the message says why, naming the server or path."""


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


@dataclass(frozen=True)
class JobResult:
    summary: summary.Summary
    pipeline: PipelineResult  # for Beam metrics: pipeline.metrics().query()


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parse_args(argv: list[str] | None, prog: str | None = None) -> tuple[JobConfig, list[str]]:
    """(config, Beam pipeline arguments): whatever this parser does not know is left for Beam."""
    parser = argparse.ArgumentParser(
        prog=prog,
        allow_abbrev=False,  # "--dir..." must not swallow a Beam option that merely starts alike
        description="Classify image files in bulk with Apache Beam. Unknown options are Beam pipeline "
        "options (--runner, --direct_num_workers, --project, ...); without --runner the job runs locally.",
    )
    parser.add_argument("--input", action="append", required=True, metavar="PATTERN_OR_DIR",
                        help="a folder (read recursively), a glob, or a file; repeatable; any Beam file system")
    parser.add_argument("--output", required=True, metavar="DIR", help="where records, errors and the summary go")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--server", metavar="HOST:PORT", help="TF Serving gRPC address of the served model")
    source.add_argument("--in-process", metavar="MODEL_DIR",
                        help="run this SavedModel (a version dir, or a base path of versions) with RunInference instead")
    parser.add_argument("--model-name", default=names.MODEL_NAME)
    parser.add_argument("--signature", default=names.PREDICT_IMAGES, choices=[names.PREDICT_IMAGES],
                        help="the signature that takes encoded image bytes")
    parser.add_argument("--format", default="jsonl", choices=io.FORMATS, dest="file_format")
    parser.add_argument("--batch-size", type=_positive, default=64, help="images per request (default 64)")
    parser.add_argument("--top-k", type=_positive, default=3, help="classes listed per record (default 3)")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="deadline of each request, and the longest wait for the server at start, seconds (default 30)")
    parser.add_argument("--retries", type=int, default=3, help="retries on UNAVAILABLE/DEADLINE_EXCEEDED (default 3)")
    parser.add_argument("--max-image-pixels", type=_positive, default=names.MAX_IMAGE_PIXELS, metavar="N",
                        help="refuse an image whose header claims more pixels, as the server does (default 4096x4096)")
    parser.add_argument("--progress-seconds", type=float, default=10.0, metavar="SECONDS",
                        help="log files done and rate per worker this often; 0: after every file (default 10)")
    args, beam_args = parser.parse_known_args(argv)
    if args.top_k > names.NUM_CLASSES:
        parser.error(f"--top-k: at most {names.NUM_CLASSES}")
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
    )
    return config, beam_args


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


class _Account(beam.DoFn):
    """Lists of outcomes → lists of output records (main) and of error records (``errors``), and
    the tallies of the summary (``tallies``: (key, count) per batch); counts and logs progress.

    Progress is per worker (files done here, rate), logged every
    ``progress_seconds``: the local runners report no metrics until the job
    ends. It names no job total on purpose: a total would be a side input,
    which splits the fused read → classify → write stage in two and makes
    every outcome pass through a coder in between (a fifth of the job's time).
    With ``multi_processing`` the lines reach the launcher through Beam's
    worker logging, at INFO.
    """

    def __init__(self, top_k: int, progress_seconds: float, clock: Callable[[], float]):
        self._top_k = top_k
        self._progress_seconds = progress_seconds
        self._clock = clock
        self._images = Metrics.counter(NAMESPACE, "images")
        self._errors = Metrics.counter(NAMESPACE, "errors")

    def setup(self) -> None:
        self._done = 0
        self._started = self._logged = self._clock()

    def process(self, outcomes: list[Outcome]) -> Iterator[list[dict] | beam.pvalue.TaggedOutput]:
        records, errors, tallies = [], [], Counter()
        for outcome in outcomes:
            tallies.update(summary.tally(outcome))
            if isinstance(outcome, Classified):
                records.append(io.prediction_record(outcome, self._top_k))
            else:
                errors.append(io.error_record(outcome))
                Metrics.counter(NAMESPACE, f"errors_{outcome.reason}").inc()
        self._images.inc(len(records))
        self._errors.inc(len(errors))
        yield records
        yield beam.pvalue.TaggedOutput(_ERRORS, errors)
        for key, count in tallies.items():
            yield beam.pvalue.TaggedOutput(_TALLIES, (key, count))
        self._progress(len(outcomes))

    def _progress(self, files: int) -> None:
        now = self._clock()
        self._done += files
        if now - self._logged >= self._progress_seconds:
            rate = self._done / max(now - self._started, 1e-9)
            _LOG.info("progress: %d files done on this worker, %.1f files/s", self._done, rate)
            self._logged = now


def _classify(config: JobConfig, client_factory: Callable[..., PredictionClient]) -> beam.PTransform:
    if config.in_process:
        handler = SavedModelHandler(config.in_process, signature=config.signature, max_request_bytes=config.max_request_bytes)
        return "RunInference" >> RunInference(handler)
    served = ServedClassify(config.server, max_request_bytes=config.max_request_bytes, client_factory=client_factory)
    return "Served" >> beam.ParDo(served)


def build(
    pipeline: beam.Pipeline,
    config: JobConfig,
    *,
    client_factory: Callable[..., PredictionClient] = PredictionClient,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Add the job's transforms to ``pipeline``; outputs land under ``config.output``.

    Files are elements only until they are batched (match, de-duplicate);
    from reading to writing, one element is one batch of ``batch_size`` files.
    """
    patterns = sorted({io.input_pattern(spec) for spec in config.inputs})
    files = (
        pipeline
        | "Inputs" >> beam.Create(patterns)
        | "Match" >> fileio.MatchAll(fileio.EmptyMatchTreatment.DISALLOW)
        | "PathAndSize" >> beam.Map(_path_and_size)
    )
    if len(patterns) > 1:  # one glob matches a file once; overlapping ones must not classify it twice
        files = files | "Deduplicate" >> beam.CombinePerKey(_any)
    batches = (
        files
        # min = max: full batches; BatchElements would otherwise start at 1 and grow slowly.
        | "Batch" >> beam.BatchElements(min_batch_size=config.batch_size, max_batch_size=config.batch_size)
        | "Spread" >> beam.Reshuffle()  # the batches, not the files, over the workers: one shuffle per batch
    )
    outcomes = batches | "Read" >> beam.ParDo(io.ReadImages(config.limits)) | _classify(config, client_factory)
    routed = outcomes | "Account" >> beam.ParDo(_Account(config.top_k, config.progress_seconds, clock)).with_outputs(
        _ERRORS, _TALLIES, main="records"
    )
    routed.records | "WritePredictions" >> io.Write(config.output, "predictions", config.file_format, io.PREDICTION_SCHEMA)
    routed[_ERRORS] | "WriteErrors" >> io.Write(config.output, "errors", config.file_format, io.ERROR_SCHEMA)
    (
        # Inputs are counted before reading, apart from the outcomes, so a lost file shows in the summary.
        (batches | "InputCounts" >> beam.Map(lambda batch: (summary.INPUT, len(batch))), routed[_TALLIES])
        | "Tallies" >> beam.Flatten()
        | "Count" >> beam.CombinePerKey(sum)
        | "CountsAsJson" >> beam.MapTuple(lambda key, n: json.dumps([list(key), n]))
        | "WriteCounts" >> beam.io.WriteToText(FileSystems.join(config.output, _COUNTS_FILE), shard_name_template="")
    )


def _check_source(config: JobConfig, client_factory: Callable[..., PredictionClient]) -> str:
    """Fail before launching when the model cannot answer; returns how the summary names the source."""
    if config.in_process:
        return f"in-process {config.in_process.path}"
    server = config.server
    client = server.connect(client_factory)
    try:
        client.wait_until_available(timeout=server.timeout)
    except Exception as error:  # ServingError, or whatever a custom factory's client raises
        raise JobError(f"the server at {server.target} did not answer: {error}") from error
    finally:
        client.close()
    return f"server {server.target}"


def _read_counts(path: str) -> dict[tuple, int]:
    with FileSystems.open(path) as file:
        rows = [json.loads(line) for line in file.read().decode().splitlines() if line]
    return {tuple(key): n for key, n in rows}


def run(
    argv: list[str] | None = None,
    test_pipeline: beam.Pipeline | None = None,
    *,
    prog: str | None = None,
    client_factory: Callable[..., PredictionClient] = PredictionClient,
    clock: Callable[[], float] = time.monotonic,
) -> JobResult:
    """Run the job to completion and write its summary; raises :class:`JobError` when it cannot.

    ``test_pipeline`` (a ``TestPipeline``, say) replaces the pipeline built
    from the Beam arguments in ``argv``, as in Beam's own examples.
    """
    config, beam_args = parse_args(argv, prog)
    source = _check_source(config, client_factory)
    success = FileSystems.join(config.output, io.SUCCESS)
    if FileSystems.exists(success):  # a failed rerun must not look finished
        FileSystems.delete([success])
    pipeline = test_pipeline or make_pipeline(beam_args)
    build(pipeline, config, client_factory=client_factory, clock=clock)
    started = clock()
    result = pipeline.run()
    state = result.wait_until_finish()
    if state != PipelineState.DONE:
        raise JobError(f"the pipeline ended {state}")
    counts_path = FileSystems.join(config.output, _COUNTS_FILE)
    result_summary = summary.summarize(_read_counts(counts_path), clock() - started, source)
    FileSystems.delete([counts_path])
    io.write_bytes(FileSystems.join(config.output, summary.SUMMARY_FILE), summary.to_json(result_summary).encode())
    if result_summary.evaluation:
        io.write_bytes(FileSystems.join(config.output, summary.CONFUSION_FILE), summary.confusion_png(result_summary.evaluation))
    io.write_bytes(success, b"")
    return JobResult(result_summary, result)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """CLI entry (``fmnist batch``): 0 when every file is accounted for, 1 when the job failed."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("batch").setLevel(logging.INFO)
    try:
        result = run(argv, prog=prog)
    except Exception as error:  # the CLI boundary: one clear line, not a worker's traceback
        print(f"{prog or 'batch'}: error: {_last_line(error)}", file=sys.stderr)
        return 1
    print(summary.render(result.summary))
    return 0


_WORKER_DECORATION = re.compile(r"^(?:[\w.]+(?:Error|Exception): )+|\s*\[while running '[^']*'\]$")


def _last_line(error: BaseException) -> str:
    """The line that says what went wrong: Beam puts a worker's traceback first and the error last.

    Beam also prefixes the worker's exception class and suffixes the step it
    ran in; the user needs neither to act on "the server at … did not answer".
    """
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return _WORKER_DECORATION.sub("", lines[-1]) if lines else type(error).__name__


if __name__ == "__main__":
    sys.exit(main())
