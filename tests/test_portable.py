"""``fmnist batch`` through Beam's portable job API, as Flink, Spark and Dataflow run Python.

Beam's own local job service (``local_job_service_main``) and an external SDK
worker pool (``worker_pool_main``, ``--environment_type=EXTERNAL``) run as
separate processes on loopback: the job is submitted as a pipeline proto over
the job API, and the workers run it over the Fn API, as on a cluster. Its
outputs must equal the default runner's, file by file.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from batch_outputs import assert_same_outputs as _assert_same_outputs

from engines import cluster
from fmnist.batch import job
from fmnist.common import names
from fmnist.serving.server import ServerConfig, start

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def portable(tmp_path_factory) -> list[str]:
    """A job service and a worker pool in processes of their own; yields the Beam options that reach them."""
    with cluster.portable_local(tmp_path_factory.mktemp("portable")) as running:
        yield running.options


def assert_same_as_default_runner(beam_args: list[str], tree: Path, pushed: Path, output: Path) -> None:
    """``fmnist batch`` with ``beam_args``, in a process of its own, writes what the default runner writes."""
    server = start(ServerConfig(port=0, model_name=names.MODEL_NAME, model_base_path=str(pushed / names.MODEL_NAME)))
    try:
        common = ["--input", str(tree), "--server", f"127.0.0.1:{server.port}", "--batch-size", "8"]
        default = job.run([*common, "--output", str(output / "default")])
        result = subprocess.run(
            [sys.executable, "-m", "fmnist.cli", "batch", *common, "--output", str(output / "other"), *beam_args],
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        server.stop()
    assert result.returncode == 0, result.stderr
    _assert_same_outputs(output / "default", output / "other")
    summary = (output / "other" / "summary.json").read_text()
    assert f'"inputs": {default.summary.inputs}' in summary and '"errors": 2' in summary
    assert "progress: 100%" in result.stderr  # the workers' counts reached the launcher from processes of their own


def test_the_job_on_the_portable_runner_equals_the_default_runner(portable, labelled_tree, _pushed_once, tmp_path):
    assert_same_as_default_runner(portable, labelled_tree, _pushed_once, tmp_path)
