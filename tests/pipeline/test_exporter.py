"""Trainer → Evaluator → Pusher on real data, small: signatures, blessing, atomic push."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from conftest import encode_png

from fmnist.common import names
from fmnist.pipeline import evaluator, exporter, model_card, plots, pusher, trainer
from fmnist.pipeline import model as model_lib


def _config(tmp_path: Path, **eval_kwargs) -> exporter.ExporterConfig:
    return exporter.ExporterConfig(
        models_dir=str(tmp_path / "models"),
        run_dir=str(tmp_path / "run"),
        train=trainer.TrainConfig(epochs=1, limit=3000, verbose=0),
        eval=evaluator.EvalConfig(**{"min_accuracy": 0.5, **eval_kwargs}),
    )


def _cached(dataset):
    return lambda data_dir=None: dataset


def test_push_writes_a_self_explaining_version(tmp_path, dataset, capsys):
    result = exporter.run(_config(tmp_path), load_data=_cached(dataset), clock=lambda: 1_700_000_000)
    assert result.version_dir == tmp_path / "models" / names.MODEL_NAME / "1700000000"
    extra = result.version_dir / names.ASSETS_EXTRA
    for name in (names.WARMUP_FILE, names.CONFIG_FILE, names.METRICS_FILE, *exporter.PLOTS):
        assert (extra / name).is_file(), name
    # The diagram is optional: there exactly when Graphviz is (test_model_diagram_* check both cases).
    assert (extra / exporter.DIAGRAM).is_file() == plots.can_draw_diagrams()
    # The model card names its version, says what the metrics say, and lists the signatures that were exported.
    card = (extra / model_card.MARKDOWN_FILE).read_text()
    accuracy = json.loads((extra / names.METRICS_FILE).read_text())["accuracy"]
    assert "version 1700000000" in card and f"{accuracy:.4f}" in card and "blessed" in card
    for key in (names.SERVING_DEFAULT, names.PREDICT_IMAGES, names.CLASSIFY):
        assert f"| {key} |" in card, key
    assert "| predict_images | tensorflow/serving/predict | image_bytes string [None] |" in card
    # Every predict signature says how unlike the training images each input is; classify keeps Classify's two.
    predict_outputs = (
        f"{names.OUTPUT_CLASS_IDS} int64 [None]; {names.OUTPUT_CLASS_NAMES} string [None]; "
        f"{names.OUTPUT_OOD_SCORES} float [None]; {names.OUTPUT_PROBABILITIES} float [None, 10]; "
        f"{names.OUTPUT_UNFAMILIAR} bool [None] |"
    )
    assert card.count(predict_outputs) == 2
    classify = "| classify | tensorflow/serving/classify | inputs string [None] | classes string [None, 10]; "
    assert classify + "scores float [None, 10] |" in card
    for section in ("## Calibration", "## Unlike the training images", "## Infra validation"):
        assert section in card, section
    assert (extra / model_card.HTML_FILE).read_text().startswith("<!DOCTYPE html>")
    # --limit 3000 with the mlp's 10 % validation split: the counts that were really used.
    assert "2,700 images fitted, 300 held back for validation (--limit 3,000 of 60,000)" in capsys.readouterr().out
    metrics = json.loads((extra / names.METRICS_FILE).read_text())
    assert 0.5 < metrics["accuracy"] <= 1 and metrics["blessing"]["blessed"]
    assert len(metrics["confusion_matrix"]) == names.NUM_CLASSES
    assert sum(map(sum, metrics["confusion_matrix"])) == len(dataset.test)
    assert set(metrics["per_class"]) == set(names.CLASS_NAMES)
    assert json.loads((extra / names.CONFIG_FILE).read_text())["train"]["limit"] == 3000
    assert not [p for p in result.version_dir.parent.iterdir() if not p.name.isdigit()], "staging left behind"
    # The InfraValidator served the candidate before it was pushed, and the card says so with the metrics' numbers.
    infra = metrics["infra_validation"]
    assert infra["passed"] and infra["requests"] == 4 and infra["seconds"] > 0
    assert infra["reason"] in card and f"{metrics['calibration']['test_ece_after']:.4f}" in card
    assert f"{metrics['novelty']['threshold']:.4f}" in card


def test_signatures_agree_on_raw_and_encoded_images(models_dir, dataset):
    loaded = tf.saved_model.load(str(models_dir / names.MODEL_NAME / "1"))
    images = dataset.test.images[:64]
    raw = loaded.signatures[names.SERVING_DEFAULT](**{names.INPUT_IMAGES: tf.constant(images, tf.float32)})
    for mode in ("L", "RGB", "RGBA"):
        encoded = loaded.signatures[names.PREDICT_IMAGES](
            **{names.INPUT_IMAGE_BYTES: tf.constant([encode_png(i, mode) for i in images])}
        )
        np.testing.assert_allclose(raw[names.OUTPUT_PROBABILITIES], encoded[names.OUTPUT_PROBABILITIES], atol=1e-4)
        np.testing.assert_array_equal(raw[names.OUTPUT_CLASS_IDS], encoded[names.OUTPUT_CLASS_IDS])
    probabilities = raw[names.OUTPUT_PROBABILITIES].numpy()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-5)
    np.testing.assert_array_equal(raw[names.OUTPUT_CLASS_IDS], probabilities.argmax(axis=1))
    accuracy = (raw[names.OUTPUT_CLASS_IDS].numpy() == dataset.test.labels[:64]).mean()
    assert accuracy > 0.6


def test_encoded_path_resizes_and_refuses_bombs(models_dir, dataset):
    import io
    import struct
    import zlib

    from PIL import Image

    loaded = tf.saved_model.load(str(models_dir / names.MODEL_NAME / "1"))
    predict = loaded.signatures[names.PREDICT_IMAGES]
    image = dataset.test.images[0]
    big = io.BytesIO()
    Image.fromarray(np.kron(image, np.ones((4, 4), np.uint8))).save(big, "JPEG", quality=95)
    small = predict(**{names.INPUT_IMAGE_BYTES: tf.constant([encode_png(image)])})
    large = predict(**{names.INPUT_IMAGE_BYTES: tf.constant([big.getvalue()])})
    assert small[names.OUTPUT_CLASS_IDS].numpy()[0] == large[names.OUTPUT_CLASS_IDS].numpy()[0]

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    bomb = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match="image too large"):
        predict(**{names.INPUT_IMAGE_BYTES: tf.constant([bomb])})
    with pytest.raises(tf.errors.InvalidArgumentError, match="unsupported image format"):
        predict(**{names.INPUT_IMAGE_BYTES: tf.constant([b"not an image"])})
    # TensorFlow's decoder would take a WebP, whose header the graph does not read: refused before decoding
    webp = io.BytesIO()
    Image.fromarray(image).save(webp, "WEBP")
    with pytest.raises(tf.errors.InvalidArgumentError, match="unsupported image format: PNG, JPEG, GIF or BMP only"):
        predict(**{names.INPUT_IMAGE_BYTES: tf.constant([webp.getvalue()])})


def test_saved_model_cli_lists_the_signatures(models_dir):
    cli = Path(sys.executable).with_name("saved_model_cli")
    shown = subprocess.run(
        [str(cli), "show", "--dir", str(models_dir / names.MODEL_NAME / "1"), "--all"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for text in (
        f"signature_def['{names.SERVING_DEFAULT}']",
        f"signature_def['{names.PREDICT_IMAGES}']",
        f"inputs['{names.INPUT_IMAGES}']",
        f"inputs['{names.INPUT_IMAGE_BYTES}']",
        f"outputs['{names.OUTPUT_PROBABILITIES}']",
        f"outputs['{names.OUTPUT_CLASS_IDS}']",
        f"outputs['{names.OUTPUT_CLASS_NAMES}']",
        "shape: (-1, 28, 28)",
        "dtype: DT_STRING",
        "dtype: DT_INT64",
        f"signature_def['{names.CLASSIFY}']",
        f"Method name is: {tf.saved_model.CLASSIFY_METHOD_NAME}",
    ):
        assert text in shown, text


def test_gate_refuses_below_threshold_and_pushes_nothing(tmp_path, dataset, capsys):
    result = exporter.run(_config(tmp_path, min_accuracy=0.999), load_data=_cached(dataset))
    assert result.version_dir is None and not result.evaluation.blessed
    assert "below --min-accuracy" in result.evaluation.reason
    assert pusher.versions(tmp_path / "models" / names.MODEL_NAME) == []
    # The run's record still says why.
    assert json.loads((tmp_path / "run" / names.METRICS_FILE).read_text())["blessing"]["blessed"] is False


def test_gate_refuses_a_regression_and_force_overrides(tmp_path, dataset, capsys):
    first = exporter.run(_config(tmp_path), load_data=_cached(dataset), clock=lambda: 100)
    metrics_file = first.version_dir / names.ASSETS_EXTRA / names.METRICS_FILE
    metrics = json.loads(metrics_file.read_text())
    metrics_file.write_text(json.dumps({**metrics, "accuracy": 0.999}))  # pretend the served one was excellent

    second = exporter.run(_config(tmp_path), load_data=_cached(dataset), clock=lambda: 100)
    assert second.version_dir is None and "regresses from version 100" in second.evaluation.reason

    capsys.readouterr()
    forced = exporter.run(_config(tmp_path, force=True), load_data=_cached(dataset), clock=lambda: 100)
    assert forced.version_dir.name == "101"  # the clock repeats: the version is bumped past the existing one
    out = capsys.readouterr().out
    assert "--force pushed version 101 although it was NOT blessed" in out and "serves it" in out
    assert json.loads((forced.version_dir / names.ASSETS_EXTRA / names.METRICS_FILE).read_text())["blessing"]["forced"]


def test_bless_rules():
    config = evaluator.EvalConfig(min_accuracy=0.85, max_regression=0.01)
    assert evaluator.bless(0.88, config, None)[0]
    assert evaluator.bless(0.875, config, (7, {"accuracy": 0.88}))[0]
    assert not evaluator.bless(0.86, config, (7, {"accuracy": 0.88}))[0]
    assert not evaluator.bless(0.84, config, None)[0]


def test_failed_push_leaves_no_version_directory(tmp_path, dataset):
    model = trainer.run(trainer.TrainConfig(epochs=1, limit=500, verbose=0), dataset.train).model
    base = tmp_path / "models" / names.MODEL_NAME
    with pytest.raises(FileNotFoundError):
        pusher.push(model, base, extras={"missing.png": tmp_path / "does-not-exist.png"})
    assert list(base.iterdir()) == []


def test_cli_exits_non_zero_with_one_line_error_on_bad_data(tmp_path, capsys):
    code = exporter.main(
        [
            "--data-dir",
            str(tmp_path / "nowhere"),
            "--models-dir",
            str(tmp_path / "m"),
            "--run-dir",
            str(tmp_path / "run"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: ") and "Traceback" not in err


def test_cnn_profile_trains_briefly_and_serves_what_was_evaluated(tmp_path, dataset):
    config = dataclasses.replace(
        _config(tmp_path, min_accuracy=0.0),
        train=trainer.TrainConfig(profile="cnn", epochs=1, limit=512, verbose=0),
    )
    result = exporter.run(config, load_data=_cached(dataset), clock=lambda: 5)
    saved = json.loads((result.version_dir / names.ASSETS_EXTRA / names.CONFIG_FILE).read_text())["train"]
    assert saved["batch_size"] == model_lib.PROFILES["cnn"].batch_size and saved["epochs"] == 1
    assert saved["mixed_precision"] == model_lib.native_bfloat16()

    loaded = tf.saved_model.load(str(result.version_dir))
    images = dataset.test.images[:200]
    served = loaded.signatures[names.SERVING_DEFAULT](**{names.INPUT_IMAGES: tf.constant(images, tf.float32)})
    mirrored = loaded.signatures[names.SERVING_DEFAULT](
        **{names.INPUT_IMAGES: tf.constant(images[:, :, ::-1], tf.float32)}
    )
    # The mirror average is in the graph. An answer whose top probability is below the profile's
    # threshold was averaged (a sure first pass is answered as it is), so where an image's answer and its
    # mirror image's both are, they are the same.
    below = model_lib.PROFILES["cnn"].flip_averaging_below
    # The served probabilities are temperature-scaled; the averaging decided on the network's own, recovered here.
    temperature = json.loads((result.version_dir / names.ASSETS_EXTRA / names.METRICS_FILE).read_text())["calibration"][
        "temperature"
    ]

    def uncalibrated(outputs):
        return tf.nn.softmax(np.log(outputs[names.OUTPUT_PROBABILITIES].numpy()) * temperature).numpy()

    averaged = (uncalibrated(served).max(axis=1) < below) & (uncalibrated(mirrored).max(axis=1) < below)
    assert averaged.sum() > 100  # a cnn trained for a few steps is unsure of most images
    probabilities, mirrored = served[names.OUTPUT_PROBABILITIES].numpy(), mirrored[names.OUTPUT_PROBABILITIES].numpy()
    np.testing.assert_allclose(probabilities[averaged], mirrored[averaged], atol=1e-5)
    assert all(v.dtype == tf.float32 for v in loaded.variables if v.dtype.is_floating)


def test_label_smoothing_spreads_the_target_over_the_other_classes():
    logits = np.log(np.array([[0.7, 0.2, 0.1] + [1e-9] * 7], np.float32))
    labels = np.array([0])
    smoothed = model_lib.compile_model(model_lib.build("mlp"), learning_rate=1e-3, label_smoothing=0.1).loss
    target = np.full(names.NUM_CLASSES, 0.1 / names.NUM_CLASSES)
    target[0] += 0.9
    expected = -(target * np.log(np.array([0.7, 0.2, 0.1] + [1e-9] * 7))).sum()
    assert float(np.mean(smoothed(labels, logits))) == pytest.approx(expected, rel=1e-4)
    assert model_lib.PROFILES["mlp"].label_smoothing == 0  # the seed recipe stays as it was


needs_graphviz = pytest.mark.skipif(
    not plots.can_draw_diagrams(), reason="Graphviz's dot is not on PATH (apt-get install graphviz)"
)


@needs_graphviz
@pytest.mark.parametrize("profile", ["mlp", "cnn"])
def test_model_diagram_shows_every_layer_of_the_network(tmp_path, profile):
    import keras

    served = model_lib.for_serving(model_lib.build(profile), profile)
    network = model_lib.network_of(served)
    assert plots.model_diagram(network, tmp_path / "model.png")
    drawn = keras.utils.model_to_dot(network, show_shapes=True).to_string()
    for layer in network.layers:  # the cnn's mirror-average wrapper hides none of them
        assert layer.name in drawn, layer.name
    if profile == "cnn":
        assert sum(isinstance(layer, keras.layers.Conv2D) for layer in network.layers) == 5
    from PIL import Image

    width, height = Image.open(tmp_path / "model.png").size
    assert width >= 300 and height >= 300  # readable at normal size, not a thin strip


def test_model_diagram_is_skipped_with_a_notice_without_graphviz(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("PATH", str(tmp_path))  # no dot anywhere
    assert not plots.can_draw_diagrams()
    assert not plots.model_diagram(model_lib.build("mlp"), tmp_path / "model.png")
    assert not (tmp_path / "model.png").exists()
    assert "install graphviz" in caplog.text


@pytest.mark.slow
def test_fmnist_train_says_what_limit_used_and_that_force_pushed_an_unblessed_version(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "fmnist.cli",
            "train",
            "--limit",
            "1000",
            "--epochs",
            "1",
            "--min-accuracy",
            "0.99",
            "--force",
            "--models-dir",
            str(tmp_path / "models"),
            "--run-dir",
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert "900 images fitted, 100 held back for validation (--limit 1,000 of 60,000)" in result.stdout
    assert "NOT blessed" in result.stdout and "although it was NOT blessed" in result.stdout
    assert "serves it instead of the last blessed one" in result.stdout
    assert len(pusher.versions(tmp_path / "models" / names.MODEL_NAME)) == 1
