"""batch.output: the output folder's scratch, here the failure notes that carry a worker's serving error as a type."""

from __future__ import annotations

import grpc

from fmnist.batch import output
from fmnist.common import errors as serving_errors


def test_a_noted_serving_error_is_taken_back_as_its_type_once(tmp_path):
    notes = output.FailureNotes(str(tmp_path))
    assert notes.taken() is None
    notes.note(serving_errors.Unavailable("failed to connect", target="127.0.0.1:5"))  # as the client raises it
    taken = notes.taken()
    assert type(taken) is serving_errors.Unavailable
    assert (taken.code, taken.details, taken.target) == (
        grpc.StatusCode.UNAVAILABLE,
        "failed to connect",
        "127.0.0.1:5",
    )
    assert notes.taken() is None and not list(tmp_path.iterdir())


def test_of_several_workers_notes_one_is_taken_and_none_is_left(tmp_path):
    notes = output.FailureNotes(str(tmp_path))
    notes.note(serving_errors.Unavailable("failed to connect", target="a:1"))
    notes.note(serving_errors.NotFound("no model m", target="b:1"))
    taken = notes.taken()
    assert (type(taken), taken.target) in {(serving_errors.Unavailable, "a:1"), (serving_errors.NotFound, "b:1")}
    assert not list(tmp_path.iterdir())


def test_an_interrupted_runs_notes_go_with_the_next_run_and_other_files_stay(tmp_path):
    output.FailureNotes(str(tmp_path)).note(serving_errors.Unavailable("gone", target="h:1"))
    (tmp_path / "notes.txt").write_text("mine")
    output.clear_output(str(tmp_path), [])
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
