"""The batch jobs' failures as types, each naming the exit code ``fmnist batch`` and ``fmnist compare`` leave with.

The launcher (:func:`batch.launcher.run_cli`) prints ``<prog>: error: <the
error>`` on one line and exits with the error's ``exit_code``; nothing looks
into a message to pick either. A worker's serving error reaches the launcher
as a type too: Beam hands the launcher a worker's failure as text (the
worker's traceback, or the exception re-made with the step's name added), so
the worker notes the error's status in the output folder
(:class:`batch.output.FailureNotes`) before raising it, and the launcher
raises :func:`stopped_by` of that note.

Usage::

    raise JobError(f"no file matches {pattern}")
    raise stopped_by(errors.from_code(grpc.StatusCode.UNAVAILABLE, "connection refused", target="h:8500"), "--resume")
    except JobError as error: print(f"{prog}: error: {error}"); return error.exit_code

Thread safety: the classes are immutable; instances are raised, not shared.
"""

from __future__ import annotations

from typing import ClassVar

from fmnist.common import errors, usage

USAGE = usage.USAGE  # exit code: the command line, or what it names, cannot be used as given; checked before any work
FAILED = 1  # exit code: the job could not run, or did not finish
INTERRUPTED = 130  # exit code: Ctrl-C (128 + SIGINT, as a shell reports it)

# The server, not the job's input, is the problem: it went away, was too slow, shed load, or stopped while answering.
_SERVER_GONE = (errors.Unavailable, errors.DeadlineExceeded, errors.ResourceExhausted, errors.Cancelled)


class JobError(Exception):
    """The job could not run or did not finish; the message says why, naming the server or path (exit 1)."""

    exit_code: ClassVar[int] = FAILED


class OutputInUse(JobError):
    """``--output`` holds an earlier or an interrupted run's results, and the options do not let the job
    replace or finish them: a usage error (exit 2), raised before any work."""

    exit_code = USAGE


class OutputUnwritable(JobError):
    """``--output`` cannot be written: a file, a link to nothing, or a folder the job may not write in, along
    its path; a usage error (exit 2), raised before any work."""

    exit_code = USAGE


class NoInput(JobError):
    """An ``--input`` gives no file: no such path, a folder holding none, or a pattern matching none; a usage
    error (exit 2), raised before any work."""

    exit_code = USAGE


class ServingFailed(JobError):
    """A worker's request failed for good on something other than a file: the model unknown, the call
    refused (exit 1). ``error`` is the :mod:`fmnist.common.errors` type of the status the worker noted."""

    def __init__(self, error: errors.ServingError, message: str | None = None):
        self.error = error
        super().__init__(message or str(error))


class ServerLost(ServingFailed):
    """The server stopped answering mid-job (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED or CANCELLED
    after the retries; exit 1); the message says to run the job again with ``rerun``, the option that lets
    it reuse its ``--output``."""

    def __init__(self, error: errors.ServingError, rerun: str):
        self.rerun = rerun
        super().__init__(
            error,
            f"lost the server: {error}; check that it is running and reachable, then run the job again with {rerun}",
        )


def stopped_by(error: errors.ServingError, rerun: str) -> ServingFailed:
    """The job's error for a serving error a worker stopped it on: :class:`ServerLost` when the server went away."""
    return ServerLost(error, rerun) if isinstance(error, _SERVER_GONE) else ServingFailed(error)
