"""What request logging costs a served request: the embedded server with and without a logging_config.

The same untrained mlp is served from two model config files that differ only
in ``logging_config`` (sampling rate 1.0, the "file" collector: every request
and its response written as a PredictionLog record). The two servers run in
child processes and are measured alternately, ``--rounds`` times each, so
drifts of the host's speed fall on both: single-image Predict latency (p50,
p99) at concurrency 1, and images/s with 32 images per request from 8
clients. It prints logged ÷ plain for each.

Usage::

    python bench/request_log.py              # about 1 minute on 2 cores
    python bench/request_log.py --rounds 5 --requests 3000
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import _common  # first: fixes sys.path so "serving" is the package, not this file

from fmnist.common import names

MODEL = "mlp"


def _config(base: Path, log_prefix: Path | None) -> str:
    logging = (
        ""
        if log_prefix is None
        else f" logging_config {{ sampling_config {{ sampling_rate: 1.0 }} "
        f'log_collector_config {{ type: "file" filename_prefix: "{log_prefix}" }} }}'
    )
    return (
        f'model_config_list {{ config {{ name: "{MODEL}" base_path: "{base}" model_platform: "tensorflow"'
        f"{logging} }} }}\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("Usage::")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rounds", type=int, default=3, help="alternating measurements of each server (default 3)")
    parser.add_argument(
        "--requests", type=int, default=1500, help="single-image requests per latency run (default 1500)"
    )
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds per throughput run (default 2)")
    args = parser.parse_args(argv)
    _common.warn_if_busy()

    from fmnist.common.client import PredictionClient
    from fmnist.pipeline import data

    pixels = data.load().test.images[:32].astype("float32")
    work = Path(tempfile.mkdtemp(prefix="fmnist-bench-request-log-"))
    base = work / "models" / MODEL
    _common.export_untrained(MODEL, base)
    configs = {"plain": work / "plain.config", "logged": work / "logged.config"}
    configs["plain"].write_text(_config(base, None))
    configs["logged"].write_text(_config(base, work / "logs" / MODEL))

    results: dict[str, dict[str, list[float]]] = {mode: {"p50": [], "p99": [], "rate": []} for mode in configs}
    for round_ in range(args.rounds):
        for mode, config in configs.items():
            server = _common.ServerProcess(
                ["--model_config_file", str(config), "--file_system_poll_wait_seconds", "0"],
                MODEL,
                work / f"{mode}-{round_}.log",
            )
            try:
                with PredictionClient(server.target, model_name=MODEL) as client:
                    client.wait_until_available()
                    ms = _common.latencies(lambda: client.predict(pixels[:1]), args.requests)
                    rate = _common.throughput(lambda: len(client.predict(pixels)), 8, args.seconds)
            finally:
                server.stop()
            results[mode]["p50"].append(_common.percentile(ms, 50))
            results[mode]["p99"].append(_common.percentile(ms, 99))
            results[mode]["rate"].append(rate)
            print(
                f"  round {round_ + 1} {mode}: p50 {results[mode]['p50'][-1]:.3f} ms, {rate:,.0f} images/s", flush=True
            )

    logged = sum(1 for _ in (work / "logs").glob(f"{MODEL}.*{names.REQUEST_LOG_SUFFIX}"))
    rows = [{"server": mode, **{k: statistics.median(v) for k, v in r.items()}} for mode, r in results.items()]
    ratio = {k: rows[1][k] / rows[0][k] for k in ("p50", "p99", "rate")}
    rows.append({"server": "logged ÷ plain", **ratio})
    print("\nSingle-image Predict latency (ms, medians of the rounds) and images/s (32 images x 8 clients)\n")
    print(_common.table(rows, ["server", "p50", "p99", "rate"]))
    print(f"\nlog files written by the logged server: {logged}")
    path = _common.write_results("request_log", {"args": vars(args), "rows": rows})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
