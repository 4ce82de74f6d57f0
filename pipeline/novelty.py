"""Novelty: how unlike the training images an input is, as one score per image inside the served graph.

The classifier answers one of its ten classes for anything, and its confidence
does not tell a garment from a photo (a folder of photos comes back "Bag" at
97-100 %). Two distances do, each catching what the other misses (measured in
docs/trust.md, with ``bench/ood.py``):

- **pixels**: the Mahalanobis distance of the image (0-1 intensities) to the
  nearest class mean under the classes' shared covariance, shrunk towards the
  identity (Lee et al. 2018's class-conditional Gaussian, on the pixels).
  Photos, noise and light backgrounds are far from every class.
- **features**: the cosine distance between the network's last hidden
  activations and those of the nearest of a sample of training images (deep
  nearest neighbours, Sun et al. 2022). Shapes and digits, dark background and
  all, have no garment's parts, and are far here.

The logarithm of each distance is standardised by its mean and deviation on
held-out Fashion-MNIST, and the score is the larger of the two: "this many
deviations beyond typical, on the worse of the two". The pixel half counts
from one deviation further out (``pixel_margin``): what it catches lies far
beyond that, while the garments' own spread in pixel space would otherwise
lift their scores and hide the shapes and digits only the features catch.
An image is ``unfamiliar`` above the threshold, the held-out scores'
``1 - flag_rate`` quantile. What the layer holds is fitted on the training split (the means,
the covariance, the sample) and on held-out images (the standardisation, the
threshold), never on out-of-distribution images.

Usage: ``layer = fit(NoveltyConfig(), train_split, train_features, held_back_split, held_back_features)``;
``scores = layer(pixels, features)``; ``layer.threshold``.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from fmnist.common import names
from fmnist.pipeline.data import Split
from fmnist.pipeline.model import preprocess

METHOD = (
    "max of two standardised log distances: pixels to the nearest class mean (Mahalanobis, shared shrunk "
    "covariance; from one deviation out) and last hidden activations to the nearest training image's (cosine)"
)
_PIXELS = names.IMAGE_SIZE * names.IMAGE_SIZE
_CHUNK = 1024  # images per distance computation while fitting: the sample's distance matrix stays small
# Distances below this count as this: a duplicate of a training image (the split has some) is at 0 up to
# float32 rounding, and its logarithm would otherwise skew the held-out mean and deviation.
_FLOOR = 1e-6


@dataclass(frozen=True)
class NoveltyConfig:
    """Args:
    flag_rate: the share of the held-back images the threshold flags. The test split's share comes out
        1.1-1.2 times as high (measured, docs/trust.md): the held-back images come from the training split,
        which has near-duplicates of the images the features are compared with. 4 % keeps it within 5 %.
    sample: training images whose features are kept to compare against (all, when fewer).
    shrinkage: the covariance's ridge, as a fraction of its mean eigenvalue: pixels that are dark in every
        training image still count, by a large but finite weight.
    pixel_margin: deviations the pixel half's standardised distance is lowered by before the maximum.
    seed: which training images make the sample.
    """

    flag_rate: float = 0.04
    sample: int = 10_000
    shrinkage: float = 1e-4
    pixel_margin: float = 1.0
    seed: int = 0


class NoveltyScore(keras.layers.Layer):
    """(raw 0-255 pixels [n, 28, 28], last hidden activations [n, d]) → novelty scores float32 [n].

    Its weights are constants fitted by :func:`fit`; they are weights so that
    the SavedModel keeps them once, in its variables, for every signature.
    """

    def __init__(self, classes: int, features: int, sample: int, **kwargs):
        super().__init__(trainable=False, **kwargs)

        def constant(name: str, shape: tuple[int, ...]):
            return self.add_weight(shape=shape, initializer="zeros", trainable=False, name=name)

        self.whitening = constant("whitening", (_PIXELS, _PIXELS))  # x @ whitening: unit covariance
        self.centres = constant("centres", (classes, _PIXELS))  # class means, whitened
        self.sample = constant("sample", (sample, features))  # unit-length training activations
        self.location = constant("location", (2,))  # held-out mean of each log distance (pixels: plus the margin)
        self.scale = constant("scale", (2,))  # and deviation
        self.threshold = constant("threshold", ())

    def distances(self, images, features):
        """The two log distances, [n, 2]: pixels to the nearest class, features to the nearest training image."""
        pixels = tf.reshape(preprocess(images), (-1, _PIXELS)) @ self.whitening
        to_class = tf.reduce_min(tf.reduce_sum(tf.square(pixels[:, None, :] - self.centres[None]), axis=-1), axis=-1)
        unit = tf.math.l2_normalize(tf.cast(features, tf.float32), axis=-1)
        to_sample = 1.0 - tf.reduce_max(unit @ tf.transpose(self.sample), axis=-1)
        return tf.math.log(tf.maximum(tf.stack([to_class, to_sample], axis=-1), _FLOOR))

    def call(self, images, features):
        return tf.reduce_max((self.distances(images, features) - self.location) / self.scale, axis=-1)


def fit(
    config: NoveltyConfig,
    train: Split,
    train_features,
    held_out: Split,
    held_out_features,
) -> NoveltyScore:
    """The layer, fitted on ``train`` and standardised and thresholded on ``held_out``.

    Args:
        train_features: a callable, images uint8 [n, 28, 28] → the network's last hidden activations [n, d];
            called on the sample only.
        held_out_features: the held-out images' activations, [len(held_out), d].
    """
    pixels = train.images.reshape(len(train), _PIXELS).astype(np.float64) / 255.0
    present = np.unique(train.labels)
    means = np.stack([pixels[train.labels == c].mean(axis=0) for c in present])
    centred = pixels - means[np.searchsorted(present, train.labels)]
    eigenvalues, eigenvectors = np.linalg.eigh(centred.T @ centred / len(centred))
    eigenvalues = np.maximum(eigenvalues, 0.0) + config.shrinkage * eigenvalues.mean()
    whitening = eigenvectors / np.sqrt(eigenvalues)

    rng = np.random.default_rng(config.seed)
    chosen = np.sort(rng.choice(len(train), min(config.sample, len(train)), replace=False))
    sample = np.asarray(train_features(train.images[chosen]), np.float64)
    sample /= np.maximum(np.linalg.norm(sample, axis=1, keepdims=True), _FLOOR)

    layer = NoveltyScore(classes=len(present), features=sample.shape[1], sample=len(sample))
    layer.whitening.assign(whitening.astype(np.float32))
    layer.centres.assign((means @ whitening).astype(np.float32))
    layer.sample.assign(sample.astype(np.float32))
    layer.scale.assign(np.ones(2, np.float32))
    held_out_features = np.asarray(held_out_features, np.float32)
    distances = np.concatenate(
        [
            layer.distances(held_out.images[i : i + _CHUNK], held_out_features[i : i + _CHUNK]).numpy()
            for i in range(0, len(held_out), _CHUNK)
        ]
    )
    scale = np.maximum(distances.std(axis=0), _FLOOR)
    margin = np.array([config.pixel_margin * scale[0], 0.0])
    layer.location.assign((distances.mean(axis=0) + margin).astype(np.float32))
    layer.scale.assign(scale.astype(np.float32))
    scores = scores_of(layer, held_out.images, held_out_features)
    layer.threshold.assign(np.float32(np.quantile(scores, 1.0 - config.flag_rate)))
    return layer


def scores_of(layer: NoveltyScore, images: np.ndarray, features: np.ndarray) -> np.ndarray:
    """``layer``'s scores of many images, a chunk at a time, as float32 [n]."""
    features = np.asarray(features, np.float32)
    return np.concatenate(
        [layer(images[i : i + _CHUNK], features[i : i + _CHUNK]).numpy() for i in range(0, len(images), _CHUNK)]
    )
