"""Processes for tests that need servers of their own: free ports, waiting for one, stopping them all.

Usage::

    with started({"job-service": [...], "worker-pool": [...]}, logs, env) as processes:
        wait_for_port(port, processes["job-service"])
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path


def environment(**extra: str) -> dict[str, str]:
    """This process's environment with its interpreter's folder first on PATH (plus ``extra``): Beam starts
    SDK workers as ``python`` from PATH, which must be the venv's, with the job's packages."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **extra}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"{process.args} exited with {process.returncode}"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"nothing listens on port {port} after {timeout}s")


def stop(process: subprocess.Popen) -> None:
    """Stop a process started in a session of its own, and whatever it forked (JVMs, SDK workers)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


@contextlib.contextmanager
def started(
    commands: Mapping[str, Sequence[str]], logs: Path, env: Mapping[str, str]
) -> Iterator[dict[str, subprocess.Popen]]:
    """Start each command in a session of its own, output to ``logs/<name>.log``; stop them all on exit."""
    processes: dict[str, subprocess.Popen] = {}
    try:
        for name, command in commands.items():
            with (logs / f"{name}.log").open("w") as log:
                processes[name] = subprocess.Popen(
                    command, env=dict(env), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                )
        yield processes
    finally:
        for process in reversed(processes.values()):  # clients before the servers they talk to
            stop(process)
