"""What ``fmnist batch``'s checkpoints cost, and what ``--resume`` saves.

Every run saves each classified batch's outcomes as a checkpoint (``_resume/``
in ``--output``) so that ``--resume`` can finish it after an interruption.
This times the served job on ``--count`` PNGs (10,000) three ways, in turn,
``--repeat`` times each: with the checkpoint writes, without them (the same
code, ``batch.output.write_checkpoint`` replaced by a no-op in the job's process:
only the writes differ), and resumed (``--resume``) on an output whose
checkpoints hold half of the files; each job's own seconds (summary.json) and
its process's CPU seconds over the pipeline run. Then the launcher's reading
of a whole run's checkpoints (what ``--resume`` does before it starts).

Usage::

    python bench/resume.py                      # 10,000 files, 3 rounds
    python bench/resume.py --count 2000 --repeat 1 --images-dir /tmp/pngs
"""

from __future__ import annotations

import argparse
import importlib.util
import io as text_io
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import _common  # first: fixes sys.path so "batch" is the package, not this file

from fmnist.common import names

# The job's entry, optionally without checkpoint writes; run as its own process. It writes the CPU
# seconds its pipeline took (every thread of the process, from its start to its end) to argv[2].
_CHILD = """
import resource, sys
from fmnist.batch import job, output

def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime

if sys.argv[1] == "off":
    output.write_checkpoint = lambda folder, outcomes, with_data=False: ""
execute = job.execute
def timed(*args, **kwargs):
    started = cpu()
    try:
        return execute(*args, **kwargs)
    finally:
        open(sys.argv[2], "w").write(str(cpu() - started))
job.execute = timed
sys.exit(job.main(sys.argv[3:]))
"""


def run(label: str, checkpoints: bool, argv: list[str], log: Path) -> tuple[float, float]:
    """(the job's own seconds (summary.json), pipeline start to finish; its CPU seconds in that time)."""
    cpu_file = log.with_suffix(".cpu")
    code, wall, rss, _ = _common.run_child(
        [sys.executable, "-c", _CHILD, "on" if checkpoints else "off", str(cpu_file), *argv], log
    )
    if code != 0:
        raise RuntimeError(f"{label} failed ({code}); see {log}")
    output = Path(argv[argv.index("--output") + 1])
    seconds = json.loads((output / "summary.json").read_text())["elapsed_seconds"]
    cpu = float(cpu_file.read_text())
    print(f"  {label}: {seconds:.2f} s, {cpu:.2f} CPU s (wall {wall:.1f} s, peak {rss:.0f} MiB)", flush=True)
    return seconds, cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=10_000, help="PNG files (default 10,000)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of the three runs (default 3)")
    parser.add_argument("--batch-size", type=int, default=64, help="the job's --batch-size (default 64)")
    parser.add_argument("--images-dir", type=Path, help="where the PNGs go (kept and reused); default a temp dir")
    args = parser.parse_args(argv)
    _common.warn_if_busy()
    load_before = os.getloadavg()

    from fmnist.batch import output as job_output
    from fmnist.batch import readers
    from fmnist.batch.outcomes import Classified

    spec = importlib.util.spec_from_file_location("bench_batch", Path(__file__).with_name("batch.py"))
    bench_batch = importlib.util.module_from_spec(spec)  # bench/batch.py: "batch" is the package's name
    spec.loader.exec_module(bench_batch)

    work = Path(tempfile.mkdtemp(prefix="fmnist-bench-resume-"))
    root = args.images_dir or work / "images"
    paths = bench_batch.write_images(root, args.count)
    every = bench_batch.subset(paths, args.count, root)
    model_base = work / "models" / names.MODEL_NAME
    _common.export_untrained("mlp", model_base)
    server = _common.ServerProcess(
        [
            "--model_name",
            names.MODEL_NAME,
            "--model_base_path",
            str(model_base),
            "--file_system_poll_wait_seconds",
            "0",
        ],
        names.MODEL_NAME,
        work / "server.log",
    )
    rows = {"with checkpoints": [], "without": [], "resumed, half done": []}
    try:
        common = ["--input", str(every), "--server", server.target, "--batch-size", str(args.batch_size)]
        files, logs = readers.match_inputs([str(every)])
        records = [Classified(path, None, (0.1,) * 10, names.MODEL_NAME, 1) for path in sorted(files)]
        half = records[: len(records) // 2]

        def saved(output: Path, outcomes: list) -> None:
            """Checkpoints of ``outcomes``, as an interrupted run leaves them."""
            folder = str(output / job_output.CHECKPOINTS)
            for start in range(0, len(outcomes), args.batch_size):
                job_output.write_checkpoint(folder, outcomes[start : start + args.batch_size])

        run("warm-up", True, [*common, "--output", str(work / "warm")], work / "warm.log")
        kinds = list(rows)
        for n in range(args.repeat):
            for label in kinds[n % 3 :] + kinds[: n % 3]:  # each kind first, second and last in turn
                output = work / f"out-{label.replace(' ', '-').replace(',', '')}-{n}"
                argv = [*common, "--output", str(output)]
                if label.startswith("resumed"):
                    saved(output, half)
                    argv.append("--resume")
                rows[label].append(run(f"{label} #{n + 1}", label != "without", argv, work / f"{output.name}.log"))
                if label.startswith("resumed"):
                    taken = json.loads((output / "summary.json").read_text())["resumed"]
                    if taken != len(half):
                        raise RuntimeError(f"the resumed run took {taken} outcomes from checkpoints, not {len(half)}")
                shutil.rmtree(output)

        # A whole run's checkpoints read back, as --resume does before it starts.
        output = work / "resumable"
        saved(output, records)
        started = time.perf_counter()
        plan = job_output.plan_resumption(str(output), files, logs, text_io.StringIO())
        read_seconds = time.perf_counter() - started
        print(f"  reading {len(plan.checkpoints)} checkpoints ({plan.done:,} outcomes): {read_seconds:.2f} s")
        size = sum(f.stat().st_size for f in (output / job_output.CHECKPOINTS).iterdir())
    finally:
        server.stop()
    load_after = os.getloadavg()

    def median(label: str, column: int) -> float:
        return statistics.median(row[column] for row in rows[label])

    with_, without, resumed = (median(label, 0) for label in kinds)
    cpu_with, cpu_without, cpu_resumed = (median(label, 1) for label in kinds)
    result = {
        "files": args.count,
        "batch_size": args.batch_size,
        "runs": rows,
        "median_seconds_with": with_,
        "median_seconds_without": without,
        "median_seconds_resumed_half": resumed,
        "median_cpu_seconds_with": cpu_with,
        "median_cpu_seconds_without": cpu_without,
        "median_cpu_seconds_resumed_half": cpu_resumed,
        "checkpoint_cost_us_per_file": (with_ - without) / args.count * 1e6,
        "checkpoint_cpu_us_per_file": (cpu_with - cpu_without) / args.count * 1e6,
        "checkpoint_bytes": size,
        "launcher_read_seconds": read_seconds,
        "load_average_before": load_before,
        "load_average_after": load_after,
    }
    print(
        f"\nServed job, {args.count:,} PNGs, --batch-size {args.batch_size}, medians of {args.repeat}: "
        f"{with_:.2f} s with checkpoints, {without:.2f} s without "
        f"({result['checkpoint_cost_us_per_file']:+.1f} us per file); the job's CPU {cpu_with:.2f} s with, "
        f"{cpu_without:.2f} s without ({result['checkpoint_cpu_us_per_file']:+.1f} us per file)"
    )
    print(
        f"resumed with half done: {resumed:.2f} s, {cpu_resumed:.2f} CPU s; a whole run's checkpoints: "
        f"{size / 1e6:.1f} MB, read by the launcher in {read_seconds:.2f} s"
    )
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    print(f"wrote {_common.write_results('resume', result)}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
