"""Serving benchmark: the embedded server on loopback against a direct call of the same signature.

For each profile (mlp, cnn; exported with fresh weights, or with
``--cnn-model-dir`` a pushed cnn: the cnn's mirror pass runs only for images it
is unsure of, which with fresh weights is every image, so an untrained cnn
measures its worst case) it measures, side by side in one run:

- single-image ``Predict`` latency p50/p99 at concurrency 1 through
  :class:`fmnist.common.client.PredictionClient`, batching off and on;
- throughput in images/s at concurrency 1, 8 and 32 with 1, 32 and 256
  images per request, batching off and on;
- the same inputs through the SavedModel's ``serving_default`` signature
  called in this process (outputs converted to numpy), the limit a server
  can approach; and prints served ÷ direct;
- the same calls to a server that runs no model (bench/_floor_server.py):
  what the client, gRPC and protobuf alone cost, the floor under any
  Python-served number;
- one image through REST ``:predict`` on kept-alive connections (the way
  HTTP clients call it): p50/p99 on one connection, images/s on 1 and 16
  (batching off).

The server runs in a child process (``python -m fmnist.serving.serve``) so client
and server do not share a GIL; both share the machine's cores, as on a
single-host deployment. With batching it uses the parameters in
:data:`BATCHING` (see bench/README.md for why they differ from
serving/batching.config).

Usage::

    python bench/serving.py              # about 3 minutes on 2 cores
    python bench/serving.py --quick      # about 1 minute
    python bench/serving.py --profiles mlp --seconds 3 --concurrency 1,32 --images 1,256
    python bench/serving.py --profiles cnn --cnn-model-dir models/fashion_mnist/1764115200
"""

from __future__ import annotations

import argparse
import http.client
import json
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import _common  # first: fixes sys.path so "serving" is the package, not this file
import numpy as np

from fmnist.common import names

# Greedy batching: no waiting (a batch closes as soon as a batch thread is free), batches big
# enough to merge 256-image requests, a queue deep enough for 32 clients of 256 images.
BATCHING = """max_batch_size { value: 1024 }
batch_timeout_micros { value: 0 }
max_enqueued_batches { value: 64 }
num_batch_threads { value: 2 }
"""


def _models_config(base: Path, profiles: list[str]) -> str:
    entries = "".join(
        f'  config {{ name: "{p}" base_path: "{base / p}" model_platform: "tensorflow" }}\n' for p in profiles
    )
    return f"model_config_list {{\n{entries}}}\n"


def rest_predict(port: int, model: str, body: bytes) -> Callable[[], int]:
    """One REST :predict per call, on a kept-alive connection of the calling thread's own."""
    local = threading.local()

    def call() -> int:
        if not hasattr(local, "connection"):
            local.connection = http.client.HTTPConnection("127.0.0.1", port)
        local.connection.request("POST", f"/v1/models/{model}:predict", body, {"Content-Type": "application/json"})
        response = local.connection.getresponse()
        payload = response.read()
        if response.status != 200:
            raise RuntimeError(f"REST predict failed: {response.status} {payload[:200]!r}")
        return 1

    return call


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("Usage::")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--profiles", default="mlp,cnn", help="comma-separated model profiles (default mlp,cnn)")
    parser.add_argument("--concurrency", default="1,8,32", help="concurrent clients (default 1,8,32)")
    parser.add_argument("--images", default="1,32,256", help="images per request (default 1,32,256)")
    parser.add_argument("--seconds", type=float, default=1.5, help="measured seconds per throughput cell (default 1.5)")
    parser.add_argument("--requests", type=int, default=2000, help="single-image requests for latency (default 2000)")
    parser.add_argument("--quick", action="store_true", help="0.4 s per cell, 300 latency requests")
    parser.add_argument("--cnn-model-dir", type=Path, help="serve this pushed cnn version instead of an untrained cnn")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.requests = 0.4, 300
    profiles = args.profiles.split(",")
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    sizes = [int(n) for n in args.images.split(",")]
    _common.warn_if_busy()

    import tensorflow as tf

    from fmnist.common.client import PredictionClient
    from fmnist.pipeline import data

    pixels = data.load().test.images[: max(sizes)].astype(np.float32)
    work = Path(tempfile.mkdtemp(prefix="fmnist-bench-serving-"))
    direct = {}
    for profile in profiles:
        if profile == "cnn" and args.cnn_model_dir:
            if _common.pushed_profile(args.cnn_model_dir) != profile:
                parser.error(f"--cnn-model-dir {args.cnn_model_dir} is not a cnn")
            path = _common.copy_pushed(args.cnn_model_dir, work / "models" / profile)
        else:
            path = _common.export_untrained(profile, work / "models" / profile)
        direct[profile] = tf.saved_model.load(str(path)).signatures[names.SERVING_DEFAULT]
    (work / "models.config").write_text(_models_config(work / "models", profiles))
    (work / "batching.config").write_text(BATCHING)

    latency_rows, rows = [], []
    for profile in profiles:
        signature = direct[profile]

        def run_direct(n: int) -> int:
            outputs = signature(**{names.INPUT_IMAGES: tf.constant(pixels[:n])})
            return len(outputs[names.OUTPUT_PROBABILITIES].numpy())

        direct_ms = _common.latencies(lambda: run_direct(1), args.requests)
        latency_rows.append(
            {
                "profile": profile,
                "path": "direct",
                "p50_ms": _common.percentile(direct_ms, 50),
                "p99_ms": _common.percentile(direct_ms, 99),
            }
        )
        for n in sizes:
            for c in concurrencies:
                rate = _common.throughput(lambda: run_direct(n), c, args.seconds)
                rows.append({"profile": profile, "images": n, "concurrency": c, "direct": rate})
                print(f"  {profile} direct {n} img x {c}: {rate:,.0f} images/s", flush=True)

    floor = _common.ServerProcess(
        [], profiles[0], work / "floor.log", program=[str(Path(__file__).with_name("_floor_server.py"))]
    )
    try:
        with PredictionClient(floor.target, model_name=profiles[0]) as client:
            floor_ms = _common.latencies(lambda: client.predict(pixels[:1]), args.requests)
            latency_rows.insert(
                0,
                {
                    "profile": "any",
                    "path": "gRPC floor (no model)",
                    "p50_ms": _common.percentile(floor_ms, 50),
                    "p99_ms": _common.percentile(floor_ms, 99),
                },
            )
            floor_rates = {}
            for n in sizes:
                for c in concurrencies:
                    floor_rates[n, c] = _common.throughput(lambda: len(client.predict(pixels[:n])), c, args.seconds)
                    print(f"  floor {n} img x {c}: {floor_rates[n, c]:,.0f} images/s", flush=True)
    finally:
        floor.stop()
    for row in rows:
        row["floor"] = floor_rates[row["images"], row["concurrency"]]
        row["floor_ratio"] = row["floor"] / row["direct"]  # the best served ÷ direct a Python server could show

    server_rss, rest_rows = {}, []
    for batching in (False, True):
        mode = "batching" if batching else "no batching"
        rest_port = _common.free_port()
        flags = [
            "--model_config_file",
            str(work / "models.config"),
            "--file_system_poll_wait_seconds",
            "0",
            "--rest_api_port",
            str(rest_port),
        ]
        if batching:
            flags += ["--enable_batching", "--batching_parameters_file", str(work / "batching.config")]
        server = _common.ServerProcess(flags, profiles[0], work / f"server-{int(batching)}.log")
        try:
            for profile in profiles:
                with PredictionClient(server.target, model_name=profile) as client:
                    client.wait_until_available()
                    served_ms = _common.latencies(lambda: client.predict(pixels[:1]), args.requests)
                    latency_rows.append(
                        {
                            "profile": profile,
                            "path": f"served, {mode}",
                            "p50_ms": _common.percentile(served_ms, 50),
                            "p99_ms": _common.percentile(served_ms, 99),
                        }
                    )
                    for row in rows:
                        if row["profile"] != profile:
                            continue
                        n, c = row["images"], row["concurrency"]
                        rate = _common.throughput(lambda: len(client.predict(pixels[:n])), c, args.seconds)
                        key = "served_batching" if batching else "served"
                        row[key], row[key + "_ratio"] = rate, rate / row["direct"]
                        print(f"  {profile} {mode} {n} img x {c}: {rate:,.0f} images/s", flush=True)
                if not batching:
                    body = json.dumps({"instances": pixels[:1].tolist()}).encode()
                    rest_ms = _common.latencies(rest_predict(rest_port, profile, body), args.requests)
                    row = {
                        "profile": profile,
                        "p50_ms": _common.percentile(rest_ms, 50),
                        "p99_ms": _common.percentile(rest_ms, 99),
                    }
                    for connections in (1, 16):
                        row[f"images_s_{connections}_conn"] = _common.throughput(
                            rest_predict(rest_port, profile, body), connections, args.seconds
                        )
                    rest_rows.append(row)
                    print(f"  {profile} REST keep-alive: p50 {row['p50_ms']:.2f} ms", flush=True)
        finally:
            server_rss[mode] = server.stop()

    print("\nSingle-image Predict latency, concurrency 1 (ms)\n")
    print(_common.table(latency_rows, ["profile", "path", "p50_ms", "p99_ms"]))
    print("\nThroughput (images/s) and served ÷ direct\n")
    columns = [
        "profile",
        "images",
        "concurrency",
        "direct",
        "floor",
        "floor_ratio",
        "served",
        "served_ratio",
        "served_batching",
        "served_batching_ratio",
    ]
    print(_common.table(rows, columns))
    print("\nREST :predict, one image, kept-alive connections, batching off\n")
    print(_common.table(rest_rows, ["profile", "p50_ms", "p99_ms", "images_s_1_conn", "images_s_16_conn"]))
    print("\nfloor: the same calls to a server that runs no model (bench/_floor_server.py)")
    print(f"server peak RSS (MiB): {', '.join(f'{k} {v:.0f}' for k, v in server_rss.items())}")
    path = _common.write_results(
        "serving",
        {
            "args": {k: str(v) for k, v in vars(args).items()},
            "batching_parameters": BATCHING,
            "latency": latency_rows,
            "throughput": rows,
            "rest_keep_alive": rest_rows,
            "server_peak_rss_mib": server_rss,
        },
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
