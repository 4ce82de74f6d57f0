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
  (batching off);
- ``--encoded`` (64) PNG files, as ``fmnist images`` writes them, per
  ``predict_images`` request from one client (what ``fmnist batch`` sends),
  batching off: milliseconds per request served, to the floor server, and
  direct (the signature called with a string tensor of the same bytes,
  outputs converted to numpy), taking turns request by request in each of
  ``--rounds`` rounds, medians; served ÷ direct;
- for each profile in ``--trust`` (mlp), the same network exported twice
  through the exporter's ``write_saved_model``: without and with the trust
  outputs (a temperature other than 1, and a novelty score fitted on a
  sample of training images as the Calibrator fits it), both in that
  alternation: direct and served images/s, and trust ÷ plain for each.

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
    python bench/serving.py --quick --profiles mlp --concurrency 1 --images 1   # mostly the PNG and trust cases
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import tempfile
import threading
import time
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
FLOOR = Path(__file__).with_name("_floor_server.py")
TRUST_SUFFIX = "_trust"  # the model name of a profile exported with the trust outputs


def _models_config(base: Path, profiles: list[str]) -> str:
    entries = "".join(
        f'  config {{ name: "{p}" base_path: "{base / p}" model_platform: "tensorflow" }}\n' for p in profiles
    )
    return f"model_config_list {{\n{entries}}}\n"


def encoded_pngs(images: np.ndarray, work: Path) -> list[bytes]:
    """The bytes of ``images`` as PNG files, written as ``fmnist images`` writes them."""
    from fmnist.pipeline import data
    from fmnist.pipeline import images as writer

    paths = writer.run(data.Split(images, np.zeros(len(images), np.uint8)), len(images), work / "pngs")
    return [path.read_bytes() for path in paths]


def alternated(calls: dict[str, Callable[[], int]], rounds: int, seconds: float) -> dict[str, list[float]]:
    """Images/s of each call from one client in each of ``rounds`` rounds of about ``seconds`` per call. Within a
    round the calls take turns request by request (every other round in reverse order), so that a change in the
    machine's load reaches every call alike, and each round's rate is a call's images over the time it took."""
    rates: dict[str, list[float]] = {name: [] for name in calls}
    for round_ in range(rounds):
        order = list(calls)[:: -1 if round_ % 2 else 1]
        images, spent = dict.fromkeys(order, 0), dict.fromkeys(order, 0.0)
        end = time.perf_counter() + seconds * len(order)
        while time.perf_counter() < end:
            for name in order:
                start = time.perf_counter()
                images[name] += calls[name]()
                spent[name] += time.perf_counter() - start
        for name in order:
            rates[name].append(images[name] / spent[name])
    return rates


def encoded_cells(
    target: str, work: Path, models: list[str], loaded: dict, encoded: list[bytes], rounds: int, seconds: float
) -> dict[str, list[float]]:
    """Images/s of ``predict_images`` requests of ``encoded`` from one client, :func:`alternated`: for each model
    ``"<name> served"`` (the server at ``target``) and ``"<name> direct"`` (its SavedModel in ``loaded``), and
    ``"floor"`` (a floor server started here)."""
    import tensorflow as tf

    from fmnist.common.client import PredictionClient

    def direct(name: str) -> Callable[[], int]:
        signature = loaded[name].signatures[names.PREDICT_IMAGES]

        def call() -> int:
            outputs = signature(**{names.INPUT_IMAGE_BYTES: tf.constant(encoded)})
            return len({alias: tensor.numpy() for alias, tensor in outputs.items()}[names.OUTPUT_CLASS_IDS])

        return call

    def served(client: PredictionClient) -> Callable[[], int]:
        return lambda: len(client.predict_encoded(encoded))

    clients = {name: PredictionClient(target, model_name=name) for name in models}
    floor = _common.ServerProcess([], models[0], work / "floor-encoded.log", program=[str(FLOOR)])
    try:
        with PredictionClient(floor.target, model_name=models[0]) as floor_client:
            calls = {"floor": served(floor_client)}
            # A profile and its trust twin side by side, so that their ratio compares cells measured next to each other.
            for name, client in sorted(clients.items(), key=lambda item: item[0].removesuffix(TRUST_SUFFIX)):
                client.wait_until_available()
                calls[f"{name} direct"], calls[f"{name} served"] = direct(name), served(client)
            return alternated(calls, rounds, seconds)
    finally:
        floor.stop()
        for client in clients.values():
            client.close()


def encoded_tables(
    rounds: dict[str, list[float]], models: list[str], trust: list[str], count: int
) -> tuple[list[dict], list[dict]]:
    """Print and return the rows of the PNG case and of the trust case, from :func:`encoded_cells`' rates
    (each call's median over the rounds)."""
    rates = {name: statistics.median(values) for name, values in rounds.items()}
    encoded_rows = [
        {
            "model": name,
            "direct_ms": count / rates[f"{name} direct"] * 1000,
            "floor_ms": count / rates["floor"] * 1000,
            "served_ms": count / rates[f"{name} served"] * 1000,
            "served_ratio": rates[f"{name} direct"] / rates[f"{name} served"],  # served ms ÷ direct ms
            "direct": rates[f"{name} direct"],
            "served": rates[f"{name} served"],
        }
        for name in models
    ]
    print(f"\n{count}-PNG predict_images requests, one client, batching off: ms per request, images/s\n")
    columns = ["model", "direct_ms", "floor_ms", "served_ms", "served_ratio", "direct", "served"]
    print(_common.table(encoded_rows, columns))
    trust_rows = []
    for profile in trust:
        row = {"profile": profile}
        for path in ("direct", "served"):
            plain, with_trust = rates[f"{profile} {path}"], rates[f"{profile}{TRUST_SUFFIX} {path}"]
            row |= {path: plain, f"{path}_trust": with_trust, f"{path}_ratio": with_trust / plain}
        trust_rows.append(row)
    if trust_rows:
        print(f"\nTrust outputs (temperature {_common.TRUST_TEMPERATURE}, novelty score), images/s: trust ÷ plain\n")
        columns = ["profile", "direct", "direct_trust", "direct_ratio", "served", "served_trust", "served_ratio"]
        print(_common.table(trust_rows, columns))
    return encoded_rows, trust_rows


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
    parser.add_argument("--encoded", type=int, default=64, help="PNG files per predict_images request (default 64)")
    parser.add_argument("--trust", help="profiles also exported with the trust outputs (default: the mlp, if profiled)")
    parser.add_argument("--rounds", type=int, default=5, help="alternated rounds of the PNG cases (default 5)")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.requests, args.rounds = 0.4, 300, 3
    profiles = args.profiles.split(",")
    trust = [p for p in args.trust.split(",") if p] if args.trust is not None else [p for p in profiles if p == "mlp"]
    if unknown := sorted(set(trust) - set(profiles)):
        parser.error(f"--trust {','.join(unknown)}: not in --profiles")
    if "cnn" in trust and args.cnn_model_dir:
        parser.error("--trust cnn exports fresh weights; --cnn-model-dir serves a pushed cnn as it is")
    if args.encoded < 1 or args.rounds < 1:
        parser.error("--encoded and --rounds must be at least 1")
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    sizes = [int(n) for n in args.images.split(",")]
    _common.warn_if_busy()

    import tensorflow as tf

    from fmnist.common.client import PredictionClient
    from fmnist.pipeline import data, model

    dataset = data.load()
    pixels = dataset.test.images[: max(sizes)].astype(np.float32)
    work = Path(tempfile.mkdtemp(prefix="fmnist-bench-serving-"))
    encoded = encoded_pngs(dataset.test.images[: args.encoded], work)
    for profile in profiles:
        if profile == "cnn" and args.cnn_model_dir:
            if _common.pushed_profile(args.cnn_model_dir) != profile:
                parser.error(f"--cnn-model-dir {args.cnn_model_dir} is not a cnn")
            _common.copy_pushed(args.cnn_model_dir, work / "models" / profile)
        else:
            network = model.for_serving(model.build(profile), profile)
            _common.export_untrained(profile, work / "models" / profile, trust=False, network=network)
            if profile in trust:  # the same network with the trust outputs
                _common.export_untrained(
                    profile, work / "models" / f"{profile}{TRUST_SUFFIX}", network=network, train=dataset.train
                )
    models = profiles + [f"{profile}{TRUST_SUFFIX}" for profile in trust]
    loaded = {name: tf.saved_model.load(str(work / "models" / name / "1")) for name in models}
    direct = {profile: loaded[profile].signatures[names.SERVING_DEFAULT] for profile in profiles}
    (work / "models.config").write_text(_models_config(work / "models", models))
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

    floor = _common.ServerProcess([], profiles[0], work / "floor.log", program=[str(FLOOR)])
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
            if not batching:
                rates = encoded_cells(server.target, work, models, loaded, encoded, args.rounds, args.seconds)
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
    encoded_rows, trust_rows = encoded_tables(rates, models, trust, args.encoded)
    path = _common.write_results(
        "serving",
        {
            "args": {k: str(v) for k, v in vars(args).items()},
            "batching_parameters": BATCHING,
            "latency": latency_rows,
            "throughput": rows,
            "rest_keep_alive": rest_rows,
            "server_peak_rss_mib": server_rss,
            "encoded": encoded_rows,
            "trust": trust_rows,
        },
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
