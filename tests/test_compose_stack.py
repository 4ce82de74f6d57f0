"""The docker-compose stack, run for real: docs/compose.md's commands, in order, as a user that is not root.

The commands are docs/compose.md's one ``bash`` block, fed a line at a time to one bash (so that its
``export`` lines carry over), in a copy of the checkout owned by that user; between lines the test looks
at what the line should have done. docker-compose.yml is used as it stands. No registry is reachable
where CI runs, so the test makes the two images the stack pulls:

- ``python:3.11-slim`` (the Dockerfile's FROM), only where the engine lacks it: Debian bookworm from its
  archive (``debootstrap``), imported under that name; bookworm's Python is 3.11 too.
- for ``tensorflow/serving``: ``docker/tf-serving-standin`` (the project's image, whose
  ``tensorflow_model_server`` runs ``fmnist serve``), built right after the block's build line and named
  by ``docker/tf-serving-standin/compose.yml`` through ``COMPOSE_FILE``.

pip in the build trusts the host's local CA certificates (``EXTRA_CA_CERTS``), where it has any. Images
stay in the engine, so a later run rebuilds only what changed. When dockerd is installed but not
running, the test starts it (as root) and stops it afterwards.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_stack import ROOT, block_settings, compose_block, env_file, published_ports

from fmnist.common import names

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

PROJECT = "fmnist-compose-test"  # COMPOSE_PROJECT_NAME: apart from a stack the user runs here
STANDIN_DIR = "docker/tf-serving-standin"
STANDIN_IMAGE = "fmnist-tf-serving-standin:latest"
PROJECT_IMAGE = "fmnist:latest"
# A quick, poor model: serving only has to load it and the batch job to get answers from it.
TRAIN_ARGS = "--limit 2000 --epochs 1 --min-accuracy 0.5"
TEST_UID = 4242  # the block's user when the test runs as root: neither root nor the image's default
LOCAL_CA_CERTS = Path("/usr/local/share/ca-certificates")
DEBIAN_MIRROR = "http://deb.debian.org/debian"


def _docker(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["docker", *args], capture_output=True, text=True)
    if check and done.returncode:
        pytest.fail(f"docker {' '.join(args)}: {done.stderr.strip()}")
    return done


def _engine_answers() -> bool:
    return subprocess.run(["docker", "info"], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> Iterator[None]:
    """A Docker engine to talk to: the running one, or dockerd started here and stopped afterwards."""
    for tool in ("docker", "docker-compose"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed; .ci/run installs docker.io and docker-compose")
    if _engine_answers():
        yield
        return
    if shutil.which("dockerd") is None:
        pytest.skip("no Docker engine answers and dockerd is not installed (.ci/run installs docker.io)")
    if os.geteuid() != 0:
        pytest.skip("dockerd is installed but not running, and only root may start it")
    log = tmp_path_factory.mktemp("dockerd") / "dockerd.log"
    with log.open("wb") as out:
        dockerd = subprocess.Popen(["nice", "-n", "10", "dockerd"], stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while not _engine_answers():
        if dockerd.poll() is not None or time.monotonic() > deadline:
            dockerd.terminate()
            pytest.skip(f"dockerd did not start: {log.read_text().strip().splitlines()[-1:]}")
        time.sleep(0.5)
    yield
    dockerd.terminate()
    dockerd.wait(timeout=120)


def _base_image() -> str:
    return re.search(r"^FROM (\S+)", (ROOT / "Dockerfile").read_text(), re.M).group(1)


@pytest.fixture(scope="module")
def base_image(engine) -> None:
    """The Dockerfile's FROM, made from Debian's archive where the engine lacks it."""
    image = _base_image()
    if _docker("image", "inspect", image, check=False).returncode == 0:
        return
    if shutil.which("debootstrap") is None or os.geteuid() != 0:
        pytest.skip(f"no {image} in the engine, and no debootstrap (or not root) to make one")
    with tempfile.TemporaryDirectory(prefix="fmnist-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        debootstrap = ["debootstrap", "--variant=minbase", "--include=ca-certificates,python3,python3-venv"]
        made = subprocess.run(
            ["nice", "-n", "10", *debootstrap, "bookworm", str(rootfs), DEBIAN_MIRROR], capture_output=True, text=True
        )
        assert made.returncode == 0, f"debootstrap failed:\n{(made.stdout + made.stderr)[-4000:]}"
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            shutil.rmtree(rootfs / cache)
            (rootfs / cache).mkdir()
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run(
            ["docker", "import", "--change", "ENV LANG=C.UTF-8", "--change", 'CMD ["python3"]', "-", image],
            stdin=tar.stdout,
            capture_output=True,
            text=True,
        )
        tar.stdout.close()
        assert tar.wait() == 0 and imported.returncode == 0, imported.stderr


class Shell:
    """One bash that runs the block a line at a time; what one line exports, the next sees.

    Each line reads /dev/null, not this bash's input, which holds the lines still to come.
    """

    def __init__(self, cwd: Path, env: dict[str, str], uid: int | None):
        user = {} if uid is None else {"user": uid, "group": uid, "extra_groups": [_docker_group()]}
        self._bash = subprocess.Popen(
            ["bash", "--noprofile", "--norc"],
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            **user,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self._bash.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def run(self, command: str, timeout: float) -> tuple[int, str]:
        marker = "__line_done__"
        self._bash.stdin.write(f"{{ {command}\n}} </dev/null\nprintf '\\n{marker} %d\\n' $?\n")
        self._bash.stdin.flush()
        output, deadline = [], time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(deadline - time.monotonic(), 0.1))
            except queue.Empty:
                pytest.fail(f"{command!r} still running after {timeout:.0f} s:\n{''.join(output)[-4000:]}")
            if line is None:
                pytest.fail(f"bash exited during {command!r}:\n{''.join(output)[-4000:]}")
            if line.startswith(marker):
                return int(line.split()[1]), "".join(output)
            output.append(line)

    def close(self) -> None:
        self._bash.stdin.close()
        self._bash.wait(timeout=60)


def _docker_group() -> int:
    return os.stat("/var/run/docker.sock").st_gid


def _copy_checkout(dest: Path) -> None:
    """The checkout's files as git sees them (tracked, and new ones not ignored): no .venv/, no runs/."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)


def _ports_in_use(block: list[str]) -> list[int]:
    """The host ports the block's `up` lines publish on that something here already holds."""
    ports = {
        port
        for words, settings in block_settings(block)
        if "up" in words
        for r in published_ports(settings)
        for port in r
    }
    busy = []
    for port in sorted(ports):
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                busy.append(port)
    return busy


def _project(kind: str, **labels: str) -> list[str]:
    """The ids of the project's containers (running or not), volumes or networks with these compose labels."""
    listing = {"container": ["ps", "-aq"], "volume": ["volume", "ls", "-q"], "network": ["network", "ls", "-q"]}
    filters = [f"--filter=label=com.docker.compose.{k}={v}" for k, v in {"project": PROJECT, **labels}.items()]
    return _docker(*listing[kind], *filters).stdout.split()


def _health(container: str) -> str:
    return _docker("inspect", "--format", "{{.State.Health.Status}}", container).stdout.strip()


def _wait_healthy(replicas: int, timeout: float = 300) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        containers = _project("container", service="serving")
        states = [_health(c) for c in containers]
        if len(containers) == replicas and set(states) == {"healthy"}:
            return containers
        if time.monotonic() > deadline:
            logs = "".join(_docker("logs", "--tail", "10", c, check=False).stderr for c in containers)
            pytest.fail(f"serving: {states} after {timeout:.0f} s, {replicas} healthy expected:\n{logs}")
        time.sleep(2)


def _rest(container: str, path: str) -> bytes:
    """GET from one replica's REST port, where the host publishes it."""
    published = _docker("port", container, f"{names.REST_PORT}/tcp").stdout.split()[0]
    with urllib.request.urlopen(f"http://127.0.0.1:{published.rsplit(':', 1)[1]}{path}", timeout=10) as response:
        return response.read()


def _predict_requests(container: str) -> float:
    metrics = _rest(container, "/monitoring/prometheus/metrics").decode()
    pattern = r'^:tensorflow:serving:request_count_total\{API="Predict",[^}]*status="OK"\} (\S+)$'
    return sum(float(count) for count in re.findall(pattern, metrics, re.M))


def _volume_files(volume: str) -> dict[str, str]:
    """Path → owner (uid:gid) of everything one of the project's volumes holds, the volume's root ('') too."""
    [name] = _project("volume", volume=volume)
    listing = _docker(
        "run", "--rm", "--entrypoint", "find", "-v", f"{name}:/v:ro", PROJECT_IMAGE, "/v", "-printf", "%U:%G %P\n"
    )
    return {path: owner for owner, path in (line.split(" ", 1) for line in listing.stdout.splitlines())}


def _owners(folder: Path) -> set[str]:
    return {f"{p.stat().st_uid}:{p.stat().st_gid}" for p in [folder, *folder.rglob("*")]}


class Checks:
    """What each line of the block should have done, looked at right after it, in the block's order."""

    def __init__(self, work: Path, owner: str):
        self.work, self.owner, self.settings = work, owner, env_file()
        self.model, self.count = self.settings["MODEL_NAME"], int(self.settings["SAMPLE_COUNT"])
        self.version: str | None = None
        self.requests: dict[str, float] = {}
        self.pending = [
            (r"\bbuild\b", self.image_built),
            (r"\bup -d serving\b", self.serving_started),
            (r"\brun --rm exporter\b", self.version_served),
            (r"\brun --rm samples\b", self.samples_written),
            (r"\brun --rm batch\b", self.batch_classified),
            (r"\bup -d serving\b", self.replicas_healthy),
            (r"\brun --rm batch\b", self.replicas_shared),
            (r"\bdown -v\b", self.nothing_left),
        ]

    def after(self, command: str, settings: dict[str, str]) -> None:
        self.settings = settings
        if self.pending and re.search(self.pending[0][0], command):
            self.pending.pop(0)[1]()

    def image_built(self) -> None:
        uid, gid = self.owner.split(":")
        assert _docker("run", "--rm", "--entrypoint", "id", PROJECT_IMAGE).stdout.split()[:2] == [
            f"uid={uid}(fmnist)",
            f"gid={gid}(fmnist)",
        ]
        _docker("build", "--quiet", "--tag", STANDIN_IMAGE, str(self.work / STANDIN_DIR))

    def serving_started(self) -> None:
        [container] = _project("container", service="serving")
        assert _health(container) != "healthy"  # nothing to serve yet

    def version_served(self) -> None:
        models = _volume_files("models")
        versions = [p.split("/")[1] for p in models if re.fullmatch(rf"{self.model}/\d+", p)]
        assert len(versions) == 1, sorted(models)
        self.version = versions[0]
        for volume in ("models", "runs"):  # written by the image's user, who has the host user's ids
            assert set(_volume_files(volume).values()) == {self.owner}, volume
        [container] = _wait_healthy(1)
        status = json.loads(_rest(container, f"/v1/models/{self.model}"))["model_version_status"]
        assert [(s["version"], s["state"]) for s in status] == [(self.version, "AVAILABLE")]

    def samples_written(self) -> None:
        samples = self.work / self.settings["BATCH_INPUT"]
        pngs = list(samples.rglob("*.png"))
        assert len(pngs) == self.count
        assert {p.parent.name for p in pngs} == {names.folder_name(c) for c in range(names.NUM_CLASSES)}
        assert _owners(samples) == {self.owner}

    def batch_classified(self) -> None:
        output = self.work / self.settings["BATCH_OUTPUT"]
        summary = json.loads((output / "summary.json").read_text())
        assert (summary["inputs"], summary["classified"], summary["errors"]) == (self.count, self.count, 0)
        assert summary["models"] == [
            {"model_name": self.model, "model_version": int(self.version), "files": self.count}
        ]
        assert summary["evaluation"]["accuracy"] > 0.3  # the samples are labelled by their folders
        records = [line for p in output.glob("predictions-*.jsonl") for line in p.read_text().splitlines()]
        assert len(records) == self.count
        assert _owners(output) == {self.owner}

    def replicas_healthy(self) -> None:
        replicas = int(self.settings["SERVING_REPLICAS"])
        assert replicas > 1, "the block scales serving out before its second batch run"
        self.requests = {c: _predict_requests(c) for c in _wait_healthy(replicas)}

    def replicas_shared(self) -> None:
        self.batch_classified()
        assert sorted(_project("container", service="serving")) == sorted(self.requests)  # none scaled away
        after = {c: _predict_requests(c) for c in self.requests}
        assert all(after[c] > self.requests[c] for c in after), (self.requests, after)

    def nothing_left(self) -> None:
        for kind in ("container", "volume", "network"):
            assert not _project(kind), kind


def test_the_documented_commands_run_the_stack(base_image):
    block = compose_block()
    busy = _ports_in_use(block)
    if busy:
        pytest.skip(f"host ports {busy} are in use; the stack publishes on them")
    as_root = os.geteuid() == 0
    uid, gid = (TEST_UID, TEST_UID) if as_root else (os.geteuid(), os.getegid())
    with tempfile.TemporaryDirectory(prefix="fmnist-compose-") as tmp:
        work, home = Path(tmp) / "checkout", Path(tmp) / "home"
        home.mkdir()
        _copy_checkout(work)
        if as_root:  # the block's user owns the copy, as a user owns their checkout
            os.chmod(tmp, 0o755)
            for path in [work, home, *work.rglob("*")]:
                os.chown(path, uid, gid)
        env = {
            "PATH": os.environ["PATH"],
            "HOME": str(home),
            "LANG": "C.UTF-8",
            "COMPOSE_PROJECT_NAME": PROJECT,
            "COMPOSE_FILE": os.pathsep.join(["docker-compose.yml", f"{STANDIN_DIR}/compose.yml"]),
            "TRAIN_ARGS": TRAIN_ARGS,
        }
        env |= {name: os.environ[name] for name in ("DOCKER_HOST", names.ENV_DATA_DIR) if name in os.environ}
        certs = sorted(LOCAL_CA_CERTS.glob("*.crt"))
        if certs:
            env["EXTRA_CA_CERTS"] = "".join(c.read_text() for c in certs)

        def down() -> None:  # what an interrupted run left, and what this one leaves if it fails
            subprocess.run(["docker-compose", "down", "-v"], cwd=work, env=env, capture_output=True)

        down()
        shell = Shell(work, env, uid if as_root else None)
        checks = Checks(work, f"{uid}:{gid}")
        try:
            for command, (_, settings) in zip(block, block_settings(block), strict=True):
                started = time.monotonic()
                rc, output = shell.run(command, timeout=1800 if "build" in command else 600)
                assert rc == 0, f"{command!r} exited with {rc}:\n{output[-4000:]}"
                checks.after(command, settings)
                print(f"{time.monotonic() - started:6.1f} s  {command}")  # shown by pytest -s
            assert not checks.pending, f"the block has no line for {[p for p, _ in checks.pending]}"
        finally:
            shell.close()
            down()
