"""``fmnist batch``'s pipeline: read batches → classified → checkpointed → records, errors and tallies → files.

:class:`ClassifyFiles` is the whole job, built from the steps here and the
shared ones (:mod:`batch.steps`): :class:`InferBatches` (the model over the
read batches, several at once),
:class:`ResumeCheckpoints` (an interrupted run's outcomes, for ``--resume``),
a checkpoint per classified batch, and the records of each batch.

Usage::

    pipeline | "Job" >> ClassifyFiles(config, progress_address=address)
    outcomes = read_batches | InferBatches(handler, max_request_bytes=32 << 20)
"""

from __future__ import annotations

import copy
import queue
from collections import Counter
from collections.abc import Callable, Iterator
from typing import NamedTuple

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler

from fmnist.batch import output, progress, records, report, summary
from fmnist.batch.inference import NAMESPACE, ImageBatches, SignatureHandler
from fmnist.batch.options import JobConfig
from fmnist.batch.outcomes import Classified, Failed, Outcome
from fmnist.batch.steps import ERRORS, GALLERY, RECORDS, TALLIES, ReadInputs, WriteGallery, WriteTallies
from fmnist.batch.threaded import ThreadedDoFn


def images_handler(config: JobConfig) -> ModelHandler:
    """The handler of encoded images the job calls: the served model's, or the local SavedModel's."""
    if config.in_process:
        return SignatureHandler(config.in_process, signature=config.signature)
    return config.server.handler()


class InferBatches(beam.PTransform):
    """Read batches (lists of Image or Failed) → their lists of outcomes, with up to ``in_flight`` batches
    at the model at once per worker.

    A batch goes to ``handler`` (a Beam model handler of encoded images)
    through :class:`~batch.inference.ImageBatches`: requests of at most
    ``max_request_bytes``, a rejected one bisected down to its bad files, and
    a batch the model fails on as a whole given as ``inference_failed``
    outcomes; a serving error a worker stops the job on is noted in
    ``failures``, for the launcher. ``RunInference`` would call the handler
    for one batch at a time, leaving the worker idle while each answer
    travels; here each worker calls it from ``in_flight`` threads
    (:class:`~batch.threaded.ThreadedDoFn`), as a user's own client keeps
    several requests in flight. The outcomes keep the batches' order.
    """

    def __init__(
        self,
        handler: ModelHandler,
        *,
        max_request_bytes: int,
        in_flight: int = 1,
        failures: output.FailureNotes | None = None,
    ):
        super().__init__()
        self._batches = ImageBatches(handler, max_request_bytes=max_request_bytes, failures=failures)
        self._in_flight = in_flight

    def expand(self, batches: beam.PCollection) -> beam.PCollection:
        return batches | "Infer" >> beam.ParDo(_Infer(self._batches, self._in_flight))


class _Infer(ThreadedDoFn):
    """A read batch → its list of outcomes (:meth:`ImageBatches.run_inference <batch.inference.ImageBatches>`),
    ``in_flight`` batches at once. The model (a client's stub, or a loaded SavedModel) is loaded once per
    instance and shared by its threads: a gRPC stub and a TF function may be called from several threads.
    Each thread calls a copy of the handler of its own: a remote handler's client-side throttler expects
    one call at a time, and would take calls still in flight for failures and hold the next ones back.
    """

    def __init__(self, batches: ImageBatches, in_flight: int):
        self._batches = batches
        self.in_flight = in_flight

    def setup(self) -> None:
        super().setup()
        self._model = self._batches.load_model()
        self._handlers: queue.SimpleQueue[ImageBatches] = queue.SimpleQueue()
        for _ in range(self.in_flight):
            self._handlers.put(copy.deepcopy(self._batches))

    def work(self, items: list) -> list[list[Outcome]]:
        handler = self._handlers.get()
        try:
            return handler.run_inference([items], self._model)
        finally:
            self._handlers.put(handler)


class _SaveCheckpoint(ThreadedDoFn):
    """Lists of outcomes just classified, passed on once saved: each list as one checkpoint in ``folder``
    (:func:`batch.output.write_checkpoint`), what ``--resume`` takes if this run does not finish. Saved in a
    thread of its own (:class:`~batch.threaded.ThreadedDoFn`), while the stage waits for the model. Counts the
    files for the launcher's progress display (:mod:`batch.progress`): files done are files saved.
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
            output.write_checkpoint(self._folder, outcomes, self._with_data)
        return [outcomes]

    def emitted(self, outcomes: list[Outcome], outputs: list) -> None:
        self._progress.add(len(outcomes))

    def finish_bundle(self) -> Iterator:
        yield from super().finish_bundle()
        self._progress.flush()

    def teardown(self) -> None:
        super().teardown()
        self._progress.close()


class _OutcomesToRecords(ThreadedDoFn):
    """Lists of outcomes → blocks of output records (main: ``to_record`` of each classified file, a row or
    a serialized PredictionLog, formatted by ``record_format``) and of error records (``errors``, formatted
    by ``error_format``), none empty; the tallies of the summary (``tallies``: (key, count) per list) and the report's
    gallery candidates (``gallery``, of lists with classified files); counts files for Beam's metrics. The
    work, formatting included, runs in a thread of its own (:class:`~batch.threaded.ThreadedDoFn`), while the
    stage waits for the model.
    """

    def __init__(
        self,
        to_record: Callable[[Classified], dict | bytes],
        record_format: records.BlockFormat,
        error_format: records.BlockFormat,
    ):
        self._to_record = to_record
        self.record_format = record_format
        self.error_format = error_format

    def setup(self) -> None:
        super().setup()
        self._images = Metrics.counter(NAMESPACE, "images")
        self._errors = Metrics.counter(NAMESPACE, "errors")

    def work(self, outcomes: list[Outcome]) -> list:
        found, errors = [], []
        for outcome in outcomes:
            if isinstance(outcome, Classified):
                found.append(self._to_record(outcome))
            else:
                errors.append(records.error_record(outcome))
        outputs = [beam.pvalue.TaggedOutput(TALLIES, tally) for tally in summary.tallies(outcomes).items()]
        if found:
            outputs += [self.record_format(found), beam.pvalue.TaggedOutput(GALLERY, report.candidates(outcomes))]
        if errors:
            outputs.append(beam.pvalue.TaggedOutput(ERRORS, self.error_format(errors)))
        return outputs

    def emitted(self, outcomes: list[Outcome], outputs: list) -> None:
        # Beam's metrics belong to the stage's thread (its state sampler), so they are counted here.
        failed = Counter(outcome.reason for outcome in outcomes if isinstance(outcome, Failed))
        self._images.inc(len(outcomes) - failed.total())
        self._errors.inc(failed.total())
        for reason, count in failed.items():
            Metrics.counter(NAMESPACE, f"errors_{reason}").inc(count)


class Resumed(NamedTuple):
    """What :class:`ResumeCheckpoints` gives."""

    outcomes: beam.PCollection  # one list of outcomes per checkpoint, as InferBatches gives them
    paths: beam.PCollection  # one frozenset: every path they hold (the files not to read again)


class ResumeCheckpoints(beam.PTransform):
    """The pipeline's start → :class:`Resumed`: an interrupted run's outcomes, as
    :func:`~batch.output.plan_resumption` planned them (each checkpoint less the paths not to take)."""

    def __init__(self, resumption: output.Resumption):
        super().__init__()
        self._checkpoints = resumption.checkpoints

    def expand(self, start: beam.pvalue.PBegin) -> Resumed:
        outcomes = (
            start
            | "Checkpoints" >> beam.Create(self._checkpoints)
            | "ReadCheckpoints" >> beam.FlatMap(_resumed_outcomes)
        )
        return Resumed(outcomes, outcomes | "ResumedPaths" >> beam.CombineGlobally(_PathsOf()))


def _resumed_outcomes(checkpoint: tuple[str, tuple[str, ...]]) -> Iterator[list[Outcome]]:
    """A checkpoint's outcomes as one list, as the classification step emits them, less the paths not to take."""
    path, left_out = checkpoint
    outcomes = output.read_checkpoint(path)
    if left_out:
        dropped = set(left_out)
        outcomes = [outcome for outcome in outcomes if outcome.path not in dropped]
    if outcomes:
        yield outcomes


class _PathsOf(beam.CombineFn):
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


class ClassifyFiles(beam.PTransform):
    """The pipeline's start → ``fmnist batch``'s outputs under ``config.output``: the sharded predictions and
    errors, and the scratch of the summary and the report; gives the writes' results by output name.

    Files are elements only until they are batched (:class:`~batch.steps.ReadInputs`);
    from reading to writing, one element is one batch of ``batch_size`` files.
    ``handler`` (a Beam model handler of encoded images) replaces
    :func:`images_handler`'s. Each classified batch is saved as a checkpoint
    under ``config.output``/``_resume`` before its records are made. Workers
    report files done to ``progress_address`` (a :class:`progress.Progress`).

    With a ``resumption``, its checkpoints' outcomes are read back (one list
    per checkpoint, as classification gives them), their files are still
    counted as inputs but neither read nor classified, and both kinds of
    outcome become records together: the results cover every input once.
    (Beam's local runner holds what reaches a Flatten of several inputs, so a
    resumed run keeps its new outcomes in memory until then.)
    """

    def __init__(
        self,
        config: JobConfig,
        *,
        handler: ModelHandler | None = None,
        progress_address: tuple[str, int] | None = None,
        resumption: output.Resumption | None = None,
    ):
        super().__init__()
        self._config = config
        self._handler = handler
        self._progress_address = progress_address
        self._resumption = resumption

    def expand(self, start: beam.pvalue.PBegin) -> dict[str, beam.PCollection]:
        config = self._config
        resumed = skip = None
        if self._resumption and self._resumption.checkpoints:
            resumed = start | "Resume" >> ResumeCheckpoints(self._resumption)
            skip = beam.pvalue.AsSingleton(resumed.paths)
        inputs = start | "ReadInputs" >> ReadInputs(
            config.inputs, batch_size=config.batch_size, limits=config.limits, skip=skip
        )
        infer = InferBatches(
            self._handler or images_handler(config),
            max_request_bytes=config.max_request_bytes,
            in_flight=config.in_flight,
            failures=output.FailureNotes(config.output),
        )
        folder = FileSystems.join(config.output, output.CHECKPOINTS)
        keep_data = config.file_format == records.TFRECORD  # a PredictionLog's request holds the image
        outcomes = (
            inputs.batches
            | "InferBatches" >> infer
            | "Checkpoint" >> beam.ParDo(_SaveCheckpoint(folder, self._progress_address, keep_data))
        )
        if resumed is not None:
            outcomes = (outcomes, resumed.outcomes) | "WithResumed" >> beam.Flatten()
        to_records = _OutcomesToRecords(
            records.output_record(config.file_format, config.top_k, config.signature),
            records.BlockFormat(config.file_format, records.PREDICTION_SCHEMA),
            # JSONL beside TFRecords: errors are no predictions
            records.BlockFormat(records.errors_format(config.file_format), records.ERROR_SCHEMA),
        )
        routed = outcomes | "Records" >> beam.ParDo(to_records).with_outputs(ERRORS, TALLIES, GALLERY, main=RECORDS)
        return {
            output.PREDICTIONS: routed[RECORDS]
            | "WritePredictions"
            >> records.Write.formatted_by(to_records.record_format, config.output, output.PREDICTIONS),
            output.ERRORS: routed[ERRORS]
            | "WriteErrors" >> records.Write.formatted_by(to_records.error_format, config.output, output.ERRORS),
            "gallery": routed[GALLERY] | "WriteGallery" >> WriteGallery(config.output, report.Gallery()),
            "tallies": (inputs.tallies, routed[TALLIES]) | "WriteTallies" >> WriteTallies(config.output),
        }
