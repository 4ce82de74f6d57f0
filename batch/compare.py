"""``fmnist compare``: a shadow comparison of two served versions on the same images, before promoting one.

Every file the ``--input``s match is read and header-checked as ``fmnist
batch`` does (:mod:`batch.readers`), then each batch goes to the server twice: once
naming the baseline, once the candidate, each as a version number or a
version label (TF Serving's ``version_label``: ``stable``, ``canary``; any
``V`` that is not a number is a label). Rejected batches are bisected
(:func:`batch.inference.predict_splitting_rejected`), so a bad file is an error, not a failed job
(:mod:`batch.compare_steps`). The launcher writes ``comparison.json`` (agreement,
flips from baseline to candidate class, the versions that answered each side,
accuracy of each for labelled folders; :mod:`batch.comparison`), sharded
``disagreements-*.jsonl`` and ``errors-*.jsonl``, ``report.html`` and
``_SUCCESS``, then applies the gate: exit 0 when the candidate passes, 3 when
it does not (one line saying why), 1 when the job failed, 2 for usage errors,
130 on Ctrl-C. Inputs, output folders, Beam's options, progress and errors
behave as in ``fmnist batch`` (:mod:`batch.job`).

Usage::

    fmnist compare --input images/ --output cmp/ --server localhost:8500 --baseline stable --candidate canary
    fmnist compare --input images/ --output cmp/ --server localhost:8500 --baseline 1 --candidate 2 \\
        --max-disagreement 0.05 --min-accuracy-delta 0
"""

from __future__ import annotations

import io
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.runners.runner import PipelineResult
from PIL import Image as PILImage

from fmnist.batch import output, readers, report
from fmnist.batch.compare_steps import CompareVersions, predictor
from fmnist.batch.comparison import Comparison, Gate, judge, render, render_html, summarize, to_json
from fmnist.batch.errors import JobError
from fmnist.batch.launcher import execute, make_pipeline, print_outputs, run_cli, wait_for_server
from fmnist.batch.options import CompareConfig, parse_compare_args
from fmnist.batch.output import COMPARISON_FILE
from fmnist.common import names
from fmnist.common.client import PredictionClient
from fmnist.common.errors import ServingError

FAILS_GATE = 3  # exit code: the job ran, and the candidate should not be promoted
RERUN = "--overwrite"  # what runs this job again in the same --output once its server is back


@dataclass(frozen=True)
class CompareResult:
    """What a finished run of ``fmnist compare`` gives: the comparison, the gate's verdict, Beam's result, and
    its files."""

    comparison: Comparison
    gate: Gate
    pipeline: PipelineResult  # for Beam metrics: pipeline.metrics().query()
    files: tuple[str, ...]  # every result file written, sorted


def _probe_png() -> bytes:
    """A blank 28x28 PNG: one image each version must answer before the job starts."""
    buffer = io.BytesIO()
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
                predictor(client, version)([_probe_png()])
            except ServingError as error:
                raise JobError(
                    f"the server at {config.server.target} cannot answer the {side}, {version} "
                    f"of {config.server.model_name!r}: {error.code.name}: {error.details}"
                ) from error
    finally:
        client.close()


def run(
    argv: list[str] | None = None,
    test_pipeline: beam.Pipeline | None = None,
    *,
    prog: str | None = None,
    client_factory: Callable[..., PredictionClient] = PredictionClient,
    clock: Callable[[], float] = time.monotonic,
) -> CompareResult:
    """Run the comparison to completion and write its results; raises :class:`~batch.errors.JobError` when it
    cannot."""
    config, beam_args = parse_compare_args(argv, prog)
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
    results = output.check_output(config.output, config.overwrite, output.COMPARE_RESULTS)
    output.check_writable(config.output)
    matched, total = readers.describe_matches(config.inputs)  # each --input gives a file: usage errors first
    wait_for_server(config.server, client_factory)
    _check_versions(config, client_factory)
    output.clear_output(config.output, results)
    print(
        f"matched {matched}; comparing baseline {config.baseline} with candidate {config.candidate} "
        f"via server {config.server.target}",
        file=stream,
        flush=True,
    )
    started = clock()
    result = execute(
        test_pipeline or make_pipeline(beam_args),
        lambda pipeline, address: (
            pipeline
            | "CompareVersions" >> CompareVersions(config, client_factory=client_factory, progress_address=address)
        ),
        total,
        failures=output.FailureNotes(config.output),
        rerun=RERUN,
        progress_seconds=config.progress_seconds,
        stream=stream,
    )
    comparison = summarize(output.read_counts(config.output), clock() - started, config)
    gate = judge(comparison, config)
    output.write_bytes(FileSystems.join(config.output, COMPARISON_FILE), to_json(comparison, gate).encode())
    page = render_html(comparison, gate, output.read_gallery(config.output), read=output.read_file)
    output.write_bytes(FileSystems.join(config.output, report.REPORT_FILE), page.encode())
    output.write_bytes(FileSystems.join(config.output, output.SUCCESS), b"")
    return CompareResult(comparison, gate, result, output.result_files(config.output, output.COMPARE_RESULTS))


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """CLI entry (``fmnist compare``): 0 when the candidate passes the gate, 3 when it fails it, 1 when the
    job failed, 2 for usage, 130 on Ctrl-C (:func:`batch.launcher.run_cli`)."""
    prog = prog or "compare"
    config, beam_args = parse_compare_args(argv, prog)  # usage errors (exit 2) before standard error is redirected

    def finish(result: CompareResult) -> int:
        print(render(result.comparison, result.gate))
        print_outputs(result.files)
        if result.gate.passed:
            return 0
        print(f"{prog}: the candidate fails the gate: {result.gate.reason}", file=sys.stderr)
        return FAILS_GATE

    return run_cli(prog, config.verbose, lambda stream: run_config(config, beam_args, stream=stream), finish)


if __name__ == "__main__":
    sys.exit(main())
