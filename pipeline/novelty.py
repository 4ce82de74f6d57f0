"""Novelty: how unlike the training images an input is, as one score per image inside the served graph.

The classifier answers one of its ten classes for anything, and its confidence
does not tell a garment from a photo (a folder of photos comes back "Bag" at
97-100 %). Three distances and two format checks do, each catching what the
others miss (measured in docs/trust.md, with ``bench/ood.py``):

- **pixels**: the distance of the image (0-1 intensities) to the nearest class
  mean, each pixel in units of its deviation within the classes (a diagonal
  Mahalanobis distance; Lee et al. 2018's class-conditional Gaussian, on the
  pixels). Photos, noise and light backgrounds are far from every class.
- **features**: the cosine distance between the network's last hidden
  activations and the nearest of a few prototypes per class, the centres of
  a spherical k-means of training images' activations (deep nearest
  neighbours, Sun et al. 2022, against centres instead of every image).
  Shapes and digits, dark background and all, have no garment's parts.
- **texture** (unless ``NoveltyConfig.texture`` is off): the class-conditional
  Mahalanobis distance of four statistics of the image (:func:`texture`):
  the shares of lit and of bright pixels, how much the second differences
  between neighbours weigh against the steps, and the share of lit pixels
  that are flat. Upscaled or blurred images (faces, small digits) are
  smoother than any garment; drawn shapes are flatter. It is about half the
  layer's serving cost (some thirty passes over the images): the other parts
  already catch every set as it was made, and the texture is what catches
  non-garments prepared exactly as Fashion-MNIST prepares its images
  (docs/trust.md measures both).
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
the training split (the means, deviations, covariance and prototypes) and on
held-out images (the standardisation, the threshold), never on
out-of-distribution images; the format weights and slacks are constants
chosen on the development sets of ``bench/ood_sets.py``.

It runs in every served request, where TensorFlow executes each operation as
a pass of its own over the batch, and the embedded server runs them one after
another (TF Serving's session may overlap independent branches).
So it is written for few passes over whole images and no comparison op (a
comparison and its cast cost more than a rectified sign): the pixel distance
is two small products, the texture statistics some thirty elementwise passes
and the format gaps a few (``bench/serving.py --trust`` measures the cost).

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
_BRIGHT = 127.5  # levels: texture counts the shares of lit pixels and of pixels above this
_FLAT_STEP = 2.0  # levels: a lit pixel whose steps right and down are both below this is flat
_TEXTURE = 4
# The texture statistics are few and all vary: their covariance's ridge only guards against a degenerate split.
_TEXTURE_SHRINKAGE = 1e-6
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
    texture: whether the score includes the texture distance (the layer's largest serving cost).
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
    parts = "pixels (per-pixel deviations; from one deviation out), last hidden activations (cosine, to k-means "
    parts += "prototypes), texture statistics (Mahalanobis)" if texture else "prototypes)"
    return (
        f"max of {'three' if texture else 'two'} standardised log distances to the nearest class: {parts}; "
        "plus weighted gaps from Fashion-MNIST's format (framing, contrast)"
    )


def _indicator(x: tf.Tensor) -> tf.Tensor:
    """1.0 where ``x`` > 0, else 0.0, without a comparison op."""
    return tf.sign(tf.nn.relu(x))


def _column_mask(length: int, last: int) -> np.ndarray:
    """[length, 1]: 1.0 for the positions of a flattened image whose column is at most ``last``, else 0.0."""
    return (np.arange(length) % _SIZE <= last).astype(np.float32)[:, None]


_INNER = _PIXELS - _SIZE  # the first 27 rows, whose pixels have a neighbour below
_ACROSS, _BENDS_ACROSS = _column_mask(_PIXELS - 1, _SIZE - 2), _column_mask(_PIXELS - 2, _SIZE - 3)
_LIT_COUNTS = np.concatenate(  # all pixels, and those with a neighbour right and down
    [np.ones((_PIXELS, 1), np.float32), np.pad(_column_mask(_INNER, _SIZE - 2), ((0, _SIZE), (0, 0)))], axis=1
)


def texture(images) -> tf.Tensor:
    """Raw 0-255 pixels [n, 28, 28] → texture statistics float32 [n, 4] (see the module's docstring).

    On the flattened image, a shift by one pixel gives the steps to the right
    and a shift by a row the steps down; the steps that wrap from one row's
    end to the next row's start are left out of the sums by 0/1 weights, each
    such sum one product.
    """
    x = tf.reshape(tf.cast(images, tf.float32), (-1, _PIXELS))
    across, down = x[:, 1:] - x[:, :-1], x[:, _SIZE:] - x[:, :-_SIZE]  # the step right of, and below, each pixel
    steps_across, steps_down = tf.abs(across), tf.abs(down)
    steps = steps_across @ _ACROSS + tf.reduce_sum(steps_down, axis=-1, keepdims=True)
    bends = tf.abs(across[:, 1:] - across[:, :-1]) @ _BENDS_ACROSS + tf.reduce_sum(
        tf.abs(down[:, _SIZE:] - down[:, :-_SIZE]), axis=-1, keepdims=True
    )  # second differences
    lit = _indicator(x - _DARK)
    lit_counts = lit @ _LIT_COUNTS  # [n, 2]
    # A lit pixel whose steps right and down are both small (the last column's wrap: weighted out).
    flat = lit[:, :_INNER] * _indicator(_FLAT_STEP - tf.maximum(steps_across[:, :_INNER], steps_down))
    shares = tf.concat([lit_counts[:, :1], tf.reduce_sum(_indicator(x - _BRIGHT), axis=-1, keepdims=True)], 1) / _PIXELS
    smoothness = bends / tf.maximum(steps, _FLOOR)
    flatness = flat @ _ACROSS[:_INNER] / tf.maximum(lit_counts[:, 1:], 1.0)
    return tf.concat([shares, smoothness, flatness], axis=-1)


_FROM_END, _FROM_START = (_SIZE - np.arange(_SIZE)).astype(np.float32), (np.arange(_SIZE) + 1).astype(np.float32)


def format_gaps(images) -> tf.Tensor:
    """Raw 0-255 pixels [n, 28, 28] → [n, 2]: how far each image is from Fashion-MNIST's format, beyond the slack.

    Column 0: pixels by which the box of lit pixels falls short of the frame on its long side, plus its
    centre's offset from the frame's. Column 1: levels by which the darkest pixel is above 0 and the
    brightest below 255. Both are zero for every image of the dataset.
    """
    x = tf.cast(images, tf.float32)
    lines = tf.stack([tf.reduce_max(x, axis=2), tf.reduce_max(x, axis=1)], axis=1)  # [n, rows | columns, 28]
    # The first lit line is 28 less the largest (28 - index) of a lit one, the last the largest (index + 1)
    # less 1: a black image has none, first 28 and last -1, which give it extent 0 and offset 0. Each line
    # set is weighted as rows of [2n, 28]: a product broadcast over more axes costs many times more.
    lit = tf.reshape(_indicator(lines - _DARK), (-1, _SIZE))
    first = tf.reshape(_SIZE - tf.reduce_max(lit * _FROM_END, axis=-1), (-1, 2))  # [n, rows | columns]
    last = tf.reshape(tf.reduce_max(lit * _FROM_START, axis=-1) - 1, (-1, 2))
    short = tf.nn.relu(_SIZE - tf.reduce_max(tf.nn.relu(last - first + 1), axis=1) - _FRAME_SLACK)
    off = tf.reduce_sum(tf.nn.relu(tf.abs(first + last - (_SIZE - 1)) / 2 - _FRAME_SLACK / 2), axis=1)
    brightest, darkest = tf.reduce_max(lines, axis=[1, 2]), tf.reduce_min(x, axis=[1, 2])
    dull = tf.nn.relu(255 - brightest - _CONTRAST_SLACK) + tf.nn.relu(darkest - _CONTRAST_SLACK)
    return tf.stack([short + off, dull], axis=-1)


class NoveltyScore(keras.layers.Layer):
    """(raw 0-255 pixels [n, 28, 28], last hidden activations [n, d]) → novelty scores float32 [n].

    Its weights are constants fitted by :func:`fit`; they are weights so that
    the SavedModel keeps them once, in its variables, for every signature.
    Without ``texture`` it has neither the texture weights nor their graph.
    """

    def __init__(self, classes: int, features: int, prototypes: int, texture: bool = True, **kwargs):
        super().__init__(trainable=False, **kwargs)
        self.texture = texture
        distances = 3 if texture else 2

        def constant(name: str, shape: tuple[int, ...]):
            return self.add_weight(shape=shape, initializer="zeros", trainable=False, name=name)

        # The pixel distance to each class mean, expanded: x² @ pixel_norm + x @ pixel_products + pixel_offsets.
        self.pixel_norm = constant("pixel_norm", (_PIXELS, 1))
        self.pixel_products = constant("pixel_products", (_PIXELS, classes))
        self.pixel_offsets = constant("pixel_offsets", (classes,))
        self.prototypes = constant("prototypes", (features, prototypes))  # unit-length k-means centres, as columns
        if texture:
            self.texture_whitening = constant("texture_whitening", (_TEXTURE, _TEXTURE))  # x @ it: unit covariance
            self.texture_centres = constant("texture_centres", (classes, _TEXTURE))  # class means, whitened
        self.location = constant("location", (distances,))  # held-out mean of each log distance (pixels: + margin)
        self.scale = constant("scale", (distances,))  # and deviation
        self.format_weights = constant("format_weights", (2,))  # deviations per unit of each format gap
        self.threshold = constant("threshold", ())

    def distances(self, images, features):
        """The log distances, [n, 3] (or [n, 2] without texture): pixels, features and texture, each to the
        nearest class or prototype."""
        x = tf.reshape(tf.cast(images, tf.float32), (-1, _PIXELS))
        # Expanded into squares and a product, as no other term is: its values lie far above their float32
        # rounding (a class mean is no image), and one product replaces a pass over [n, classes, 784].
        to_mean = tf.square(x) @ self.pixel_norm + (x @ self.pixel_products + self.pixel_offsets)
        unit = tf.math.l2_normalize(tf.cast(features, tf.float32), axis=-1)
        to_prototype = 1.0 - tf.reduce_max(unit @ self.prototypes, axis=-1)  # stored transposed: a plain product
        nearest = [tf.reduce_min(to_mean, axis=-1), to_prototype]
        if self.texture:
            nearest.append(_nearest(texture(images) @ self.texture_whitening, self.texture_centres))
        return tf.math.log(tf.maximum(tf.stack(nearest, axis=-1), _FLOOR))

    def call(self, images, features):
        deviations = tf.reduce_max((self.distances(images, features) - self.location) / self.scale, axis=-1)
        return deviations + tf.linalg.matvec(format_gaps(images), self.format_weights)


def _nearest(points, centres):
    """Squared distance of each row of ``points`` to the nearest row of ``centres``, [n].

    The differences are taken before they are squared: expanded into squares and a product (as the
    pixel distance is), the whitened texture statistics' large norms would cancel to a distance that
    differs between two processes' kernels (the InfraValidator compares served scores with these to 1e-4).
    """
    return tf.reduce_min(tf.reduce_sum(tf.square(points[:, None, :] - centres[None]), axis=-1), axis=-1)


def _class_means(x: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(each class's mean [classes, d], each row less its class's mean [n, d])."""
    present = np.unique(labels)
    means = np.stack([x[labels == c].mean(axis=0) for c in present])
    return means, x - means[np.searchsorted(present, labels)]


def _whitening(centred: np.ndarray, shrinkage: float) -> np.ndarray:
    """W such that ``centred @ W`` has unit covariance, shrunk by ``shrinkage`` of its mean eigenvalue."""
    eigenvalues, eigenvectors = np.linalg.eigh(centred.T @ centred / len(centred))
    return eigenvectors / np.sqrt(np.maximum(eigenvalues, 0.0) + shrinkage * eigenvalues.mean())


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
    pixel_means, centred = _class_means(train.images.reshape(len(train), _PIXELS) / 255.0, train.labels)
    variance = np.mean(np.square(centred), axis=0)
    pixel_scale = 1.0 / np.sqrt(variance + config.shrinkage * variance.mean())

    rng = np.random.default_rng(config.seed)
    chosen = np.sort(rng.choice(len(train), min(config.sample, len(train)), replace=False))
    sample = np.asarray(train_features(train.images[chosen]), np.float64)
    sample /= np.maximum(np.linalg.norm(sample, axis=1, keepdims=True), _FLOOR)
    prototypes = _prototypes(sample, train.labels[chosen], config.prototypes, rng)

    # sum((x / 255 - mean) * scale)² over the pixels = x² · (scale / 255)² - 2 x · mean scale² / 255 + |mean scale|²
    layer = NoveltyScore(len(pixel_means), sample.shape[1], len(prototypes), config.texture)
    values = [
        (layer.pixel_norm, np.square(pixel_scale / 255.0)[:, None]),
        (layer.pixel_products, -2 * (pixel_means * np.square(pixel_scale)).T / 255.0),
        (layer.pixel_offsets, np.sum(np.square(pixel_means * pixel_scale), axis=1)),
        (layer.prototypes, prototypes.T),
        (layer.format_weights, [config.framing_weight, config.contrast_weight]),
        (layer.scale, np.ones(layer.scale.shape)),
    ]
    if config.texture:
        texture_means, centred = _class_means(_chunked(texture, train.images).astype(np.float64), train.labels)
        whitening = _whitening(centred, _TEXTURE_SHRINKAGE)
        values += [(layer.texture_whitening, whitening), (layer.texture_centres, texture_means @ whitening)]
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
