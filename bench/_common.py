"""What the bench scripts share: machine description, model export, a served subprocess, tables, JSON.

Benchmarks are only comparable with the machine and load they ran under, so
every result file carries :func:`machine` and whether the shared "CPU busy"
marker was present. The embedded server runs in its own process
(:class:`ServerProcess`) so that the load generator and the server do not
share one GIL, as a real client and server would not.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
BUSY_MARKER = Path("/tmp/fmnist-cpu-busy")  # present while another CPU-heavy job runs on this machine

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Run as ``python bench/serving.py``, Python puts bench/ first on the path, where serving.py and
# batch.py would shadow the packages of the same names; the repository root replaces it.
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]


def machine() -> dict:
    """Cores, CPU model, Python/TF/Beam/gRPC versions, and whether the machine was marked busy."""
    import apache_beam
    import grpc
    import tensorflow as tf

    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    return {
        "nproc": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "apache_beam": apache_beam.__version__,
        "grpcio": grpc.__version__,
        "cpu_busy_marker": BUSY_MARKER.exists(),
    }


def warn_if_busy() -> None:
    if BUSY_MARKER.exists():
        print(
            f"warning: {BUSY_MARKER} exists: another CPU-heavy job is running; numbers are taken under load",
            file=sys.stderr,
        )


# The trust outputs of an untrained export: any temperature but 1 keeps the division in the graph, as a
# calibrated export has it; the novelty score is fitted on this many training images and standardised on the
# next ones (what the graph computes matters here, not how well the score separates).
TRUST_TEMPERATURE = 1.5
TRUST_FITTED, TRUST_HELD_OUT = 12_000, 2_000


def export_untrained(
    profile: str, base_path: Path, version: int = 1, *, trust: bool = True, network=None, train=None
) -> Path:
    """Build ``profile`` with fresh weights and export it as ``base_path/<version>``, as the Pusher would.

    The graph is what the Trainer hands over (folded normalisation, the cnn's
    mirror-image average), so it is the served one, and the benchmarks skip
    training (``bench/train.py`` measures that). Speed does not depend on the
    weights' values with one exception: the cnn's mirror pass runs only for
    images it is unsure of, which with fresh weights is every image, so an
    untrained cnn measures its worst case (``bench/batch.py --model-dir``
    serves a trained one).

    Args:
        trust: with the outputs the exporter adds (a temperature, and the novelty score's ``ood_scores`` and
            ``unfamiliar``), as every pushed version has them (the texture distance where the profile's
            default has it); the score is fitted by
            :func:`fmnist.pipeline.novelty.fit` on :data:`TRUST_FITTED` images of ``train`` (a Split; the
            dataset's training split when None).
        network: export this serving network (``model.for_serving``) instead of a fresh one: the same
            weights with and without the trust outputs.
    """
    from fmnist.pipeline import data, export, model, novelty

    network = network or model.for_serving(model.build(profile), profile)
    path = base_path / str(version)
    if not trust:
        export.write_saved_model(network, path)
        return path
    train = train or data.load().train
    features = model.features_and_logits(network)

    def features_of(images):  # uint8 [n, 28, 28] → the last hidden activations [n, d]
        return features.predict(model.preprocess(images).numpy(), batch_size=1024, verbose=0)[0]

    end = TRUST_FITTED + TRUST_HELD_OUT
    fitted = data.Split(train.images[:TRUST_FITTED], train.labels[:TRUST_FITTED])
    held_out = data.Split(train.images[TRUST_FITTED:end], train.labels[TRUST_FITTED:end])
    config = novelty.NoveltyConfig(texture=model.PROFILES[profile].texture_distance)  # as the exporter's default
    layer = novelty.fit(config, fitted, features_of, held_out, features_of(held_out.images))
    export.write_saved_model(network, path, temperature=TRUST_TEMPERATURE, novelty=layer)
    return path


def pushed_profile(model_dir: Path) -> str:
    """The profile a pushed version was trained with, from the config the Pusher saved next to it."""
    from fmnist.common import names

    return json.loads((model_dir / names.ASSETS_EXTRA / names.CONFIG_FILE).read_text())["train"]["profile"]


def copy_pushed(model_dir: Path, base_path: Path, version: int = 1) -> Path:
    """Copy a pushed version directory to ``base_path/<version>``, where a server loads it, as
    :func:`export_untrained` places a fresh one."""
    path = base_path / str(version)
    shutil.copytree(model_dir, path)
    return path


def extract_tree(rev: str, into: Path) -> Path:
    """The tree of ``rev``, read-only from git (``git archive``): no checkout, stash or worktree changes."""
    into.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


# The first commit whose modules import as fmnist.*: setuptools package-dir maps fmnist.common to common/ and so on.
LAYOUT_COMMIT = "a462ff5"


def importable(tree: Path, into: Path) -> Path:
    """A folder that, first on PYTHONPATH, makes ``import fmnist.*`` run ``tree``'s code; ValueError for an older tree.

    ``fmnist.common`` and its siblings are folders at the top of the tree, mapped under ``fmnist``
    by the tree's ``[tool.setuptools.package-dir]``, which only an install applies, and the editable
    install maps them to this checkout alone. Here the mapping is laid out as symlinks under
    ``into/fmnist``. A tree from before :data:`LAYOUT_COMMIT` has no such mapping: its modules
    were ``serving.*``, ``pipeline.*``, ..., which today's commands and scripts do not import.
    """
    settings = tomllib.loads((tree / "pyproject.toml").read_text()).get("tool", {}).get("setuptools", {})
    folders = settings.get("package-dir", {})
    if "fmnist.common" not in folders:
        raise ValueError(f"it predates the fmnist.* package layout ({LAYOUT_COMMIT}): its modules are not fmnist.*")
    top = into / "fmnist"
    top.mkdir(parents=True)
    for entry in (tree / folders["fmnist"]).iterdir():
        (top / entry.name).symlink_to(entry.resolve())
    for package, folder in folders.items():
        if package != "fmnist":
            top.joinpath(*package.split(".")[1:]).symlink_to((tree / folder).resolve(), target_is_directory=True)
    return into


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """``fmnist serve`` (the embedded server) in a child process, ready when a model is AVAILABLE.

    ``program`` replaces ``-m fmnist.serving.serve`` for another server with the same flags' subset
    (``--port``, ``--log-level``), such as bench/_floor_server.py.

    ``stop()`` sends SIGTERM (graceful stop) and returns the child's peak RSS
    in MiB, from ``wait4``'s rusage, which covers exactly this process.
    """

    def __init__(
        self,
        args: Sequence[str],
        ready_model: str,
        log_path: Path,
        timeout: float = 120.0,
        program: Sequence[str] = ("-m", "fmnist.serving.serve"),
    ):
        from fmnist.common.client import PredictionClient

        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        self._log = open(log_path, "wb")
        self._process = subprocess.Popen(
            [sys.executable, *program, "--port", str(self.port), "--log-level", "WARNING", *args],
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        with PredictionClient(self.target, model_name=ready_model) as client:
            try:
                client.wait_until_available(timeout=timeout)
            except Exception:
                self.stop()
                raise RuntimeError(f"server did not start; see {log_path}") from None

    def stop(self) -> float:
        self._process.terminate()
        _, status, usage = os.wait4(self._process.pid, 0)
        self._process.returncode = os.waitstatus_to_exitcode(status)
        self._log.close()
        return usage.ru_maxrss / 1024


# Runs argv[2:] and writes "exit-code peak-KiB wall-seconds cpu-seconds" of it to the file argv[1]. Linux carries a
# process's peak RSS over fork and exec, so a child of this process (which has TensorFlow loaded) would
# report at least this process's peak; a child of this small interpreter reports its own. The CPU seconds
# are the command's and those of the children it waited for (user and system).
_MEASURE = """
import os, subprocess, sys, time
started = time.perf_counter()
child = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(child.pid, 0)
with open(sys.argv[1], "w") as report:
    cpu = usage.ru_utime + usage.ru_stime
    report.write(f"{os.waitstatus_to_exitcode(status)} {usage.ru_maxrss} {time.perf_counter() - started} {cpu}")
"""


class ChildRun(NamedTuple):
    """What :func:`run_child` measured of one command."""

    code: int  # its exit code
    wall_s: float
    peak_rss_mib: float  # the largest of the command and the children it waited for
    cpu_s: float  # user + system, the command's and its waited-for children's


def run_child(
    argv: Sequence[str],
    log_path: Path,
    cwd: Path = ROOT,
    env: dict[str, str] | None = None,
    while_running: Callable[[int], None] | None = None,
) -> ChildRun:
    """What a command run in ``cwd`` cost (:class:`ChildRun`), its output to ``log_path``.

    ``while_running`` is called with the command's pid every 50 ms while it runs.
    """
    report = log_path.with_suffix(".rusage")
    with open(log_path, "wb") as log:
        helper = subprocess.Popen(
            [sys.executable, "-c", _MEASURE, str(report), *argv], cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        while helper.poll() is None:
            if while_running is not None and (command := children(helper.pid)):
                while_running(command[0])
            time.sleep(0.05)
    if helper.returncode != 0:
        raise RuntimeError(f"could not run {argv[0]}; see {log_path}")
    code, peak_kib, wall, cpu = report.read_text().split()
    return ChildRun(int(code), float(wall), int(peak_kib) / 1024, float(cpu))


def children(pid: int) -> list[int]:
    """The pids ``pid`` started (through any of its threads) and that still run; [] once it is gone."""
    found = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            found += [int(child) for child in (task / "children").read_text().split()]
    except OSError:  # it or a thread exited meanwhile
        pass
    return sorted(found)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), nearest rank on sorted values."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """A Markdown table; floats with up to 3 significant decimals, so it pastes into bench/README.md."""

    def cell(value) -> str:
        if isinstance(value, float):
            return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
        return "" if value is None else str(value)

    cells = [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) if cells else len(c) for i, c in enumerate(columns)]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=False)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    lines += ["| " + " | ".join(v.rjust(w) for v, w in zip(r, widths, strict=False)) + " |" for r in cells]
    return "\n".join(lines)


def write_results(name: str, payload: dict) -> Path:
    """``bench/results/<name>.json`` (git-ignored), with the machine description added."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(
        json.dumps({"machine": machine(), "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"), **payload}, indent=2)
    )
    return path


def throughput(call: Callable[[], int], concurrency: int, seconds: float) -> float:
    """Images per second of ``call`` (returns images done) from ``concurrency`` threads over ``seconds``.

    Each thread makes one untimed call first, so connection set-up and first-call costs are excluded.
    """
    done = [0] * concurrency
    window: dict[str, float] = {}

    def begin() -> None:
        window["start"] = time.perf_counter()
        window["deadline"] = window["start"] + seconds

    barrier = threading.Barrier(concurrency, action=begin)
    finished = [0.0] * concurrency
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        try:
            call()
            barrier.wait()
            while time.perf_counter() < window["deadline"]:
                done[index] += call()
        except BaseException as error:  # a failed request must fail the benchmark, not thin it out
            errors.append(error)
            barrier.abort()
        finished[index] = time.perf_counter()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return sum(done) / (max(finished) - window["start"])


def latencies(call: Callable[[], object], count: int) -> list[float]:
    """Milliseconds of ``count`` sequential calls, after 20 untimed ones."""
    for _ in range(20):
        call()
    times = []
    for _ in range(count):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return times
