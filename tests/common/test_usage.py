"""Usage errors of every ``fmnist`` command, run as a person runs them: one line naming the problem (a mistyped
option with its likely meaning, even beside a missing required one), where the help is, and exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _fmnist(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fmnist.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(
    "command, args, typo, meant",
    [
        ("batch", ["--output", "o", "--server", "h:1"], "--inptu", "--input"),  # --input, required, is missing too
        ("compare", ["--input", "i", "--output", "o", "--server", "h:1"], "--baselin", "--baseline"),
        ("train", [], "--epohcs", "--epochs"),
        ("images", [], "--cuont", "--count"),
        ("serve", [], "--prot", "--port"),
        ("classify", ["x.png"], "--topk", "--top-k"),
        ("label", ["--label", "stable"], "--versoin", "--version"),
        ("demo", [], "--workdri", "--workdir"),
    ],
)
def test_a_mistyped_option_is_named_with_its_likely_meaning(command, args, typo, meant):
    result = _fmnist(command, *args, typo, "3")
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"fmnist {command}: error: unknown option {typo} (did you mean {meant}?)",
        f"see 'fmnist {command} --help'",
    ]


def test_other_usage_errors_are_one_line_too():
    result = _fmnist("classify", "x.png", "--top-k", "11")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "fmnist classify: error: argument --top-k: must be between 1 and 10",
        "see 'fmnist classify --help'",
    ]


def test_a_mistyped_command_is_named_with_its_likely_meaning():
    result = _fmnist("bacth", "--input", "x")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "fmnist: error: unknown command 'bacth' (did you mean batch?)",
        "see 'fmnist --help'",
    ]
