"""The docker-compose stack, checked statically (tests/test_compose_stack.py runs it).

Everything compared is read from the files themselves — compose (as
``docker-compose config`` resolves it with .env's values), ``serving/models.config``,
the Dockerfile, .dockerignore, docs/compose.md's commands and the CLI's own
``--help`` — never retyped in the test.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from fmnist import cli
from fmnist.common import client, names
from fmnist.pipeline import data as data_module

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "compose.md"


def _bash_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```bash\n(.*?)^```", markdown, re.M | re.S)


def compose_block() -> list[str]:
    """docs/compose.md's commands: its one bash block, a command a line, without comment lines."""
    [block] = _bash_blocks(DOCS.read_text())
    return [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def env_file() -> dict[str, str]:
    """.env's settings."""
    lines = (ROOT / ".env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def block_settings(block: list[str]) -> Iterator[tuple[list[str], dict[str, str]]]:
    """Each line of the block as words, with the settings it runs with: .env's, and what the lines before export."""
    settings = env_file()
    for line in block:
        words = shlex.split(line, comments=True)
        if words[0] == "export":
            settings = settings | dict(word.split("=", 1) for word in words[1:])
        yield words, settings


def published_ports(settings: dict[str, str]) -> tuple[range, range]:
    """The host port ranges serving's replicas publish gRPC and REST on."""
    return tuple(range(int(settings[f"{p}_PORT"]), int(settings[f"{p}_PORT_LAST"]) + 1) for p in ("GRPC", "REST"))


@pytest.fixture(scope="module")
def compose() -> dict:
    if shutil.which("docker-compose") is None:
        pytest.skip("docker-compose (Debian package) not installed; .ci/run installs it")
    # .env's values, not the shell's (where FASHION_MNIST_DIR is usually set)
    env = {k: v for k, v in os.environ.items() if k not in env_file()}
    resolved = subprocess.run(["docker-compose", "config"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert resolved.returncode == 0, resolved.stderr
    return yaml.safe_load(resolved.stdout)


def _flags(command: list[str]) -> dict[str, str]:
    return dict(arg[2:].split("=", 1) for arg in command if arg.startswith("--") and "=" in arg)


def _command(service: dict) -> list[str]:
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else list(command)


def _mounts(service: dict) -> dict[str, dict]:
    """target → the mount, short syntax ("source:target[:mode]") and long syntax alike."""
    mounts = {}
    for volume in service["volumes"]:
        if isinstance(volume, str):
            source, target, *mode = volume.split(":")
            volume = {"source": source, "target": target, "read_only": mode == ["ro"]}
        mounts[volume["target"]] = volume
    return mounts


def test_compose_has_the_services_and_batch_waits_for_healthy_serving(compose):
    assert set(compose["services"]) == {"exporter", "samples", "serving", "batch"}
    assert compose["services"]["serving"]["image"].startswith("tensorflow/serving:")
    assert compose["services"]["batch"]["depends_on"]["serving"]["condition"] == "service_healthy"
    assert "healthcheck" in compose["services"]["serving"]


def test_serving_mounts_exist_and_config_names_our_model(compose):
    serving = compose["services"]["serving"]
    binds = {target: mount["source"] for target, mount in _mounts(serving).items()}
    for source in binds.values():
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
    # Replicas (SERVING_REPLICAS) each take a host port from a range (see the block's test below); by default
    # a range holds one port, the same one whenever serving is re-created.
    assert {target: str(port) for target, port in published.items()} == {
        names.GRPC_PORT: f"{names.GRPC_PORT}-{names.GRPC_PORT}",
        names.REST_PORT: f"{names.REST_PORT}-{names.REST_PORT}",
    }
    batch = _command(compose["services"]["batch"])
    # the service's DNS name, which resolves to every replica; the client balances over them
    assert batch[batch.index("--server") + 1] == f"serving:{names.GRPC_PORT}"
    assert client._target_uri(f"serving:{names.GRPC_PORT}") == f"dns:///serving:{names.GRPC_PORT}"
    assert batch[batch.index("--model-name") + 1] == names.MODEL_NAME
    assert compose["services"]["exporter"]["command"].split("--model-name ")[1].split()[0] == names.MODEL_NAME


def test_project_images_run_commands_the_cli_has(compose, capsys):
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r'^ENTRYPOINT \["fmnist"\]', dockerfile, re.M)
    for service in ("exporter", "samples", "batch"):
        command = _command(compose["services"][service])
        assert command[0] in cli.COMMANDS, command[0]
        with pytest.raises(SystemExit):
            cli.main([command[0], "--help"])
        usage = capsys.readouterr().out
        for flag in (a for a in command if a.startswith("--")):
            assert flag.split("=")[0] in usage, f"fmnist {command[0]} has no {flag}"


def _continued(text: str) -> str:
    return text.replace("\\\n", " ")


def test_the_image_user_owns_every_volume_it_mounts(compose):
    """Docker gives a new, empty volume the owner of the mount point in the image that mounts it first."""
    dockerfile = _continued((ROOT / "Dockerfile").read_text())
    [user] = re.findall(r"^USER (\S+)$", dockerfile, re.M)
    made = re.search(rf"install -d -o {user} -g {user} ([^\n&]+)", dockerfile)[1].split()
    assert dockerfile.index(" install -d ") < dockerfile.index(f"USER {user}")
    named = set(compose["volumes"])
    for name, service in compose["services"].items():
        for target, mount in _mounts(service).items():
            if mount["source"] in named and name != "serving":
                assert target in made, f"{name} mounts {mount['source']} on {target}, which the image lacks"
    # The serving image is not ours: its mount must not hand the volume its own (root's) mount point.
    models = _mounts(compose["services"]["serving"])["/models"]
    assert models["read_only"] and models.get("volume", {}).get("nocopy"), models
    # The data lands where the pipeline looks, in the image user's home.
    [data] = [t for t in _mounts(compose["services"]["exporter"]) if t.endswith("fashion-mnist")]
    assert Path(data) == Path(f"/home/{user}") / data_module.KERAS_CACHE.relative_to(Path.home())
    # The user gets the ids .env gives (the block exports the host user's).
    args = compose["services"]["exporter"]["build"]["args"]
    settings = env_file()
    assert (args["FMNIST_UID"], args["FMNIST_GID"]) == (settings["HOST_UID"], settings["HOST_GID"])
    assert {"FMNIST_UID", "FMNIST_GID"} <= set(re.findall(r"^ARG (\w+)", dockerfile, re.M))


def test_build_context_holds_what_the_dockerfile_copies_and_nothing_else():
    patterns = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and line[0] != "#"]
    assert patterns[0] == "*"  # everything ignored, then what is needed let back in
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    copied = re.findall(r"^COPY (?:--\S+ )*(.+) \S+$", (ROOT / "Dockerfile").read_text(), re.M)
    sources = {source for line in copied for source in line.split()}
    assert sources <= allowed, sources - allowed
    assert not allowed & {".venv", ".git", "runs", "samples", "batch-output"}


def test_the_documented_commands_fit_the_compose_file(compose):
    lines = list(block_settings(compose_block()))
    compose_lines = [words[words.index("docker-compose") :] for words, _ in lines if "docker-compose" in words]
    services = set(compose["services"])
    for line in compose_lines:
        for verb in ("run", "up"):
            if verb in line:
                named = [a for a in line[line.index(verb) + 1 :] if not a.startswith("-") and "=" not in a]
                assert set(named) <= services, line
    # build and down name every profile: else build builds nothing, and Compose v2's down leaves the
    # volumes of the services in the others.
    profiles = {p for s in compose["services"].values() for p in s.get("profiles", [])}
    for verb in ("build", "down"):
        [line] = [line for line in compose_lines if verb in line]
        assert {line[i + 1] for i, a in enumerate(line) if a == "--profile"} == profiles, line
    # The host folders exist, created by the user, and the user's ids are exported, before the first
    # docker-compose line.
    first = next(i for i, (words, _) in enumerate(lines) if "docker-compose" in words)
    settings = lines[first][1]
    made = {Path(a) for words, _ in lines[:first] if words[:2] == ["mkdir", "-p"] for a in words[2:]}
    assert {Path(settings["BATCH_INPUT"]), Path(settings["BATCH_OUTPUT"])} <= made
    assert settings["HOST_UID"] == "$(id -u)" and settings["HOST_GID"] == "$(id -g)"
    # Each `up` publishes every replica: host port ranges of as many ports, apart; and the block scales out.
    replicas = []
    for words, settings in lines:
        if "up" in words:
            replicas.append(int(settings["SERVING_REPLICAS"]))
            grpc, rest = published_ports(settings)
            assert len(grpc) >= replicas[-1] and len(rest) >= replicas[-1] and not set(grpc) & set(rest), words
    assert replicas[0] == 1 and max(replicas) > 1, replicas
    assert compose["services"]["serving"]["scale"] == 1


def test_readme_shows_the_same_commands():
    readme = (ROOT / "README.md").read_text()
    section = re.search(r"^## Docker compose\n(.*?)(?=^## |\Z)", readme, re.M | re.S)
    if section is None:
        pytest.skip("README.md has no '## Docker compose' section yet")
    assert _bash_blocks(section[1]) == _bash_blocks(DOCS.read_text())
