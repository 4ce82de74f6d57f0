"""``fmnist batch`` through Beam's portable job API, as Flink, Spark and Dataflow run Python.

Beam's own local job service (``local_job_service_main``) and an external SDK
worker pool (``worker_pool_main``, ``--environment_type=EXTERNAL``) run as
separate processes on loopback: the job is submitted as a pipeline proto over
the job API, and the workers run it over the Fn API, as on a cluster. Its
outputs must equal the default runner's, file by file.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import encode_png
from test_batch import _assert_same_outputs

from batch import job
from fmnist import names
from serving.server import ServerConfig, start

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for_port(port: int, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"{process.args} exited with {process.returncode}"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"nothing listens on port {port} after {timeout}s")


@pytest.fixture(scope="module")
def portable(tmp_path_factory) -> list[str]:
    """A job service and a worker pool in processes of their own; yields the Beam options that reach them."""
    logs = tmp_path_factory.mktemp("portable-logs")
    # The pool starts SDK workers as `python -m ...` from PATH: the venv's python, which has the job's packages.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    job_port, pool_port = _free_port(), _free_port()
    commands = {
        "job-service": [sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main",
                        "--port", str(job_port)],
        "worker-pool": [sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main",
                        "--service_port", str(pool_port)],
    }
    processes = {name: subprocess.Popen(command, env=env, stdout=(logs / f"{name}.log").open("w"),
                                        stderr=subprocess.STDOUT, start_new_session=True)
                 for name, command in commands.items()}
    try:
        _wait_for_port(job_port, processes["job-service"])
        _wait_for_port(pool_port, processes["worker-pool"])
        yield ["--runner=PortableRunner", f"--job_endpoint=localhost:{job_port}", "--environment_type=EXTERNAL",
               f"--environment_config=localhost:{pool_port}"]
    finally:
        for process in processes.values():  # each started its own session: stop it and the workers it forked
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)


@pytest.fixture(scope="module")
def tree(tmp_path_factory, dataset) -> Path:
    root = tmp_path_factory.mktemp("images")
    for i in range(40):
        folder = root / names.folder_name(int(dataset.test.labels[i]))
        folder.mkdir(exist_ok=True)
        (folder / f"{i}.png").write_bytes(encode_png(dataset.test.images[i]))
    (root / "truncated.png").write_bytes(encode_png(dataset.test.images[0])[:60])
    (root / "notes.txt").write_text("not an image")
    return root


def test_the_job_on_the_portable_runner_equals_the_default_runner(portable, tree, _pushed_once, tmp_path):
    server = start(ServerConfig(port=0, model_name=names.MODEL_NAME, model_base_path=str(_pushed_once / names.MODEL_NAME)))
    try:
        common = ["--input", str(tree), "--server", f"127.0.0.1:{server.port}", "--batch-size", "8"]
        default = job.run([*common, "--output", str(tmp_path / "default")])
        result = subprocess.run([sys.executable, "-m", "fmnist.cli", "batch", *common, "--output",
                                 str(tmp_path / "portable"), *portable], capture_output=True, text=True, timeout=300)
    finally:
        server.stop()
    assert result.returncode == 0, result.stderr
    _assert_same_outputs(tmp_path / "default", tmp_path / "portable")
    summary = (tmp_path / "portable" / "summary.json").read_text()
    assert f'"inputs": {default.summary.inputs}' in summary and '"errors": 2' in summary
    assert "progress: 100%" in result.stderr  # the workers' counts reached the launcher from the pool's processes
