"""The networks' building blocks: the fused normalisation layer and the folded serving twin."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from fmnist.common import names
from fmnist.pipeline import model as model_lib


def test_fused_batch_norm_normalises_by_the_batch_and_tracks_moving_statistics():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, (16, 5, 5, 4)).astype(np.float32)
    fused, reference = model_lib.FusedBatchNorm(), keras.layers.BatchNormalization()
    fused.build(x.shape), reference.build(x.shape)
    np.testing.assert_allclose(fused(x, training=True), reference(x, training=True), atol=1e-4)

    per_channel = x.reshape(-1, 4)
    np.testing.assert_allclose(fused.moving_mean, 0.01 * per_channel.mean(0), rtol=1e-4)
    np.testing.assert_allclose(fused.moving_variance, 0.99 + 0.01 * per_channel.var(0, ddof=1), rtol=1e-4)
    # In inference the moving statistics normalise, as in Keras' layer after the same update.
    reference.moving_variance.assign(fused.moving_variance)
    np.testing.assert_allclose(fused(x, training=False), reference(x, training=False), atol=1e-4)


def _randomised(network: keras.Model, rng: np.random.Generator) -> keras.Model:
    """Every weight random, normalisation statistics included, so folding has something to get wrong."""
    network.set_weights(
        [
            rng.uniform(0.5, 1.5, w.shape).astype(np.float32) * rng.choice([-0.1, 0.1], w.shape)
            if "variance" not in w.path
            else rng.uniform(0.5, 2.0, w.shape).astype(np.float32)
            for w in network.weights
        ]
    )
    return network


@pytest.mark.parametrize("dtype", ["float32", "mixed_bfloat16"])
def test_folded_cnn_computes_what_was_trained_in_float32_without_normalisation_layers(dtype):
    rng = np.random.default_rng(1)
    trained = _randomised(model_lib.build("cnn", dtype), rng)
    twin = model_lib.folded(trained, "cnn")
    inputs = model_lib.preprocess(rng.integers(0, 256, (8, names.IMAGE_SIZE, names.IMAGE_SIZE)).astype(np.float32))

    expected = np.asarray(trained(inputs, training=False), np.float32)
    tolerance = 1e-4 if dtype == "float32" else 5e-2  # the trained model computes in bfloat16
    np.testing.assert_allclose(twin(inputs), expected, atol=tolerance * np.abs(expected).max())
    assert not any(isinstance(layer, (model_lib.FusedBatchNorm, keras.layers.Dropout)) for layer in twin.layers)
    assert all(w.dtype == "float32" for w in twin.weights)


def test_mirror_pass_runs_for_unsure_images_only_and_each_answer_is_the_images_own():
    rng = np.random.default_rng(2)
    network = model_lib.folded(_randomised(model_lib.build("cnn"), rng), "cnn")
    inputs = model_lib.preprocess(rng.integers(0, 256, (16, names.IMAGE_SIZE, names.IMAGE_SIZE)).astype(np.float32))
    plain, mirrored = np.asarray(network(inputs)), np.asarray(network(inputs[:, :, ::-1]))
    confidence = np.asarray(keras.ops.softmax(plain)).max(axis=1)
    below = float(np.median(confidence))  # half the images unsure, half sure
    unsure = confidence < below
    assert 0 < unsure.sum() < len(unsure)

    averaged = np.asarray(model_lib.with_flip_averaging(network, below)(inputs))
    np.testing.assert_allclose(averaged[unsure], (plain[unsure] + mirrored[unsure]) / 2, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(averaged[~unsure], plain[~unsure], rtol=1e-4, atol=1e-5)
    one_by_one = np.concatenate([model_lib.with_flip_averaging(network, below)(inputs[i : i + 1]) for i in range(16)])
    np.testing.assert_allclose(one_by_one, averaged, rtol=1e-4, atol=1e-5)
    # below=1 averages every image, so an image and its mirror image get the same answer.
    always = model_lib.with_flip_averaging(network)
    np.testing.assert_allclose(always(inputs), always(inputs[:, :, ::-1]), rtol=1e-4, atol=1e-5)


def test_an_unknown_profile_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="unknown profile 'resnet'; choose one of mlp, cnn"):
        model_lib.build("resnet")


@pytest.mark.parametrize("profile", ["mlp", "cnn"])
def test_features_come_with_the_models_own_logits_from_one_pass(profile):
    rng = np.random.default_rng(3)
    served = model_lib.for_serving(_randomised(model_lib.build(profile), rng), profile)
    images = rng.integers(0, 256, (16, names.IMAGE_SIZE, names.IMAGE_SIZE)).astype(np.float32)
    inputs = model_lib.preprocess(images)
    features, logits = model_lib.features_and_logits(served)(inputs)
    np.testing.assert_allclose(logits, served(inputs), rtol=1e-4, atol=1e-5)  # mirror average included
    network = model_lib.network_of(served)
    hidden = keras.Model(network.inputs, network.layers[-2].output)(inputs)
    np.testing.assert_allclose(features, hidden, rtol=1e-4, atol=1e-5)
    assert features.shape == (16, network.layers[-2].units)
