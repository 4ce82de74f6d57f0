"""``fmnist compare``'s pipeline: read batches → both versions' answers → disagreements, errors and tallies → files.

:class:`CompareVersions` is the whole job: the shared reading and scratch
steps (:mod:`batch.steps`) around one request per version and batch, and the
records of each batch's pairs of outcomes.

Usage::

    pipeline | "CompareVersions" >> CompareVersions(config, progress_address=address)
    scores = predictor(client, Version(label="canary"))([png_bytes])
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator

import apache_beam as beam
from apache_beam.metrics import Metrics

from fmnist.batch import output, progress, records
from fmnist.batch.comparison import GALLERY_SIZE
from fmnist.batch.inference import NAMESPACE, Predict, Scores, ServerSettings, is_rejected_input, predict_read_batch
from fmnist.batch.options import CompareConfig, Version
from fmnist.batch.outcomes import Classified, Failed, Image, Outcome, carried
from fmnist.batch.steps import ERRORS, GALLERY, RECORDS, TALLIES, ReadInputs, WriteGallery, WriteTallies
from fmnist.common import names
from fmnist.common.client import PredictionClient
from fmnist.common.errors import ServingError


def predictor(client: PredictionClient, version: Version) -> Predict:
    """Scores of encoded images from ``version`` of the client's model."""

    def predict(encoded: list[bytes]) -> Scores:
        return Scores.of(client.predict_encoded(encoded, version=version.number, version_label=version.label))

    return predict


class _AskBothVersions(beam.DoFn):
    """A read batch → one (baseline outcome, candidate outcome) pair per file: two requests, one per version.

    Each side goes through :func:`~batch.inference.predict_read_batch`, so retries
    and bisection are the batch job's; files that failed to read are the same
    :class:`Failed` on both sides. A serving error that stops the job is noted
    in ``failures`` first, for the launcher.
    """

    def __init__(
        self,
        server: ServerSettings,
        versions: tuple[Version, Version],
        *,
        max_request_bytes: int,
        client_factory: Callable[..., PredictionClient],
        failures: output.FailureNotes,
    ):
        self._server = server
        self._versions = versions
        self._max_request_bytes = max_request_bytes
        self._client_factory = client_factory
        self._failures = failures
        self._client: PredictionClient | None = None

    def setup(self) -> None:
        self._client = self._server.connect(self._client_factory)
        self._predict = [predictor(self._client, version) for version in self._versions]

    def process(self, batch: list[Image | Failed]) -> Iterator[list[tuple[Outcome, Outcome]]]:
        try:
            baseline, candidate = (
                predict_read_batch(batch, predict, is_rejected_input, max_request_bytes=self._max_request_bytes)
                for predict in self._predict
            )
        except ServingError as error:
            self._failures.note(error)
            raise
        # predict_read_batch keeps the batch's order within read failures and images alike, so the sides line up
        yield list(zip(baseline, candidate, strict=True))

    def teardown(self) -> None:
        if self._client is not None:  # None: setup failed, and that error is the one to see
            self._client.close()
            self._client = None


def _error_record(pair: tuple[Outcome, Outcome]) -> dict:
    """One ``errors`` row for a file either side could not classify, saying which side when they differ."""
    failed = [(side, outcome) for side, outcome in zip(names.SIDES, pair, strict=False) if isinstance(outcome, Failed)]
    if len(failed) == 2 and failed[0][1] == failed[1][1]:  # failed before any request: unreadable, not an image, ...
        return records.error_record(failed[0][1])
    detail = "; ".join(f"{side}: {outcome.detail}" for side, outcome in failed)
    return {"path": pair[0].path, "reason": failed[0][1].reason, "detail": detail}


def _disagreement_record(baseline: Classified, candidate: Classified) -> dict:
    record = {"path": baseline.path, "label": None if baseline.label is None else names.CLASS_NAMES[baseline.label]}
    for side, outcome in zip(names.SIDES, (baseline, candidate), strict=False):
        record |= {
            f"{side}_class": outcome.class_name,
            f"{side}_confidence": max(outcome.probabilities),
            f"{side}_version": outcome.model_version,
        }
    return record


def _tally(baseline: Classified, candidate: Classified) -> Iterator[tuple]:
    """The keys one compared file adds 1 to."""
    yield ("pair", baseline.class_id, candidate.class_id)
    for side, outcome in zip(names.SIDES, (baseline, candidate), strict=False):
        yield ("model", side, outcome.model_name, outcome.model_version)
        if outcome.label is not None:
            yield ("correct", side, outcome.label == outcome.class_id)
        if outcome.unfamiliar is not None:  # a version with the trust outputs (docs/trust.md)
            yield ("unfamiliar", side, outcome.unfamiliar)


class _PairsToRecords(beam.DoFn):
    """Lists of pairs → blocks of JSON lines of disagreement records (main) and of error records (``errors``),
    none empty, the tallies (``tallies``) and the batch's gallery candidates (``gallery``); counts files for the
    progress display. The records leave as JSON text, which holds any path (a bare ``str`` must be UTF-8 for
    Beam, and a file name may not be)."""

    JSON_LINES = records.BlockFormat("jsonl")

    def __init__(self, progress_address: tuple[str, int] | None):
        self._progress_address = progress_address
        self._compared = Metrics.counter(NAMESPACE, "compared")
        self._disagreements = Metrics.counter(NAMESPACE, "disagreements")
        self._errors = Metrics.counter(NAMESPACE, "errors")

    def setup(self) -> None:
        self._progress = progress.Reporter(self._progress_address)

    def process(self, pairs: list[tuple[Outcome, Outcome]]) -> Iterator[list[dict] | beam.pvalue.TaggedOutput]:
        disagreements, errors, tallies = [], [], Counter()
        for baseline, candidate in pairs:
            if isinstance(baseline, Classified) and isinstance(candidate, Classified):
                tallies.update(_tally(baseline, candidate))
                if baseline.class_id != candidate.class_id:
                    disagreements.append(_disagreement_record(baseline, candidate))
            else:
                errors.append(_error_record((baseline, candidate)))
                tallies[("error", errors[-1]["reason"])] += 1
        self._compared.inc(len(pairs) - len(errors))
        self._disagreements.inc(len(disagreements))
        self._errors.inc(len(errors))
        if disagreements:
            yield self.JSON_LINES(disagreements)
        if errors:
            yield beam.pvalue.TaggedOutput(ERRORS, self.JSON_LINES(errors))
        # a bare str must be UTF-8 for Beam, and a file name may not be
        candidates = [dict(record, path=carried(record["path"])) for record in _surest_first(disagreements)]
        yield beam.pvalue.TaggedOutput(GALLERY, candidates[:GALLERY_SIZE])
        for key, count in tallies.items():
            yield beam.pvalue.TaggedOutput(TALLIES, (key, count))
        self._progress.add(len(pairs))

    def finish_bundle(self) -> None:
        self._progress.flush()

    def teardown(self) -> None:
        self._progress.close()


def _surest_first(disagreements: Iterable[dict]) -> list[dict]:
    """Disagreements where both versions were surest first (the ones a person should look at); ties by path,
    so the gallery does not depend on how the runner split the work."""
    return sorted(disagreements, key=lambda r: (-min(r[f"{side}_confidence"] for side in names.SIDES), r["path"]))


class DisagreementGallery(beam.CombineFn):
    """Per-batch lists of disagreements → the report's :data:`~batch.comparison.GALLERY_SIZE` surest ones."""

    def create_accumulator(self) -> list[dict]:
        return []

    def add_input(self, accumulator: list[dict], disagreements: list[dict]) -> list[dict]:
        return _surest_first(accumulator + disagreements)[:GALLERY_SIZE]

    def merge_accumulators(self, accumulators: Iterable[list[dict]]) -> list[dict]:
        return _surest_first(record for accumulator in accumulators for record in accumulator)[:GALLERY_SIZE]

    def extract_output(self, accumulator: list[dict]) -> list[dict]:
        return accumulator


class CompareVersions(beam.PTransform):
    """The pipeline's start → ``fmnist compare``'s outputs under ``config.output``: the sharded disagreements
    and errors, and the scratch of the comparison and the report; gives the writes' results by output name.
    As in :class:`batch.job_steps.ClassifyFiles`, one element is one batch of files from reading to writing.
    """

    def __init__(
        self,
        config: CompareConfig,
        *,
        client_factory: Callable[..., PredictionClient] = PredictionClient,
        progress_address: tuple[str, int] | None = None,
    ):
        super().__init__()
        self._config = config
        self._client_factory = client_factory
        self._progress_address = progress_address

    def expand(self, start: beam.pvalue.PBegin) -> dict[str, beam.PCollection]:
        config = self._config
        inputs = start | "ReadInputs" >> ReadInputs(config.inputs, batch_size=config.batch_size, limits=config.limits)
        ask = _AskBothVersions(
            config.server,
            (config.baseline, config.candidate),
            max_request_bytes=config.max_request_bytes,
            client_factory=self._client_factory,
            failures=output.FailureNotes(config.output),
        )
        routed = (
            inputs.batches
            | "Compare" >> beam.ParDo(ask)
            | "Records"
            >> beam.ParDo(_PairsToRecords(self._progress_address)).with_outputs(ERRORS, TALLIES, GALLERY, main=RECORDS)
        )
        return {
            output.DISAGREEMENTS: routed[RECORDS]
            | "WriteDisagreements"
            >> records.Write.formatted_by(_PairsToRecords.JSON_LINES, config.output, output.DISAGREEMENTS),
            output.ERRORS: routed[ERRORS]
            | "WriteErrors" >> records.Write.formatted_by(_PairsToRecords.JSON_LINES, config.output, output.ERRORS),
            "gallery": routed[GALLERY] | "WriteGallery" >> WriteGallery(config.output, DisagreementGallery()),
            "tallies": (inputs.tallies, routed[TALLIES]) | "WriteTallies" >> WriteTallies(config.output),
        }
