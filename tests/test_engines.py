"""``fmnist batch`` on Apache Spark and Apache Flink, through Beam's job servers.

Spark runs for real as a standalone cluster on loopback: a master and two
workers from pyspark's Spark, in processes of their own, and Beam's Spark job
server as the driver. Flink runs as a MiniCluster inside Beam's Flink job
server (``--flink-master=[local]``; flink-dist, for a session cluster, is not
served here). Each engine starts Python SDK workers of the project's Beam; the
outputs must equal the default runner's, file by file. Without Java, pyspark
or the job servers' jars (``.ci/run`` installs them) the tests skip.

Usage::

    .ci/run            # or, once installed: .venv/bin/python -m pytest -m engines
"""

from __future__ import annotations

import json
import time
import urllib.request

import pytest
from test_portable import assert_same_as_default_runner

from engines import cluster
from engines.processes import environment, free_port, started, wait_for_port

pytestmark = [pytest.mark.slow, pytest.mark.engines]


def _needs(engine: str) -> pytest.MarkDecorator:
    """Skip, saying what .ci/run would install, where the engine's Java, jars or pyspark are missing."""
    reason = cluster.missing(engine)
    return pytest.mark.skipif(reason is not None, reason=reason or "")


@_needs("spark")
def test_the_job_on_a_spark_cluster_of_two_workers_equals_the_default_runner(labelled_tree, _pushed_once, tmp_path):
    logs, jar = tmp_path / "logs", cluster.classpath_jar("spark", tmp_path)
    logs.mkdir()
    master_port, master_ui, job_port = free_port(), free_port(), free_port()
    master_url = f"spark://127.0.0.1:{master_port}"
    work_dirs = [tmp_path / f"worker-{n}" for n in (1, 2)]
    commands = {
        "master": cluster.spark_master(master_port, master_ui),
        **{f"worker-{n}": cluster.spark_worker(master_url, free_port(), work)
           for n, work in enumerate(work_dirs, start=1)},
        "job-server": cluster.spark_job_server(job_port, master_url, jar),
    }
    with started(commands, logs, environment(SPARK_LOCAL_IP="127.0.0.1")) as processes:
        wait_for_port(master_port, processes["master"])
        _wait_for_workers(master_ui, 2)
        wait_for_port(job_port, processes["job-server"], timeout=120)
        assert_same_as_default_runner(cluster.beam_options(job_port), labelled_tree, _pushed_once, tmp_path / "out")
        apps = _master_state(master_ui)["completedapps"]
    assert [app["state"] for app in apps] == ["FINISHED"]  # one application: the job, on this cluster
    assert all(cluster.finished_tasks(work) > 0 for work in work_dirs), [cluster.finished_tasks(w) for w in work_dirs]


@_needs("flink")
def test_the_job_on_flink_equals_the_default_runner(labelled_tree, _pushed_once, tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    job_port = free_port()
    commands = {"job-server": cluster.flink_job_server(job_port, cluster.classpath_jar("flink", tmp_path))}
    with started(commands, logs, environment()) as processes:
        wait_for_port(job_port, processes["job-server"], timeout=120)
        assert_same_as_default_runner(cluster.beam_options(job_port), labelled_tree, _pushed_once, tmp_path / "out")


def _master_state(webui_port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{webui_port}/json/", timeout=10) as response:
        return json.load(response)


def _wait_for_workers(webui_port: int, count: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if _master_state(webui_port)["aliveworkers"] >= count:
                return
        except OSError:
            pass
        time.sleep(1)
    raise TimeoutError(f"fewer than {count} Spark workers registered after {timeout}s")
