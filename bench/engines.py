"""Engine benchmark: ``fmnist batch`` on Beam's FnApiRunner (the job's default), its portable path, Prism, Spark
and Flink, same files.

The portable path is Beam's own local job service and an external SDK
worker pool, each a process of its own (:func:`engines.cluster.portable_local`):
the job API and Fn API the cluster runners use, without an engine.

Prism is Beam's portable local runner (a Go binary): built here with
``go install github.com/apache/beam/sdks/v2/go/cmd/prism@v2.77.0`` and passed by
``--prism_location``, so nothing is downloaded. Spark is a standalone cluster
of two workers and Flink a MiniCluster, each behind Beam's job server
(:mod:`engines.cluster`, as tests/test_engines.py starts them); the clusters
are started before the timed job, so their start-up is not in its figures,
but each job's own start (staging, SDK workers) is. Every run classifies the
same folder through the same served model (an untrained mlp: its speed does
not depend on its weights), each job in a process of its own as in
``bench/batch.py``; images/s is the job's own rate (pipeline start to finish),
wall seconds include interpreter start-up. On 2 cores no engine can be faster
than one process: the figures are each engine's overhead.

Usage::

    python bench/engines.py                          # 10,000 files; every runner whose parts are here
    python bench/engines.py --count 2000 --runners default,spark --images-dir /tmp/pngs
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from pathlib import Path

import _common  # first: fixes sys.path so "batch" is the package, not bench/batch.py

from bench.batch import run_job, subset, write_images
from engines import cluster
from fmnist.common import names


@contextlib.contextmanager
def _options(start, folder: Path):
    """The Beam options of an engine started by ``start(folder)`` (stopped on exit)."""
    with start(folder) as running:
        yield running.options


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("Usage::")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--count", type=int, default=10_000, help="PNG files (default 10,000)")
    parser.add_argument(
        "--prism",
        type=Path,
        default=Path.home() / "go" / "bin" / "prism",
        help="the prism binary (default ~/go/bin/prism, where go install puts it)",
    )
    parser.add_argument("--images-dir", type=Path, help="where the PNGs go (kept and reused); default a temp dir")
    parser.add_argument(
        "--runners",
        default="default,portable,prism,spark,flink",
        help="which of default, portable, prism, spark, flink (default all; one whose parts are "
        "missing is skipped with the reason)",
    )
    args = parser.parse_args(argv)
    wanted = args.runners.split(",")
    missing = {
        "prism": None
        if args.prism.exists()
        else f"no prism at {args.prism}: go install github.com/apache/beam/sdks/v2/go/cmd/prism@v2.77.0",
        **{engine: cluster.missing(engine) for engine in cluster.ENGINES},
    }
    for runner in wanted:
        if missing.get(runner):
            print(f"  {runner} skipped: {missing[runner]}", flush=True)
    _common.warn_if_busy()

    work = Path(tempfile.mkdtemp(prefix="fmnist-bench-engines-"))
    root = args.images_dir or work / "images"
    every = subset(write_images(root, args.count), args.count, root)
    model_base = work / "models" / names.MODEL_NAME
    _common.export_untrained("mlp", model_base)
    server = _common.ServerProcess(
        ["--model_name", names.MODEL_NAME, "--model_base_path", str(model_base)], names.MODEL_NAME, work / "server.log"
    )
    started = {  # runner → (label, a context manager giving its Beam options)
        "default": ("FnApiRunner (default)", contextlib.nullcontext([])),
        "portable": ("Portable (job service + worker pool)", _options(cluster.portable_local, work / "portable")),
        "prism": ("Prism", contextlib.nullcontext(["--runner=PrismRunner", f"--prism_location={args.prism}"])),
        "spark": ("Spark, 2 workers", _options(cluster.spark_cluster, work / "spark")),
        "flink": ("Flink MiniCluster", _options(cluster.flink_cluster, work / "flink")),
    }
    rows = []
    try:
        # The default runner once untimed: its first request pays the server's graph warm-up.
        run_job("warm-up", every, args.count, ["--server", server.target], None, work)
        for runner in (r for r in wanted if not missing.get(r)):
            label, context = started[runner]
            with context as options:
                rows.append(run_job(label, every, args.count, ["--server", server.target, *options], None, work))
    finally:
        server.stop()
    baseline = next((row["images_per_s"] for row in rows if row["mode"] == started["default"][0]), None)
    for row in rows:
        row["vs_default"] = row["images_per_s"] / baseline if baseline else None
    print(_common.table(rows, ["mode", "files", "seconds", "images_per_s", "vs_default", "wall_s", "peak_rss_mib"]))
    print(f"results: {_common.write_results('engines', {'count': args.count, 'rows': rows})}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
