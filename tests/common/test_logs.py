"""Every command logs in one format: ``<time> <LEVEL> <logger>: <message>``, demo included."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest

from fmnist import demo
from fmnist.batch import launcher
from fmnist.common import logs
from fmnist.pipeline import exporter
from fmnist.serving import serve
from fmnist.serving import server as serving_server

# What a WARNING from the exporter's plots looks like, whichever command logs it.
ONE_FORMAT = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} WARNING fmnist\.pipeline\.plots: graphviz is missing")


def _plots_warning(*_args, **_kwargs) -> int:
    logging.getLogger("fmnist.pipeline.plots").warning("graphviz is missing")
    return 0


@pytest.fixture
def restored_log_levels():
    levels = {name: logging.getLogger(name).level for name in ("", "fmnist.batch", *logs.QUIET_LIBRARIES)}
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def _train(monkeypatch):
    def pushed(config):
        _plots_warning()
        return SimpleNamespace(version_dir="models/fashion_mnist/1", refusal=None)

    monkeypatch.setattr(exporter, "run", pushed)
    assert exporter.main(["--limit", "10"], prog="fmnist train") == 0


def _serve(monkeypatch):
    monkeypatch.setattr(serving_server, "run", _plots_warning)
    assert serve.main(["--use-embedded", "--port", "0", "--model_base_path", "/m"], prog="fmnist serve") == 0


def _batch(monkeypatch):
    assert launcher.run_cli("fmnist batch", True, _plots_warning, lambda result: result) == 0


def _demo(monkeypatch):
    monkeypatch.setattr(demo, "run", _plots_warning)
    assert demo.main([], prog="fmnist demo") == 0


# The commands' modules are imported above, before the test empties the root logger, as the CLI imports
# a command's module after it has set logging up: the import-time case is the test after this one.
@pytest.mark.parametrize("command", [_train, _serve, _batch, _demo], ids=["train", "serve", "batch", "demo"])
def test_every_command_logs_in_the_one_format(command, restored_log_levels, monkeypatch, capsys):
    monkeypatch.setattr(logging.getLogger(), "handlers", [])  # as a fresh process has it (pytest's are back after)
    command(monkeypatch)
    assert ONE_FORMAT.fullmatch(capsys.readouterr().err.strip())


# A command whose module, like the demo's (Beam's import does it), logs through the root-level
# logging.warning as it is imported: with nothing set up yet, that call sets up Python's own
# "WARNING:name:message" format.
_LOGS_AT_IMPORT = textwrap.dedent(
    """
    import logging

    from fmnist.common import logs

    logging.warning("a library's notice at import")


    def main(argv, prog):
        logs.configure(logging.INFO)
        logging.getLogger("fmnist.pipeline.plots").warning("graphviz is missing")
        return 0
    """
)


def test_a_library_logging_at_import_does_not_set_the_format(tmp_path):
    (tmp_path / "logs_at_import.py").write_text(_LOGS_AT_IMPORT)
    runner = (
        "import sys\nfrom fmnist import cli\n"
        "cli.COMMANDS['logs-at-import'] = ('logs_at_import', 'a command whose library logs at import')\n"
        "sys.exit(cli.main(['logs-at-import']))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", runner],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])},
    )
    assert done.returncode == 0, done.stderr
    assert ONE_FORMAT.fullmatch(done.stderr.strip()), done.stderr
