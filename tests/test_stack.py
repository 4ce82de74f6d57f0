"""The docker-compose stack, checked statically (no Docker engine runs here).

Everything compared is read from the files themselves — compose (as
``docker-compose config`` resolves it), ``serving/models.config``, the
Dockerfile and the CLI's own ``--help`` — never retyped in the test.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from fmnist import cli
from fmnist.common import client, names

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    shutil.which("docker-compose") is None, reason="docker-compose (Debian package) not installed; .ci/run installs it"
)


@pytest.fixture(scope="module")
def compose() -> dict:
    resolved = subprocess.run(["docker-compose", "config"], cwd=ROOT, capture_output=True, text=True)
    assert resolved.returncode == 0, resolved.stderr
    return yaml.safe_load(resolved.stdout)


def _flags(command: list[str]) -> dict[str, str]:
    return dict(arg[2:].split("=", 1) for arg in command if arg.startswith("--") and "=" in arg)


def _command(service: dict) -> list[str]:
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else list(command)


def test_compose_has_the_three_services_and_batch_waits_for_healthy_serving(compose):
    assert set(compose["services"]) == {"exporter", "serving", "batch"}
    assert compose["services"]["serving"]["image"].startswith("tensorflow/serving:")
    assert compose["services"]["batch"]["depends_on"]["serving"]["condition"] == "service_healthy"
    assert "healthcheck" in compose["services"]["serving"]


def test_serving_mounts_exist_and_config_names_our_model(compose):
    serving = compose["services"]["serving"]
    binds = {}
    for volume in serving["volumes"]:
        source, target = volume.split(":")[:2]
        binds[target] = source
        if source.startswith("/"):  # a bind mount, not a named volume
            assert Path(source).exists(), f"{source} is mounted but missing"
    flags = _flags(_command(serving))
    config = text_format.Parse(
        Path(binds[flags["model_config_file"]]).read_text(), model_server_config_pb2.ModelServerConfig()
    )
    models = {m.name: m for m in config.model_config_list.config}
    assert names.MODEL_NAME in models
    models_mount = next(t for t, s in binds.items() if s == "models")
    assert models[names.MODEL_NAME].base_path == f"{models_mount}/{names.MODEL_NAME}"
    for flag in ("batching_parameters_file", "monitoring_config_file"):
        assert flags[flag] in binds, flag


def test_ports_agree_with_the_shared_names(compose):
    serving = compose["services"]["serving"]
    flags = _flags(_command(serving))
    assert int(flags["port"]) == names.GRPC_PORT and int(flags["rest_api_port"]) == names.REST_PORT
    published = {int(p["target"]): p["published"] for p in serving["ports"]}
    assert set(published) == {names.GRPC_PORT, names.REST_PORT}
    # Replicas (--scale) each take a host port from a range; the two ranges must not overlap.
    ranges = [range(int(first), int(last) + 1) for first, last in (str(p).split("-") for p in published.values())]
    assert ranges[0][0] in (names.GRPC_PORT, names.REST_PORT) and not set(ranges[0]) & set(ranges[1])
    batch = _command(compose["services"]["batch"])
    # the service's DNS name, which resolves to every replica; the client balances over them
    assert batch[batch.index("--server") + 1] == f"serving:{names.GRPC_PORT}"
    assert client._target_uri(f"serving:{names.GRPC_PORT}") == f"dns:///serving:{names.GRPC_PORT}"
    assert batch[batch.index("--model-name") + 1] == names.MODEL_NAME
    assert compose["services"]["exporter"]["command"].split("--model-name ")[1].split()[0] == names.MODEL_NAME


def test_project_images_run_commands_the_cli_has(compose, capsys):
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r'^ENTRYPOINT \["fmnist"\]', dockerfile, re.M)
    for service in ("exporter", "batch"):
        command = _command(compose["services"][service])
        assert command[0] in cli.COMMANDS, command[0]
        with pytest.raises(SystemExit):
            cli.main([command[0], "--help"])
        usage = capsys.readouterr().out
        for flag in (a for a in command if a.startswith("--")):
            assert flag.split("=")[0] in usage, f"fmnist {command[0]} has no {flag}"
