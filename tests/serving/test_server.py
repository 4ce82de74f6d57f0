"""The embedded server, driven through TF Serving's own generated stubs, as a TF Serving user would.

Read-only tests share one server over the session's pushed model; tests that
push, corrupt or reconfigure versions get their own server over a private copy.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from conftest import encode_png
from google.protobuf import text_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tensorflow.core.example import example_pb2
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow.core.protobuf.rewriter_config_pb2 import RewriterConfig
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from tensorflow_serving.config import model_server_config_pb2

from fmnist.common import names
from fmnist.pipeline import model as model_lib
from fmnist.serving import loader, serve
from fmnist.serving import server as serving_server

TIMEOUT = 10.0
State = get_model_status_pb2.ModelVersionStatus.State
BOMB_PNG = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + (100000).to_bytes(4, "big") * 2 + b"\x08\x00\x00\x00\x00" + b"\0" * 64
)


class Client:
    """The generated stubs over one channel."""

    def __init__(self, port: int, options=()):
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=list(options))
        self.predictions = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.models = model_service_pb2_grpc.ModelServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    def predict(self, request, timeout=TIMEOUT):
        return self.predictions.Predict(request, timeout=timeout)

    def status(self, name=names.MODEL_NAME, version=None) -> dict[int, get_model_status_pb2.ModelVersionStatus]:
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = name
        if version is not None:
            request.model_spec.version.value = version
        response = self.models.GetModelStatus(request, timeout=TIMEOUT)
        return {s.version: s for s in response.model_version_status}

    def health_of(self, service: str) -> int:
        return self.health.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT).status


def request_for(
    images=None, *, image_bytes=None, signature="", version=None, label=None, name=names.MODEL_NAME, outputs=()
):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    if images is not None:
        request.inputs[names.INPUT_IMAGES].CopyFrom(tf.make_tensor_proto(np.asarray(images, np.float32)))
    if image_bytes is not None:
        request.inputs[names.INPUT_IMAGE_BYTES].CopyFrom(tf.make_tensor_proto(np.array(image_bytes, dtype=object)))
    request.output_filter.extend(outputs)
    return request


def rpc_error(call, *args, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(*args, **kwargs)
    return caught.value


def wait_for(predicate, timeout=20.0, interval=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


def start_server(base_path: Path, **overrides) -> serving_server.Server:
    settings = dict(
        port=0, model_name=names.MODEL_NAME, model_base_path=str(base_path), file_system_poll_wait_seconds=0.1
    )
    settings.update(overrides)
    return serving_server.start(serving_server.ServerConfig(**settings))


@pytest.fixture(scope="module")
def shared(_pushed_once):
    """One read-only server (1 MiB messages, 100 kB images) over the session's pushed model."""
    server = start_server(
        _pushed_once / names.MODEL_NAME,
        file_system_poll_wait_seconds=0,
        max_message_bytes=1 << 20,
        max_image_bytes=100_000,
    )
    yield Client(server.port)
    server.stop()


@pytest.fixture(scope="module")
def images(dataset) -> np.ndarray:
    return dataset.test.images[:8].astype(np.float32)


# -- Predict -------------------------------------------------------------------------


def test_predict_serving_default_names_the_answering_version(shared, images):
    response = shared.predict(request_for(images[:3]))
    assert response.model_spec.name == names.MODEL_NAME
    assert response.model_spec.version.value == 1
    assert response.model_spec.signature_name == names.SERVING_DEFAULT  # '' means serving_default
    probabilities = tf.make_ndarray(response.outputs[names.OUTPUT_PROBABILITIES])
    class_ids = tf.make_ndarray(response.outputs[names.OUTPUT_CLASS_IDS])
    assert probabilities.shape == (3, names.NUM_CLASSES)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(class_ids, probabilities.argmax(axis=1))
    assert list(response.outputs[names.OUTPUT_CLASS_NAMES].string_val) == [
        names.CLASS_NAMES[i].encode() for i in class_ids
    ]
    # Outputs in the typed *_val fields, as TF Serving's AsProtoField, for clients that read float_val.
    assert len(response.outputs[names.OUTPUT_PROBABILITIES].float_val) == 3 * names.NUM_CLASSES


def test_tf_serving_thread_flags_configure_the_session_and_keep_the_answers(shared, _pushed_once, images):
    args = serve.build_parser("fmnist serve").parse_args(
        ["--model_base_path", "m", "--tensorflow_intra_op_parallelism", "1", "--tensorflow_inter_op_parallelism", "1"]
    )
    config = serve.config_from(args)
    assert (config.tensorflow_intra_op_parallelism, config.tensorflow_inter_op_parallelism) == (1, 1)
    server = start_server(
        _pushed_once / names.MODEL_NAME,
        file_system_poll_wait_seconds=0,
        tensorflow_intra_op_parallelism=1,
        tensorflow_inter_op_parallelism=1,
    )
    try:
        session = server.core.manager.resolve(request_for().model_spec).handle
        assert (session._config.intra_op_parallelism_threads, session._config.inter_op_parallelism_threads) == (1, 1)
        single = Client(server.port).predict(request_for(images[:8]))
    finally:
        server.stop()
    default = shared.predict(request_for(images[:8]))
    np.testing.assert_allclose(
        tf.make_ndarray(single.outputs[names.OUTPUT_PROBABILITIES]),
        tf.make_ndarray(default.outputs[names.OUTPUT_PROBABILITIES]),
        rtol=1e-5,
        atol=1e-6,
    )


def test_predict_images_signature_matches_raw_pixels(shared, images):
    raw = shared.predict(request_for(images[:4], signature=names.SERVING_DEFAULT))
    encoded = [
        encode_png(images[0]),
        encode_png(images[1], "RGB"),
        encode_png(images[2], "RGBA"),
        encode_png(images[3], "LA"),
    ]
    response = shared.predict(request_for(image_bytes=encoded, signature=names.PREDICT_IMAGES, version=1))
    assert response.model_spec.signature_name == names.PREDICT_IMAGES
    np.testing.assert_array_equal(
        tf.make_ndarray(response.outputs[names.OUTPUT_CLASS_IDS]), tf.make_ndarray(raw.outputs[names.OUTPUT_CLASS_IDS])
    )
    np.testing.assert_allclose(
        tf.make_ndarray(response.outputs[names.OUTPUT_PROBABILITIES]),
        tf.make_ndarray(raw.outputs[names.OUTPUT_PROBABILITIES]),
        atol=1e-2,
    )


def test_output_filter_returns_only_the_named_outputs(shared, images):
    response = shared.predict(request_for(images[:1], outputs=[names.OUTPUT_CLASS_IDS]))
    assert set(response.outputs) == {names.OUTPUT_CLASS_IDS}
    error = rpc_error(shared.predict, request_for(images[:1], outputs=["logits"]))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "output tensor alias not found in signature: logits" in error.details()
    error = rpc_error(shared.predict, request_for(images[:1], outputs=[names.OUTPUT_CLASS_IDS] * 2))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "duplicate output tensor alias" in error.details()


@pytest.mark.parametrize(
    "spec, code, message",
    [
        (dict(name="nope"), grpc.StatusCode.NOT_FOUND, "Servable not found for request: Latest(nope)"),
        (dict(version=7), grpc.StatusCode.NOT_FOUND, "Servable not found for request: Specific(fashion_mnist, 7)"),
        (dict(label="canary"), grpc.StatusCode.INVALID_ARGUMENT, "Unrecognized servable version label: canary"),
        (
            dict(signature="serving_nope"),
            grpc.StatusCode.FAILED_PRECONDITION,
            'Serving signature key "serving_nope" not found.',
        ),
    ],
)
def test_unknown_model_version_label_signature(shared, images, spec, code, message):
    error = rpc_error(shared.predict, request_for(images[:1], **spec))
    assert error.code() == code
    assert error.details() == message


def test_missing_extra_and_misnamed_inputs(shared, images):
    error = rpc_error(shared.predict, request_for())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (
        "input size does not match signature: 0!=1" in error.details()
        and "Missing but required: {images}" in error.details()
    )
    extra = request_for(images[:1], image_bytes=[b"x"])
    error = rpc_error(shared.predict, extra)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "Sent extra: {image_bytes}" in error.details()
    error = rpc_error(shared.predict, request_for(image_bytes=[b"x"], signature=names.SERVING_DEFAULT))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input tensor alias not found in signature: image_bytes" in error.details()


def test_wrong_dtype_and_shape(shared, images):
    request = request_for()
    request.inputs[names.INPUT_IMAGES].CopyFrom(tf.make_tensor_proto(images[:1].astype(np.int32)))
    error = rpc_error(shared.predict, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "Expects arg[0] to be float but int32 is provided"  # the session's words, as TF Serving's
    error = rpc_error(
        shared.predict, request_for(images[:1, :27])
    )  # the signature's shape is not checked: the graph refuses
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "Input to reshape is a tensor with 756 values, but the requested shape has 784"
    broken = request_for()
    broken.inputs[names.INPUT_IMAGES].CopyFrom(tf.make_tensor_proto(images[:1]))
    broken.inputs[names.INPUT_IMAGES].tensor_content = b"\0" * 7
    error = rpc_error(shared.predict, broken)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details().startswith(
        "tensor parsing error: images"
    )
    claims_huge = request_for()  # one float_val fills a tensor of any shape: 100000x28x28 floats > the limit
    claims_huge.inputs[names.INPUT_IMAGES].dtype = tf.float32.as_datatype_enum
    claims_huge.inputs[names.INPUT_IMAGES].float_val.append(1.0)
    for size in (100000, 28, 28):
        claims_huge.inputs[names.INPUT_IMAGES].tensor_shape.dim.add(size=size)
    error = rpc_error(shared.predict, claims_huge)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "exceeds" in error.details()


def test_undecodable_and_bomb_images_leave_the_server_healthy(shared, images):
    error = rpc_error(shared.predict, request_for(image_bytes=[b"not an image"], signature=names.PREDICT_IMAGES))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    # the graph's line, not "Graph execution error": what its header check says of an unknown format
    assert error.details().startswith("unsupported image format: PNG, JPEG, GIF or BMP only")
    assert error.details() == error.details().rstrip()  # no padding left over from TF's assertion message
    error = rpc_error(shared.predict, request_for(image_bytes=[BOMB_PNG], signature=names.PREDICT_IMAGES))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "image too large" in error.details() and "100000x100000" in error.details()
    error = rpc_error(
        shared.predict, request_for(image_bytes=[b"\x89PNG" + bytes(200_000)], signature=names.PREDICT_IMAGES)
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "200004 bytes, more than the limit of 100000 bytes" in error.details()
    assert shared.health_of("") == health_pb2.HealthCheckResponse.SERVING
    assert shared.predict(request_for(image_bytes=[encode_png(images[0])], signature=names.PREDICT_IMAGES)).outputs


def test_oversized_message_is_resource_exhausted(shared):
    big = np.zeros((400, 28, 28), np.float32)  # 1.25 MB > the shared server's 1 MiB limit
    error = rpc_error(shared.predict, request_for(big))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert shared.health_of("") == health_pb2.HealthCheckResponse.SERVING


# -- metadata, status, health -----------------------------------------------------------


def test_get_model_metadata_is_the_saved_models_signature_defs(shared, _pushed_once):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = names.MODEL_NAME
    response = shared.predictions.GetModelMetadata(request, timeout=TIMEOUT)
    assert response.model_spec.name == names.MODEL_NAME and response.model_spec.version.value == 1
    assert list(response.metadata) == ["signature_def"]
    served = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(served)
    saved = saved_model_pb2.SavedModel.FromString(
        (_pushed_once / names.MODEL_NAME / "1" / "saved_model.pb").read_bytes()
    )
    assert dict(served.signature_def) == dict(saved.meta_graphs[0].signature_def)
    assert (
        served.signature_def[names.PREDICT_IMAGES].inputs[names.INPUT_IMAGE_BYTES].dtype == tf.string.as_datatype_enum
    )

    for fields, message in (
        ([], "must specify at least one metadata_field"),
        (["nope"], "Metadata field nope is not supported"),
    ):
        bad = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=fields)
        bad.model_spec.name = names.MODEL_NAME
        error = rpc_error(shared.predictions.GetModelMetadata, bad, timeout=TIMEOUT)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and message in error.details()


def test_get_model_status_and_health(shared):
    status = shared.status()
    assert list(status) == [1] and status[1].state == State.AVAILABLE and status[1].status.error_code == 0
    assert shared.status(version=1)[1].state == State.AVAILABLE
    error = rpc_error(shared.status, "nope")
    assert error.code() == grpc.StatusCode.NOT_FOUND and error.details() == "Could not find any versions of model nope"
    error = rpc_error(shared.status, version=9)
    assert (
        error.code() == grpc.StatusCode.NOT_FOUND
        and error.details() == "Could not find version 9 of model fashion_mnist"
    )
    assert shared.health_of("") == health_pb2.HealthCheckResponse.SERVING
    assert shared.health_of(names.MODEL_NAME) == health_pb2.HealthCheckResponse.SERVING
    assert rpc_error(shared.health_of, "nope").code() == grpc.StatusCode.NOT_FOUND


def write_classifier(path: Path) -> None:
    """A SavedModel whose serving_default is a classification signature: features x → softmax over a, b, c."""

    class Classifier(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def classify(self, inputs):
            features = tf.io.parse_example(inputs, {"x": tf.io.FixedLenFeature([3], tf.float32)})
            scores = tf.nn.softmax(features["x"])
            classes = tf.tile(tf.constant([["a", "b", "c"]]), [tf.shape(scores)[0], 1])
            return {"classes": classes, "scores": scores}

    module = Classifier()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.classify})
    saved = saved_model_pb2.SavedModel.FromString((path / "saved_model.pb").read_bytes())
    saved.meta_graphs[0].signature_def["serving_default"].method_name = "tensorflow/serving/classify"
    (path / "saved_model.pb").write_bytes(saved.SerializeToString())


def example(**features: list[float]) -> example_pb2.Example:
    result = example_pb2.Example()
    for name, values in features.items():
        result.features.feature[name].float_list.value.extend(values)
    return result


def test_classify_with_tf_examples(tmp_path, shared):
    write_classifier(tmp_path / "classifier" / "1")
    server = serving_server.start(
        serving_server.ServerConfig(
            port=0,
            rest_api_port=free_port(),
            model_name="classifier",
            model_base_path=str(tmp_path / "classifier"),
            file_system_poll_wait_seconds=0,
        )
    )
    client = Client(server.port)
    try:
        request = classification_pb2.ClassificationRequest()
        request.model_spec.name = "classifier"
        request.input.example_list.examples.extend([example(x=[0.0, 1.0, 2.0]), example(x=[5.0, 0.0, 0.0])])
        response = client.predictions.Classify(request, timeout=TIMEOUT)
        assert response.model_spec.name == "classifier" and response.model_spec.version.value == 1
        rows = [[(c.label, c.score) for c in row.classes] for row in response.result.classifications]
        assert [[label for label, _ in row] for row in rows] == [["a", "b", "c"]] * 2
        expected = tf.nn.softmax([[0.0, 1.0, 2.0], [5.0, 0.0, 0.0]]).numpy()
        np.testing.assert_allclose([[score for _, score in row] for row in rows], expected, rtol=1e-6)

        with_context = classification_pb2.ClassificationRequest()
        with_context.model_spec.name = "classifier"
        with_context.input.example_list_with_context.context.CopyFrom(example(x=[0.0, 0.0, 9.0]))
        with_context.input.example_list_with_context.examples.extend([example(), example(x=[9.0, 0.0, 0.0])])
        result = client.predictions.Classify(with_context, timeout=TIMEOUT).result
        assert [max(row.classes, key=lambda c: c.score).label for row in result.classifications] == ["c", "a"]
        code, body = http(
            server.rest_port,
            "/v1/models/classifier/versions/1:classify",
            {"context": {"x": [0.0, 0.0, 9.0]}, "examples": [{}, {"x": [9.0, 0.0, 0.0]}]},
        )
        rest_rows = json.loads(body)["results"]
        assert code == 200 and [max(row, key=lambda pair: pair[1])[0] for row in rest_rows] == ["c", "a"]

        empty = classification_pb2.ClassificationRequest()
        empty.model_spec.name = "classifier"
        error = rpc_error(client.predictions.Classify, empty, timeout=TIMEOUT)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details() == "Input is empty."
    finally:
        server.stop()
    not_a_classifier = classification_pb2.ClassificationRequest()
    not_a_classifier.model_spec.name = names.MODEL_NAME
    not_a_classifier.input.example_list.examples.add()
    error = rpc_error(shared.predictions.Classify, not_a_classifier, timeout=TIMEOUT)
    # The method name is not checked unless --enable_signature_method_name_check (as TF Serving):
    # serving_default's three outputs are what a classifier cannot take.
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "Expected one or two output Tensors, found 3"


def test_classify_on_the_exported_model_reads_encoded_images_from_examples(shared, images):
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = names.MODEL_NAME
    request.model_spec.signature_name = names.CLASSIFY
    for image in images[:4]:
        request.input.example_list.examples.add().features.feature[names.FEATURE_IMAGE].bytes_list.value.append(
            encode_png(image)
        )
    response = shared.predictions.Classify(request, timeout=TIMEOUT)
    assert response.model_spec.signature_name == names.CLASSIFY
    predicted = shared.predict(request_for(images[:4]))
    expected = np.array(predicted.outputs[names.OUTPUT_PROBABILITIES].float_val).reshape(4, names.NUM_CLASSES)
    for row, classification in enumerate(response.result.classifications):
        assert [c.label for c in classification.classes] == list(names.CLASS_NAMES)
        np.testing.assert_allclose([c.score for c in classification.classes], expected[row], atol=1e-5)


# -- versions on disk ------------------------------------------------------------------


def push_copy(base: Path, version: int) -> None:
    """Publish version ``version`` as the pusher does: complete under a dot name, then rename."""
    staging = base / f".staging-{version}"
    shutil.copytree(base / "1", staging)
    os.rename(staging, base / str(version))


@pytest.mark.slow
def test_pushed_version_takes_over_and_corrupt_version_leaves_it_serving(models_dir, images):
    base = models_dir / names.MODEL_NAME
    (base / "not_a_version").mkdir()
    shutil.copytree(base / "1", base / "12abc")  # not numeric: never a version
    server = start_server(base, max_num_load_retries=0)  # retries: tests/serving/test_reliability.py
    client = Client(server.port)
    try:
        assert list(client.status()) == [1]
        push_copy(base, 2)
        wait_for(lambda: client.status().get(2) and client.status()[2].state == State.AVAILABLE)
        wait_for(lambda: client.status()[1].state == State.END)
        assert client.predict(request_for(images[:1])).model_spec.version.value == 2
        assert rpc_error(client.predict, request_for(images[:1], version=1)).code() == grpc.StatusCode.NOT_FOUND

        (base / "3").mkdir()
        (base / "3" / "saved_model.pb").write_bytes(b"garbage")
        failed = wait_for(
            lambda: client.status().get(3) if 3 in client.status() and client.status()[3].state == State.END else None
        )
        assert failed.status.error_code != 0 and "3" in failed.status.error_message
        time.sleep(0.3)  # a few more polls: the failure is not retried and 2 stays
        status = client.status()
        assert status[2].state == State.AVAILABLE and status[3].state == State.END
        assert client.predict(request_for(images[:1])).model_spec.version.value == 2
        assert client.health_of(names.MODEL_NAME) == health_pb2.HealthCheckResponse.SERVING
        assert sorted(client.status()) == [1, 2, 3]  # 12abc and not_a_version are not versions
    finally:
        server.stop()


@pytest.mark.slow
def test_config_file_policies_labels_and_reload(models_dir, images, tmp_path):
    base = models_dir / names.MODEL_NAME
    push_copy(base, 2)
    config_file = tmp_path / "models.config"
    config_file.write_text(
        f"""model_config_list {{ config {{
          name: "{names.MODEL_NAME}" base_path: "{base}" model_platform: "tensorflow"
          model_version_policy {{ all {{}} }}
          version_labels {{ key: "stable" value: 1 }}
          version_labels {{ key: "canary" value: 2 }}
        }} }}"""
    )
    server = serving_server.start(
        serving_server.ServerConfig(
            port=0,
            model_config_file=str(config_file),
            file_system_poll_wait_seconds=0,
            model_config_file_poll_wait_seconds=0.1,
        )
    )
    client = Client(server.port)
    try:
        assert {v: s.state for v, s in client.status().items()} == {2: State.AVAILABLE, 1: State.AVAILABLE}
        assert client.predict(request_for(images[:1], label="stable")).model_spec.version.value == 1
        assert client.predict(request_for(images[:1], label="canary")).model_spec.version.value == 2
        assert client.predict(request_for(images[:1])).model_spec.version.value == 2

        reload = model_management_pb2.ReloadConfigRequest()
        text_format.Parse(
            f'model_config_list {{ config {{ name: "{names.MODEL_NAME}" base_path: "{base}" '
            f'model_platform: "tensorflow" '
            f"model_version_policy {{ specific {{ versions: 1 }} }} }} }}",
            reload.config,
        )
        response = client.models.HandleReloadConfigRequest(reload, timeout=TIMEOUT)
        assert response.status.error_code == 0
        assert {v: s.state for v, s in client.status().items()} == {2: State.END, 1: State.AVAILABLE}
        assert client.predict(request_for(images[:1])).model_spec.version.value == 1
        assert (
            rpc_error(client.predict, request_for(images[:1], label="canary")).code()
            == grpc.StatusCode.INVALID_ARGUMENT
        )

        bad = model_management_pb2.ReloadConfigRequest(config=model_server_config_pb2.ModelServerConfig())
        bad.config.model_config_list.config.add(name="a", base_path=str(base))
        bad.config.model_config_list.config.add(name="a", base_path=str(base))
        error = rpc_error(client.models.HandleReloadConfigRequest, bad, timeout=TIMEOUT)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "multiple times" in error.details()

        # --model_config_file_poll_wait_seconds: an edited file is reloaded (latest policy: 2 again).
        config_file.write_text(
            f'model_config_list {{ config {{ name: "{names.MODEL_NAME}" base_path: "{base}" '
            f'model_platform: "tensorflow" }} }}'
        )
        wait_for(lambda: client.status()[2].state == State.AVAILABLE and client.status()[1].state == State.END)
    finally:
        server.stop()


@pytest.mark.slow
def test_new_version_is_loading_until_loaded_and_warmed_up(models_dir, images):
    """An injected loader that waits for a gate shows LOADING, with 1 still answering."""
    base = models_dir / names.MODEL_NAME
    gate = threading.Event()

    def gated_loader(name: str, version: int, path: str):
        if version == 2:
            gate.wait(TIMEOUT)
        return loader.load_saved_model(name, version, path)

    server = serving_server.start(
        serving_server.ServerConfig(
            port=0, model_name=names.MODEL_NAME, model_base_path=str(base), file_system_poll_wait_seconds=0.1
        ),
        loader=gated_loader,
    )
    client = Client(server.port)
    try:
        push_copy(base, 2)
        wait_for(lambda: 2 in client.status() and client.status()[2].state == State.LOADING)
        assert client.status()[1].state == State.AVAILABLE
        assert client.predict(request_for(images[:1])).model_spec.version.value == 1
        gate.set()
        wait_for(lambda: client.status()[2].state == State.AVAILABLE)
        assert client.predict(request_for(images[:1])).model_spec.version.value == 2
    finally:
        gate.set()
        server.stop()


@pytest.mark.slow
def test_tls(_pushed_once, tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    server = start_server(
        _pushed_once / names.MODEL_NAME, tls_cert=str(cert), tls_key=str(key), file_system_poll_wait_seconds=0
    )
    try:
        credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        options = [("grpc.ssl_target_name_override", "localhost")]
        with grpc.secure_channel(f"127.0.0.1:{server.port}", credentials, options) as channel:
            request = get_model_status_pb2.GetModelStatusRequest()
            request.model_spec.name = names.MODEL_NAME
            response = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=TIMEOUT)
            assert response.model_version_status[0].state == State.AVAILABLE
        assert rpc_error(Client(server.port).status).code() == grpc.StatusCode.UNAVAILABLE  # plaintext is refused
    finally:
        server.stop()
    with pytest.raises(ValueError, match="both"):
        start_server(_pushed_once / names.MODEL_NAME, tls_cert=str(cert), file_system_poll_wait_seconds=0)


# -- batching, deadlines, shutdown -----------------------------------------------------


def batching_server(base: Path, tmp_path: Path, text: str) -> serving_server.Server:
    params = tmp_path / "batching.config"
    params.write_text(text)
    return start_server(
        base, enable_batching=True, batching_parameters_file=str(params), file_system_poll_wait_seconds=0
    )


@pytest.mark.slow
def test_concurrent_requests_are_batched_and_split_back(_pushed_once, shared, images, tmp_path):
    server = batching_server(
        _pushed_once / names.MODEL_NAME,
        tmp_path,
        "max_batch_size { value: 16 } batch_timeout_micros { value: 300000 } "
        "num_batch_threads { value: 1 } allowed_batch_sizes: 8 allowed_batch_sizes: 16",
    )
    client = Client(server.port)
    slices = [images[0:1], images[1:3], images[3:6], images[6:8], images[2:3], images[5:8]]
    results: list = [None] * len(slices)

    def call(index: int) -> None:
        results[index] = client.predict(request_for(slices[index]))

    try:
        threads = [threading.Thread(target=call, args=(i,)) for i in range(len(slices))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for rows, response in zip(slices, results, strict=False):
            alone = shared.predict(request_for(rows))
            np.testing.assert_allclose(
                tf.make_ndarray(response.outputs[names.OUTPUT_PROBABILITIES]),
                tf.make_ndarray(alone.outputs[names.OUTPUT_PROBABILITIES]),
                rtol=1e-5,
                atol=1e-6,
            )
            assert list(response.outputs[names.OUTPUT_CLASS_NAMES].string_val) == list(
                alone.outputs[names.OUTPUT_CLASS_NAMES].string_val
            )
        registry = server.core.metrics.registry
        batches = registry.get_sample_value(":tensorflow:serving:batching_session:processed_batch_size_count")
        rows = registry.get_sample_value(":tensorflow:serving:batching_session:processed_batch_size_sum")
        assert rows == sum(len(s) for s in slices) and batches < len(slices)  # merged, every row once

        error = rpc_error(client.predict, request_for(np.zeros((17, 28, 28))))
        assert (
            error.code() == grpc.StatusCode.INVALID_ARGUMENT
            and "larger than maximum input batch size 16" in error.details()
        )
    finally:
        server.stop()


@pytest.mark.slow
def test_one_bad_image_in_a_batch_fails_only_its_caller(_pushed_once, images, tmp_path):
    server = batching_server(
        _pushed_once / names.MODEL_NAME, tmp_path, "max_batch_size { value: 8 } batch_timeout_micros { value: 300000 }"
    )
    client = Client(server.port)
    outcomes: dict = {}

    def call(key: str, payload: bytes) -> None:
        try:
            outcomes[key] = client.predict(
                request_for(image_bytes=[payload], signature=names.PREDICT_IMAGES)
            ).model_spec.version.value
        except grpc.RpcError as error:
            outcomes[key] = error.code()

    try:
        threads = [
            threading.Thread(target=call, args=("good", encode_png(images[0]))),
            threading.Thread(target=call, args=("bad", b"\x89PNG garbage")),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert outcomes == {"good": 1, "bad": grpc.StatusCode.INVALID_ARGUMENT}
    finally:
        server.stop()


@pytest.mark.slow
def test_deadline_exceeded_and_graceful_stop_finishes_in_flight(_pushed_once, images, tmp_path):
    server = batching_server(
        _pushed_once / names.MODEL_NAME,
        tmp_path,
        "max_batch_size { value: 64 } batch_timeout_micros { value: 1000000 }",
    )
    client = Client(server.port)
    error = rpc_error(client.predict, request_for(images[:1]), timeout=0.2)
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED

    outcome: dict = {}
    in_flight = threading.Thread(target=lambda: outcome.update(response=client.predict(request_for(images[:2]))))
    in_flight.start()
    time.sleep(0.2)  # the request now waits in its 1 s batch
    server.stop(grace=5.0)
    in_flight.join()
    assert tf.make_ndarray(outcome["response"].outputs[names.OUTPUT_CLASS_IDS]).shape == (2,)
    assert server.wait(0)
    error = rpc_error(Client(server.port).predict, request_for(images[:1]), timeout=2)
    assert error.code() == grpc.StatusCode.UNAVAILABLE


# -- REST API and metrics ----------------------------------------------------------------

SERVING_DIR = Path(__file__).resolve().parents[2] / "serving"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def http(port: int, path: str, body=None) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    try:
        with urllib.request.urlopen(
            urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data), timeout=TIMEOUT
        ) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@pytest.mark.slow
def test_rest_api_and_prometheus_metrics(_pushed_once, shared, images):
    server = start_server(
        _pushed_once / names.MODEL_NAME,
        rest_api_port=free_port(),
        monitoring_config_file=str(SERVING_DIR / "monitoring.config"),
        file_system_poll_wait_seconds=0,
    )
    port = server.rest_port
    try:
        code, body = http(port, f"/v1/models/{names.MODEL_NAME}")
        assert code == 200 and json.loads(body) == {
            "model_version_status": [
                {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
            ]
        }
        code, body = http(port, f"/v1/models/{names.MODEL_NAME}/versions/1/metadata")
        metadata = json.loads(body)
        assert code == 200 and metadata["model_spec"]["version"] == "1"
        signature_defs = metadata["metadata"]["signature_def"]["signature_def"]
        assert signature_defs[names.PREDICT_IMAGES]["inputs"][names.INPUT_IMAGE_BYTES]["dtype"] == "DT_STRING"

        expected = tf.make_ndarray(shared.predict(request_for(images[:2])).outputs[names.OUTPUT_CLASS_IDS]).tolist()
        code, body = http(port, f"/v1/models/{names.MODEL_NAME}:predict", {"instances": images[:2].tolist()})
        predictions = json.loads(body)["predictions"]
        assert code == 200 and [p[names.OUTPUT_CLASS_IDS] for p in predictions] == expected
        assert [p[names.OUTPUT_CLASS_NAMES] for p in predictions] == [names.CLASS_NAMES[i] for i in expected]
        encoded = [{"b64": base64.b64encode(encode_png(image)).decode()} for image in images[:2]]
        code, body = http(
            port,
            f"/v1/models/{names.MODEL_NAME}/versions/1:predict",
            {
                "signature_name": names.PREDICT_IMAGES,
                "inputs": {names.INPUT_IMAGE_BYTES: encoded},
            },
        )
        assert code == 200 and json.loads(body)["outputs"][names.OUTPUT_CLASS_IDS] == expected

        code, body = http(port, "/v1/models/nope:predict", {"instances": [1]})
        assert code == 404 and json.loads(body) == {"error": "Servable not found for request: Latest(nope)"}
        code, body = http(port, f"/v1/models/{names.MODEL_NAME}:predict", {"instances": [[1, 2]]})
        assert code == 400 and "Input to reshape is a tensor with 2 values" in json.loads(body)["error"]
        code, body = http(port, f"/v1/models/{names.MODEL_NAME}:predict", {"signature_name": "x", "instances": [1]})
        assert code == 400 and json.loads(body)["error"] == 'Serving signature name: "x" not found in signature def'

        Client(server.port).predict(request_for(images[:1]))
        code, body = http(port, "/monitoring/prometheus/metrics")
        text = body.decode()
        assert code == 200
        assert f'request_count_total{{API="Predict",model_name="{names.MODEL_NAME}",status="OK"}} 1.0' in text
        assert f'loaded_versions{{model_name="{names.MODEL_NAME}"}} 1.0' in text
        assert 'request_count_total{API="REST POST",model_name="nope",status="NOT_FOUND"} 1.0' in text
    finally:
        server.stop()


def test_config_files_for_the_real_server_parse():
    from fmnist.serving.batching import read_batching_parameters
    from fmnist.serving.metrics import read_monitoring_config
    from fmnist.serving.model_config import read_config_file, validate_config

    config = read_config_file(SERVING_DIR / "models.config")
    validate_config(config)
    (model,) = config.model_config_list.config
    assert model.name == names.MODEL_NAME and model.base_path == f"/models/{names.MODEL_NAME}"
    assert read_batching_parameters(SERVING_DIR / "batching.config").max_batch_size > 1
    assert read_monitoring_config(SERVING_DIR / "monitoring.config").enabled


# -- command line ---------------------------------------------------------------------


def test_cli_help_and_bad_configuration(capsys, tmp_path):
    with pytest.raises(SystemExit) as done:
        serve.main(["--help"], prog="fmnist serve")
    assert done.value.code == 0 and "--model_base_path" in capsys.readouterr().out
    assert serve.main(["--port", "0"], prog="fmnist serve") == 2  # a usage error, found before any work
    error = capsys.readouterr().err.strip()
    assert error.splitlines() == [
        "fmnist serve: error: one of --model_base_path or --model_config_file is required",
        "see 'fmnist serve --help'",
    ]
    bad = tmp_path / "batching.config"
    bad.write_text("max_batch_size { value: 8 } allowed_batch_sizes: 4")
    code = serve.main(
        [
            "--port",
            "0",
            "--model_base_path",
            str(tmp_path),
            "--enable_batching=true",
            "--batching_parameters_file",
            str(bad),
        ],
        prog="fmnist serve",
    )
    assert code == 1 and capsys.readouterr().err.strip().endswith(
        "final entry in allowed_batch_sizes must equal max_batch_size"
    )


# Runs fmnist serve's command line in a fresh interpreter, then says whether TensorFlow was imported:
# what a start-up mistake must be refused without (so without loading any model either).
_SERVE_THEN_REPORT_TENSORFLOW = """
import sys
from fmnist import cli
try:
    code = cli.main(["serve", "--use-embedded", *sys.argv[1:]])
except SystemExit as usage:  # argparse's way out
    code = usage.code
print("tensorflow imported" if "tensorflow.python" in sys.modules else "tensorflow not imported")
sys.exit(code)
"""


def _serve_mistake(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", _SERVE_THEN_REPORT_TENSORFLOW, *args], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("api", ["gRPC", "REST"])
def test_a_busy_port_is_one_line_before_tensorflow_or_any_model_loads(tmp_path, api):
    """tensorflow_model_server finds a busy port only after loading every model (Failed to BuildAndStart
    gRPC server); fmnist serve binds each port first and stops with one line naming it, exit 1."""
    write_classifier(tmp_path / "m" / "1")  # a model that would load, were it tried
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        ports = ["--port", str(port)] if api == "gRPC" else ["--port", "0", "--rest_api_port", str(port)]
        done = _serve_mistake(*ports, "--model_base_path", str(tmp_path / "m"))
    assert done.returncode == 1
    assert done.stderr == f"fmnist serve: error: cannot bind {api} to 0.0.0.0:{port}: Address already in use\n"
    assert done.stdout == "tensorflow not imported\n"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model_base_pth", "/m"], "unknown option --model_base_pth (did you mean --model_base_path?)"),
        (
            ["--port", "8600", "--rest_api_port", "8600", "--model_base_path", "/m"],
            "--rest_api_port cannot be the same as --port",
        ),
    ],
)
def test_a_mistyped_flag_is_a_usage_error_before_tensorflow_is_imported(args, message):
    done = _serve_mistake(*args)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [f"fmnist serve: error: {message}", "see 'fmnist serve --help'"]
    assert done.stdout == "tensorflow not imported\n"


def test_fmnist_serve_listens_on_all_interfaces_unless_told_otherwise():
    """As tensorflow_model_server, which binds 0.0.0.0:<port>; --host keeps the choice."""
    parse = serve.build_parser("fmnist serve").parse_args
    assert serve.config_from(parse(["--model_base_path", "/m"])).host == "0.0.0.0"
    assert serve.config_from(parse(["--model_base_path", "/m", "--host", "127.0.0.1"])).host == "127.0.0.1"


def fmnist_serve(*args: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "fmnist.cli", "serve", *args],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )


@pytest.mark.slow
def test_fmnist_serve_runs_until_sigterm_then_exits_zero(_pushed_once, images):
    process = fmnist_serve(
        "--port", "0", "--model_name", names.MODEL_NAME, "--model_base_path", str(_pushed_once / names.MODEL_NAME)
    )
    try:
        port = None
        for line in process.stderr:
            if "Running gRPC ModelServer at" in line:
                address = line.split("Running gRPC ModelServer at ")[1].split()[0]
                port = int(address.rsplit(":", 1)[1])
                break
        assert port, "server never reported its port"
        assert address.startswith("0.0.0.0:")  # every interface, loopback included
        assert Client(port).predict(request_for(images[:1])).model_spec.version.value == 1
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        process.kill()
        process.stderr.close()


def test_mixed_precision_bfloat16_rewrites_the_session_and_keeps_the_answers(shared, _pushed_once, images):
    config = serve.config_from(
        serve.build_parser("fmnist serve").parse_args(["--model_base_path", "m", "--mixed_precision", "bfloat16"])
    )
    assert config.mixed_precision == "bfloat16"
    server = start_server(_pushed_once / names.MODEL_NAME, file_system_poll_wait_seconds=0, mixed_precision="bfloat16")
    try:
        session = server.core.manager.resolve(request_for().model_spec).handle
        assert session._config.graph_options.rewrite_options.auto_mixed_precision_onednn_bfloat16 == RewriterConfig.ON
        rewritten = Client(server.port).predict(request_for(images[:64]))
    finally:
        server.stop()
    default = shared.predict(request_for(images[:64]))
    bf16, fp32 = (tf.make_ndarray(r.outputs[names.OUTPUT_PROBABILITIES]) for r in (rewritten, default))
    # bfloat16 keeps 8 bits of mantissa: probabilities move by a few thousandths, classes almost never.
    np.testing.assert_allclose(bf16, fp32, atol=0.05)
    assert np.mean(bf16.argmax(axis=1) == fp32.argmax(axis=1)) >= 0.95
    if model_lib.native_bfloat16():  # where TF has no oneDNN bfloat16 the rewrite is skipped
        assert not np.array_equal(bf16, fp32)


def test_an_unknown_mixed_precision_mode_is_refused():
    with pytest.raises(ValueError, match="--mixed_precision must be bfloat16 or empty, not 'float16'"):
        serving_server.ServerConfig(model_base_path="m", mixed_precision="float16")
    with pytest.raises(SystemExit):
        serve.build_parser("fmnist serve").parse_args(["--model_base_path", "m", "--mixed_precision", "float16"])


@pytest.mark.slow
def test_real_binary_on_path_is_run_with_the_same_flags(tmp_path):
    fake = tmp_path / "tensorflow_model_server"
    fake.write_text('#!/bin/sh\necho "$@" > "$0.args"\n')
    fake.chmod(0o755)
    process = fmnist_serve(
        "--port",
        "9000",
        "--model_name",
        "m",
        "--model_base_path",
        "/models/m",
        "--host",
        "0.0.0.0",
        "--enable_batching",
        "--tensorflow_intra_op_parallelism",
        "1",
        "--mixed_precision",
        "bfloat16",
        PATH=f"{tmp_path}{os.pathsep}{os.environ['PATH']}",
    )
    assert process.wait(timeout=60) == 0
    process.stderr.close()
    args = (tmp_path / "tensorflow_model_server.args").read_text().split()
    assert args == [
        "--port=9000",
        "--model_name=m",
        "--model_base_path=/models/m",
        "--enable_batching=true",
        "--tensorflow_intra_op_parallelism=1",
        "--mixed_precision=bfloat16",
    ]


def test_a_busy_port_is_an_error(_pushed_once):
    server = start_server(_pushed_once / names.MODEL_NAME, file_system_poll_wait_seconds=0)
    try:
        with pytest.raises(OSError, match=f"cannot bind gRPC to 127.0.0.1:{server.port}"):
            start_server(_pushed_once / names.MODEL_NAME, port=server.port, file_system_poll_wait_seconds=0)
    finally:
        server.stop()


def test_use_tf_serving_without_the_binary_is_a_clear_error(capsys, monkeypatch):
    monkeypatch.setenv("PATH", "")
    assert serve.main(["--use-tf-serving", "--model_base_path", "/models/x"], prog="fmnist serve") == 2
    assert "tensorflow_model_server is not on PATH" in capsys.readouterr().err


@pytest.fixture
def stand_in(tmp_path, monkeypatch) -> Path:
    """A tensorflow_model_server on PATH that runs fmnist serve, as the Docker stand-in image's does; each run
    adds a line to ``<it>.runs``."""
    fake = tmp_path / "tensorflow_model_server"
    fake.write_text(f'#!/bin/sh\necho run >> "$0.runs"\nexec "{sys.executable}" -m fmnist.cli serve "$@"\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    return fake


class HandedOff(Exception):
    """What os.execve raises in these tests instead of replacing the test's process."""


def test_the_hand_off_marks_the_binarys_environment_and_a_marked_or_embedded_run_serves_embedded(
    stand_in, monkeypatch, capsys
):
    def execve(path, argv, env):
        raise HandedOff(path, argv, env)

    ran = []
    monkeypatch.setattr(os, "execve", execve)
    monkeypatch.setattr(serving_server, "run", lambda config: ran.append(config) or 0)
    monkeypatch.delenv(serve.HANDED_OFF, raising=False)
    with pytest.raises(HandedOff) as handed:
        serve.main(["--model_base_path", "/m"], prog="fmnist serve")
    path, argv, env = handed.value.args
    assert (path, argv[1:]) == (str(stand_in), ["--port=8500", "--model_base_path=/m"])
    assert env[serve.HANDED_OFF] == "1"
    assert serve.main(["--use-embedded", "--port", "0", "--model_base_path", "/m"], prog="fmnist serve") == 0
    monkeypatch.setenv(serve.HANDED_OFF, "1")  # run by the stand-in: serve, do not hand off again
    assert serve.main(["--port", "0", "--model_base_path", "/m"], prog="fmnist serve") == 0
    assert [config.model_base_path for config in ran] == ["/m", "/m"]
    assert serve.main(["--use-tf-serving", "--model_base_path", "/m"], prog="fmnist serve") == 2
    assert "it is a stand-in, not the real server" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        serve.main(["--use-tf-serving", "--use-embedded", "--model_base_path", "/m"], prog="fmnist serve")
    assert usage.value.code == 2


@pytest.mark.slow
def test_a_stand_in_binary_that_runs_fmnist_serve_is_run_once_not_in_a_loop(stand_in, tmp_path):
    bad = tmp_path / "bad.config"  # the embedded server refuses it at once, so the run ends
    bad.write_text("improperly formatted")
    done = subprocess.run(
        [sys.executable, "-m", "fmnist.cli", "serve", "--port", "0", "--model_config_file", str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1 and f"Invalid protobuf file: '{bad}'" in done.stderr, done.stderr
    assert (tmp_path / "tensorflow_model_server.runs").read_text() == "run\n"


# -- units behind the server -------------------------------------------------------------

GRAPH_ERRORS = {
    # TF 2.21's InvalidArgumentError texts from the exported predict_images graph.
    "Graph execution error:\n\nDetected at node map/while/assert_less_equal/Assert/AssertGuard/Assert defined at "
    "(most recent call last):\n<stack traces unavailable>\nassertion failed: [image too large: its header claims more "
    "than 16777216 pixels] [Condition x <= y did not hold element-wise:] [x (map/while/case/cond/Identity:0) = ] "
    "[10000000000] [y (map/while/Const_1:0) = ] [16777216]\n\t [[{{node map/while/assert_less_equal/Assert/AssertGuard/"
    "Assert}}]] "
    "[Op:__inference_signature_wrapper_predict_images_643]": (
        "image too large: its header claims more than 16777216 pixels"
    ),
    "Graph execution error:\n\nDetected at node map/while/decode_image/DecodeImage defined at (most "
    "recent call last):\n"
    "<stack traces unavailable>\nUnknown image file format. One of JPEG, JPEG XL, PNG, GIF, BMP, WebP required.\n\t "
    "[[{{node map/while/decode_image/DecodeImage}}]] [Op:__inference_signature_wrapper_predict_images_643]": (
        "Unknown image file format. One of JPEG, JPEG XL, PNG, GIF, BMP, WebP required."
    ),
    "plain message [Op:Foo]": "plain message",
}


@pytest.mark.parametrize("raw, meaningful", GRAPH_ERRORS.items())
def test_graph_error_message_keeps_the_line_that_names_the_problem(raw, meaningful):
    from fmnist.serving.signature import graph_error_message

    assert graph_error_message(raw) == meaningful


def test_batching_parameters_text_format():
    from fmnist.serving.batching import parse_batching_parameters

    params = parse_batching_parameters(
        "max_batch_size { value: 8 } batch_timeout_micros { value: 5000 } max_enqueued_batches { value: 3 } "
        "num_batch_threads { value: 2 } allowed_batch_sizes: 4 allowed_batch_sizes: 8 pad_variable_length_inputs: true"
    )
    assert (params.max_batch_size, params.batch_timeout_micros, params.max_enqueued_batches) == (8, 5000, 3)
    assert params.allowed_batch_sizes == (4, 8) and params.pad_variable_length_inputs and params.num_batch_threads == 2
    assert parse_batching_parameters("").max_batch_size == 1000  # TF Serving's defaults
    for text, message in (
        ("max_batch_size: 8", "max_batch_size"),
        ("unknown_field { value: 1 }", "unknown_field"),
        ("max_batch_size { value: 8 } allowed_batch_sizes: 8 allowed_batch_sizes: 4", "monotonically increasing"),
        ("max_batch_size { value: 0 }", "max_batch_size must be positive"),
    ):
        with pytest.raises(ValueError, match=message):
            parse_batching_parameters(text)


def test_version_policies():
    from fmnist.serving.model_config import aspired_versions

    def config(policy: str) -> model_server_config_pb2.ModelConfig:
        return text_format.Parse(
            f'name: "m" base_path: "/m" model_version_policy {{ {policy} }}', model_server_config_pb2.ModelConfig()
        )

    present = [1, 2, 5, 9]
    assert aspired_versions(model_server_config_pb2.ModelConfig(name="m"), present) == {9}
    assert aspired_versions(config("latest { num_versions: 2 }"), present) == {5, 9}
    assert aspired_versions(config("all {}"), present) == set(present)
    assert aspired_versions(config("specific { versions: 2 versions: 3 }"), present) == {2}
    assert aspired_versions(config("latest {}"), []) == set()
