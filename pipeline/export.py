"""The serving graph: the signatures around a trained Keras model, and warmup records.

All preprocessing (decoding, grey conversion, alpha, resize, scaling) is in the
graph, so clients of TF Serving or of the embedded server send raw pixels or
raw file bytes and never normalise. The decoder refuses an image whose header
claims more than ``max_pixels`` before it allocates anything: a 100k x 100k PNG
of a few hundred bytes is an INVALID_ARGUMENT, not an out-of-memory kill.

Usage: ``write_saved_model(model, "/tmp/export/1"); write_warmup(dir, images)``
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

from fmnist.common import names
from fmnist.pipeline.model import features_and_logits, preprocess
from fmnist.pipeline.novelty import NoveltyScore

DEFAULT_MAX_PIXELS = names.MAX_IMAGE_PIXELS
_SIZE = (names.IMAGE_SIZE, names.IMAGE_SIZE)
_GREY_WEIGHTS = (0.2989, 0.5870, 0.1140)  # ITU-R 601-2 luma, as PIL's "L" mode


def _bytes_at(data: tf.Tensor, start: int, count: int) -> tf.Tensor:
    """Bytes [start, start+count) of a scalar string as int64, zeros past its end."""
    padded = tf.strings.join([data, tf.constant(b"\0" * 32)])
    raw = tf.io.decode_raw(tf.strings.substr(padded, start, count), tf.uint8)
    return tf.cast(raw, tf.int64)


def _big_endian(b: tf.Tensor) -> tf.Tensor:
    return tf.reduce_sum(
        b * tf.bitwise.left_shift(tf.constant(1, tf.int64), 8 * tf.range(tf.size(b) - 1, -1, -1, tf.int64))
    )


def _little_endian(b: tf.Tensor) -> tf.Tensor:
    return _big_endian(tf.reverse(b, [0]))


def header_pixels(data: tf.Tensor) -> tf.Tensor:
    """Pixel count an encoded image claims in its header (-1 when the format is none of PNG, JPEG, GIF, BMP).

    Reads only the header, so it is safe on hostile input; decode_image would
    allocate the full frame first.
    """
    magic = tf.strings.substr(tf.strings.join([data, tf.constant(b"\0" * 8)]), 0, 4)

    def png():  # IHDR: width, height as big-endian uint32 at offsets 16 and 20
        return _big_endian(_bytes_at(data, 16, 4)) * _big_endian(_bytes_at(data, 20, 4))

    def gif():  # logical screen: little-endian uint16 at 6 and 8
        return _little_endian(_bytes_at(data, 6, 2)) * _little_endian(_bytes_at(data, 8, 2))

    def bmp():  # BITMAPINFOHEADER: little-endian int32 at 18 and 22; height may be negative
        def signed(v):
            return tf.where(v >= 2**31, 2**32 - v, v)

        return signed(_little_endian(_bytes_at(data, 18, 4))) * signed(_little_endian(_bytes_at(data, 22, 4)))

    def jpeg():
        return tf.reduce_prod(tf.cast(tf.image.extract_jpeg_shape(data)[:2], tf.int64))

    return tf.case(
        [
            (tf.equal(magic, b"\x89PNG"), png),
            (tf.equal(tf.strings.substr(magic, 0, 3), b"GIF"), gif),
            (tf.equal(tf.strings.substr(magic, 0, 2), b"BM"), bmp),
            (tf.equal(tf.strings.substr(magic, 0, 2), b"\xff\xd8"), jpeg),
        ],
        default=lambda: tf.constant(-1, tf.int64),
    )


def decode_image(data: tf.Tensor, max_pixels: int = DEFAULT_MAX_PIXELS) -> tf.Tensor:
    """One encoded image (any size, grey/RGB/RGBA) → float32 [28, 28] of 0-255 intensities.

    Transparent pixels become background (black), matching Fashion-MNIST's
    light-item-on-dark convention.
    """
    pixels = header_pixels(data)
    # decode_image also takes WebP, whose header this graph does not read: refused, so that no image
    # reaches the decoder without its size checked first (the real TF Serving has no other guard).
    known = tf.debugging.assert_non_negative(pixels, message="unsupported image format: PNG, JPEG, GIF or BMP only")
    check = tf.debugging.assert_less_equal(
        pixels,
        tf.constant(max_pixels, tf.int64),
        message=f"image too large: its header claims more than {max_pixels} pixels",
    )
    with tf.control_dependencies([known, check]):
        image = tf.io.decode_image(data, channels=0, expand_animations=False, dtype=tf.uint8)
    image = tf.cast(image, tf.float32)
    channels = tf.shape(image)[-1]
    has_alpha = tf.equal(channels % 2, 0)  # grey+alpha (2) or RGBA (4)
    alpha = tf.cond(has_alpha, lambda: image[..., -1:] / 255.0, lambda: tf.ones_like(image[..., :1]))
    colour = tf.cond(has_alpha, lambda: image[..., :-1], lambda: image)
    weights = tf.cond(
        tf.equal(tf.shape(colour)[-1], 3),
        lambda: tf.constant(_GREY_WEIGHTS),
        lambda: tf.constant([1.0]),
    )
    grey = tf.reduce_sum(colour * weights, axis=-1, keepdims=True) * alpha
    same_size = tf.reduce_all(tf.equal(tf.shape(grey)[:2], _SIZE))
    grey = tf.cond(
        same_size,
        lambda: grey,
        lambda: tf.image.resize(grey, _SIZE, method="bilinear", antialias=True),
    )
    return tf.clip_by_value(tf.reshape(grey, _SIZE), 0.0, 255.0)


# The first 26 bytes of every 8-bit greyscale 28 x 28 PNG: signature, IHDR length and tag,
# width, height, bit depth 8, colour type 0 (grey). What ``fmnist images`` and Fashion-MNIST tools write.
_GREY_PNG_HEADER = (
    b"\x89PNG\r\n\x1a\n"
    + b"\x00\x00\x00\x0dIHDR"
    + names.IMAGE_SIZE.to_bytes(4, "big")
    + names.IMAGE_SIZE.to_bytes(4, "big")
    + b"\x08\x00"
)


def decode_images(image_bytes: tf.Tensor, max_pixels: int = DEFAULT_MAX_PIXELS) -> tf.Tensor:
    """Encoded images [batch] → float32 [batch, 28, 28], exactly as :func:`decode_image` on each.

    The general per-image path (header dispatch, alpha, grey conversion,
    resize) in a ``tf.map_fn`` is mostly the control flow around the
    decoder. When every image in the batch is an 8-bit grey 28 x 28 PNG (one
    vectorised prefix comparison), those steps are all identities, so the
    batch takes a loop of bare ``decode_png`` instead, at less than half the
    cost per image (bench/serving.py measures both). The
    header-claimed size is 28 x 28 on that path, within any ``max_pixels``
    of at least 784.
    """

    def general() -> tf.Tensor:
        return tf.map_fn(
            lambda b: decode_image(b, max_pixels), image_bytes, fn_output_signature=tf.TensorSpec(_SIZE, tf.float32)
        )

    if max_pixels < _SIZE[0] * _SIZE[1]:
        return general()

    def grey_png() -> tf.Tensor:
        pixels = tf.map_fn(
            lambda b: tf.reshape(tf.io.decode_png(b, channels=1), _SIZE),
            image_bytes,
            fn_output_signature=tf.TensorSpec(_SIZE, tf.uint8),
        )
        return tf.cast(pixels, tf.float32)

    prefix = tf.strings.substr(image_bytes, 0, len(_GREY_PNG_HEADER))
    return tf.cond(tf.reduce_all(tf.equal(prefix, _GREY_PNG_HEADER)), grey_png, general)


def serving_functions(
    model: keras.Model,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    temperature: float = 1.0,
    novelty: NoveltyScore | None = None,
) -> dict[str, tuple[Callable[..., dict[str, tf.Tensor]], list[tf.TensorSpec]]]:
    """signature key → (function, input signature): what :func:`write_saved_model` exports, to call in process too.

    ``temperature`` divides the logits before the softmax (calibration; no answer
    changes). With ``novelty``, the predict signatures also output
    ``ood_scores`` and ``unfamiliar`` (score above the layer's threshold);
    ``classify`` keeps the two outputs TF Serving's Classify API allows.
    """
    network = features_and_logits(model) if novelty is not None else model

    def serving_default(images: tf.Tensor) -> dict[str, tf.Tensor]:
        if novelty is None:
            features, logits = None, network(preprocess(images), training=False)
        else:
            features, logits = network(preprocess(images), training=False)
        class_ids = tf.argmax(logits, axis=-1, output_type=tf.int64)
        outputs = {
            names.OUTPUT_PROBABILITIES: tf.nn.softmax(logits / temperature),
            names.OUTPUT_CLASS_IDS: class_ids,
            names.OUTPUT_CLASS_NAMES: tf.gather(tf.constant(names.CLASS_NAMES), class_ids),
        }
        if novelty is not None:
            scores = novelty(images, features)
            outputs[names.OUTPUT_OOD_SCORES] = scores
            outputs[names.OUTPUT_UNFAMILIAR] = scores > novelty.threshold
        return outputs

    def predict_images(image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        return serving_default(decode_images(image_bytes, max_pixels))

    def classify(inputs: tf.Tensor) -> dict[str, tf.Tensor]:
        features = tf.io.parse_example(inputs, {names.FEATURE_IMAGE: tf.io.FixedLenFeature([], tf.string)})
        probabilities = predict_images(features[names.FEATURE_IMAGE])[names.OUTPUT_PROBABILITIES]
        classes = tf.tile(tf.constant([names.CLASS_NAMES]), [tf.shape(probabilities)[0], 1])
        return {tf.saved_model.CLASSIFY_OUTPUT_CLASSES: classes, tf.saved_model.CLASSIFY_OUTPUT_SCORES: probabilities}

    return {
        names.SERVING_DEFAULT: (
            serving_default,
            [tf.TensorSpec((None, *_SIZE), tf.float32, name=names.INPUT_IMAGES)],
        ),
        names.PREDICT_IMAGES: (
            predict_images,
            [tf.TensorSpec((None,), tf.string, name=names.INPUT_IMAGE_BYTES)],
        ),
        names.CLASSIFY: (
            classify,
            [tf.TensorSpec((None,), tf.string, name=tf.saved_model.CLASSIFY_INPUTS)],
        ),
    }


def write_saved_model(
    model: keras.Model,
    path: str | os.PathLike,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    temperature: float = 1.0,
    novelty: NoveltyScore | None = None,
) -> None:
    """Export ``model`` (raw pixels → logits) as a TF2 SavedModel with the three signatures.

    ``serving_default`` takes raw pixels, ``predict_images`` encoded files, and
    ``classify`` serialized tf.Examples holding an encoded image under
    ``names.FEATURE_IMAGE`` (for PredictionService.Classify); see
    :func:`serving_functions` for ``temperature`` and ``novelty``.
    """
    archive = keras.export.ExportArchive()
    archive.track(model)
    if novelty is not None:
        archive.track(novelty)
    functions = serving_functions(model, max_pixels=max_pixels, temperature=temperature, novelty=novelty)
    for key, (function, signature) in functions.items():
        archive.add_endpoint(key, function, input_signature=signature)
    archive.write_out(str(path), verbose=False)
    _mark_as_classification(Path(path) / "saved_model.pb", names.CLASSIFY)


def _mark_as_classification(saved_model_pb: Path, signature: str) -> None:
    """Give ``signature`` the classify method name, which TF Serving's Classify API requires.

    TF2 saving marks every signature as a predict one and offers no way to say
    otherwise, so the MetaGraphDef is edited after the fact.
    """
    saved = saved_model_pb2.SavedModel.FromString(saved_model_pb.read_bytes())
    for meta_graph in saved.meta_graphs:
        meta_graph.signature_def[signature].method_name = tf.saved_model.CLASSIFY_METHOD_NAME
    saved_model_pb.write_bytes(saved.SerializeToString())


def warmup_requests(model_name: str, images: np.ndarray, encoded: list[bytes]) -> list[predict_pb2.PredictRequest]:
    """A few real requests per signature, batch sizes 1 and len(images), as TF Serving replays at load."""
    requests = []
    for count in sorted({1, len(images)}):
        for signature, key, value in (
            (names.SERVING_DEFAULT, names.INPUT_IMAGES, images[:count].astype(np.float32)),
            (names.PREDICT_IMAGES, names.INPUT_IMAGE_BYTES, np.array(encoded[:count], dtype=object)),
        ):
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature)
            )
            request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
            requests.append(request)
    return requests


def write_warmup(saved_model_dir: str | os.PathLike, requests: list[predict_pb2.PredictRequest]) -> Path:
    """Write ``assets.extra/tf_serving_warmup_requests`` (a TFRecord of PredictionLog)."""
    path = Path(saved_model_dir) / names.ASSETS_EXTRA / names.WARMUP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for request in requests:
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return path
