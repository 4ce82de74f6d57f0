"""batch.errors: the job's failures as types, each with its exit code; a worker's serving error made the job's."""

from __future__ import annotations

import grpc
import pytest

from fmnist.batch.errors import JobError, OutputInUse, ServerLost, ServingFailed, stopped_by
from fmnist.common import errors as serving_errors


def test_usage_errors_exit_2_and_failures_1():
    assert (OutputInUse.exit_code, JobError.exit_code, ServingFailed.exit_code, ServerLost.exit_code) == (2, 1, 1, 1)


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.CANCELLED,
    ],
)
def test_a_server_gone_is_a_lost_server_whose_line_says_how_to_run_again(code):
    noted = serving_errors.from_code(code, "failed to connect", target="127.0.0.1:5")
    lost = stopped_by(noted, "--resume")
    assert type(lost) is ServerLost and lost.error is noted and lost.rerun == "--resume"
    assert str(lost) == (
        f"lost the server: 127.0.0.1:5: {code.name}: failed to connect; "
        "check that it is running and reachable, then run the job again with --resume"
    )


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.UNIMPLEMENTED,
    ],
)
def test_other_serving_errors_stop_the_job_with_their_status_alone(code):
    noted = serving_errors.from_code(code, "no such model", target="127.0.0.1:5")
    failed = stopped_by(noted, "--resume")
    assert type(failed) is ServingFailed and failed.error is noted
    assert str(failed) == f"127.0.0.1:5: {code.name}: no such model"
