"""``fmnist label``: the real command in a subprocess, against a real server reading a model config file."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import encode_png
from google.protobuf import text_format

from fmnist.common import names
from fmnist.common.apis import model_server_config_pb2
from fmnist.common.client import PredictionClient
from fmnist.serving.server import ServerConfig, start


@pytest.fixture
def served(_pushed_once, tmp_path):
    """A server of versions 1 and 2 of the model (the same weights), configured by a file; (target, file)."""
    base = tmp_path / "models" / names.MODEL_NAME
    for version in ("1", "2"):
        shutil.copytree(_pushed_once / names.MODEL_NAME / "1", base / version)
    config_file = tmp_path / "models.config"
    config_file.write_text(
        f'model_config_list {{ config {{ name: "{names.MODEL_NAME}" base_path: "{base}" '
        'model_platform: "tensorflow" model_version_policy { all {} } } }\n'
    )
    server = start(ServerConfig(port=0, model_config_file=str(config_file)))
    yield f"127.0.0.1:{server.port}", config_file
    server.stop()


def _label(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fmnist.cli", "label", *args], capture_output=True, text=True, timeout=120
    )


def _labels(config_file: Path) -> dict[str, int]:
    config = text_format.Parse(config_file.read_text(), model_server_config_pb2.ModelServerConfig())
    return dict(config.model_config_list.config[0].version_labels)


def _answered_by(target: str, label: str, dataset) -> int:
    with PredictionClient(target) as client:
        return client.predict_encoded([encode_png(dataset.test.images[0])], version_label=label).version


def test_a_label_is_set_in_the_file_and_the_server_and_moves_to_another_version(served, dataset):
    target, config_file = served
    result = _label("--model_config_file", str(config_file), "--label", "canary", "--version", "2", "--server", target)
    assert result.returncode == 0, result.stderr
    assert f"canary → version 2 of {names.MODEL_NAME}" in result.stdout and "reloaded" in result.stdout
    assert _labels(config_file) == {"canary": 2}
    assert _answered_by(target, "canary", dataset) == 2

    assert (
        _label(
            "--model_config_file", str(config_file), "--label", "canary", "--version", "1", "--server", target
        ).returncode
        == 0
    )
    assert _labels(config_file) == {"canary": 1} and _answered_by(target, "canary", dataset) == 1


def test_a_version_that_does_not_serve_is_refused_and_the_file_is_left_as_it_was(served, dataset):
    target, config_file = served
    before = config_file.read_text()
    result = _label("--model_config_file", str(config_file), "--label", "stable", "--version", "3", "--server", target)
    assert result.returncode == 1
    assert f"version 3 of {names.MODEL_NAME} is not AVAILABLE on {target} (unknown to it)" in result.stderr
    assert config_file.read_text() == before


def test_the_server_has_the_last_word_and_the_file_follows_it(served):
    # The label command is told the server allows labels for versions still loading, but this one does
    # not: the server refuses the reload, and the file does not promise what the server refused.
    target, config_file = served
    before = config_file.read_text()
    result = _label(
        "--model_config_file",
        str(config_file),
        "--label",
        "next",
        "--version",
        "3",
        "--server",
        target,
        "--allow_version_labels_for_unavailable_models",
    )
    assert result.returncode == 1
    assert "FAILED_PRECONDITION" in result.stderr and "not currently available" in result.stderr
    assert config_file.read_text() == before


def test_without_a_server_only_the_file_changes_and_an_unknown_model_is_an_error(tmp_path):
    config_file = tmp_path / "models.config"
    config_file.write_text(f'model_config_list {{ config {{ name: "{names.MODEL_NAME}" base_path: "/models/x" }} }}\n')
    assert _label("--model_config_file", str(config_file), "--label", "stable", "--version", "7").returncode == 0
    assert _labels(config_file) == {"stable": 7}
    result = _label(
        "--model_config_file", str(config_file), "--model_name", "other", "--label", "stable", "--version", "7"
    )
    assert result.returncode == 1 and "the config lists no model 'other'" in result.stderr
