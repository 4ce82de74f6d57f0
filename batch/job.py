"""``fmnist batch``: an Apache Beam job that classifies folders of images, one record per file.

Files matched by ``--input`` (folders recursively, globs where ``**/`` also
matches no folder, any Beam file system) are read and header-checked on
workers, sent in fixed-size batches to the served model (``predict_images``:
encoded bytes, decoded in the graph), several batches at once, or run
in-process with ``--in-process MODEL_DIR`` (:mod:`batch.job_steps`).
Records go to sharded ``predictions-*`` files (JSONL, CSV, Parquet, or
TFRecords of TF Serving ``PredictionLog``s), failures to ``errors-*``, and
the launcher writes ``summary.json``, ``report.html`` (:mod:`batch.report`),
``confusion_matrix.png`` for labelled folders, and ``_SUCCESS``. Besides its
own options (:mod:`batch.options`) the job takes Beam's pipeline options (any
other is refused), so the same job runs on Flink, Spark or Dataflow. An
``--output`` holding an earlier run's results is refused unless
``--overwrite``; an interrupted run's scratch files go with the next run.
Each classified batch's outcomes are saved as the job goes (``_resume/`` in
``--output``, removed when the run finishes), so ``--resume`` finishes an
interrupted run without classifying those files again (:mod:`batch.output`).

Usage::

    fmnist batch --input images/ --output out/ --server localhost:8500 [--format parquet|tfrecord]
    fmnist batch --input images/ --output out/ --server localhost:8500 --resume   # after an interrupted run
    fmnist batch --input 'gs://b/imgs/*.png' --output gs://b/out --server 10.0.0.2:8500 \\
        --runner DataflowRunner --project p --region r --temp_location gs://b/tmp
    result = run(["--input", "images/", "--output", "out/", "--in-process", "models/fashion_mnist"])
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TextIO

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import ModelHandler
from apache_beam.runners.runner import PipelineResult

from fmnist.batch import output, readers, report, summary
from fmnist.batch.job_steps import ClassifyFiles
from fmnist.batch.launcher import execute, make_pipeline, print_outputs, run_cli, served_outputs, wait_for_server
from fmnist.batch.options import JobConfig, parse_job_args
from fmnist.batch.summary import counted
from fmnist.common.client import PredictionClient

RERUN = "--resume"  # what finishes this job's run in the same --output once its server is back


@dataclass(frozen=True)
class JobResult:
    """What a finished run of ``fmnist batch`` gives: its summary, Beam's result, and its files."""

    summary: summary.Summary | None  # None: --resume found the run in output finished, and ran nothing
    pipeline: PipelineResult | None  # for Beam metrics: pipeline.metrics().query()
    files: tuple[str, ...]  # every result file written, sorted


def run(
    argv: list[str] | None = None,
    test_pipeline: beam.Pipeline | None = None,
    *,
    prog: str | None = None,
    client_factory: Callable[..., PredictionClient] = PredictionClient,
    handler: ModelHandler | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> JobResult:
    """Run the job to completion and write its summary; raises :class:`~batch.errors.JobError` when it cannot.

    ``test_pipeline`` (a ``TestPipeline``, say) replaces the pipeline built
    from the Beam arguments in ``argv``, as in Beam's own examples.
    ``client_factory`` makes the client the launcher checks the server with;
    ``handler`` replaces the model handler the workers classify with.
    """
    config, beam_args = parse_job_args(argv, prog)
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
    if config.resume and output.is_finished(config.output):
        print(f"nothing to resume: --output {config.output} holds a finished run", file=stream, flush=True)
        return JobResult(None, None, output.result_files(config.output, output.BATCH_RESULTS))
    results, resuming = output.check_job_output(config.output, config.overwrite, config.resume)
    output.check_writable(config.output)
    matched = readers.match_inputs(config.inputs)  # each --input gives a file: usage errors before any work
    source, config = _check_source(config, client_factory)
    files, logs, resumption = _plan(config, matched, resuming, stream)
    del matched  # 100,000 paths are about 15 MiB, not to be held while the pipeline runs
    if config.overwrite:
        output.remove_checkpoints(config.output)
    output.clear_output(config.output, results)
    print(f"matched {readers.describe(files, logs)}; classifying via {source}", file=stream, flush=True)
    total = None if logs else files  # with logs, their images are counted as read
    done = resumption.done if resumption else 0
    if resumption:
        of = f" of {counted(files, 'file')}" if total is not None else " of the files and logged images"
        print(f"resuming: {done:,}{of} already classified", file=stream, flush=True)
        total = total and total - done
    started = clock()
    result = execute(
        test_pipeline or make_pipeline(beam_args),
        lambda pipeline, address: (
            pipeline
            | "ClassifyFiles" >> ClassifyFiles(config, handler=handler, progress_address=address, resumption=resumption)
        ),
        total,
        failures=output.FailureNotes(config.output),
        rerun=RERUN,
        progress_seconds=config.progress_seconds,
        stream=stream,
    )
    result_summary = summary.summarize(output.read_counts(config.output), clock() - started, source, resumed=done)
    output.write_bytes(FileSystems.join(config.output, summary.SUMMARY_FILE), summary.to_json(result_summary).encode())
    matrix = summary.confusion_png(result_summary) if result_summary.evaluation else None
    if matrix:
        output.write_bytes(FileSystems.join(config.output, summary.CONFUSION_FILE), matrix)
    page = report.render(result_summary, output.read_gallery(config.output), read=output.read_file, matrix_png=matrix)
    output.write_bytes(FileSystems.join(config.output, report.REPORT_FILE), page.encode())
    output.write_bytes(FileSystems.join(config.output, output.SUCCESS), b"")
    output.remove_checkpoints(config.output)  # the run is whole: nothing left to resume
    return JobResult(result_summary, result, output.result_files(config.output, output.BATCH_RESULTS))


def _check_source(config: JobConfig, client_factory: Callable[..., PredictionClient]) -> tuple[str, JobConfig]:
    """Fail before launching when the model cannot answer; returns how the summary names the source, and
    ``config`` asking the server for the outputs its signature has (:func:`~batch.launcher.served_outputs`)."""
    if config.in_process:  # the signature in the worker gives every output it has
        return f"in-process {config.in_process.path}", config
    wait_for_server(config.server, client_factory)
    server = replace(config.server, outputs=served_outputs(config.server, client_factory))
    return f"server {config.server.target}", replace(config, server=server)


def _plan(
    config: JobConfig, matched: tuple[set[str], set[str]], resuming: bool, stream: TextIO
) -> tuple[int, int, output.Resumption | None]:
    """(files matched, request logs matched, the ``--resume`` plan) of what :func:`readers.match_inputs` found."""
    files, logs = matched
    plan = output.plan_resumption(config.output, files, logs, stream) if resuming else None
    return len(files), len(logs), plan


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """CLI entry (``fmnist batch``): 0 when every file is accounted for, 1 when the job failed, 2 for usage.

    Ctrl-C ends it with 130, even where a Beam worker thread caught it and
    failed the job with it. Beam's own logs, worker tracebacks and whatever
    worker processes write to standard error show with ``--verbose`` only;
    otherwise standard error has the job's progress and, on failure, one line
    saying why (:func:`batch.launcher.run_cli`).
    """
    prog = prog or "batch"
    config, beam_args = parse_job_args(argv, prog)  # usage errors (exit 2) before standard error is redirected

    def finish(result: JobResult) -> int:
        if result.summary is not None:  # None: --resume found nothing to do
            print(summary.render(result.summary))
        print_outputs(result.files)
        return 0

    return run_cli(prog, config.verbose, lambda stream: run_config(config, beam_args, stream=stream), finish)


if __name__ == "__main__":
    sys.exit(main())
