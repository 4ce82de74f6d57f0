"""Calibrator: temperature scaling (Guo et al. 2017) and the expected calibration error.

A network trained on cross-entropy is often over- or under-confident: among
the images it answers at 90 %, more or fewer than 90 % are right. Dividing its
logits by one temperature, chosen to minimise the negative log-likelihood on
images it was not fitted on, fixes most of that without changing any answer
(the largest logit stays the largest). The exported graph applies it, so every
probability a server returns is the calibrated one.

The stage, :func:`run`, fits the temperature and the novelty score
(:mod:`pipeline.novelty`) on the images the Trainer held back, and reports
both on the test split.

Usage: ``calibration = run(model, fitted, held_back, dataset.test, NoveltyConfig())``;
``t = fit_temperature(held_out_logits, held_out_labels)``; ``ece = calibration_error(softmax(logits, t), labels)``
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import keras
import numpy as np

from fmnist.pipeline import novelty
from fmnist.pipeline.data import Split
from fmnist.pipeline.model import features_and_logits, preprocess
from fmnist.pipeline.novelty import NoveltyConfig, NoveltyScore

BINS = 15  # equal-width confidence bins, as Guo et al. report it
_LOG_RANGE = (math.log(0.05), math.log(20.0))  # temperatures searched
_STEPS = 60  # golden-section steps: the bracket shrinks to ~1e-12 of its width


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    scaled = np.asarray(logits, np.float64) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    e = np.exp(scaled)
    return e / e.sum(axis=1, keepdims=True)


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    probabilities = softmax(logits, temperature)
    return float(-np.mean(np.log(np.maximum(probabilities[np.arange(len(labels)), labels], 1e-300))))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature in [0.05, 20] minimising the mean negative log-likelihood of ``labels``.

    The likelihood is unimodal in the log-temperature, so a golden-section
    search finds the optimum without gradients.
    """
    labels = np.asarray(labels, np.int64)
    low, high = _LOG_RANGE
    ratio = (math.sqrt(5) - 1) / 2
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    fa, fb = (negative_log_likelihood(logits, labels, math.exp(x)) for x in (a, b))
    for _ in range(_STEPS):
        if fa <= fb:
            high, b, fb = b, a, fa
            a = high - ratio * (high - low)
            fa = negative_log_likelihood(logits, labels, math.exp(a))
        else:
            low, a, fa = a, b, fb
            b = low + ratio * (high - low)
            fb = negative_log_likelihood(logits, labels, math.exp(b))
    return math.exp((low + high) / 2)


@dataclass(frozen=True)
class Reliability:
    """Per confidence bin: the mean top probability, the accuracy and the number of images in it."""

    confidence: list[float]
    accuracy: list[float]
    count: list[int]

    @property
    def error(self) -> float:
        """Expected calibration error: the count-weighted mean gap between confidence and accuracy."""
        total = sum(self.count)
        return sum(n * abs(c - a) for c, a, n in zip(self.confidence, self.accuracy, self.count, strict=True)) / total


def reliability(probabilities: np.ndarray, labels: np.ndarray, bins: int = BINS) -> Reliability:
    """The reliability table of ``probabilities`` [n, classes] against ``labels``, over ``bins`` equal-width bins."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == np.asarray(labels)
    which = np.minimum((confidence * bins).astype(np.int64), bins - 1)  # a confidence of 1 joins the top bin
    table = Reliability([], [], [])
    for b in range(bins):
        members = which == b
        if members.any():
            table.confidence.append(float(confidence[members].mean()))
            table.accuracy.append(float(correct[members].mean()))
            table.count.append(int(members.sum()))
    return table


def calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = BINS) -> float:
    return reliability(probabilities, labels, bins).error


@dataclass(frozen=True)
class Calibration:
    """What the exporter puts into the served graph beside the network, and how well it did."""

    temperature: float
    novelty: NoveltyScore
    before: Reliability  # on the test split, at temperature 1
    after: Reliability  # on the test split, at ``temperature``
    metrics: dict  # for metrics.json and the model card


def run(model: keras.Model, fitted: Split, held_back: Split, test: Split, config: NoveltyConfig) -> Calibration:
    """Fit the temperature and the novelty threshold on ``held_back`` (never fitted), and report both on ``test``.

    The novelty score's statistics come from ``fitted``, the images the network was trained on.
    """
    if len(held_back) == 0:
        raise ValueError("no held-back images to calibrate on: train with a validation split above 0")
    network = features_and_logits(model)

    def outputs(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        features, logits = network.predict(preprocess(images).numpy(), batch_size=1024, verbose=0)
        return features, logits

    held_features, held_logits = outputs(held_back.images)
    test_features, test_logits = outputs(test.images)
    temperature = fit_temperature(held_logits, held_back.labels)
    layer = novelty.fit(config, fitted, lambda images: outputs(images)[0], held_back, held_features)
    threshold = float(layer.threshold.numpy())
    held_flagged = float(np.mean(novelty.scores_of(layer, held_back.images, held_features) > threshold))
    test_flagged = float(np.mean(novelty.scores_of(layer, test.images, test_features) > threshold))
    before = reliability(softmax(test_logits), test.labels)
    after = reliability(softmax(test_logits, temperature), test.labels)
    metrics = {
        "calibration": {
            "method": "temperature scaling",
            "temperature": temperature,
            "fitted_on": f"{len(held_back):,} training images held back from fitting",
            "bins": BINS,
            "test_ece_before": round(before.error, 4),
            "test_ece_after": round(after.error, 4),
            "test_nll_before": round(negative_log_likelihood(test_logits, test.labels), 4),
            "test_nll_after": round(negative_log_likelihood(test_logits, test.labels, temperature), 4),
        },
        "novelty": {
            "method": novelty.method(config.texture),
            "texture": config.texture,
            "threshold": round(threshold, 4),
            "flag_rate": config.flag_rate,
            "held_back_flagged": round(held_flagged, 4),
            "test_flagged": round(test_flagged, 4),
            "fitted_on": f"{len(fitted):,} training images ({layer.prototypes.shape[1]:,} feature prototypes from "
            f"{min(config.sample, len(fitted)):,} of them); standardised and thresholded on the "
            f"{len(held_back):,} held back",
        },
    }
    return Calibration(temperature=temperature, novelty=layer, before=before, after=after, metrics=metrics)
