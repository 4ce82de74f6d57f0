"""Engine benchmark: ``fmnist batch`` on Beam's FnApiRunner (the job's default) and on Prism, same files.

Prism is Beam's portable local runner (a Go binary): built here with
``go install github.com/apache/beam/sdks/v2/go/cmd/prism@v2.77.0`` and passed by
``--prism_location``, so nothing is downloaded. Both runs classify the same
folder through the same served model (an untrained mlp: its speed does not
depend on its weights), each job in a process of its own as in
``bench/batch.py``; images/s is the job's own rate (pipeline start to finish),
wall seconds include interpreter and TensorFlow start-up. Spark and Flink are
measured by ``tests/test_engines.py``'s logs, not here (see README, "Running
on a cluster").

Usage::

    python bench/engines.py                          # 10,000 files, ~/go/bin/prism
    python bench/engines.py --count 2000 --prism ~/go/bin/prism --images-dir /tmp/pngs
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import _common  # first: fixes sys.path so "batch" is the package, not bench/batch.py

from bench.batch import run_job, subset, write_images
from fmnist import names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("Usage::")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=10_000, help="PNG files (default 10,000)")
    parser.add_argument("--prism", type=Path, default=Path.home() / "go" / "bin" / "prism",
                        help="the prism binary (default ~/go/bin/prism, where go install puts it)")
    parser.add_argument("--images-dir", type=Path, help="where the PNGs go (kept and reused); default a temp dir")
    args = parser.parse_args(argv)
    if not args.prism.exists():
        parser.error(f"no prism at {args.prism}: go install github.com/apache/beam/sdks/v2/go/cmd/prism@v2.77.0")
    _common.warn_if_busy()

    work = Path(tempfile.mkdtemp(prefix="fmnist-bench-engines-"))
    root = args.images_dir or work / "images"
    every = subset(write_images(root, args.count), args.count, root)
    model_base = work / "models" / names.MODEL_NAME
    _common.export_untrained("mlp", model_base)
    server = _common.ServerProcess(["--model_name", names.MODEL_NAME, "--model_base_path", str(model_base)],
                                   names.MODEL_NAME, work / "server.log")
    runners = {
        "FnApiRunner (default)": [],
        "Prism": ["--runner=PrismRunner", f"--prism_location={args.prism}"],
    }
    try:
        # The default runner twice, first untimed in effect: its first request pays the server's graph warm-up.
        run_job("warm-up", every, args.count, ["--server", server.target], None, work)
        rows = [run_job(label, every, args.count, ["--server", server.target, *options], None, work)
                for label, options in runners.items()]
    finally:
        server.stop()
    print(_common.table(rows, ["mode", "files", "seconds", "images_per_s", "wall_s", "peak_rss_mib"]))
    print(f"results: {_common.write_results('engines', {'count': args.count, 'rows': rows})}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
