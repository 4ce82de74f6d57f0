"""Trainer: fit a model profile on the training split, with Keras progress output.

Usage: ``result = run(TrainConfig(profile="mlp", epochs=1, limit=2000), dataset.train)``
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass

import keras
import numpy as np

from fmnist.pipeline import model as model_lib
from fmnist.pipeline.data import Split


@dataclass(frozen=True)
class TrainConfig:
    """What to train; ``None`` fields take the profile's recipe (see :func:`resolve`)."""

    profile: str = "mlp"
    epochs: int | None = None
    batch_size: int | None = None
    validation_split: float | None = None
    learning_rate: float | None = None
    limit: int | None = None  # train on the first N images only, for quick runs
    mixed_precision: bool | None = None  # None: the profile's choice, if this CPU has native bfloat16
    seed: int = 42
    verbose: int | None = None  # Keras fit() verbosity; None: bars on a terminal, a line per epoch otherwise

    def resolve(self) -> TrainConfig:
        """Every recipe field filled in, so the saved config says what actually ran."""
        profile = model_lib.PROFILES[self.profile]
        recipe = {f: getattr(profile, f) for f in ("epochs", "batch_size", "validation_split", "learning_rate")}
        recipe["mixed_precision"] = profile.mixed_precision and model_lib.native_bfloat16()
        return dataclasses.replace(self, **{k: v for k, v in recipe.items() if getattr(self, k) is None})


@dataclass(frozen=True)
class TrainResult:
    model: keras.Model  # raw 0-255 pixels → logits: what is evaluated and exported
    history: dict[str, list[float]]  # per-epoch loss/accuracy, val_ too when validating
    fitted: int  # images the model was fitted on
    validated: int  # images held back from fitting for per-epoch validation (Keras takes the last ones)
    held_back: Split  # those images: never fitted, so the exporter calibrates on them


def run(config: TrainConfig, train: Split) -> TrainResult:
    config = config.resolve()
    keras.utils.set_random_seed(config.seed)
    images, labels = train.images, train.labels
    if config.limit:
        images, labels = images[: config.limit], labels[: config.limit]
    # Keras' validation_split fits on the first floor(n * (1 - split)) images and validates on the rest.
    fitted = math.floor(len(images) * (1 - config.validation_split))
    validated = len(images) - fitted
    steps_per_epoch = math.ceil(fitted / config.batch_size)
    profile = model_lib.PROFILES[config.profile]
    model = model_lib.compile_model(
        model_lib.build(config.profile, "mixed_bfloat16" if config.mixed_precision else "float32"),
        learning_rate=config.learning_rate,
        cosine_steps=steps_per_epoch * config.epochs if profile.cosine else 0,
        warmup_steps=steps_per_epoch if profile.cosine else 0,
        label_smoothing=profile.label_smoothing,
    )
    history = model.fit(
        model_lib.preprocess(images).numpy(),
        labels.astype(np.int64),
        epochs=config.epochs,
        batch_size=config.batch_size,
        validation_split=config.validation_split,
        verbose=(1 if sys.stdout.isatty() else 2) if config.verbose is None else config.verbose,
    )
    history = {k: [float(v) for v in vs] for k, vs in history.history.items()}
    return TrainResult(
        model=model_lib.for_serving(model, config.profile),
        history=history,
        fitted=fitted,
        validated=validated,
        held_back=Split(images=images[fitted:], labels=labels[fitted:]),
    )
