"""batch.launcher.run_cli: a failure is one line on standard error and the exit code of its type."""

from __future__ import annotations

import pytest

from fmnist.batch import launcher
from fmnist.batch.errors import JobError, OutputInUse, stopped_by
from fmnist.common import errors as serving_errors


def _failing(error: Exception):
    def work(stream):
        raise error

    return work


@pytest.mark.parametrize(
    "error, code",
    [
        (OutputInUse("--output o holds another run's results"), 2),
        (JobError("no file matches images/"), 1),
        (stopped_by(serving_errors.Unavailable("failed to connect", target="h:1"), "--resume"), 1),
        (stopped_by(serving_errors.NotFound("no model m", target="h:1"), "--resume"), 1),
    ],
)
def test_a_job_error_is_its_message_on_one_line_and_its_types_exit_code(error, code, capsys):
    assert launcher.run_cli("fmnist batch", False, _failing(error), lambda result: 0) == code
    see = "see 'fmnist batch --help'\n" if code == 2 else ""  # a usage error says where the help is, as argparse's
    assert capsys.readouterr().err == f"fmnist batch: error: {error}\n{see}"


def test_an_untyped_failure_is_the_last_line_of_its_message_and_exit_1(capsys):
    beam_error = RuntimeError(
        "Traceback (most recent call last):\n  File ...\nValueError: boom [while running 'Read']\n"
    )
    assert launcher.run_cli("fmnist batch", False, _failing(beam_error), lambda result: 0) == 1
    assert capsys.readouterr().err == "fmnist batch: error: ValueError: boom [while running 'Read']\n"


def test_a_run_that_worked_exits_with_what_its_finish_says(capsys):
    assert launcher.run_cli("fmnist compare", False, lambda stream: "done", lambda result: len(result)) == 4
    assert capsys.readouterr().err == ""
