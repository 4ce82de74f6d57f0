"""Start-up of the small commands (issue 14), before vs after: ``fmnist classify`` on one image, importing
the client, and the memory of a served ``fmnist batch`` run, its worker processes included.

"Before" is the tree of a baseline commit (``--baseline``), extracted with ``git archive`` into a
temporary folder and run by the same interpreter with the same packages; "after" is this checkout.
Each tree's ``fmnist.*`` modules are its own (:func:`_common.importable`), so the baseline must have
the package layout: a commit before ``a462ff5`` is refused with one line. The start-up work itself
(issue 14: a client that imported TensorFlow's runtime with the protos) predates that layout, so
its own before-and-after can no longer be rerun; the default baseline is the layout's first
commit, and any later one compares a change to start-up since.
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
from dataclasses import dataclass
from pathlib import Path

import _common
import numpy as np
from PIL import Image

BEFORE = _common.LAYOUT_COMMIT  # the earliest baseline whose modules import as fmnist.*
_IMPORT_CLIENT = (
    "import time; started = time.perf_counter(); import fmnist.common.client; "
    "print(time.perf_counter() - started, fmnist.common.client.__file__)"
)
_WORKERS = ("--direct_num_workers=2", "--direct_running_mode=multi_processing")


@dataclass(frozen=True)
class Tree:
    """A tree of the code (``root``) and the folder whose ``fmnist`` is that tree's (``path``).

    Commands run in ``path`` and with it on PYTHONPATH: ``python -m`` and ``-c`` put the working
    folder first on ``sys.path``, and in ``root`` that would find the tree's bare ``fmnist/`` folder,
    whose siblings the editable install would then take from this checkout.
    """

    root: Path
    path: Path


def trees(baseline: str, work: Path) -> dict[str, Tree]:
    """ "before" (``baseline``'s tree) and "after" (this checkout); ValueError when the baseline predates the layout."""
    before = _common.extract_tree(baseline, work / "before")
    try:
        before_path = _common.importable(before, work / "before-path")
    except ValueError as error:
        raise ValueError(f"baseline {baseline}: {error}") from None
    return {
        "before": Tree(before, before_path),
        "after": Tree(_common.ROOT, _common.importable(_common.ROOT, work / "after-path")),
    }


def _write_pngs(folder: Path, count: int) -> Path:
    """``count`` random 28 x 28 grey PNGs: what ``fmnist images`` writes, without loading the data set."""
    folder.mkdir(parents=True)
    pixels = np.random.default_rng(0).integers(0, 256, (count, 28, 28), dtype=np.uint8)
    for i, image in enumerate(pixels):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "PNG")
        (folder / f"{i:05d}.png").write_bytes(buffer.getvalue())
    return folder


def import_seconds(tree: Tree) -> float:
    """Seconds a fresh interpreter takes to import the tree's client (which must not start TensorFlow)."""
    command = [sys.executable, "-c", _IMPORT_CLIENT]
    result = subprocess.run(command, cwd=tree.path, capture_output=True, text=True, check=True, env=_env(tree))
    seconds, module_file = result.stdout.split()
    assert Path(module_file).resolve().is_relative_to(tree.root.resolve()), f"{module_file} is not {tree.root}'s client"
    return float(seconds)


def _env(tree: Tree) -> dict[str, str]:
    """The tree's packages first, for the command and for the Beam workers it starts."""
    return dict(os.environ, PYTHONPATH=str(tree.path), TF_CPP_MIN_LOG_LEVEL="2")


def _peak_kib(pid: int) -> int:
    """The process's peak RSS so far (VmHWM, which starts afresh at exec); 0 once it is gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return 0
    return next((int(line.split()[1]) for line in lines if line.startswith("VmHWM:")), 0)


def _run(name: str, tree: Tree, argv: list[str], log_path: Path, worker_peaks: dict[int, int] | None = None) -> dict:
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

    code, wall, peak, _ = _common.run_child(
        argv, log_path, cwd=tree.path, env=_env(tree), while_running=sample if worker_peaks is not None else None
    )
    if code != 0:
        raise RuntimeError(f"{name} in {tree.root} failed; see {log_path}")
    return {"wall_s": wall, "peak_mib": peak}


def _measure(name: str, tree: Tree, one_image: Path, images: Path, target: str, work: Path, repeat: int) -> dict:
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
        "import fmnist.common.client, s": import_seconds(tree),
        "fmnist classify 1 image, wall s": classify["wall_s"],
        "fmnist classify, peak RSS MiB": classify["peak_mib"],
        "fmnist batch --server, wall s": alone["wall_s"],
        "fmnist batch --server, peak RSS MiB": alone["peak_mib"],
        "… 2 worker processes, wall s": spread["wall_s"],
        "… 2 worker processes, largest process MiB": spread["peak_mib"],
        "… 2 worker processes, largest worker MiB": max(worker_peaks.values()) / 1024,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs of each measurement per tree (default 5)")
    parser.add_argument("--files", type=int, default=2000, help="PNGs in the batch runs (default 2000)")
    parser.add_argument(
        "--baseline", default=BEFORE, help=f"the 'before' commit, {BEFORE} or later (default: {BEFORE})"
    )
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="fmnist-startup-") as tmp:
        work = Path(tmp)
        try:
            measured = trees(args.baseline, work)
        except ValueError as error:
            print(f"{parser.prog}: error: {error}", file=sys.stderr)
            return 2
        _common.warn_if_busy()
        images = _write_pngs(work / "images", args.files)
        one_image = next(images.iterdir())
        _common.export_untrained("mlp", work / "models")
        server = _common.ServerProcess(
            ["--model_name", "fashion_mnist", "--model_base_path", str(work / "models")],
            "fashion_mnist",
            work / "server.log",
        )
        samples: dict[str, dict[str, list[float]]] = {name: {} for name in measured}
        try:
            for repeat in range(args.repeats):
                for name, tree in measured.items():
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
    return 0


def _range(values: list[float]) -> str:
    return f"{min(values):.3g}–{max(values):.3g}"


if __name__ == "__main__":
    sys.exit(main())
