"""Launching a batch job: checking the server, making and running the pipeline, and the command line's boundary.

Without ``--runner`` the pipeline runs on Beam's FnApiRunner
(:func:`local_runner`), in this process or, with ``--direct_running_mode
multi_processing``, in worker processes. :func:`execute` runs it with a
progress display and turns a worker's serving error, which reaches the
launcher as text, back into a type from the note the worker left
(:class:`~batch.output.FailureNotes`, :func:`~batch.errors.stopped_by`).
:func:`run_cli` is the commands' boundary: the error's one line and its exit
code (:mod:`batch.errors`), 130 on Ctrl-C, and Beam's logs hidden unless
``--verbose``.

Usage::

    result = execute(make_pipeline(beam_args), lambda pipeline, address: pipeline | Job(...), total,
                     failures=FailureNotes(output), rerun="--resume", progress_seconds=10, stream=sys.stderr)
    sys.exit(run_cli("fmnist batch", verbose, lambda stream: run_config(..., stream=stream), finish))

Thread safety: :func:`run_cli` installs a SIGINT handler, so it runs in the main thread, once at a time.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import TextIO, TypeVar

import apache_beam as beam
import grpc
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.portability.api import beam_provision_api_pb2
from apache_beam.runners.portability.fn_api_runner import fn_runner
from apache_beam.runners.portability.portable_runner import JobServiceHandle
from apache_beam.runners.runner import PipelineResult, PipelineState

from fmnist.batch import progress
from fmnist.batch.errors import FAILED, INTERRUPTED, USAGE, JobError, stopped_by
from fmnist.batch.inference import ServerSettings
from fmnist.batch.output import FailureNotes, scratch_removed_on_failure
from fmnist.common import logs, names, quiet, usage
from fmnist.common.apis import get_model_metadata_pb2
from fmnist.common.client import PredictionClient
from fmnist.common.errors import ServingError

R = TypeVar("R")  # what a command's work returns to its finish (run_cli)
_INTERRUPT_GRACE = 5.0  # seconds a Ctrl-C'd job may take to wind down before the process leaves anyway
_GRACE = 3.0  # seconds a server may be unreachable, or say NOT_FOUND for the model, before it is believed


def wait_for_server(server: ServerSettings, client_factory: Callable[..., PredictionClient]) -> None:
    """Wait up to the server's timeout for it to serve ``server.model_name``; :class:`JobError` naming it otherwise.

    A server that is not there at all (its name does not resolve, it refuses
    the connection, it does not speak gRPC) or has no such model is believed
    after a few seconds (``_GRACE``), not after the whole timeout: long enough
    for one that is starting, or loading the model.
    """
    client = server.connect(client_factory)
    try:
        client.wait_until_available(timeout=server.timeout, grace=min(_GRACE, server.timeout))
    except ServingError as error:
        if error.code == grpc.StatusCode.NOT_FOUND:
            raise JobError(  # the same NOT_FOUND for a name the server does not know and a model it has no version of
                f"the server at {server.target} has no version of model {server.model_name!r} "
                f"(NOT_FOUND: {error.details}): nothing is pushed under its model base path yet, so push a version "
                f"with fmnist train --models-dir DIR, for a server of DIR/{server.model_name} (fmnist demo pushes "
                "to runs/demo/models/); or it serves the model under another name: check --model-name"
            ) from error
        if error.code == grpc.StatusCode.UNAVAILABLE:
            raise JobError(f"cannot reach the server at {server.target}: {error.details}; check --server") from error
        raise JobError(f"the server at {server.target} did not answer: {error}") from error
    except Exception as error:  # whatever a custom factory's client raises
        raise JobError(f"the server at {server.target} did not answer: {error}") from error
    finally:
        client.close()


def served_outputs(server: ServerSettings, client_factory: Callable[..., PredictionClient]) -> tuple[str, ...]:
    """The outputs of ``predict_images`` the job asks the server for: the probabilities, and the trust outputs
    (``ood_scores``, ``unfamiliar``: docs/trust.md) where the signature it serves has them, as its metadata says.

    Asking for an output the signature lacks is INVALID_ARGUMENT, so a version
    exported without them (an older one, another model) is asked for the
    probabilities alone, and its records carry null for both.
    """
    client = server.connect(client_factory)
    try:
        response = client.metadata()
    except ServingError as error:
        raise JobError(f"the server at {server.target} did not answer for its metadata: {error}") from error
    finally:
        client.close()
    signatures = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signatures)
    if names.PREDICT_IMAGES not in signatures.signature_def:
        return server.outputs  # its requests will say what is wrong, as they would have
    served = signatures.signature_def[names.PREDICT_IMAGES].outputs
    return (names.OUTPUT_PROBABILITIES, *(alias for alias in names.TRUST_OUTPUTS if alias in served))


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
    """The pipeline Beam's arguments describe; on :func:`local_runner` when they name no runner."""
    options = PipelineOptions(beam_args)
    if options.view_as(StandardOptions).runner is None:
        return beam.Pipeline(runner=local_runner(options), options=options)
    return beam.Pipeline(options=options)


def execute(
    pipeline: beam.Pipeline,
    build_into: Callable[[beam.Pipeline, tuple[str, int]], object],
    total: int | None,
    *,
    failures: FailureNotes,
    rerun: str,
    progress_seconds: float,
    stream: TextIO,
) -> PipelineResult:
    """Build the job with ``build_into(pipeline, progress_address)`` and run it to the end, showing its progress.

    A worker that stopped the job on a serving error noted it in
    ``failures``: the job's error is then :func:`~batch.errors.stopped_by` of
    that note (a lost server's line says to run again with ``rerun``), whatever
    Beam made of the worker's exception. Notes of a failure the runner
    retried past are removed with the others. A run that fails leaves no
    scratch in the output folder (:func:`~batch.output.scratch_removed_on_failure`).
    """
    with (
        progress.Progress(total, every=progress_seconds, stream=stream) as shown,
        scratch_removed_on_failure(failures.output),
    ):
        build_into(pipeline, shown.address)
        try:
            result = pipeline.run()
            state = result.wait_until_finish()
        except Exception as error:
            noted = failures.taken()
            if noted is None:
                raise
            raise stopped_by(noted, rerun) from error
    noted = failures.taken()
    if state != PipelineState.DONE:
        raise JobError(f"the pipeline ended {state}") if noted is None else stopped_by(noted, rerun)
    return result


def run_cli(prog: str, verbose: bool, work: Callable[[TextIO], R], finish: Callable[[R], int]) -> int:
    """A Beam command's CLI boundary: ``work(progress_stream)``, then ``finish(result)`` gives the exit code.

    A :class:`~batch.errors.JobError` is one line on stderr and its
    ``exit_code``; any other failure one line (its last: Beam puts a worker's
    traceback first) and 1. Ctrl-C ends the process with one line and 130,
    even where a Beam worker thread caught the KeyboardInterrupt and carried
    on, or left threads that would keep the interpreter from exiting: if the
    job has not wound down ``_INTERRUPT_GRACE`` seconds later, or at a second
    Ctrl-C, it leaves anyway (an interrupted run's scratch goes with the next
    run). Without ``verbose`` Beam's logs and whatever worker processes write
    to standard error are hidden.
    """
    logs.configure(logging.WARNING)
    logging.getLogger("fmnist.batch").setLevel(logging.INFO)
    interrupted = threading.Event()
    stderr = os.dup(2)  # the terminal, even while descriptor 2 is hushed
    leaving = threading.Lock()

    def leave() -> None:
        if leaving.acquire(blocking=False):  # one line, whoever gets here first
            os.write(stderr, f"\n{prog}: interrupted\n".encode())
            os._exit(INTERRUPTED)

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
    except BaseException as error:  # the CLI boundary: one clear line, not a worker's traceback
        if interrupted.is_set():
            leave()
        if not isinstance(error, Exception):
            raise
        if isinstance(error, JobError) and error.exit_code == USAGE:  # found once the command line was read
            return usage.refuse(prog, str(error))
        print(f"{prog}: error: {_last_line(error)}", file=sys.stderr)
        return error.exit_code if isinstance(error, JobError) else FAILED
    finally:
        signal.signal(signal.SIGINT, previous)
    if interrupted.is_set():  # Beam swallowed the interrupt and finished: the user still asked to stop
        leave()
    os.close(stderr)
    return finish(result)


def _last_line(error: Exception) -> str:
    """The line of ``error`` to show: its message's last line, where an untyped worker failure says what went
    wrong (Beam puts the worker's traceback first); a :class:`JobError` is one line already."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def print_outputs(files: Sequence[str]) -> None:
    """The closing listing: every result file a run wrote, one a line."""
    print("outputs:\n" + "\n".join(f"  {path}" for path in files))
