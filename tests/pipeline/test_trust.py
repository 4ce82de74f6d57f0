"""What the exporter adds so a served answer can be trusted: calibrated probabilities and the novelty score.

One small exported model (1 epoch on 3,000 images) serves every test here,
through its SavedModel's signatures, as a server runs them; the
out-of-distribution images are tests/data/ood/ (bench/ood_sets.py made them).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from conftest import encode_png

from fmnist.common import names
from fmnist.pipeline import calibrator, data, evaluator, exporter, novelty, trainer

OOD_DIR = Path(__file__).resolve().parents[1] / "data" / "ood"


@pytest.fixture(scope="module")
def exported(tmp_path_factory, dataset):
    """(version directory, its metrics) of a briefly trained mlp pushed by the exporter."""
    tmp = tmp_path_factory.mktemp("trust")
    config = exporter.ExporterConfig(
        models_dir=str(tmp / "models"),
        run_dir=str(tmp / "run"),
        train=trainer.TrainConfig(epochs=1, limit=3000, verbose=0),
        eval=evaluator.EvalConfig(min_accuracy=0.5),
    )
    result = exporter.run(config, load_data=lambda data_dir=None: dataset, clock=lambda: 3)
    return result.version_dir, json.loads((result.version_dir / names.ASSETS_EXTRA / names.METRICS_FILE).read_text())


def _predict_files(version_dir: Path, encoded: list[bytes]) -> dict[str, np.ndarray]:
    loaded = tf.saved_model.load(str(version_dir))
    outputs = loaded.signatures[names.PREDICT_IMAGES](**{names.INPUT_IMAGE_BYTES: tf.constant(encoded)})
    return {alias: tensor.numpy() for alias, tensor in outputs.items()}


def test_the_committed_ood_set_is_what_its_script_describes():
    kinds = {path.name.rsplit("_", 1)[0] for path in OOD_DIR.glob("*.png")}
    assert kinds == {"noise", "shapes", "digits", "photo", "inverted"}
    assert len(list(OOD_DIR.glob("*.png"))) == 40


def test_images_unlike_the_training_images_score_higher_and_most_are_flagged(exported, dataset):
    version_dir, metrics = exported
    ood = sorted(OOD_DIR.glob("*.png"))
    outside = _predict_files(version_dir, [path.read_bytes() for path in ood])
    inside = _predict_files(version_dir, [encode_png(image) for image in dataset.test.images[:400]])
    for outputs in (outside, inside):
        scores = outputs[names.OUTPUT_OOD_SCORES]
        assert scores.dtype == np.float32 and scores.shape == outputs[names.OUTPUT_CLASS_IDS].shape
        # The flag is the score against the threshold the exporter recorded.
        threshold = metrics["novelty"]["threshold"]
        np.testing.assert_array_equal(outputs[names.OUTPUT_UNFAMILIAR], scores > np.float32(threshold))

    # The baseline, 1 - confidence, against the score: ranks of the out-of-distribution images.
    def auroc(a: np.ndarray, b: np.ndarray) -> float:
        return float((b[:, None] > a[None, :]).mean() + 0.5 * (b[:, None] == a[None, :]).mean())

    score_auroc = auroc(inside[names.OUTPUT_OOD_SCORES], outside[names.OUTPUT_OOD_SCORES])
    assert score_auroc > 0.97, score_auroc
    flagged = outside[names.OUTPUT_UNFAMILIAR]
    by_kind = {kind: flagged[[p.name.startswith(kind) for p in ood]].mean() for kind in ("noise", "photo", "inverted")}
    assert all(share == 1.0 for share in by_kind.values()), by_kind
    assert flagged.mean() >= 0.8, dict(zip([p.name for p in ood], flagged, strict=True))
    # About the aimed share of held-out garments is flagged (300 held back set the threshold: a loose bound).
    assert inside[names.OUTPUT_UNFAMILIAR].mean() <= 0.12
    assert abs(metrics["novelty"]["test_flagged"] - metrics["novelty"]["flag_rate"]) <= 0.04
    # The mlp profile's score has no texture distance unless asked for (test_the_texture_distance_...).
    assert metrics["novelty"]["texture"] is False and "two" in metrics["novelty"]["method"]


def test_every_fashion_mnist_image_meets_the_format_the_score_checks(dataset):
    # The format gaps add to the score without moving any garment's: zero on both splits, every image.
    for images in (dataset.train.images, dataset.test.images):
        for i in range(0, len(images), 10_000):
            np.testing.assert_array_equal(novelty.format_gaps(images[i : i + 10_000]).numpy(), 0.0)


def test_format_gaps_count_pixels_of_framing_and_levels_of_contrast_beyond_the_slack():
    square = np.zeros((28, 28), np.uint8)
    square[9:19, 9:19] = 255  # centred, its long side 10 pixels: 28 - 10 - 2 of slack short
    bar = np.zeros((28, 28), np.uint8)
    bar[:, :4] = 255  # spans the frame, but its centre (column 1.5) is 12 pixels off: 1 of slack
    grey = np.full((28, 28), 40, np.uint8)  # fills the frame; 40 levels above black, 215 below white, 2 of slack each
    black = np.zeros((28, 28), np.uint8)  # nothing lit: no box at all
    gaps = novelty.format_gaps(np.stack([square, bar, grey, black])).numpy()
    np.testing.assert_array_equal(gaps, [[16, 0], [11, 0], [0, 38 + 213], [26, 253]])


def test_texture_statistics_of_a_flat_field_and_a_checkerboard():
    flat = np.full((28, 28), 255, np.uint8)
    checkerboard = (np.indices((28, 28)).sum(axis=0) % 2 * 255).astype(np.uint8)
    stats = novelty.texture(np.stack([flat, checkerboard])).numpy()
    # Share of lit pixels, second differences against steps, how flat the lit pixels are.
    np.testing.assert_allclose(stats[0], [1, 0, 1])
    # Every step is 255 and every second difference 510: per run of four, 2 of them against 3 steps.
    np.testing.assert_allclose(stats[1], [0.5, 2 * 510 / (3 * 255), 0], rtol=1e-6)


def _texture_by_definition(image: np.ndarray) -> list[float]:
    """The three statistics of one image, pixel by pixel as the module's docstring defines them: within
    each row's runs of four pixels, the steps right and their second differences; a pixel's lit weight is
    its level up to 1, and its flatness falls from 1 with no step right to 0 with a step of two levels."""
    x = image.astype(np.float64)
    runs = x.reshape(28, 7, 4)
    steps = np.diff(runs, axis=-1)
    lit = np.minimum(runs[..., :-1], 1)
    flat = (lit * np.maximum(2 - np.abs(steps), 0) / 2).sum() / max(lit.sum(), 1)
    return [np.minimum(x, 1).mean(), np.abs(np.diff(steps, axis=-1)).sum() / max(np.abs(steps).sum(), 1e-6), flat]


def test_texture_statistics_match_their_definition_on_garments_and_on_anything(dataset):
    rng = np.random.default_rng(7)
    images = np.concatenate(
        [
            dataset.test.images[:40],
            rng.integers(0, 256, (10, 28, 28), dtype=np.uint8),
            rng.choice(np.array([0, 1, 2, 3, 200, 255], np.uint8), (10, 28, 28)),  # steps at the flatness limit
        ]
    )
    expected = np.array([_texture_by_definition(image) for image in images])
    np.testing.assert_allclose(novelty.texture(images).numpy(), expected, rtol=1e-5, atol=1e-6)


def test_the_pixel_and_texture_distances_are_scaled_distances_to_the_training_means(dataset):
    train = dataset.train
    fitted = data.Split(train.images[:2000], train.labels[:2000])
    held_out = data.Split(train.images[2000:2500], train.labels[2000:2500])
    layer = novelty.fit(
        novelty.NoveltyConfig(sample=500, prototypes=2),
        fitted,
        _pixel_features,
        held_out,
        _pixel_features(held_out.images),
    )
    pixels = fitted.images.reshape(len(fitted), -1) / 255.0
    class_means = np.stack([pixels[fitted.labels == c].mean(axis=0) for c in range(10)])
    variance = np.mean(np.square(pixels - class_means[fitted.labels]), axis=0)  # within the classes
    scale = 1.0 / np.sqrt(variance + 1e-2 * variance.mean())
    images = np.concatenate([dataset.test.images[:50], np.random.default_rng(3).integers(0, 256, (10, 28, 28))])
    x = images.reshape(len(images), -1) / 255.0
    to_mean = np.sum(np.square((x - pixels.mean(axis=0)) * scale), axis=-1)
    statistics = np.array([_texture_by_definition(image) for image in fitted.images])
    texture = np.array([_texture_by_definition(image) for image in images])
    to_texture = np.sum(np.square((texture - statistics.mean(axis=0)) / statistics.std(axis=0)), axis=-1)
    distances = layer.distances(images, _pixel_features(images)).numpy()
    np.testing.assert_allclose(distances[:, 0], np.log(to_mean), atol=1e-4)
    np.testing.assert_allclose(distances[:, 2], np.log(np.maximum(to_texture, 1e-6)), atol=1e-3)


def test_without_the_texture_distance_the_score_is_the_other_two_and_the_layer_holds_no_texture(dataset):
    train = dataset.train
    fitted = data.Split(train.images[:2000], train.labels[:2000])
    held_out = data.Split(train.images[2000:2500], train.labels[2000:2500])
    layers = {
        texture: novelty.fit(
            novelty.NoveltyConfig(sample=500, prototypes=2, texture=texture),
            fitted,
            _pixel_features,
            held_out,
            _pixel_features(held_out.images),
        )
        for texture in (True, False)
    }
    assert not hasattr(layers[False], "texture_mean") and hasattr(layers[True], "texture_mean")
    images = np.concatenate([dataset.test.images[:50], np.random.default_rng(4).integers(0, 256, (10, 28, 28))])
    features = _pixel_features(images)
    with_texture, without = (layers[t].distances(images, features).numpy() for t in (True, False))
    assert with_texture.shape == (60, 3) and without.shape == (60, 2)
    np.testing.assert_allclose(without, with_texture[:, :2], rtol=1e-6)  # the same pixel and feature distances
    # The score is the largest standardised distance (the pixel one less its margin) plus the format gaps.
    layer = layers[False]
    standardised = (without - layer.location.numpy()) / layer.scale.numpy()
    gaps = novelty.format_gaps(images).numpy() @ layer.format_weights.numpy()
    np.testing.assert_allclose(layer(images, features).numpy(), standardised.max(axis=1) + gaps, rtol=1e-5, atol=1e-5)
    assert "two standardised" in novelty.method(False) and "texture" not in novelty.method(False)


def test_the_texture_distance_is_the_profiles_choice_unless_the_command_line_makes_it():
    parse = exporter.build_parser("fmnist train").parse_args

    def texture(argv: list[str]) -> bool:
        return exporter.config_from_args(parse(argv)).resolve().novelty.texture

    assert not texture([]) and not texture(["--profile", "mlp"])  # the mlp: no room in its serving budget
    assert texture(["--profile", "cnn"])
    assert texture(["--texture-distance"]) and not texture(["--profile", "cnn", "--no-texture-distance"])
    # Given outright, the config is used as it is.
    given = novelty.NoveltyConfig(texture=True, flag_rate=0.03)
    assert exporter.ExporterConfig(novelty=given).resolve().novelty == given


def _pixel_features(images: np.ndarray) -> np.ndarray:
    return images.reshape(len(images), -1)[:, ::49].astype(np.float32)  # any 16 activations will do


def test_served_probabilities_are_calibrated_and_answer_as_before(exported, dataset):
    version_dir, metrics = exported
    calibration = metrics["calibration"]
    assert calibration["test_ece_after"] < calibration["test_ece_before"]
    assert calibration["test_nll_after"] <= calibration["test_nll_before"]
    loaded = tf.saved_model.load(str(version_dir))
    images = dataset.test.images
    outputs = loaded.signatures[names.SERVING_DEFAULT](**{names.INPUT_IMAGES: tf.constant(images, tf.float32)})
    probabilities = outputs[names.OUTPUT_PROBABILITIES].numpy()
    # Temperature scaling changes no answer: the accuracy is the Evaluator's, and the ECE is the recorded one.
    np.testing.assert_array_equal(probabilities.argmax(axis=1), outputs[names.OUTPUT_CLASS_IDS].numpy())
    assert (probabilities.argmax(axis=1) == dataset.test.labels).mean() == pytest.approx(metrics["accuracy"])
    ece = calibrator.calibration_error(probabilities, dataset.test.labels)
    assert ece == pytest.approx(calibration["test_ece_after"], abs=1e-3)
    assert (version_dir / names.ASSETS_EXTRA / "reliability.png").is_file()


def test_temperature_scaling_recovers_the_temperature_that_made_a_model_overconfident():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (20_000, names.NUM_CLASSES))
    labels = np.array([rng.choice(names.NUM_CLASSES, p=p) for p in calibrator.softmax(logits)])  # calibrated truth
    overconfident = logits * 2.5
    assert calibrator.calibration_error(calibrator.softmax(overconfident), labels) > 0.1
    temperature = calibrator.fit_temperature(overconfident, labels)
    assert temperature == pytest.approx(2.5, rel=0.05)
    assert calibrator.calibration_error(calibrator.softmax(overconfident, temperature), labels) < 0.02


def test_the_reliability_table_bins_by_confidence():
    probabilities = np.array([[0.95, 0.05], [0.95, 0.05], [0.55, 0.45], [1.0, 0.0]])
    labels = np.array([0, 1, 0, 0])
    table = calibrator.reliability(probabilities, labels, bins=10)
    assert table.count == [1, 3]  # 0.55 alone; 0.95, 0.95 and 1.0 (the top bin takes 1.0)
    assert table.accuracy == [1.0, pytest.approx(2 / 3)]
    assert table.error == pytest.approx((1 * 0.45 + 3 * abs(np.mean([0.95, 0.95, 1.0]) - 2 / 3)) / 4)
