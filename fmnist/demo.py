"""``fmnist demo``: the whole workflow on one machine, no Docker, no network.

train → push version 1 → start the embedded server → write sample folders →
Beam batch job through the server → push version 2 while serving → watch the
server swap to it → stop cleanly. It is the top layer: the only module besides
the CLI that ties ``pipeline``, ``serving`` and ``batch`` together.

Usage: ``fmnist demo [--workdir runs/demo] [--profile mlp] [--count 1000]``
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tensorflow_serving.apis import get_model_status_pb2

from fmnist.batch import job
from fmnist.batch import summary as batch_summary
from fmnist.common import logs, names, usage
from fmnist.common.client import PredictionClient
from fmnist.pipeline import data, evaluator, exporter, images, trainer
from fmnist.serving import server as serving_server

_STAGES = 7


@dataclass(frozen=True)
class DemoConfig:
    workdir: str = "runs/demo"
    data_dir: str | None = None
    profile: str = "mlp"
    epochs: int | None = None  # None: the profile's recipe
    limit: int | None = None  # train on the first N images (quick runs, tests)
    count: int = 1000  # sample images the batch job classifies
    port: int = 0  # 0: a free port
    min_accuracy: float = 0.85
    max_regression: float = 0.01
    poll_seconds: float = 1.0


def _stage(step: int, text: str) -> None:
    print(f"\n==> [{step}/{_STAGES}] {text}", flush=True)


def _write_samples(split, count: int, out: Path) -> Path:
    """Labelled PNG folders, plus one truncated file to show where bad input goes."""
    paths = images.run(split, count, out, prefix="test", progress=True)
    broken = paths[0].with_name("truncated.png")
    broken.write_bytes(paths[0].read_bytes()[:40])
    return out


def _wait_for_version(client, version: int, timeout: float) -> dict[int, str]:
    """Poll GetModelStatus until ``version`` is AVAILABLE and every other version has gone to END (the
    latest-version policy unloads the old one only after the new one serves); returns every version's state."""
    deadline = time.monotonic() + timeout
    while True:
        states = {
            s.version: get_model_status_pb2.ModelVersionStatus.State.Name(s.state)
            for s in client.status().model_version_status
        }
        swapped = states.get(version) == "AVAILABLE" and all(s == "END" for v, s in states.items() if v != version)
        if swapped or time.monotonic() > deadline:
            return states
        time.sleep(0.2)


def run(config: DemoConfig) -> int:
    started = time.monotonic()
    workdir = Path(config.workdir)
    if workdir.exists():
        shutil.rmtree(workdir)  # the demo's versions are 1 and 2: start from an empty models dir
    models_dir = workdir / "models"
    dataset = data.load(config.data_dir)

    def export(version: int, seed: int):
        return exporter.run(
            exporter.ExporterConfig(
                models_dir=str(models_dir),
                run_dir=str(workdir / f"run-{version}"),
                train=trainer.TrainConfig(profile=config.profile, epochs=config.epochs, limit=config.limit, seed=seed),
                eval=evaluator.EvalConfig(min_accuracy=config.min_accuracy, max_regression=config.max_regression),
            ),
            load_data=lambda _=None: dataset,
            clock=lambda: version,
        )

    _stage(1, f"train the {config.profile} profile and push version 1")
    first = export(1, seed=42)
    if first.version_dir is None:
        print(f"error: version 1 not pushed: {first.evaluation.reason}", file=sys.stderr)
        return 1

    _stage(2, "start the embedded TF Serving-compatible server")
    server = serving_server.start(
        serving_server.ServerConfig(
            port=config.port,
            model_name=names.MODEL_NAME,
            model_base_path=str(models_dir / names.MODEL_NAME),
            file_system_poll_wait_seconds=config.poll_seconds,
            enable_batching=True,
        )
    )
    target = f"127.0.0.1:{server.port}"
    print(f"    serving {names.MODEL_NAME} on {target}")
    try:
        with PredictionClient(target) as client:
            print(f"    version {client.wait_until_available(timeout=60)} is AVAILABLE")

            _stage(3, f"write {config.count} held-out images as PNG folders")
            samples = _write_samples(dataset.test, config.count, workdir / "samples")

            _stage(4, "classify the folders with the Beam batch job, through the server")
            output = workdir / "batch-output"
            code = job.main(["--input", str(samples), "--output", str(output), "--server", target])
            if code != 0:
                print("error: the batch job failed", file=sys.stderr)
                return code

            _stage(5, "where everything is")
            summary = json.loads((output / batch_summary.SUMMARY_FILE).read_text())
            evaluation = summary["evaluation"]
            print(
                f"    {summary['classified']} of {summary['inputs']} files classified, {summary['errors']} in errors "
                f"({', '.join(summary['errors_by_reason'])}); accuracy {evaluation['accuracy']:.2%} on the "
                f"{evaluation['files']} labelled files not flagged unfamiliar "
                f"({evaluation['unfamiliar_files']} flagged)"
            )
            print(f"    records, errors, summary: {output}/")
            print(f"    plots: {first.run_dir}/*.png, {output}/{batch_summary.CONFUSION_FILE}")
            print(f"    version 1 with its config, metrics and plots: {first.version_dir}/")

            _stage(6, "train and push version 2 while the server runs")
            second = export(2, seed=43)
            if second.version_dir is None:
                print(f"error: version 2 not pushed: {second.evaluation.reason}", file=sys.stderr)
                return 1
            states = _wait_for_version(client, 2, timeout=60)
            print(f"    versions: {states}")
            answer = client.predict(dataset.test.images[:1])
            print(f"    a request now answers from version {answer.version}: {answer.class_names[0]}")
            if answer.version != 2:
                print("error: the server did not switch to version 2", file=sys.stderr)
                return 1
    finally:
        _stage(7, "stop the server")
        server.stop(grace=5)
    print(f"\ndemo finished in {time.monotonic() - started:.0f} s; everything is under {workdir}/")
    return 0


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    defaults = DemoConfig()
    parser = usage.CommandParser(
        prog=prog,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Train → push → serve → batch → push again, end to end, on this machine with the embedded server.",
    )
    parser.add_argument("--workdir", default=defaults.workdir, help="everything the demo writes (emptied first)")
    parser.add_argument(
        "--data-dir", help=f"directory of the IDX files (else ${names.ENV_DATA_DIR}, the Keras cache, a download)"
    )
    parser.add_argument("--profile", default=defaults.profile, choices=("mlp", "cnn"))
    parser.add_argument("--epochs", type=int, help="default: the profile's recipe")
    parser.add_argument("--limit", type=int, help="train on the first N training images only")
    parser.add_argument("--count", type=int, default=defaults.count, help="sample images for the batch job")
    parser.add_argument("--port", type=int, default=defaults.port, help="gRPC port of the embedded server (0: free)")
    parser.add_argument("--min-accuracy", type=float, default=defaults.min_accuracy)
    parser.add_argument("--max-regression", type=float, default=defaults.max_regression)
    args = parser.parse_args(argv)
    logs.configure(logging.INFO)
    config = DemoConfig(
        **{f.name: getattr(args, f.name) for f in dataclasses.fields(DemoConfig) if hasattr(args, f.name)}
    )
    try:
        return run(config)
    except data.DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
