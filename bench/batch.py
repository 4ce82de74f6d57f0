"""Batch benchmark: the Beam job over PNG folders, served vs in-process vs one file per request.

Writes ``--count`` Fashion-MNIST PNGs as ``fmnist images`` does (10,000; 100,000
with ``--large``, the 70,000 dataset images repeated), exports an mlp (or
``--profile cnn``) with fresh weights, or serves a pushed version (``--model-dir``),
starts the embedded server in a child process, and runs, side by side:

- ``fmnist batch --server`` at a quarter, half and all of the files, to show
  how time grows with the count (a least-squares fit gives the fixed cost and
  the marginal time per file) and that peak memory does not;
- the same on all files with two Beam worker processes
  (``--direct_num_workers=2 --direct_running_mode=multi_processing``);
- with ``--mixed-precision``, the served job on all files once more against a
  server started with ``--mixed_precision=bfloat16``;
- ``fmnist batch --in-process`` (Beam RunInference, no server) on all files;
- the lean loop (``bench/lean.py``), the anchor the job is measured by: served on
  the same server and files with 4 and with 1 request in flight, and in-process on
  the same version (``fmnist batch`` ÷ lean is the ratio to watch);
- with ``--formats``, the served job writing parquet, csv and tfrecord;
- a naive loop reading one file and sending it as one request, over
  ``--naive-count`` files.

Every job runs as its own process (``python -m fmnist.batch.job``), so its peak RSS
and CPU come from ``wait4``; its rate is the job's own (``summary.json``: pipeline
start to finish, without interpreter and TensorFlow start-up, which the wall
column includes); the lean loop's rate is its loop's. ``cpu_us_per_file`` is the
whole process's (start-up included, workers included), per file.

Usage::

    python bench/batch.py                # 10,000 files, a few minutes on 2 cores
    python bench/batch.py --count 20000  # 20,000 files
    python bench/batch.py --large        # 100,000 files
    python bench/batch.py --quick        # 2,000 files
    python bench/batch.py --count 5000 --batch-size 64 --images-dir /tmp/pngs
    python bench/batch.py --profile cnn  # the convolutional model served instead of the mlp
    python bench/batch.py --profile cnn --mixed-precision   # and a bfloat16 server beside it
    python bench/batch.py --model-dir models/fashion_mnist/1764115200   # a trained, pushed version
    python bench/batch.py --baseline d21308a   # and the served job of that commit, alternating with this one

The mlp's speed does not depend on its weights. The cnn's does: it runs its
mirror pass only for images it is unsure of, and fresh weights are unsure of
every image, so an untrained cnn measures its worst case and ``--model-dir``
with a trained one its usual cost.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import _common  # first: fixes sys.path so "batch" is the package, not this file
import numpy as np

from fmnist.common import names

TWO_WORKERS = ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]


def write_images(out: Path, count: int) -> list[Path]:
    """``count`` labelled PNGs under ``out`` (reused when already there), as ``fmnist images`` writes them."""
    from fmnist.pipeline import data, images

    existing = sorted(out.glob("*/*.png"))
    if len(existing) >= count:
        return existing[:count]
    dataset = data.load()
    pool = np.concatenate([dataset.test.images, dataset.train.images])
    labels = np.concatenate([dataset.test.labels, dataset.train.labels])
    index = np.arange(count) % len(pool)
    return images.run(data.Split(pool[index], labels[index]), count, out, prefix="bench")


def subset(paths: list[Path], count: int, root: Path) -> Path:
    """A folder of ``count`` of the files, hard-linked into their class folders (labels kept, no copy,
    and unlike symlinks no extra path resolution per read, so subsets cost per file what the whole does)."""
    if count == len(paths) == len(list(root.glob("*/*.png"))):
        return root
    target = root.parent / f"{root.name}-{count}"
    if not target.exists():
        for path in paths[:count]:
            link = target / path.parent.name / path.name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.hardlink_to(path)
    return target


def run_job(
    label: str,
    input_dir: Path,
    files: int,
    source: list[str],
    batch_size: int | None,
    work: Path,
    tree: Path = _common.ROOT,
) -> dict:
    """One ``python -m batch.job`` run of the checkout at ``tree``: its summary's rate, wall time and peak RSS."""
    slug = f"{label.replace(', ', '-').replace(' ', '-')}-{files}"
    output = work / f"out-{slug}"
    argv = [sys.executable, "-m", "fmnist.batch.job", "--input", str(input_dir), "--output", str(output), *source]
    if batch_size:
        argv += ["--batch-size", str(batch_size)]
    env = None
    if tree != _common.ROOT:  # that tree's fmnist.*, laid out as its package-dir maps it (once per tree)
        importable = tree.parent / f"{tree.name}-importable"
        if not importable.exists():
            _common.importable(tree, importable)
        env = {**os.environ, "PYTHONPATH": str(importable)}
    code, wall, rss, cpu = _common.run_child(argv, work / f"{slug}.log", cwd=tree, env=env)
    if code != 0:
        raise RuntimeError(f"{label} job failed ({code}); see {work / f'{slug}.log'}")
    summary = json.loads((output / "summary.json").read_text())
    if summary["classified"] != files:
        raise RuntimeError(f"{label}: {summary['classified']} of {files} files classified")
    row = {
        "mode": label,
        "files": files,
        "seconds": summary["elapsed_seconds"],
        "images_per_s": files / summary["elapsed_seconds"],
        "us_per_file": summary["elapsed_seconds"] / files * 1e6,
        "wall_s": wall,
        "cpu_us_per_file": cpu / files * 1e6,
        "peak_rss_mib": rss,
    }
    print(f"  {label} {files} files: {row['images_per_s']:,.0f} images/s, peak {rss:.0f} MiB", flush=True)
    return row


def run_lean(label: str, input_dir: Path, files: int, source: list[str], work: Path) -> dict:
    """One ``bench/lean.py`` run as a child process: its own rate (the loop, without start-up) and, like
    :func:`run_job`'s, the whole process's CPU and peak RSS."""
    slug = label.replace(", ", "-").replace(" ", "-")
    argv = [sys.executable, str(_common.ROOT / "bench" / "lean.py"), "--input", str(input_dir)]
    argv += ["--output", str(work / f"{slug}.jsonl"), *source]
    log = work / f"{slug}.log"
    code, wall, rss, cpu = _common.run_child(argv, log)
    if code != 0:
        raise RuntimeError(f"{label} failed ({code}); see {log}")
    measured = json.loads(log.read_text().strip().splitlines()[-1])
    if measured["files"] != files:
        raise RuntimeError(f"{label}: {measured['files']} of {files} files")
    print(f"  {label} {files} files: {measured['images_per_s']:,.0f} images/s, peak {rss:.0f} MiB", flush=True)
    return {
        "mode": label,
        "files": files,
        "seconds": measured["seconds"],
        "images_per_s": measured["images_per_s"],
        "us_per_file": measured["seconds"] / files * 1e6,
        "wall_s": wall,
        "cpu_us_per_file": cpu / files * 1e6,
        "peak_rss_mib": rss,
    }


def naive_loop(target: str, paths: list[Path]) -> dict:
    """One file per request, read and sent in sequence: what a script without batching does."""
    from fmnist.common.client import PredictionClient

    with PredictionClient(target) as client:
        client.predict_encoded([paths[0].read_bytes()])
        start = time.perf_counter()
        for path in paths:
            client.predict_encoded([path.read_bytes()])
        seconds = time.perf_counter() - start
    print(f"  naive {len(paths)} files: {len(paths) / seconds:,.0f} images/s", flush=True)
    return {
        "mode": "naive loop",
        "files": len(paths),
        "seconds": seconds,
        "images_per_s": len(paths) / seconds,
        "us_per_file": seconds / len(paths) * 1e6,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("Usage::")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--count", type=int, default=10_000, help="PNG files (default 10,000)")
    parser.add_argument("--large", action="store_true", help="100,000 files")
    parser.add_argument("--quick", action="store_true", help="2,000 files, 500 naive requests")
    parser.add_argument("--naive-count", type=int, default=2_000, help="files for the naive loop (default 2,000)")
    parser.add_argument("--batch-size", type=int, help="the job's --batch-size (default: the job's own default)")
    parser.add_argument("--images-dir", type=Path, help="where the PNGs go (kept and reused); default a temp dir")
    parser.add_argument(
        "--profile",
        default="mlp",
        choices=["mlp", "cnn"],
        help="the served model, exported with fresh weights (default mlp)",
    )
    parser.add_argument(
        "--model-dir",
        type=Path,
        help="serve this pushed version directory instead (its profile is read from its config)",
    )
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="also run the served job of this commit (git archive) on all the files, alternating "
        "with this checkout's, and print this checkout's rate ÷ its",
    )
    parser.add_argument(
        "--formats",
        action="store_true",
        help="also run the served job with --format parquet, csv and tfrecord",
    )
    parser.add_argument(
        "--mixed-precision",
        action="store_true",
        help="also serve with --mixed_precision=bfloat16 and run the job against that server",
    )
    args = parser.parse_args(argv)
    if args.large:
        args.count = 100_000
    if args.quick:
        args.count, args.naive_count = 2_000, 500
    _common.warn_if_busy()

    work = Path(tempfile.mkdtemp(prefix="fmnist-bench-batch-"))
    root = args.images_dir or work / "images"
    started = time.perf_counter()
    paths = write_images(root, args.count)
    print(f"{len(paths)} PNG files under {root} ({time.perf_counter() - started:.1f}s)", flush=True)
    every = subset(paths, args.count, root)  # root itself, unless it holds more files from an earlier, larger run
    model_base = work / "models" / names.MODEL_NAME
    if args.model_dir:
        args.profile = f"{_common.pushed_profile(args.model_dir)}-trained"
        _common.copy_pushed(args.model_dir, model_base)
    else:
        _common.export_untrained(args.profile, model_base)

    counts = sorted({max(1, args.count // 4), max(1, args.count // 2), args.count})
    rows = []
    server_flags = [
        "--model_name",
        names.MODEL_NAME,
        "--model_base_path",
        str(model_base),
        "--file_system_poll_wait_seconds",
        "0",
    ]
    server = _common.ServerProcess(server_flags, names.MODEL_NAME, work / "server.log")
    try:
        # First, as its untimed first request also pays the server's one-off graph optimisation.
        rows.append(naive_loop(server.target, paths[: args.naive_count]))
        for count in counts:
            rows.append(
                run_job("served", subset(paths, count, root), count, ["--server", server.target], args.batch_size, work)
            )
        rows.append(
            run_job(
                "served, 2 workers", every, args.count, ["--server", server.target, *TWO_WORKERS], args.batch_size, work
            )
        )
        for in_flight in (4, 1):  # the lean loop on the same server and files: the anchor of the served job
            rows.append(
                run_lean(
                    f"lean, {in_flight} in flight",
                    every,
                    args.count,
                    ["--server", server.target, "--in-flight", str(in_flight)],
                    work,
                )
            )
        if args.formats:
            for form in ("parquet", "csv", "tfrecord"):
                rows.append(
                    run_job(
                        f"served, {form}",
                        every,
                        args.count,
                        ["--server", server.target, "--format", form],
                        args.batch_size,
                        work,
                    )
                )
        if args.baseline:
            tree = _common.extract_tree(args.baseline, work / "baseline")
            for n in (1, 2):  # alternating with this checkout's, on the same server
                rows.append(
                    run_job(
                        f"served at {args.baseline[:10]} #{n}",
                        every,
                        args.count,
                        ["--server", server.target],
                        args.batch_size,
                        work,
                        tree,
                    )
                )
                rows.append(
                    run_job(f"served #{n + 1}", every, args.count, ["--server", server.target], args.batch_size, work)
                )
    finally:
        server_rss = server.stop()
    if args.mixed_precision:
        server = _common.ServerProcess(
            [*server_flags, "--mixed_precision", "bfloat16"], names.MODEL_NAME, work / "server-bfloat16.log"
        )
        try:
            rows.append(
                run_job(
                    "served, bfloat16 server", every, args.count, ["--server", server.target], args.batch_size, work
                )
            )
        finally:
            server.stop()
    rows.append(run_job("in-process", every, args.count, ["--in-process", str(model_base)], args.batch_size, work))
    version = sorted(p for p in model_base.iterdir() if p.name.isdigit())[-1]
    rows.append(run_lean("lean, in-process", every, args.count, ["--model-dir", str(version)], work))

    served = [r for r in rows if r["mode"] == "served"]
    slope, fixed = np.polyfit([r["files"] for r in served], [r["seconds"] for r in served], 1)
    full = served[-1]
    in_process = next(r for r in rows if r["mode"] == "in-process")
    naive = next(r for r in rows if r["mode"] == "naive loop")
    ratios = {
        "served / in-process": full["images_per_s"] / in_process["images_per_s"],
        "served / naive loop": full["images_per_s"] / naive["images_per_s"],
        "marginal us per file (served)": slope * 1e6,
        "fixed seconds per job (served)": fixed,
        "peak RSS growth, smallest to largest run (MiB)": served[-1]["peak_rss_mib"] - served[0]["peak_rss_mib"],
    }
    mode = {r["mode"]: r for r in rows}
    ratios["served / lean, 4 in flight"] = full["images_per_s"] / mode["lean, 4 in flight"]["images_per_s"]
    ratios["served / lean, 1 in flight"] = full["images_per_s"] / mode["lean, 1 in flight"]["images_per_s"]
    ratios["in-process / lean, in-process"] = in_process["images_per_s"] / mode["lean, in-process"]["images_per_s"]
    for form in ("parquet", "csv", "tfrecord") if args.formats else ():
        ratios[f"served, {form} / lean, 4 in flight"] = (
            mode[f"served, {form}"]["images_per_s"] / mode["lean, 4 in flight"]["images_per_s"]
        )
    two_workers = next(r for r in rows if r["mode"] == "served, 2 workers")
    ratios["served, 2 workers / served"] = two_workers["images_per_s"] / full["images_per_s"]
    if args.baseline:
        ours = [r["images_per_s"] for r in rows if r["mode"].startswith("served #") or r is full]
        theirs = [r["images_per_s"] for r in rows if r["mode"].startswith("served at ")]
        ratios[f"served / served at {args.baseline[:10]} (means)"] = np.mean(ours) / np.mean(theirs)
    if args.mixed_precision:
        bfloat16 = next(r for r in rows if r["mode"] == "served, bfloat16 server")
        ratios["served, bfloat16 server / served"] = bfloat16["images_per_s"] / full["images_per_s"]
    print(f"\nBatch job, {args.profile}, {args.count:,} PNG files, --batch-size {args.batch_size or 'default'}\n")
    columns = ["mode", "files", "seconds", "images_per_s", "us_per_file", "wall_s", "cpu_us_per_file", "peak_rss_mib"]
    print(_common.table(rows, columns))
    print()
    for name, value in ratios.items():
        print(f"{name}: {value:.3g}")
    print(f"server peak RSS (MiB): {server_rss:.0f}")
    name = "batch" if args.profile == "mlp" else f"batch-{args.profile}"
    path = _common.write_results(
        name,
        {
            "args": {k: str(v) for k, v in vars(args).items()},
            "runs": rows,
            "ratios": ratios,
            "server_peak_rss_mib": server_rss,
        },
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
