"""``fmnist compare``: a shadow comparison of two served versions on the same images, before promoting one.

Every file the ``--input``s match is read and header-checked as ``fmnist
batch`` does (:mod:`batch.io`), then each batch goes to the server twice: once
naming the baseline, once the candidate, each as a version number or a
version label (TF Serving's ``version_label``: ``stable``, ``canary``; any
``V`` that is not a number is a label). Rejected batches are bisected
(:func:`batch.inference.classify`), so a bad file is an error, not a failed job.
The launcher writes ``comparison.json`` (agreement, flips from baseline to
candidate class, the versions that answered each side, accuracy of each
for labelled folders), sharded ``disagreements-*.jsonl`` and ``errors-*.jsonl``,
``report.html`` and ``_SUCCESS``, then applies the gate: exit 0 when the
candidate passes, 3 when it does not (one line saying why), 1 when the job
failed, 2 for usage errors, 130 on Ctrl-C. Inputs, output folders, Beam's
options, progress and errors behave as in ``fmnist batch`` (:mod:`batch.job`).

Usage::

    fmnist compare --input images/ --output cmp/ --server localhost:8500 --baseline stable --candidate canary
    fmnist compare --input images/ --output cmp/ --server localhost:8500 --baseline 1 --candidate 2 \\
        --max-disagreement 0.05 --min-accuracy-delta 0
"""

from __future__ import annotations

import argparse
import html
import io as bytes_io
import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import TextIO

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.runners.runner import PipelineResult
from PIL import Image as PILImage

from fmnist.batch import io, job, progress, report, summary
from fmnist.batch.inference import NAMESPACE, Predict, Scores, ServerSettings, classify_read, is_rejected_input
from fmnist.batch.outcomes import Classified, Failed, Image, Outcome
from fmnist.common import names
from fmnist.common.client import PredictionClient, ServingError

COMPARISON_FILE = "comparison.json"
GALLERY_SIZE = 24  # disagreeing files drawn in the report; all of them are in disagreements-*
FAILS_GATE = 3  # exit code: the job ran, and the candidate should not be promoted
_ERRORS = "errors"
_TALLIES = "tallies"
_GALLERY = "gallery"
# A run's results in --output (replaced only with --overwrite).
_RESULTS = ("disagreements-*", "errors-*", COMPARISON_FILE, report.REPORT_FILE, io.SUCCESS)
DISAGREEMENT_SCHEMA = pa.schema(
    [("path", pa.string()), ("label", pa.string())]
    + [
        (f"{side}_{column}", kind)
        for side in names.SIDES
        for column, kind in (("class", pa.string()), ("confidence", pa.float64()), ("version", pa.int64()))
    ]
)


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
    inputs: tuple[str, ...]
    output: str
    server: ServerSettings
    baseline: Version
    candidate: Version
    max_disagreement: float = 1.0  # the gate: at most this share of compared files may differ (1.0: no limit)
    min_accuracy_delta: float | None = None  # the gate, labelled folders only: candidate − baseline accuracy
    batch_size: int = 64
    limits: io.Limits = field(default_factory=io.Limits)
    max_request_bytes: int = 32 << 20  # half the client's 64 MiB message limit
    progress_seconds: float = 10.0
    overwrite: bool = False
    verbose: bool = False


@dataclass(frozen=True)
class Comparison:
    """What ``comparison.json`` holds (with the gate's verdict beside it)."""

    files: int
    compared: int  # files both versions answered
    errors: int  # files either version refused, or that could not be read
    agreement: float | None  # share of compared files given the same class; None when none was compared
    flips: list[dict]  # {"baseline": class, "candidate": class, "files": n}, most files first
    errors_by_reason: dict[str, int]
    requested: dict[str, str]  # side → the version or label asked for
    versions: dict[str, list[dict]]  # side → {"model_name", "model_version", "files"}: who actually answered
    accuracy: dict | None  # labelled folders only: {"files", "baseline", "candidate", "delta"}
    source: str
    elapsed_seconds: float


@dataclass(frozen=True)
class Gate:
    passed: bool
    reason: str  # why it failed, or what was checked


@dataclass(frozen=True)
class CompareResult:
    comparison: Comparison
    gate: Gate
    pipeline: PipelineResult  # for Beam metrics: pipeline.metrics().query()
    files: tuple[str, ...]  # every result file written, sorted


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return value


def parse_args(argv: list[str] | None, prog: str | None = None) -> tuple[CompareConfig, list[str]]:
    """(config, Beam pipeline arguments); an option that is neither this job's nor Beam's is an error."""
    parser = job.beam_command_parser(
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
    args, beam_args = job.parse_with_beam_options(parser, argv)
    config = CompareConfig(
        inputs=tuple(args.input),
        output=args.output,
        server=ServerSettings(args.server, args.model_name, timeout=args.timeout, retries=args.retries),
        baseline=args.baseline,
        candidate=args.candidate,
        max_disagreement=args.max_disagreement,
        min_accuracy_delta=args.min_accuracy_delta,
        batch_size=args.batch_size,
        limits=io.Limits(max_pixels=args.max_image_pixels),
        progress_seconds=args.progress_seconds,
        overwrite=args.overwrite,
        verbose=args.verbose,
    )
    return config, beam_args


def _predictor(client: PredictionClient, version: Version) -> Predict:
    def predict(encoded: list[bytes]) -> Scores:
        return Scores.of(client.predict_encoded(encoded, version=version.number, version_label=version.label))

    return predict


class _CompareBatch(beam.DoFn):
    """A read batch → one (baseline outcome, candidate outcome) pair per file: two requests, one per version.

    Each side goes through :func:`classify_read`, so retries and bisection are
    the batch job's; files that failed to read are the same :class:`Failed` on both sides.
    """

    def __init__(self, config: CompareConfig, client_factory: Callable[..., PredictionClient]):
        self._server = config.server
        self._versions = (config.baseline, config.candidate)
        self._max_request_bytes = config.max_request_bytes
        self._client_factory = client_factory
        self._client: PredictionClient | None = None

    def setup(self) -> None:
        self._client = self._server.connect(self._client_factory)
        self._predict = [_predictor(self._client, version) for version in self._versions]

    def process(self, batch: list[Image | Failed]) -> Iterator[list[tuple[Outcome, Outcome]]]:
        baseline, candidate = (
            classify_read(batch, predict, is_rejected_input, max_request_bytes=self._max_request_bytes)
            for predict in self._predict
        )
        # classify_read keeps the batch's order within read failures and images alike, so the sides line up
        yield list(zip(baseline, candidate, strict=True))

    def teardown(self) -> None:
        if self._client is not None:  # None: setup failed, and that error is the one to see
            self._client.close()
            self._client = None


def _error_record(pair: tuple[Outcome, Outcome]) -> dict:
    """One ``errors`` row for a file either side could not classify, saying which side when they differ."""
    failed = [(side, outcome) for side, outcome in zip(names.SIDES, pair, strict=False) if isinstance(outcome, Failed)]
    if len(failed) == 2 and failed[0][1] == failed[1][1]:  # failed before any request: unreadable, not an image, ...
        return io.error_record(failed[0][1])
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


class _Account(beam.DoFn):
    """Lists of pairs → lists of disagreement records (main), of error records (``errors``), the
    tallies (``tallies``) and the batch's gallery candidates (``gallery``); counts files for the progress display."""

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
        yield disagreements
        yield beam.pvalue.TaggedOutput(_ERRORS, errors)
        yield beam.pvalue.TaggedOutput(_GALLERY, _surest_first(disagreements)[:GALLERY_SIZE])
        for key, count in tallies.items():
            yield beam.pvalue.TaggedOutput(_TALLIES, (key, count))
        self._progress.add(len(pairs))

    def finish_bundle(self) -> None:
        self._progress.flush()

    def teardown(self) -> None:
        self._progress.close()


def _surest_first(records: Iterable[dict]) -> list[dict]:
    """Disagreements where both versions were surest first (the ones a person should look at); ties by path,
    so the gallery does not depend on how the runner split the work."""
    return sorted(records, key=lambda r: (-min(r[f"{side}_confidence"] for side in names.SIDES), r["path"]))


class _Gallery(beam.CombineFn):
    """Per-batch lists of disagreements → the report's :data:`GALLERY_SIZE` surest ones."""

    def create_accumulator(self) -> list[dict]:
        return []

    def add_input(self, accumulator: list[dict], records: list[dict]) -> list[dict]:
        return _surest_first(accumulator + records)[:GALLERY_SIZE]

    def merge_accumulators(self, accumulators: Iterable[list[dict]]) -> list[dict]:
        return _surest_first(record for accumulator in accumulators for record in accumulator)[:GALLERY_SIZE]

    def extract_output(self, accumulator: list[dict]) -> list[dict]:
        return accumulator


def build(
    pipeline: beam.Pipeline,
    config: CompareConfig,
    *,
    client_factory: Callable[..., PredictionClient] = PredictionClient,
    progress_address: tuple[str, int] | None = None,
) -> None:
    """Add the comparison's transforms to ``pipeline``; as in :func:`batch.job.build`, one element is one batch."""
    counted, batches = job.read_inputs(pipeline, config.inputs, config.batch_size, config.limits)
    routed = (
        batches
        | "Compare" >> beam.ParDo(_CompareBatch(config, client_factory))
        | "Account" >> beam.ParDo(_Account(progress_address)).with_outputs(_ERRORS, _TALLIES, _GALLERY, main="records")
    )
    routed.records | "WriteDisagreements" >> io.Write(config.output, "disagreements", "jsonl", DISAGREEMENT_SCHEMA)
    routed[_ERRORS] | "WriteErrors" >> io.Write(config.output, "errors", "jsonl", io.ERROR_SCHEMA)
    job.write_gallery(routed[_GALLERY] | "Gallery" >> beam.CombineGlobally(_Gallery()), config.output)
    job.write_tallies(counted, (routed[_TALLIES],), config.output)


def _probe_png() -> bytes:
    """A blank 28x28 PNG: one image each version must answer before the job starts."""
    buffer = bytes_io.BytesIO()
    PILImage.fromarray(np.zeros((names.IMAGE_SIZE, names.IMAGE_SIZE), np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def _check_versions(config: CompareConfig, client_factory: Callable[..., PredictionClient]) -> None:
    """Fail before launching when a side names a version or label the server does not serve.

    Without this an unknown label (INVALID_ARGUMENT, as TF Serving answers it)
    would read as "every file rejected" after bisecting every batch.
    """
    client = config.server.connect(client_factory)
    try:
        for side, version in zip(names.SIDES, (config.baseline, config.candidate), strict=False):
            try:
                _predictor(client, version)([_probe_png()])
            except ServingError as error:
                raise job.JobError(
                    f"the server at {config.server.target} cannot answer the {side}, {version} "
                    f"of {config.server.model_name!r}: {error.code.name}: {error.details}"
                ) from error
    finally:
        client.close()


def summarize(counts: Mapping[tuple, int], elapsed: float, config: CompareConfig) -> Comparison:
    """A :class:`Comparison` from the pipeline's tallies; raises if compared + errors ≠ inputs."""
    by_kind: dict[str, dict[tuple, int]] = {}
    for key, count in counts.items():
        by_kind.setdefault(key[0], {})[key[1:]] = count
    files = counts.get(summary.INPUT, 0)
    pairs = by_kind.get("pair", {})
    compared = sum(pairs.values())
    errors = dict(sorted((reason, n) for (reason,), n in by_kind.get("error", {}).items()))
    if compared + sum(errors.values()) != files:
        raise RuntimeError(f"lost files: {files} inputs but {compared} compared + {sum(errors.values())} errors")
    agreed = sum(n for (baseline, candidate), n in pairs.items() if baseline == candidate)
    flips = [
        {names.BASELINE: names.CLASS_NAMES[b], names.CANDIDATE: names.CLASS_NAMES[c], "files": n}
        for (b, c), n in sorted(pairs.items(), key=lambda item: (-item[1], item[0]))
        if b != c
    ]
    versions = {
        side: [
            {"model_name": name, "model_version": version, "files": n}
            for (s, name, version), n in sorted(by_kind.get("model", {}).items())
            if s == side
        ]
        for side in names.SIDES
    }
    return Comparison(
        files=files,
        compared=compared,
        errors=sum(errors.values()),
        agreement=round(agreed / compared, 6) if compared else None,
        flips=flips,
        errors_by_reason=errors,
        requested={names.BASELINE: str(config.baseline), names.CANDIDATE: str(config.candidate)},
        versions=versions,
        accuracy=_accuracy(by_kind.get("correct", {})),
        source=f"server {config.server.target}",
        elapsed_seconds=round(elapsed, 3),
    )


def _accuracy(correct: Mapping[tuple, int]) -> dict | None:
    """Each side's accuracy on the compared files in labelled folders, and candidate − baseline."""
    if not correct:
        return None
    files = sum(n for (side, _), n in correct.items() if side == names.BASELINE)
    right = {side: correct.get((side, True), 0) for side in names.SIDES}
    return {
        "files": files,
        **{side: round(right[side] / files, 6) for side in names.SIDES},
        "delta": round((right[names.CANDIDATE] - right[names.BASELINE]) / files, 6),
    }


def judge(comparison: Comparison, config: CompareConfig) -> Gate:
    """Whether the candidate may be promoted, under ``--max-disagreement`` and ``--min-accuracy-delta``."""
    if comparison.agreement is None:
        if config.max_disagreement < 1.0:
            return Gate(False, "no file was answered by both versions, so disagreement is unknown")
    elif 1.0 - comparison.agreement > config.max_disagreement:
        return Gate(
            False,
            f"disagreement {1.0 - comparison.agreement:.2%} is above --max-disagreement {config.max_disagreement:.2%}",
        )
    checked = [
        f"disagreement at most {config.max_disagreement:.2%}"
        if config.max_disagreement < 1.0
        else "no disagreement limit"
    ]
    if config.min_accuracy_delta is not None:
        if comparison.accuracy is None:
            checked.append("--min-accuracy-delta not checked: no labelled folders")
        elif comparison.accuracy["delta"] < config.min_accuracy_delta:
            return Gate(
                False,
                f"accuracy delta {comparison.accuracy['delta']:+.2%} (candidate − baseline) is below "
                f"--min-accuracy-delta {config.min_accuracy_delta:+.2%}",
            )
        else:
            checked.append(f"accuracy delta at least {config.min_accuracy_delta:+.2%}")
    return Gate(True, "; ".join(checked))


def to_json(comparison: Comparison, gate: Gate) -> str:
    return json.dumps({**asdict(comparison), "gate": asdict(gate)}, indent=2)


def _answered(comparison: Comparison, side: str) -> str:
    """Who answered a side, e.g. "fashion_mnist v2 (38 files)"."""
    answered = ", ".join(
        f"{m['model_name']} v{m['model_version']} ({m['files']:,} files)" for m in comparison.versions[side]
    )
    return f"{comparison.requested[side]} → {answered or 'no file'}"


def _agreement(comparison: Comparison) -> str:
    if comparison.agreement is None:
        return "none compared"
    agreed = comparison.compared - sum(f["files"] for f in comparison.flips)
    return f"{comparison.agreement:.2%} ({agreed:,} of {comparison.compared:,})"


def render_html(comparison: Comparison, gate: Gate, gallery: list[dict], read: Callable[[str], bytes]) -> str:
    """``report.html``: comparison.json's numbers, the flips, and the disagreeing files with both answers."""
    e = html.escape
    facts = [
        ("Files", f"{comparison.files:,}"),
        ("Compared", f"{comparison.compared:,}"),
        ("Errors", f"{comparison.errors:,}"),
        ("Agreement", _agreement(comparison)),
        ("Baseline", _answered(comparison, names.BASELINE)),
        ("Candidate", _answered(comparison, names.CANDIDATE)),
    ]
    if comparison.accuracy:
        accuracy = comparison.accuracy
        facts += [
            ("Baseline accuracy", f"{accuracy[names.BASELINE]:.2%}"),
            ("Candidate accuracy", f"{accuracy[names.CANDIDATE]:.2%}"),
            ("Accuracy delta", f"{accuracy['delta']:+.2%} on {accuracy['files']:,} labelled files"),
        ]
    facts += [
        ("Gate", ("passed: " if gate.passed else "failed: ") + gate.reason),
        ("Source", comparison.source),
        ("Elapsed", f"{comparison.elapsed_seconds:.1f} s"),
    ]
    parts = ["<h2>Comparison</h2>" + report.facts_table("comparison", facts)]
    if comparison.errors_by_reason:
        parts.append(report.errors_section(comparison.errors_by_reason))
    rows = "".join(
        f"<tr><td>{e(f[names.BASELINE])}</td><td>{e(f[names.CANDIDATE])}</td><td>{f['files']:,}</td></tr>"
        for f in comparison.flips
    )
    parts.append(
        "<h2>Flips</h2>"
        + (
            f"<table id='flips'><tr><th>baseline class</th><th>candidate class</th><th>files</th></tr>{rows}</table>"
            if rows
            else "<p>None: every compared file agreed.</p>"
        )
    )
    if gallery:
        shown = f"the {len(gallery)} where both were surest" if len(gallery) == GALLERY_SIZE else "all of them"
        parts.append(
            f"<h2>Disagreements</h2><p>{shown}; every one is in <code>disagreements-*</code>.</p>"
            "<div class='gallery' id='disagreements'>" + "".join(_card(r, read) for r in gallery) + "</div>"
        )
    return report.page("fmnist compare report", parts)


def _card(record: dict, read: Callable[[str], bytes]) -> str:
    answers = "<br>".join(
        f"{side} v{record[f'{side}_version']}: {html.escape(record[f'{side}_class'])} "
        f"{record[f'{side}_confidence']:.1%}"
        for side in names.SIDES
    )
    label = "" if record["label"] is None else f"<br>folder: {html.escape(record['label'])}"
    return report.card(record["path"], answers + label, read)


def render(comparison: Comparison, gate: Gate) -> str:
    """The comparison as a few lines for a terminal."""
    lines = [
        f"{comparison.files} files: {comparison.compared} compared, {comparison.errors} errors "
        f"in {comparison.elapsed_seconds:.1f}s via {comparison.source}",
        f"agreement {_agreement(comparison)}",
        *(f"{side}: {_answered(comparison, side)}" for side in names.SIDES),
    ]
    if comparison.flips:
        lines.append(
            "flips (baseline → candidate): "
            + ", ".join(f"{f[names.BASELINE]} → {f[names.CANDIDATE]} {f['files']}" for f in comparison.flips)
        )
    if comparison.errors_by_reason:
        lines.append("errors: " + ", ".join(f"{reason} {n}" for reason, n in comparison.errors_by_reason.items()))
    if comparison.accuracy:
        a = comparison.accuracy
        lines.append(
            f"accuracy on {a['files']} labelled files: baseline {a[names.BASELINE]:.2%}, "
            f"candidate {a[names.CANDIDATE]:.2%}, delta {a['delta']:+.2%}"
        )
    lines.append(f"gate: {'passed' if gate.passed else 'failed'}: {gate.reason}")
    return "\n".join(lines)


def run(
    argv: list[str] | None = None,
    test_pipeline: beam.Pipeline | None = None,
    *,
    prog: str | None = None,
    client_factory: Callable[..., PredictionClient] = PredictionClient,
    clock: Callable[[], float] = time.monotonic,
) -> CompareResult:
    """Run the comparison to completion and write its results; raises :class:`batch.job.JobError` when it cannot."""
    config, beam_args = parse_args(argv, prog)
    return run_config(config, beam_args, test_pipeline, client_factory=client_factory, clock=clock)


def run_config(
    config: CompareConfig,
    beam_args: list[str],
    test_pipeline: beam.Pipeline | None = None,
    *,
    client_factory: Callable[..., PredictionClient] = PredictionClient,
    clock: Callable[[], float] = time.monotonic,
    stream: TextIO | None = None,
) -> CompareResult:
    """:func:`run` for parsed arguments; progress goes to ``stream`` (standard error by default)."""
    stream = stream or sys.stderr
    results = job.check_output(config.output, config.overwrite, _RESULTS)
    job.wait_for_server(config.server, client_factory)
    _check_versions(config, client_factory)
    matched, total = job.describe_matches(config.inputs)
    job.clear_output(config.output, results)
    print(
        f"matched {matched}; comparing baseline {config.baseline} with candidate {config.candidate} "
        f"via server {config.server.target}",
        file=stream,
        flush=True,
    )
    started = clock()
    result = job.execute(
        test_pipeline or job.make_pipeline(beam_args),
        lambda pipeline, address: build(pipeline, config, client_factory=client_factory, progress_address=address),
        total,
        progress_seconds=config.progress_seconds,
        stream=stream,
    )
    comparison = summarize(job.read_counts(config.output), clock() - started, config)
    gate = judge(comparison, config)
    io.write_bytes(FileSystems.join(config.output, COMPARISON_FILE), to_json(comparison, gate).encode())
    page = render_html(comparison, gate, job.read_gallery(config.output), read=job.read_file)
    io.write_bytes(FileSystems.join(config.output, report.REPORT_FILE), page.encode())
    io.write_bytes(FileSystems.join(config.output, io.SUCCESS), b"")
    return CompareResult(comparison, gate, result, job.written(config.output, _RESULTS))


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """CLI entry (``fmnist compare``): 0 when the candidate passes the gate, 3 when it fails it, 1 when the
    job failed, 2 for usage; Ctrl-C raises KeyboardInterrupt (exit 130 in ``fmnist``'s entry point)."""
    prog = prog or "compare"
    config, beam_args = parse_args(argv, prog)  # usage errors (exit 2) before standard error is redirected

    def finish(result: CompareResult) -> int:
        print(render(result.comparison, result.gate))
        job.print_outputs(result.files)
        if result.gate.passed:
            return 0
        print(f"{prog}: the candidate fails the gate: {result.gate.reason}", file=sys.stderr)
        return FAILS_GATE

    return job.run_cli(prog, config.verbose, lambda stream: run_config(config, beam_args, stream=stream), finish)


if __name__ == "__main__":
    sys.exit(main())
