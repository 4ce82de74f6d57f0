from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from conftest import encode_png
from fmnist import names
from pipeline import pusher


def test_fixture_model_has_both_signatures_agreeing(models_dir, dataset):
    loaded = tf.saved_model.load(str(models_dir / names.MODEL_NAME / "1"))
    images = dataset.test.images[:16]
    raw = loaded.signatures[names.SERVING_DEFAULT](**{names.INPUT_IMAGES: tf.constant(images, tf.float32)})
    encoded = loaded.signatures[names.PREDICT_IMAGES](
        **{names.INPUT_IMAGE_BYTES: tf.constant([encode_png(i) for i in images])}
    )
    np.testing.assert_allclose(raw[names.OUTPUT_PROBABILITIES], encoded[names.OUTPUT_PROBABILITIES], atol=1e-6)
    np.testing.assert_array_equal(raw[names.OUTPUT_CLASS_IDS], encoded[names.OUTPUT_CLASS_IDS])
    ids = raw[names.OUTPUT_CLASS_IDS].numpy()
    assert [n.decode() for n in raw[names.OUTPUT_CLASS_NAMES].numpy()] == [names.CLASS_NAMES[i] for i in ids]
    assert (models_dir / names.MODEL_NAME / "1" / names.ASSETS_EXTRA / names.WARMUP_FILE).is_file()
