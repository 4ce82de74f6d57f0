"""Trainer: fit a model profile on the training split, with Keras progress output.

Usage: ``result = run(TrainConfig(profile="mlp", epochs=1, limit=2000), dataset.train)``
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import keras
import numpy as np

from pipeline import model as model_lib
from pipeline.data import Split


@dataclass(frozen=True)
class TrainConfig:
    profile: str = "mlp"
    epochs: int = 10
    batch_size: int = 64
    validation_split: float = 0.1
    learning_rate: float = 1e-3
    limit: int | None = None  # train on the first N images only, for quick runs
    seed: int = 42
    verbose: int | None = None  # Keras fit() verbosity; None: bars on a terminal, a line per epoch otherwise


@dataclass(frozen=True)
class TrainResult:
    model: keras.Model  # raw 0-255 pixels → logits
    history: dict[str, list[float]]  # per-epoch loss/accuracy, val_ too when validating


def run(config: TrainConfig, train: Split) -> TrainResult:
    keras.utils.set_random_seed(config.seed)
    images, labels = train.images, train.labels
    if config.limit:
        images, labels = images[: config.limit], labels[: config.limit]
    model = model_lib.compile_model(model_lib.build(config.profile), learning_rate=config.learning_rate)
    x = model_lib.preprocess(images).numpy()
    history = model.fit(
        x,
        labels.astype(np.int64),
        epochs=config.epochs,
        batch_size=config.batch_size,
        validation_split=config.validation_split,
        verbose=(1 if sys.stdout.isatty() else 2) if config.verbose is None else config.verbose,
    )
    return TrainResult(model=model, history={k: [float(v) for v in vs] for k, vs in history.history.items()})
