"""Commands that start Beam's Spark and Flink job servers and a Spark standalone cluster on loopback,
and Beam's own local job service with an external SDK worker pool (the portable path without an engine).

Maven Central, as this project reaches it, serves neither
``beam-runners-spark-3-job-server`` nor ``beam-runners-flink-1.19-job-server``
(the shaded jars that Beam's ``SparkRunner`` and ``FlinkRunner`` fetch) at any
version, but serves the runner artifacts they are built from. The job servers
therefore run from class paths that Maven resolves into ``~/.m2``
(``engines/<engine>/pom.xml`` → ``engines/<engine>/classpath.txt``, written by
``.ci/run``). 2.62.0 is the newest Beam at which every module of a runner is
served; the Python SDK stays at the project's 2.77 (launcher and workers).
Spark is pyspark's bundled Spark, for the cluster and the job server alike.

Usage (a job server in the foreground, as docs/engines.md starts it)::

    mvn -q -f engines/spark/pom.xml dependency:build-classpath -Dmdep.outputFile=$PWD/engines/spark/classpath.txt
    python -m engines.cluster spark --job-port 8099 --spark-master-url spark://127.0.0.1:7077
    python -m engines.cluster flink --job-port 8098                # a Flink MiniCluster inside
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import shutil
import sys
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from engines.processes import environment, free_port, started, wait_for_port

ENGINES = ("spark", "flink")
BEAM_JAVA = "2.62.0"
_HERE = Path(__file__).resolve().parent
SDK_WORKER = _HERE / "sdk_worker.py"
_INSTALL = (
    "run .ci/run once (it installs pyspark with pip install -e '.[engines]' and resolves the job server "
    "into ~/.m2 with mvn)"
)
# What Spark's own launcher (JavaModuleOptions) adds to its JVMs on Java 17; the job server is started
# without spark-submit, so it needs them too.
_SPARK_JAVA_OPTIONS = [
    "-XX:+IgnoreUnrecognizedVMOptions",
    *(
        f"--add-opens=java.base/{package}=ALL-UNNAMED"
        for package in (
            "java.lang",
            "java.lang.invoke",
            "java.lang.reflect",
            "java.io",
            "java.net",
            "java.nio",
            "java.util",
            "java.util.concurrent",
            "java.util.concurrent.atomic",
            "sun.nio.ch",
            "sun.nio.cs",
            "sun.security.action",
            "sun.util.calendar",
        )
    ),
    "-Djdk.reflect.useDirectMethodHandle=false",
]


def _classpath(engine: str) -> list[str]:
    listing = _HERE / engine / "classpath.txt"
    return listing.read_text().strip().split(os.pathsep) if listing.exists() else []


def spark_home() -> Path:
    """pyspark's folder: a whole Spark distribution (bin/spark-class, jars/)."""
    return Path(importlib.util.find_spec("pyspark").origin).parent


def missing(engine: str) -> str | None:
    """Why ``engine`` cannot run here, and what installs it; None when it can."""
    if shutil.which("java") is None:
        return f"no java on PATH; {_INSTALL}"
    if engine == "spark" and importlib.util.find_spec("pyspark") is None:
        return f"pyspark is not installed; {_INSTALL}"
    jars = _classpath(engine)
    if not jars or not all(Path(jar).exists() for jar in jars):
        return f"Beam's {engine} job server ({BEAM_JAVA}) is not resolved in engines/{engine}/classpath.txt; {_INSTALL}"
    return None


def _manifest(jars: list[str]) -> str:
    """A jar manifest whose Class-Path lists ``jars``, in lines of at most 72 bytes as the format requires."""
    line = "Class-Path: " + " ".join(Path(jar).resolve().as_uri() for jar in jars)
    lines = [line[:72]] + [" " + line[start : start + 71] for start in range(72, len(line), 71)]
    return "Manifest-Version: 1.0\r\n" + "\r\n".join(lines) + "\r\n\r\n"


def classpath_jar(engine: str, folder: Path) -> Path:
    """One jar naming the job server's class path (Beam's jars first, then Spark's for ``spark``).

    Beam's jars come first because its Guava is newer than Spark's; Spark's
    executors get the same jar prepended with ``spark.executor.extraClassPath``
    (its paths hold on this machine, as on any cluster whose workers share
    ``~/.m2`` and the venv). The order matters: with Spark's Guava first, Beam's
    GCS file system, registered on every executor, fails to load.
    """
    jars = _classpath(engine)
    if engine == "spark":
        jars += sorted(str(jar) for jar in (spark_home() / "jars").glob("*.jar"))
    target = folder / f"beam-{engine}-job-server-{BEAM_JAVA}.jar"
    with zipfile.ZipFile(target, "w") as archive:
        archive.writestr("META-INF/MANIFEST.MF", _manifest(jars))
    return target


def spark_master(port: int, webui_port: int) -> list[str]:
    return [
        str(spark_home() / "bin" / "spark-class"),
        "org.apache.spark.deploy.master.Master",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--webui-port",
        str(webui_port),
    ]


def spark_worker(master_url: str, webui_port: int, work_dir: Path) -> list[str]:
    # One core each: two workers are two executors, each with its own SDK worker, on 2 cores.
    return [
        str(spark_home() / "bin" / "spark-class"),
        "org.apache.spark.deploy.worker.Worker",
        "--host",
        "127.0.0.1",
        "--cores",
        "1",
        "--memory",
        "1g",
        "--webui-port",
        str(webui_port),
        "--work-dir",
        str(work_dir),
        master_url,
    ]


def spark_job_server(job_port: int, master_url: str, jar: Path) -> list[str]:
    return [
        "java",
        *_SPARK_JAVA_OPTIONS,
        f"-Dspark.executor.extraClassPath={jar}",
        "-Dspark.ui.enabled=false",
        "-cp",
        str(jar),
        "org.apache.beam.runners.spark.SparkJobServerDriver",
        "--job-port",
        str(job_port),
        "--artifact-port",
        "0",
        "--expansion-port",
        "0",
        "--spark-master-url",
        master_url,
    ]


def flink_job_server(job_port: int, jar: Path, flink_master: str = "[local]") -> list[str]:
    """``[local]``: a Flink MiniCluster inside the job server (flink-dist, for a session cluster, is not served)."""
    return [
        "java",
        "-cp",
        str(jar),
        "org.apache.beam.runners.flink.FlinkJobServerDriver",
        "--job-port",
        str(job_port),
        "--artifact-port",
        "0",
        "--expansion-port",
        "0",
        "--flink-master",
        flink_master,
    ]


def beam_options(job_port: int) -> list[str]:
    """The job's Beam options for a job server at ``job_port``, Python SDK workers started by the engine.

    PROCESS, not EXTERNAL: Beam's Python worker pool keys its workers by id,
    and executors in separate JVMs number theirs alike, so two Spark executors
    sharing one pool stop each other's workers (seen here: a job hung).

    A minute's ``--environment_cache_millis`` keeps an executor's SDK worker
    from one stage to the next; without it Spark starts one per stage, and each
    imports TensorFlow again (40 files: 214 s, against 87 s with it, here).
    """
    return [
        "--runner=PortableRunner",
        f"--job_endpoint=localhost:{job_port}",
        "--environment_type=PROCESS",
        f"--environment_config={json.dumps({'command': str(SDK_WORKER)})}",
        "--environment_cache_millis=60000",
    ]


@dataclass(frozen=True)
class Running:
    """A started engine: the job's Beam options, and for Spark the master's web UI port and the workers' dirs."""

    options: list[str]
    master_ui: int | None = None
    work_dirs: tuple[Path, ...] = ()


@contextlib.contextmanager
def spark_cluster(folder: Path, workers: int = 2) -> Iterator[Running]:
    """A Spark master, ``workers`` workers and Beam's Spark job server on loopback, stopped on exit."""
    logs = folder / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    jar = classpath_jar("spark", folder)
    master_port, master_ui, job_port = free_port(), free_port(), free_port()
    master_url = f"spark://127.0.0.1:{master_port}"
    work_dirs = tuple(folder / f"worker-{n}" for n in range(1, workers + 1))
    commands = {
        "master": spark_master(master_port, master_ui),
        **{f"worker-{n}": spark_worker(master_url, free_port(), work) for n, work in enumerate(work_dirs, start=1)},
        "job-server": spark_job_server(job_port, master_url, jar),
    }
    with started(commands, logs, environment(SPARK_LOCAL_IP="127.0.0.1")) as processes:
        wait_for_port(master_port, processes["master"])
        _wait_for_workers(master_ui, workers)
        wait_for_port(job_port, processes["job-server"], timeout=120)
        yield Running(beam_options(job_port), master_ui, work_dirs)


@contextlib.contextmanager
def flink_cluster(folder: Path) -> Iterator[Running]:
    """Beam's Flink job server with a MiniCluster inside, on loopback, stopped on exit."""
    logs = folder / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    job_port = free_port()
    with started(
        {"job-server": flink_job_server(job_port, classpath_jar("flink", folder))}, logs, environment()
    ) as processes:
        wait_for_port(job_port, processes["job-server"], timeout=120)
        yield Running(beam_options(job_port))


@contextlib.contextmanager
def portable_local(folder: Path) -> Iterator[Running]:
    """Beam's local job service and an external SDK worker pool, each a process of its own, stopped on exit.

    The job is submitted as a pipeline proto over the job API and run by the
    pool's workers over the Fn API, as Flink, Spark and Dataflow run Python.
    Each process runs in a session of its own, so stopping it stops the workers it forked.
    """
    logs = folder / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    job_port, pool_port = free_port(), free_port()
    commands = {
        "job-service": [
            sys.executable,
            "-m",
            "apache_beam.runners.portability.local_job_service_main",
            "--port",
            str(job_port),
        ],
        "worker-pool": [
            sys.executable,
            "-m",
            "apache_beam.runners.worker.worker_pool_main",
            "--service_port",
            str(pool_port),
        ],
    }
    with started(commands, logs, environment()) as processes:
        wait_for_port(job_port, processes["job-service"])
        wait_for_port(pool_port, processes["worker-pool"])
        yield Running(
            [
                "--runner=PortableRunner",
                f"--job_endpoint=localhost:{job_port}",
                "--environment_type=EXTERNAL",
                f"--environment_config=localhost:{pool_port}",
            ]
        )


def master_state(webui_port: int) -> dict:
    """The Spark master's own JSON view: workers, running and completed applications."""
    with urllib.request.urlopen(f"http://127.0.0.1:{webui_port}/json/", timeout=10) as response:
        return json.load(response)


def _wait_for_workers(webui_port: int, count: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if master_state(webui_port)["aliveworkers"] >= count:
                return
        except OSError:
            pass
        time.sleep(1)
    raise TimeoutError(f"fewer than {count} Spark workers registered after {timeout}s")


def finished_tasks(work_dir: Path) -> int:
    """Tasks the executors of a Spark worker finished, read from their logs in the worker's work dir."""
    return sum(log.read_text(errors="replace").count("Finished task") for log in work_dir.glob("app-*/*/stderr"))


def main(argv: list[str] | None = None) -> None:
    """Replace this process with ``engine``'s job server (Ctrl-C stops it)."""
    parser = argparse.ArgumentParser(prog="python -m engines.cluster", description=main.__doc__)
    parser.add_argument("engine", choices=ENGINES)
    parser.add_argument("--job-port", type=int, default=8099)
    parser.add_argument("--spark-master-url", default="spark://127.0.0.1:7077")
    parser.add_argument("--flink-master", default="[local]", help="[local] (default), or host:port of a JobManager")
    args = parser.parse_args(argv)
    reason = missing(args.engine)
    if reason:
        parser.error(reason)
    jar = classpath_jar(args.engine, _HERE / args.engine)
    if args.engine == "spark":
        command = spark_job_server(args.job_port, args.spark_master_url, jar)
    else:
        command = flink_job_server(args.job_port, jar, args.flink_master)
    os.execvpe(command[0], command, environment())  # SDK workers: this interpreter's python, first on PATH


if __name__ == "__main__":
    main()
