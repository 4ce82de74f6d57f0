"""batch.options: both commands' options, Beam's beside them, and what is refused before any work (exit 2)."""

from __future__ import annotations

import pytest

from fmnist.batch import options


def test_unknown_arguments_are_left_for_beam_and_bad_ones_are_refused(capsys):
    beam = ["--runner", "FlinkRunner", "--flink_master=x:8081"]
    config, beam_args = options.parse_job_args(
        ["--input", "a", "--output", "o", "--server", "h:1", "--format", "csv", *beam]
    )
    assert (config.inputs, config.server.target, config.file_format) == (("a",), "h:1", "csv")
    assert beam_args == beam
    for bad in (["--top-k", "11"], ["--batch-size", "0"], ["--in-process", "/nonexistent"]):
        with pytest.raises(SystemExit):
            options.parse_job_args(
                ["--input", "a", "--output", "o", *(bad if bad[0] == "--in-process" else ["--server", "h:1", *bad])]
            )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--baseline", "1"], "the following arguments are required: --candidate"),
        (
            ["--baseline", "1", "--candidate", "2", "--max-disagreement", "2"],
            "--max-disagreement: must be between 0 and 1",
        ),
        (["--baseline", "1", "--candidate", "2", "--top-k", "3"], "unknown option --top-k"),
    ],
)
def test_usage_errors_name_the_option(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        options.parse_compare_args(["--input", "i", "--output", "o", "--server", "h:1", *args], "fmnist compare")
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
