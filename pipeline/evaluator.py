"""Evaluator: held-out metrics and the blessing gate.

A model is blessed only if it clears an absolute bar and does not regress
against the version already pushed (TFX's Evaluator with a value threshold
and a change threshold). The decision and its reason are data, so the
exporter can print it, save it beside the version, and exit non-zero.

Usage: ``evaluation = run(model, dataset.test, EvalConfig(), baseline=(version, metrics))``
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np

from fmnist.common.report import classification_metrics
from fmnist.pipeline.data import Split
from fmnist.pipeline.model import preprocess


@dataclass(frozen=True)
class EvalConfig:
    min_accuracy: float = 0.85
    max_regression: float = 0.01  # allowed drop below the latest pushed version's accuracy
    force: bool = False  # push even when not blessed


@dataclass(frozen=True)
class Evaluation:
    metrics: dict  # accuracy, per-class precision/recall, confusion matrix
    blessed: bool
    reason: str  # why it was (not) blessed, one sentence


def bless(accuracy: float, config: EvalConfig, baseline: tuple[int, dict] | None) -> tuple[bool, str]:
    if accuracy < config.min_accuracy:
        return False, f"accuracy {accuracy:.4f} is below --min-accuracy {config.min_accuracy:.4f}"
    if baseline is not None:
        version, baseline_metrics = baseline
        floor = baseline_metrics["accuracy"] - config.max_regression
        if accuracy < floor:
            return False, (
                f"accuracy {accuracy:.4f} regresses from version {version}'s {baseline_metrics['accuracy']:.4f} "
                f"by more than --max-regression {config.max_regression:.4f}"
            )
        return (
            True,
            f"accuracy {accuracy:.4f} ≥ {config.min_accuracy:.4f} "
            f"and ≥ version {version}'s minus {config.max_regression:.4f}",
        )
    return True, f"accuracy {accuracy:.4f} ≥ {config.min_accuracy:.4f} (no version pushed before)"


def predict(model: keras.Model, images: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    logits = model.predict(preprocess(images).numpy(), batch_size=batch_size, verbose=0)
    return np.argmax(logits, axis=-1)


def run(model: keras.Model, test: Split, config: EvalConfig, baseline: tuple[int, dict] | None = None) -> Evaluation:
    metrics = classification_metrics(test.labels, predict(model, test.images))
    blessed, reason = bless(metrics["accuracy"], config, baseline)
    return Evaluation(metrics=metrics, blessed=blessed, reason=reason)
