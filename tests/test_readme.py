"""Every shell command of README.md's ``bash`` blocks is run by a test: here, as written, or by the test named for it.

README.md's fenced ``bash`` blocks are read line by line (a trailing ``\\`` continues a line, an
unquoted ``#`` starts a comment). :func:`runner_of` says who runs each command:

* ``make demo``, ``make test`` and the compose section's commands are run by the test or script it names
  (:data:`ELSEWHERE`), whose file must be in the tree;
* every other command runs here, as written, in README order, in a fresh project folder (a copy of
  ``serving/``'s config files and ``.venv`` linked to this interpreter's environment), as one shell
  session would run it: ``source`` and ``export`` lines carry their environment to the lines after
  them, and a ``fmnist serve … &`` line starts the server in the background and waits until it
  serves. ``fmnist train`` lines run in a session of their own on the real data (slow); the others
  run against the suite's pushed test model in ``models/``, together with the README's ``python``
  blocks where they stand. Three things are substituted, nothing else: the ports 8500 and 8501 by
  free ones, and ``/path/to/fashion-mnist`` by the data the suite reads.

A command no rule covers (``make install``, a background command other than ``fmnist serve``)
fails :func:`test_every_readme_command_is_run_by_a_test`.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from fmnist.common import names
from fmnist.common.client import PredictionClient
from fmnist.serving.server import ServerConfig, start

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DATA_PLACEHOLDER = "/path/to/fashion-mnist"
SETUP_COMMANDS = ["make demo", "make test"]  # the repository's two set-up commands, exactly

# Commands another test or script runs, and a string its file must hold to be the one that runs it.
ELSEWHERE = {
    "make demo": ("tests/test_demo.py", '"demo"'),  # `fmnist demo` end to end, small; make demo = install + that
    "make test": (".ci/run", "make test"),  # CI runs `make test` on a bare machine
}
COMPOSE_TEST = "test_compose_stack.py"  # runs the docker compose stack's commands
TRAIN, SERVE, BOTH = "train session", "serve session", "both sessions"


@dataclass(frozen=True)
class Block:
    language: str  # bash, python, or "" (the diagram)
    text: str
    line: int  # of the opening fence in README.md


def blocks(markdown: str) -> list[Block]:
    found = []
    for match in re.finditer(r"^```(\w*)\n(.*?)^```", markdown, re.S | re.M):
        found.append(Block(match[1], match[2], markdown.count("\n", 0, match.start()) + 1))
    return found


def strip_comment(line: str) -> str:
    """``line`` without its shell comment: an unquoted ``#`` at the start of a word."""
    quote, escaped = None, False
    for i, char in enumerate(line):
        if escaped:
            escaped = False
        elif char == "\\" and quote != "'":
            escaped = True
        elif quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def commands(bash: str) -> list[str]:
    """The command lines of a bash block, continuations joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", bash)
    return [c for c in (strip_comment(line).strip() for line in joined.splitlines()) if c]


def readme_commands() -> list[str]:
    return [c for b in blocks(README.read_text()) if b.language == "bash" for c in commands(b.text)]


def compose_commands() -> list[str]:
    """The commands of the bash block of README's ``## Docker compose`` section (tests/test_stack.py checks
    that it is docs/compose.md's block, which tests/test_compose_stack.py runs line by line)."""
    section = README.read_text().split("## Docker compose", 1)[1].split("\n## ", 1)[0]
    return commands(next(b for b in blocks(section) if b.language == "bash").text)


def runner_of(command: str) -> str | None:
    """Who runs ``command``: a file (see ELSEWHERE), a session of this module, or None (nobody)."""
    if command in ELSEWHERE:
        return ELSEWHERE[command][0]
    if command in compose_commands():
        return COMPOSE_TEST
    if command.split()[0] in ("make", "docker", "docker-compose"):
        return None
    if command.endswith("&") and not command.startswith("fmnist serve "):
        return None  # the session knows when a server is ready, nothing else
    if command.startswith(("source ", "export ")):
        return BOTH
    return TRAIN if command.startswith("fmnist train") else SERVE


def test_every_readme_command_is_run_by_a_test():
    markdown = README.read_text()
    assert {b.language for b in blocks(markdown)} <= {"bash", "python", ""}
    for block in blocks(markdown):
        if block.language == "":  # the diagram: nothing to run, so nothing may look runnable
            assert not re.search(r"^\s*(fmnist|make|docker|python|curl|sed|source|export)\s", block.text, re.M)
    uncovered = [c for c in readme_commands() if runner_of(c) is None]
    assert not uncovered, f"README commands no test runs (add a rule in {Path(__file__).name}): {uncovered}"
    set_up = markdown.split("## Set up", 1)[1]
    assert commands(next(b for b in blocks(set_up) if b.language == "bash").text) == SETUP_COMMANDS


@pytest.mark.parametrize("command", [c for c in readme_commands() if c in ELSEWHERE or c in compose_commands()])
def test_commands_run_elsewhere_have_their_test_in_the_tree(command):
    if runner_of(command) == COMPOSE_TEST:
        found = sorted((ROOT / "tests").rglob(COMPOSE_TEST))
        if not found:
            pytest.skip(f"{COMPOSE_TEST}, which runs the compose stack's commands, is not in this tree yet")
        assert "compose" in found[0].read_text()
        return
    path, marker = ELSEWHERE[command]
    assert marker in (ROOT / path).read_text(), f"{path} no longer runs {command!r}"


# --- the commands run here ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _failure(what: str, done: subprocess.CompletedProcess) -> str:
    return f"{what}\nexit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


class Session:
    """README commands run in ``folder`` one after another, like one interactive bash session.

    Owns the background servers it starts (a process group each) and stops them in :meth:`close`.
    """

    def __init__(self, folder: Path, logs: Path, data_dir: str):
        if sys.prefix == sys.base_prefix:
            pytest.skip("the README activates .venv: run the tests from a virtual environment")
        self.folder, self.logs = folder, logs
        self.substitutions = {
            r"\b8500\b": str(_free_port()),
            r"\b8501\b": str(_free_port()),
            re.escape(DATA_PLACEHOLDER): data_dir,
        }
        (folder / ".venv").symlink_to(sys.prefix)
        (folder / "serving").mkdir()
        for config in (ROOT / "serving").glob("*.config"):
            shutil.copy(config, folder / "serving")
        venv_bin = str(Path(sys.prefix) / "bin")  # off PATH, so that `source .venv/bin/activate` is what finds fmnist
        self.env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", names.ENV_DATA_DIR)}
        self.env["PATH"] = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if p != venv_bin)
        self.background: list[subprocess.Popen] = []
        self.ran: list[str] = []

    def substitute(self, text: str) -> str:
        for pattern, value in self.substitutions.items():
            text = re.sub(pattern, value, text)
        return text

    def run(self, command: str, timeout: float = 600) -> None:
        line = self.substitute(command)
        if line.endswith("&"):
            self._serve_in_background(line.removesuffix("&").strip())
        else:
            env_file = self.logs / "env"
            script = f'{line}\nstatus=$?\nenv -0 > "{env_file}"\nexit $status\n'
            done = subprocess.run(
                ["bash", "-c", script], cwd=self.folder, env=self.env, capture_output=True, text=True, timeout=timeout
            )
            assert done.returncode == 0, _failure(command, done)
            pairs = (item.split("=", 1) for item in env_file.read_text().split("\0") if "=" in item)
            self.env = {k: v for k, v in pairs if k not in ("_", "SHLVL", "PWD", "OLDPWD")}
        self.ran.append(command)

    def python(self, code: str, timeout: float = 300) -> None:
        done = subprocess.run(
            ["python", "-"],  # the python `source .venv/bin/activate` put first on PATH
            input=self.substitute(code),
            cwd=self.folder,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert done.returncode == 0, _failure(code, done)

    def _serve_in_background(self, line: str) -> None:
        port = re.search(r"--port[ =](\d+)", line)
        assert port, f"{line}: name --port, so that the test can give the server a free one"
        log = self.logs / f"server-{len(self.background)}.log"
        with log.open("w") as out:
            process = subprocess.Popen(
                ["bash", "-c", f"exec {line}"],
                cwd=self.folder,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.background.append(process)
        try:
            with PredictionClient(f"127.0.0.1:{port[1]}") as client:
                client.wait_until_available(timeout=120)
        except Exception as error:
            pytest.fail(f"{line}: not serving: {error}\n{log.read_text()[-3000:]}")

    def close(self) -> None:
        for process in self.background:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()


def _session_items(sessions: tuple[str, ...]) -> list[tuple[str, str]]:
    """("bash", command) and ("python", code) in README order, for the given sessions."""
    items = []
    for block in blocks(README.read_text()):
        if block.language == "python" and SERVE in sessions:
            items.append(("python", block.text))
        elif block.language == "bash":
            items += [("bash", c) for c in commands(block.text) if runner_of(c) in sessions]
    return items


@pytest.fixture
def session(tmp_path, dataset):
    (tmp_path / "project").mkdir()
    (tmp_path / "logs").mkdir()
    running = Session(tmp_path / "project", tmp_path / "logs", dataset.source)
    yield running
    running.close()


def test_the_readmes_serving_and_batch_commands_run_as_written(session, _pushed_once):
    shutil.copytree(_pushed_once, session.folder / "models")  # what `fmnist train` pushed, in the suite's test model
    items = _session_items((SERVE, BOTH))
    for kind, text in items:
        if kind == "bash":
            session.run(text)
        else:
            session.python(text)
    assert session.ran == [text for kind, text in items if kind == "bash"]
    assert any(c.startswith("fmnist serve ") for c in session.ran)
    for command in session.ran:  # every batch run the README shows finished its output folder
        output = re.search(r"--output[ =](\S+)", command)
        if command.startswith("fmnist batch") and output:
            assert (session.folder / output[1] / "_SUCCESS").is_file(), command


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_the_readmes_training_commands_run_as_written(session):
    items = _session_items((TRAIN, BOTH))
    for _, command in items:
        session.run(command, timeout=1800)
    trained = [c for _, c in items if runner_of(c) == TRAIN]
    assert trained, "README.md shows no fmnist train command"
    assert len(list((session.folder / "models" / names.MODEL_NAME).iterdir())) == len(trained)  # each one pushed


# --- docs/ ------------------------------------------------------------------------------------------


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize(
    "page", [README, ROOT / "bench" / "README.md", *sorted((ROOT / "docs").glob("*.md"))], ids=lambda p: p.name
)
def test_every_relative_link_reaches_a_file_and_its_heading(page):
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if re.match(r"\w+://", target):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{page.name}: {target}"
        if anchor:
            headings = re.findall(r"^#+ (.+)$", linked.read_text(), re.M)
            assert anchor in {_slug(h) for h in headings}, f"{page.name}: {target}"


def test_the_local_model_config_docs_serving_writes_serves_the_pushed_model(_pushed_once, tmp_path):
    doc = (ROOT / "docs" / "serving.md").read_text()
    sed = next(c for b in blocks(doc) if b.language == "bash" for c in commands(b.text) if c.startswith("sed "))
    shutil.copytree(_pushed_once, tmp_path / "models")
    (tmp_path / "serving").mkdir()
    shutil.copy(ROOT / "serving" / "models.config", tmp_path / "serving")
    subprocess.run(["bash", "-c", sed], cwd=tmp_path, check=True)  # as a user runs it, in the project folder
    local = (tmp_path / "models.local.config").read_text()
    assert re.search(rf'base_path: "{tmp_path}/models/{names.MODEL_NAME}"', local)
    server = start(ServerConfig(port=0, model_config_file=str(tmp_path / "models.local.config")))
    try:
        with PredictionClient(f"127.0.0.1:{server.port}") as client:
            assert client.wait_until_available(timeout=30) == 1
    finally:
        server.stop()
