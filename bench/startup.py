"""Start-up of the small commands (issue 14), before vs after: ``fmnist classify`` on one image, importing
the client, and the memory of a served ``fmnist batch`` run, its worker processes included.

"Before" is the tree of a baseline commit (``--baseline``; by default main just before the change,
whose client imported TensorFlow's runtime with the protos), extracted with ``git archive`` into a
temporary folder and run by the same interpreter with the same packages; "after" is this checkout.
Every measurement is a fresh process run in its tree, before and after alternating, against one
embedded server (an untrained mlp: the model's speed is not what is measured), so both see the same load.

Usage: ``.venv/bin/python bench/startup.py [--repeats 5] [--files 2000] [--baseline REV]``
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import _common
import numpy as np
from PIL import Image

# main just before the start-up work was merged: serving/client.py imported tensorflow.core directly.
BEFORE = "48bd59019051952ce59e2a7fdbec18db1752e927"
_IMPORT_CLIENT = (
    "import time; started = time.perf_counter(); import fmnist.serving.client; "
    "print(time.perf_counter() - started, serving.client.__file__)"
)
_WORKERS = ("--direct_num_workers=2", "--direct_running_mode=multi_processing")


def _write_pngs(folder: Path, count: int) -> Path:
    """``count`` random 28 x 28 grey PNGs: what ``fmnist images`` writes, without loading the data set."""
    folder.mkdir(parents=True)
    pixels = np.random.default_rng(0).integers(0, 256, (count, 28, 28), dtype=np.uint8)
    for i, image in enumerate(pixels):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "PNG")
        (folder / f"{i:05d}.png").write_bytes(buffer.getvalue())
    return folder


def _import_seconds(tree: Path) -> float:
    result = subprocess.run(
        [sys.executable, "-c", _IMPORT_CLIENT], cwd=tree, capture_output=True, text=True, check=True, env=_env(tree)
    )
    seconds, module_file = result.stdout.split()
    assert Path(module_file).is_relative_to(tree), f"{module_file} is not {tree}'s client"
    return float(seconds)


def _env(tree: Path) -> dict[str, str]:
    """The tree's packages first, for the command and for the Beam workers it starts."""
    return dict(os.environ, PYTHONPATH=str(tree), TF_CPP_MIN_LOG_LEVEL="2")


def _peak_kib(pid: int) -> int:
    """The process's peak RSS so far (VmHWM, which starts afresh at exec); 0 once it is gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return 0
    return next((int(line.split()[1]) for line in lines if line.startswith("VmHWM:")), 0)


def _run(name: str, tree: Path, argv: list[str], log_path: Path, worker_peaks: dict[int, int] | None = None) -> dict:
    """Wall seconds and peak RSS MiB of a command in ``tree``; with ``worker_peaks``, its workers' peaks (KiB) go there.

    Beam starts each worker as ``sh -c python ...``, a grandchild of the
    command; their peaks are sampled every 50 ms while the command runs.
    """

    def sample(command: int) -> None:
        pending = list(_common.children(command))
        while pending:
            pid = pending.pop()
            worker_peaks[pid] = max(worker_peaks.get(pid, 0), _peak_kib(pid))
            pending += _common.children(pid)

    code, wall, peak = _common.run_child(
        argv, log_path, cwd=tree, env=_env(tree), while_running=sample if worker_peaks is not None else None
    )
    if code != 0:
        raise RuntimeError(f"{name} in {tree} failed; see {log_path}")
    return {"wall_s": wall, "peak_mib": peak}


def _measure(name: str, tree: Path, one_image: Path, images: Path, target: str, work: Path, repeat: int) -> dict:
    """One round of every measurement for one tree: metric → value."""
    cli = [sys.executable, "-m", "fmnist.cli"]
    classify = _run(
        "classify", tree, [*cli, "classify", str(one_image), "--server", target], work / f"classify-{name}.log"
    )
    batch = [*cli, "batch", "--input", str(images), "--server", target]
    alone = _run("batch", tree, [*batch, "--output", str(work / f"out-{name}-{repeat}")], work / f"batch-{name}.log")
    worker_peaks: dict[int, int] = {}
    spread = _run(
        "batch with workers",
        tree,
        [*batch, "--output", str(work / f"out-{name}-{repeat}-workers"), *_WORKERS],
        work / f"workers-{name}.log",
        worker_peaks,
    )
    return {
        "import fmnist.serving.client, s": _import_seconds(tree),
        "fmnist classify 1 image, wall s": classify["wall_s"],
        "fmnist classify, peak RSS MiB": classify["peak_mib"],
        "fmnist batch --server, wall s": alone["wall_s"],
        "fmnist batch --server, peak RSS MiB": alone["peak_mib"],
        "… 2 worker processes, wall s": spread["wall_s"],
        "… 2 worker processes, largest process MiB": spread["peak_mib"],
        "… 2 worker processes, largest worker MiB": max(worker_peaks.values()) / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs of each measurement per tree (default 5)")
    parser.add_argument("--files", type=int, default=2000, help="PNGs in the batch runs (default 2000)")
    parser.add_argument("--baseline", default=BEFORE, help="the 'before' commit (default: main just before the change)")
    args = parser.parse_args()
    _common.warn_if_busy()

    with tempfile.TemporaryDirectory(prefix="fmnist-startup-") as tmp:
        work = Path(tmp)
        trees = {"before": _common.extract_tree(args.baseline, work / "before"), "after": _common.ROOT}
        images = _write_pngs(work / "images", args.files)
        one_image = next(images.iterdir())
        _common.export_untrained("mlp", work / "models")
        server = _common.ServerProcess(
            ["--model_name", "fashion_mnist", "--model_base_path", str(work / "models")],
            "fashion_mnist",
            work / "server.log",
        )
        samples: dict[str, dict[str, list[float]]] = {name: {} for name in trees}
        try:
            for repeat in range(args.repeats):
                for name, tree in trees.items():
                    for metric, value in _measure(name, tree, one_image, images, server.target, work, repeat).items():
                        samples[name].setdefault(metric, []).append(value)
                print(f"repeat {repeat + 1}/{args.repeats} done", file=sys.stderr)
        finally:
            server.stop()

    rows = []
    for metric in samples["after"]:
        before, after = (statistics.median(samples[name][metric]) for name in ("before", "after"))
        ranges = {f"{name} range": _range(samples[name][metric]) for name in ("before", "after")}
        rows.append({"metric": metric, "before": before, "after": after, "after ÷ before": after / before, **ranges})
    print(f"medians of {args.repeats} runs; {args.files} PNGs per batch run; baseline {args.baseline[:12]}")
    print(_common.table(rows, ["metric", "before", "after", "after ÷ before", "before range", "after range"]))
    path = _common.write_results(
        "startup",
        {"baseline": args.baseline, "repeats": args.repeats, "files": args.files, "samples": samples, "rows": rows},
    )
    print(f"wrote {path}")


def _range(values: list[float]) -> str:
    return f"{min(values):.3g}–{max(values):.3g}"


if __name__ == "__main__":
    main()
