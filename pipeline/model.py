"""Model profiles: the seed MLP and a small CNN, both fed raw 0-255 pixels.

Normalisation lives in :func:`preprocess`, used by training and by the
exported graph alike, so what is served is exactly what was trained.

Usage: ``model = build("mlp"); compile_model(model, learning_rate=1e-3)``
"""

from __future__ import annotations

from typing import Callable

import keras
import tensorflow as tf

from fmnist import names

_SHAPE = (names.IMAGE_SIZE, names.IMAGE_SIZE)


def preprocess(images: tf.Tensor) -> tf.Tensor:
    """Raw 0-255 intensities [batch, 28, 28] → the float input the network was trained on."""
    return tf.cast(images, tf.float32) / 255.0


def _mlp() -> keras.Model:
    # Exactly the seed model.
    return keras.Sequential(
        [
            keras.Input(_SHAPE, name=names.INPUT_IMAGES),
            keras.layers.Flatten(),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(names.NUM_CLASSES, name="logits"),
        ],
        name="mlp",
    )


def _cnn() -> keras.Model:
    def block(x, filters: int):
        for _ in range(2):
            x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
            x = keras.layers.BatchNormalization()(x)
            x = keras.layers.ReLU()(x)
        return keras.layers.MaxPooling2D()(x)

    inputs = keras.Input(_SHAPE, name=names.INPUT_IMAGES)
    x = keras.layers.Reshape(_SHAPE + (1,))(inputs)
    x = block(x, 32)
    x = block(x, 64)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dropout(0.3)(x)
    x = keras.layers.Dense(128, activation="relu")(x)
    x = keras.layers.Dropout(0.3)(x)
    outputs = keras.layers.Dense(names.NUM_CLASSES, name="logits")(x)
    return keras.Model(inputs, outputs, name="cnn")


PROFILES: dict[str, Callable[[], keras.Model]] = {"mlp": _mlp, "cnn": _cnn}


def build(profile: str) -> keras.Model:
    """A fresh, uncompiled model of the named profile; the network outputs logits."""
    try:
        return PROFILES[profile]()
    except KeyError:
        raise ValueError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}") from None


def compile_model(model: keras.Model, *, learning_rate: float) -> keras.Model:
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model
