"""Novelty: how unlike the training images an input is, as one score per image inside the served graph.

The classifier answers one of its ten classes for anything, and its confidence
does not tell a garment from a photo (a folder of photos comes back "Bag" at
97-100 %). Three distances and two format checks do, each catching what the
others miss (measured in docs/trust.md, with ``bench/ood.py``):

- **pixels**: the distance of the image (0-1 intensities) to the mean training
  image, each pixel in units of its deviation within the classes (a diagonal
  Mahalanobis distance, Lee et al. 2018's shared within-class spread on the
  pixels, to one centre: the ten class means measured alike and cost more).
  Photos, noise and light backgrounds are far from every garment.
- **features**: the cosine distance between the network's last hidden
  activations and the nearest of a few prototypes per class, the centres of
  a spherical k-means of training images' activations (deep nearest
  neighbours, Sun et al. 2022, against centres instead of every image).
  Shapes and digits, dark background and all, have no garment's parts.
- **texture** (unless ``NoveltyConfig.texture`` is off): the distance of three
  statistics of the image (:func:`texture`) from their means over the training
  images, each in units of its deviation there: the share of lit pixels, how
  much the second differences between neighbours along a row weigh against
  the steps, and how flat the lit pixels are. Upscaled or blurred images
  (faces, small digits) are smoother than any garment; drawn shapes are
  flatter. The other parts already catch every set as it was made; the
  texture is what catches non-garments prepared exactly as Fashion-MNIST
  prepares its images (docs/trust.md measures both).
- **format** (:func:`format_gaps`): every Fashion-MNIST image was prepared
  alike, its intensities stretched from 0 to 255 and its object trimmed,
  scaled until its long side spans the 28 pixels and centred. Pixels by which
  the lit box falls short of that or off centre, and levels by which the
  darkest pixel is above 0 or the brightest below 255, beyond a small slack,
  are added to the score with fixed weights. They are zero for every image of
  the dataset, so they move no garment's score and not the threshold; a
  non-garment prepared like Fashion-MNIST escapes them, and only the three
  distances see it.

The logarithm of each distance is standardised by its mean and deviation on
held-out Fashion-MNIST; the score is the largest of them ("this many
deviations beyond typical, on the worst of them") plus the weighted format
gaps. The pixel distance counts from one deviation further out
(``pixel_margin``): what it catches lies far beyond that, while the garments'
own spread in pixel space would otherwise lift their scores and hide the
shapes the others catch. An image is ``unfamiliar`` above the threshold, the
held-out scores' ``1 - flag_rate`` quantile. What the layer holds is fitted on
the training split (the means, deviations and prototypes) and on
held-out images (the standardisation, the threshold), never on
out-of-distribution images; the format weights and slacks are constants
chosen on the development sets of ``bench/ood_sets.py``.

It runs in every served request, where TensorFlow executes each operation as
a pass of its own over the batch, with a fixed cost of its own besides, one
after another in the embedded server (TF Serving's session may overlap
independent branches). So it is written for few operations: no comparison op
(a comparison and its cast cost more than a rectified sign), one centre for
the pixel and the texture distances, and neighbours compared within runs of
four pixels, so that a shift is not a copy of the batch (``bench/serving.py
--trust`` measures the cost; docs/trust.md what each choice saved).

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

_SIZE = names.IMAGE_SIZE
_PIXELS = _SIZE * _SIZE
_CHUNK = 1024  # images per computation while fitting
# Distances below this count as this: a duplicate of a training image (the split has some) is at 0 up to
# float32 rounding, and its logarithm would otherwise skew the held-out mean and deviation.
_FLOOR = 1e-6
_DARK = 0.5  # levels: a pixel at or below this is background (Fashion-MNIST's is exactly 0)
_FLAT_STEP = 2.0  # levels: a lit pixel whose step right is this or more is not flat
_RUN = 4  # pixels: texture compares the neighbours within runs of this many along each row
_TEXTURE = 3
# Slack before a format gap counts, for a resampled or re-encoded garment: pixels of the lit box, levels of contrast.
_FRAME_SLACK = 2.0
_CONTRAST_SLACK = 2.0
_KMEANS_ROUNDS = 20


@dataclass(frozen=True)
class NoveltyConfig:
    """Args:
    flag_rate: the share of the held-back images the threshold flags. The test split's share comes out
        higher (measured, docs/trust.md): the held-back images come from the training split, which has
        near-duplicates of the images the prototypes are fitted on. 4 % keeps it within 5 %.
    sample: training images whose activations the prototypes are fitted on (all, when fewer).
    prototypes: k-means centres per class that the activations are compared with.
    shrinkage: added to each pixel's variance, as a fraction of their mean: pixels that are dark in every
        training image still count, by a large but finite weight.
    pixel_margin: deviations the pixel distance's standardised value is lowered by before the maximum.
    framing_weight: deviations added per pixel the lit box falls short of the frame's side or off its centre.
    contrast_weight: deviations added per intensity level the darkest pixel is above 0 or the brightest below 255.
    seed: which training images make the sample, and where k-means starts.
    texture: whether the score includes the texture distance (about a third of the layer's serving cost);
        ``fmnist train`` takes the profile's choice (``Profile.texture_distance``) unless told.
    """

    flag_rate: float = 0.04
    sample: int = 10_000
    prototypes: int = 20
    shrinkage: float = 1e-2
    pixel_margin: float = 1.0
    framing_weight: float = 0.5
    contrast_weight: float = 1 / 16
    seed: int = 0
    texture: bool = True


def method(texture: bool) -> str:
    """What the score is, in a line, for ``metrics.json`` and the model card."""
    parts = "pixels to the mean training image (per-pixel deviations; from one deviation out), last hidden "
    parts += "activations to the nearest k-means prototype (cosine)"
    parts += ", texture statistics to their training means (per-statistic deviations)" if texture else ""
    return (
        f"max of {'three' if texture else 'two'} standardised log distances: {parts}; "
        "plus weighted gaps from Fashion-MNIST's format (framing, contrast)"
    )


def _indicator(x: tf.Tensor) -> tf.Tensor:
    """1.0 where ``x`` > 0, else 0.0, without a comparison op."""
    return tf.sign(tf.nn.relu(x))


def texture(images) -> tf.Tensor:
    """Raw 0-255 pixels [n, 28, 28] → texture statistics float32 [n, 3] (see the module's docstring).

    Only neighbours within a run of four pixels along a row are compared (three quarters of the steps
    right, half the second differences): a run's four positions come out of one unstack as four whole
    arrays, where a shift of the whole image by one pixel would copy the batch for every shift.
    """
    x = tf.reshape(tf.cast(images, tf.float32), (-1, _PIXELS // _RUN, _RUN))
    positions = tf.unstack(x, axis=2)  # [n, 196] each: position k holds every row's columns 4j + k
    lit = [tf.minimum(p, 1.0) for p in positions]  # 1 for a lit pixel of an 8-bit image; a fraction below one level
    differences = [positions[k + 1] - positions[k] for k in range(_RUN - 1)]
    steps = [tf.abs(d) for d in differences]
    bends = [tf.abs(differences[k + 1] - differences[k]) for k in range(_RUN - 2)]
    # Flatness weights a lit pixel by how far its step right falls below _FLAT_STEP: 1 for none, 0 from _FLAT_STEP.
    flat = [lit[k] * tf.nn.relu(_FLAT_STEP - steps[k]) for k in range(_RUN - 1)]

    def total(arrays: list[tf.Tensor]) -> tf.Tensor:
        return tf.reduce_sum(tf.add_n(arrays), axis=-1)

    stepped = total(lit[:-1])  # the lit pixels with a neighbour right in their run
    lit_share = (stepped + tf.reduce_sum(lit[-1], axis=-1)) / _PIXELS
    smoothness = total(bends) / tf.maximum(total(steps), _FLOOR)
    flatness = total(flat) / (_FLAT_STEP * tf.maximum(stepped, 1.0))
    return tf.stack([lit_share, smoothness, flatness], axis=-1)


_FROM_END, _FROM_START = (_SIZE - np.arange(_SIZE)).astype(np.float32), (np.arange(_SIZE) + 1).astype(np.float32)


def format_gaps(images) -> tf.Tensor:
    """Raw 0-255 pixels [n, 28, 28] → [n, 2]: how far each image is from Fashion-MNIST's format, beyond the slack.

    Column 0: pixels by which the box of lit pixels falls short of the frame on its long side, plus its
    centre's offset from the frame's. Column 1: levels by which the darkest pixel is above 0 and the
    brightest below 255. Both are zero for every image of the dataset.
    """
    x = tf.cast(images, tf.float32)
    lines = tf.concat([tf.reduce_max(x, axis=2), tf.reduce_max(x, axis=1)], axis=0)  # [2n, 28]: rows, then columns
    lit = _indicator(lines - _DARK)
    # One past the last lit line, and 28 less the first: the largest (index + 1), and the largest (28 - index),
    # of a lit line; both 0 where none is lit (a black image), which gives it extent 0 and offset 0.
    after_last = tf.reduce_max(lit * _FROM_START, axis=-1)
    before_first = tf.reduce_max(lit * _FROM_END, axis=-1)
    extent = tf.reshape(tf.nn.relu(after_last + before_first - _SIZE), (2, -1))  # last - first + 1: [rows | columns, n]
    offset = tf.reshape(tf.abs(after_last - before_first), (2, -1))  # |first + last - 27|: twice the centre's offset
    short = tf.nn.relu(_SIZE - _FRAME_SLACK - tf.reduce_max(extent, axis=0))
    off = tf.reduce_sum(tf.nn.relu(offset - _FRAME_SLACK), axis=0) / 2
    brightest, darkest = tf.reduce_max(x, axis=[1, 2]), tf.reduce_min(x, axis=[1, 2])
    dull = tf.nn.relu(255 - _CONTRAST_SLACK - brightest) + tf.nn.relu(darkest - _CONTRAST_SLACK)
    return tf.stack([short + off, dull], axis=-1)


class NoveltyScore(keras.layers.Layer):
    """(raw 0-255 pixels [n, 28, 28], last hidden activations [n, d]) → novelty scores float32 [n].

    Its weights are constants fitted by :func:`fit`; they are weights so that
    the SavedModel keeps them once, in its variables, for every signature.
    Without ``texture`` it has neither the texture weights nor their graph.
    """

    def __init__(self, features: int, prototypes: int, texture: bool = True, **kwargs):
        super().__init__(trainable=False, **kwargs)
        self.texture = texture
        distances = 3 if texture else 2

        def constant(name: str, shape: tuple[int, ...]):
            return self.add_weight(shape=shape, initializer="zeros", trainable=False, name=name)

        # The pixel distance: (x - pixel_mean)² @ pixel_weights, the mean training image in levels and each
        # pixel's 1 / variance in levels².
        self.pixel_mean = constant("pixel_mean", (_PIXELS,))
        self.pixel_weights = constant("pixel_weights", (_PIXELS, 1))
        self.prototypes = constant("prototypes", (features, prototypes))  # unit-length k-means centres, as columns
        if texture:
            self.texture_mean = constant("texture_mean", (_TEXTURE,))  # over the training images
            self.texture_scale = constant("texture_scale", (_TEXTURE,))  # 1 / each statistic's deviation there
        self.location = constant("location", (distances,))  # held-out mean of each log distance (pixels: + margin)
        self.scale = constant("scale", (distances,))  # and deviation
        self.format_weights = constant("format_weights", (2,))  # deviations per unit of each format gap
        self.threshold = constant("threshold", ())

    def distances(self, images, features):
        """The log distances, [n, 3] (or [n, 2] without texture): pixels to the mean training image, features
        to the nearest prototype, texture statistics to their training means."""
        x = tf.reshape(tf.cast(images, tf.float32), (-1, _PIXELS))
        to_mean = tf.squeeze(tf.math.squared_difference(x, self.pixel_mean) @ self.pixel_weights, axis=-1)
        # The cosine to the nearest prototype: the largest product, divided by the features' norm once per image
        # rather than the features normalised (a product broadcast over [n, d]).
        features = tf.cast(features, tf.float32)
        norm = tf.sqrt(tf.maximum(tf.reduce_sum(tf.square(features), axis=-1), _FLOOR**2))
        to_prototype = 1.0 - tf.reduce_max(features @ self.prototypes, axis=-1) / norm  # stored transposed
        measured = [to_mean, to_prototype]
        if self.texture:
            measured.append(
                tf.reduce_sum(tf.square((texture(images) - self.texture_mean) * self.texture_scale), axis=-1)
            )
        return tf.math.log(tf.maximum(tf.stack(measured, axis=-1), _FLOOR))

    def call(self, images, features):
        deviations = tf.reduce_max((self.distances(images, features) - self.location) / self.scale, axis=-1)
        return deviations + tf.reduce_sum(format_gaps(images) * self.format_weights, axis=-1)


def _within_class(x: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each row less its class's mean, [n, d]."""
    present = np.unique(labels)
    means = np.stack([x[labels == c].mean(axis=0) for c in present])
    return x - means[np.searchsorted(present, labels)]


def _prototypes(unit: np.ndarray, labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Spherical k-means of each class's unit-length rows: ``per_class`` unit centres per class, stacked."""
    centres = []
    for c in np.unique(labels):
        members = unit[labels == c]
        chosen = members[rng.choice(len(members), min(per_class, len(members)), replace=False)]
        for _ in range(_KMEANS_ROUNDS):
            sums = np.zeros_like(chosen)
            np.add.at(sums, np.argmax(members @ chosen.T, axis=1), members)
            norms = np.linalg.norm(sums, axis=1, keepdims=True)
            chosen = np.where(norms > _FLOOR, sums / np.maximum(norms, _FLOOR), chosen)  # an emptied centre stays
        centres.append(chosen)
    return np.concatenate(centres)


def _chunked(function, *arrays) -> np.ndarray:
    return np.concatenate(
        [function(*(a[i : i + _CHUNK] for a in arrays)).numpy() for i in range(0, len(arrays[0]), _CHUNK)]
    )


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
    pixels = train.images.reshape(len(train), _PIXELS) / 255.0
    centred = _within_class(pixels, train.labels)
    variance = np.mean(np.square(centred), axis=0)
    pixel_scale = 1.0 / np.sqrt(variance + config.shrinkage * variance.mean())

    rng = np.random.default_rng(config.seed)
    chosen = np.sort(rng.choice(len(train), min(config.sample, len(train)), replace=False))
    sample = np.asarray(train_features(train.images[chosen]), np.float64)
    sample /= np.maximum(np.linalg.norm(sample, axis=1, keepdims=True), _FLOOR)
    prototypes = _prototypes(sample, train.labels[chosen], config.prototypes, rng)

    # sum((x / 255 - mean) * scale)² over the pixels = (x - 255 mean)² · (scale / 255)²
    layer = NoveltyScore(sample.shape[1], len(prototypes), config.texture)
    values = [
        (layer.pixel_mean, 255.0 * pixels.mean(axis=0)),
        (layer.pixel_weights, np.square(pixel_scale / 255.0)[:, None]),
        (layer.prototypes, prototypes.T),
        (layer.format_weights, [config.framing_weight, config.contrast_weight]),
        (layer.scale, np.ones(layer.scale.shape)),
    ]
    if config.texture:
        statistics = _chunked(texture, train.images).astype(np.float64)
        values += [
            (layer.texture_mean, statistics.mean(axis=0)),
            (layer.texture_scale, 1.0 / np.maximum(statistics.std(axis=0), _FLOOR)),
        ]
    for weight, value in values:
        weight.assign(np.asarray(value, np.float32))
    held_out_features = np.asarray(held_out_features, np.float32)
    distances = _chunked(layer.distances, held_out.images, held_out_features)
    scale = np.maximum(distances.std(axis=0), _FLOOR)
    margin = np.zeros_like(scale)
    margin[0] = config.pixel_margin * scale[0]
    layer.location.assign((distances.mean(axis=0) + margin).astype(np.float32))
    layer.scale.assign(scale.astype(np.float32))
    scores = scores_of(layer, held_out.images, held_out_features)
    layer.threshold.assign(np.float32(np.quantile(scores, 1.0 - config.flag_rate)))
    return layer


def scores_of(layer: NoveltyScore, images: np.ndarray, features: np.ndarray) -> np.ndarray:
    """``layer``'s scores of many images, a chunk at a time, as float32 [n]."""
    return _chunked(layer, images, np.asarray(features, np.float32))
