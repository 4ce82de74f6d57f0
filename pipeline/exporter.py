"""``fmnist train``: ExampleGen → Trainer → Evaluator → Calibrator → InfraValidator → Pusher, TFX-style.

Writes the run's figures and JSON into a run directory and, when the model is
blessed and a sandboxed model server answers with it as the exporter does,
pushes it as ``<models-dir>/<model-name>/<version>/`` with the resolved
config, metrics, figures and warmup records inside ``assets.extra/``, so a
served version explains itself.

Usage: ``fmnist train --profile mlp --epochs 10 --models-dir models``
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tensorflow as tf

from fmnist.common import logs, names, usage
from fmnist.common.report import confusion_matrix_png
from fmnist.pipeline import (
    calibrator,
    data,
    evaluator,
    export,
    infra_validator,
    model_card,
    novelty,
    plots,
    pusher,
    trainer,
)
from fmnist.pipeline.model import PROFILES, network_of

PLOTS = ("samples.png", "training_curves.png", "confusion_matrix.png", "reliability.png")
DIAGRAM = "model.png"  # drawn only where Graphviz is installed
_WARMUP_IMAGES = 8


@dataclass(frozen=True)
class ExporterConfig:
    data_dir: str | None = None
    models_dir: str = "models"
    model_name: str = names.MODEL_NAME
    run_dir: str = "runs/latest"
    max_image_pixels: int = export.DEFAULT_MAX_PIXELS
    train: trainer.TrainConfig = field(default_factory=trainer.TrainConfig)
    eval: evaluator.EvalConfig = field(default_factory=evaluator.EvalConfig)
    novelty: novelty.NoveltyConfig | None = None  # None: the defaults, with the profile's texture_distance
    infra: infra_validator.InfraConfig = field(default_factory=infra_validator.InfraConfig)

    def resolve(self) -> ExporterConfig:
        """Every default the profile sets filled in, so the saved config says what actually ran."""
        train = self.train.resolve()
        texture = PROFILES[train.profile].texture_distance
        return dataclasses.replace(self, train=train, novelty=self.novelty or novelty.NoveltyConfig(texture=texture))


@dataclass(frozen=True)
class ExportResult:
    evaluation: evaluator.Evaluation
    run_dir: Path
    version_dir: Path | None  # None when nothing was pushed
    refusal: str | None = None  # why nothing was pushed, when something other than the Evaluator refused


def _encode_png(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return buffer.getvalue()


def _stage(step: int, text: str) -> None:
    print(f"[{step}/6] {text}", flush=True)


def run(
    config: ExporterConfig,
    *,
    load_data: Callable[..., data.Dataset] = data.load,
    clock: Callable[[], float] = time.time,
) -> ExportResult:
    """Run the six stages; ``clock`` gives the Unix time that becomes the pushed version number."""
    started = time.monotonic()
    config = config.resolve()
    run_dir = Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)

    _stage(1, "ExampleGen: reading Fashion-MNIST")
    dataset = load_data(config.data_dir)
    print(f"      {dataset.source}: {len(dataset.train)} train, {len(dataset.test)} held-out images")
    plots.sample_grid(dataset.train.images, dataset.train.labels, run_dir / "samples.png")

    _stage(2, f"Trainer: profile {config.train.profile}, {config.train.epochs} epochs")
    trained = trainer.run(config.train, dataset.train)
    used = f"{trained.fitted:,} images fitted, {trained.validated:,} held back for validation"
    print(
        f"      {used}" + (f" (--limit {config.train.limit:,} of {len(dataset.train):,})" if config.train.limit else "")
    )
    t = config.train
    plots.training_curves(
        trained.history, run_dir / "training_curves.png", title=f"profile {t.profile}, seed {t.seed}: {used}"
    )
    plots.model_diagram(network_of(trained.model), run_dir / DIAGRAM)

    _stage(3, "Evaluator: held-out metrics and blessing")
    model_base = Path(config.models_dir) / config.model_name
    baseline = pusher.latest_metrics(model_base)
    evaluation = evaluator.run(trained.model, dataset.test, config.eval, baseline)
    (run_dir / "confusion_matrix.png").write_bytes(
        confusion_matrix_png(
            evaluation.metrics["confusion_matrix"],
            title=f"{config.train.profile}: held-out accuracy {evaluation.metrics['accuracy']:.4f}",
        )
    )
    print(
        f"      accuracy {evaluation.metrics['accuracy']:.4f}; "
        f"{'blessed' if evaluation.blessed else 'NOT blessed'}: {evaluation.reason}"
    )

    _stage(4, f"Calibrator: temperature and novelty threshold on the {len(trained.held_back):,} held-back images")
    fitted = data.Split(images=dataset.train.images[: trained.fitted], labels=dataset.train.labels[: trained.fitted])
    calibration = calibrator.run(trained.model, fitted, trained.held_back, dataset.test, config.novelty)
    plots.reliability_diagram(
        calibration.before,
        calibration.after,
        calibration.temperature,
        run_dir / "reliability.png",
        title=f"{config.train.profile}: test split",
    )
    c, n = calibration.metrics["calibration"], calibration.metrics["novelty"]
    print(
        f"      temperature {c['temperature']:.3f}: test ECE {c['test_ece_before']:.4f} → {c['test_ece_after']:.4f}; "
        f"novelty threshold {n['threshold']:.3f} flags {n['test_flagged']:.1%} of the test split"
    )
    pushed = evaluation.blessed or config.eval.force
    metrics = {
        **evaluation.metrics,
        "blessing": {
            "blessed": evaluation.blessed,
            "reason": evaluation.reason,
            "forced": pushed and not evaluation.blessed,
            "baseline_version": baseline[0] if baseline else None,
        },
        **calibration.metrics,
        "history": trained.history,
        "data_source": dataset.source,
    }
    config_json = json.dumps(dataclasses.asdict(config), indent=2)
    (run_dir / names.CONFIG_FILE).write_text(config_json)

    def record(**more) -> str:
        text = json.dumps({**metrics, **more, "seconds": round(time.monotonic() - started, 1)}, indent=2)
        (run_dir / names.METRICS_FILE).write_text(text)
        return text

    if not pushed:
        record()
        return ExportResult(evaluation=evaluation, run_dir=run_dir, version_dir=None)

    _stage(5, "InfraValidator: the candidate in a sandboxed model server")
    warm = dataset.test.images[:_WARMUP_IMAGES]
    graph = {"max_pixels": config.max_image_pixels, "temperature": calibration.temperature}
    functions = export.serving_functions(trained.model, novelty=calibration.novelty, **graph)

    def in_process(signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        function = functions[signature][0]
        return {alias: t.numpy() for alias, t in function(**{k: tf.constant(v) for k, v in inputs.items()}).items()}

    with pusher.staged(
        trained.model,
        model_base,
        warmup=export.warmup_requests(config.model_name, warm, [_encode_png(i) for i in warm]),
        novelty=calibration.novelty,
        **graph,
    ) as candidate:
        infra = infra_validator.run(config.infra, candidate, config.model_name, in_process)
        metrics_json = record(infra_validation=infra.as_dict())
        print(f"      {'passed' if infra.passed else 'REFUSED'} in {infra.seconds:.1f} s: {infra.reason}")
        if not infra.passed:
            return ExportResult(
                evaluation=evaluation, run_dir=run_dir, version_dir=None, refusal=f"InfraValidator: {infra.reason}"
            )

        _stage(6, f"Pusher: exporting to {model_base}")
        extras = {names.CONFIG_FILE: config_json, names.METRICS_FILE: metrics_json}
        extras.update({p: run_dir / p for p in (*PLOTS, DIAGRAM) if (run_dir / p).is_file()})
        version_dir = pusher.publish(
            candidate,
            extras=extras,
            clock=clock,
            card=lambda version_dir, version: model_card.render(
                version_dir, version=version, config=json.loads(config_json), metrics=json.loads(metrics_json)
            ),
        )
    print(f"      pushed version {version_dir.name} → {version_dir}")
    if not evaluation.blessed:
        print(
            f"      warning: --force pushed version {version_dir.name} although it was NOT blessed "
            f"({evaluation.reason}); it is now the latest version, so a server watching {model_base} "
            "serves it instead of the last blessed one",
            flush=True,
        )
    return ExportResult(evaluation=evaluation, run_dir=run_dir, version_dir=version_dir)


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    t, e, d = trainer.TrainConfig(), evaluator.EvalConfig(), ExporterConfig()
    parser = usage.CommandParser(
        prog=prog,
        description="Train a Fashion-MNIST classifier, evaluate it on the held-out split, bless it "
        "against a threshold and the latest pushed version, and push it as a versioned SavedModel.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--data-dir",
        help=f"directory of the four IDX files (else ${names.ENV_DATA_DIR}, the Keras cache, then a download)",
    )
    parser.add_argument("--models-dir", default=d.models_dir, help="versions go to MODELS_DIR/MODEL_NAME/VERSION")
    parser.add_argument("--model-name", default=d.model_name)
    parser.add_argument("--run-dir", default=d.run_dir, help="where plots, config.json and metrics.json go")
    parser.add_argument("--profile", choices=sorted(PROFILES), default=t.profile)
    recipes = "; ".join(
        f"{name}: {p.epochs} epochs, batch {p.batch_size}, learning rate {p.learning_rate}"
        f"{' (warm-up + cosine)' if p.cosine else ''}, validation split {p.validation_split}"
        for name, p in PROFILES.items()
    )
    recipe = parser.add_argument_group("recipe", f"default: the profile's own ({recipes})")
    recipe.add_argument("--epochs", type=int)
    recipe.add_argument("--batch-size", type=int)
    recipe.add_argument("--validation-split", type=float)
    recipe.add_argument("--learning-rate", type=float, help="the peak rate with a cosine schedule")
    parser.add_argument("--limit", type=int, help="train on the first N training images only (quick runs)")
    parser.add_argument("--seed", type=int, default=t.seed)
    parser.add_argument("--min-accuracy", type=float, default=e.min_accuracy)
    parser.add_argument("--max-regression", type=float, default=e.max_regression)
    parser.add_argument("--force", action="store_true", help="push even if the model is not blessed")
    parser.add_argument(
        "--texture-distance",
        action=argparse.BooleanOptionalAction,
        help="include the texture distance in the novelty score (default: the profile's, "
        + ", ".join(f"{name} {'on' if p.texture_distance else 'off'}" for name, p in PROFILES.items())
        + "); it catches more non-garments prepared as Fashion-MNIST's images are, and costs about a third of "
        "the score's serving time (docs/trust.md)",
    )
    parser.add_argument(
        "--max-image-pixels",
        type=int,
        default=d.max_image_pixels,
        help="the exported graph refuses images whose header claims more pixels",
    )
    return parser


def config_from_args(args: argparse.Namespace) -> ExporterConfig:
    return ExporterConfig(
        data_dir=args.data_dir,
        models_dir=args.models_dir,
        model_name=args.model_name,
        run_dir=args.run_dir,
        max_image_pixels=args.max_image_pixels,
        train=trainer.TrainConfig(
            profile=args.profile,
            epochs=args.epochs,
            batch_size=args.batch_size,
            validation_split=args.validation_split,
            learning_rate=args.learning_rate,
            limit=args.limit,
            seed=args.seed,
        ),
        eval=evaluator.EvalConfig(min_accuracy=args.min_accuracy, max_regression=args.max_regression, force=args.force),
        novelty=None if args.texture_distance is None else novelty.NoveltyConfig(texture=args.texture_distance),
    )


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    config = config_from_args(args)
    if not 0 < config.train.resolve().validation_split < 1:
        parser.error("--validation-split must be between 0 and 1: the held-back images calibrate the model")
    logs.configure(logging.INFO)
    try:
        result = run(config)
    except data.DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if result.refusal is not None:
        print(f"error: not pushed: {result.refusal}", file=sys.stderr)
        return 1
    if result.version_dir is None:
        print(f"error: not pushed: {result.evaluation.reason} (use --force to push anyway)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
