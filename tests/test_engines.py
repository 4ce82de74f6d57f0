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

import pytest
from test_portable import assert_same_as_default_runner

from engines import cluster

pytestmark = [pytest.mark.slow, pytest.mark.engines]


def _needs(engine: str) -> pytest.MarkDecorator:
    """Skip, saying what .ci/run would install, where the engine's Java, jars or pyspark are missing."""
    reason = cluster.missing(engine)
    return pytest.mark.skipif(reason is not None, reason=reason or "")


@_needs("spark")
def test_the_job_on_a_spark_cluster_of_two_workers_equals_the_default_runner(labelled_tree, _pushed_once, tmp_path):
    with cluster.spark_cluster(tmp_path, workers=2) as spark:
        assert_same_as_default_runner(spark.options, labelled_tree, _pushed_once, tmp_path / "out")
        apps = cluster.master_state(spark.master_ui)["completedapps"]
    assert [app["state"] for app in apps] == ["FINISHED"]  # one application: the job, on this cluster
    finished = [cluster.finished_tasks(work) for work in spark.work_dirs]
    assert all(n > 0 for n in finished), finished  # both workers did work


@_needs("flink")
def test_the_job_on_flink_equals_the_default_runner(labelled_tree, _pushed_once, tmp_path):
    with cluster.flink_cluster(tmp_path) as flink:
        assert_same_as_default_runner(flink.options, labelled_tree, _pushed_once, tmp_path / "out")
