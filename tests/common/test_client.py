"""The client library and ``fmnist classify``, against the embedded server on a loopback port.

Answers are checked against the SavedModel called directly, so a client that
mangles tensors (shape, byte order, row order) cannot pass. Retries are
observed through an interceptor on the client's channel and an injected
``sleep``, so no test waits for real backoff.
"""

from __future__ import annotations

import ast
import datetime
import json
import shutil
import socket
import subprocess
import sys
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from conftest import corrupt_png, encode_png
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, model_service_pb2_grpc, predict_pb2

from fmnist.common import client as client_module
from fmnist.common import names
from fmnist.common.client import Prediction, PredictionClient
from fmnist.common.errors import ServingError
from fmnist.serving import classify

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


@pytest.fixture(scope="module")
def served(_pushed_once, tmp_path_factory) -> Path:
    """The model base path the server serves: a copy of the pushed ``fashion_mnist/1``."""
    models = tmp_path_factory.mktemp("client-models")
    shutil.copytree(_pushed_once, models, dirs_exist_ok=True)
    return models / names.MODEL_NAME


@pytest.fixture(scope="module")
def server(served):
    from fmnist.serving.server import ServerConfig, start

    running = start(ServerConfig(port=0, model_name=names.MODEL_NAME, model_base_path=str(served)))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def target(server) -> str:
    return f"127.0.0.1:{server.port}"


@pytest.fixture(scope="module")
def reference(served):
    """The served version's signatures, called in-process: the answers the server must relay."""
    return tf.saved_model.load(str(served / "1")).signatures


@pytest.fixture
def images(dataset) -> np.ndarray:
    return dataset.test.images[:12]


class _Recorder(grpc.UnaryUnaryClientInterceptor):
    """Records every attempt (method, deadline, request); refuses the first ``refuse`` with UNAVAILABLE."""

    def __init__(self, refuse: int = 0):
        self.refuse = refuse
        self.attempts: list[tuple[str, float | None, object]] = []

    def intercept_unary_unary(self, continuation, client_call_details, request):
        self.attempts.append((client_call_details.method, client_call_details.timeout, request))
        if len(self.attempts) <= self.refuse:
            return _Refused()
        return continuation(client_call_details, request)


class _Refused(grpc.RpcError):
    """What a unary call raises when the server is down, as far as the client looks."""

    def code(self):
        return UNAVAILABLE

    def details(self):
        return "injected: connection refused"

    def result(self):
        raise self


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _recording_client(target: str, recorder: _Recorder, sleeps: list[float], **kwargs) -> PredictionClient:
    channel = grpc.intercept_channel(grpc.insecure_channel(target), recorder)
    return PredictionClient(target, channel=channel, sleep=sleeps.append, **kwargs)


# --- answers -----------------------------------------------------------------------------------


def test_raw_and_encoded_predictions_match_the_saved_model(target, reference, images):
    expected = reference[names.SERVING_DEFAULT](**{names.INPUT_IMAGES: tf.constant(images, tf.float32)})
    with PredictionClient(target) as client:
        raw = client.predict(images)  # uint8 in; the client sends float32
        encoded = client.predict_encoded([encode_png(i) for i in images])
    for prediction in (raw, encoded):
        assert prediction.probabilities.dtype == np.float32
        assert prediction.probabilities.shape == (12, names.NUM_CLASSES)
        assert prediction.class_ids.dtype == np.int64
        np.testing.assert_allclose(prediction.probabilities, expected[names.OUTPUT_PROBABILITIES], atol=1e-5)
        np.testing.assert_array_equal(prediction.class_ids, expected[names.OUTPUT_CLASS_IDS])
        assert prediction.class_names == [names.CLASS_NAMES[i] for i in prediction.class_ids]
        assert (prediction.model_name, prediction.version, len(prediction)) == (names.MODEL_NAME, 1, 12)


def test_a_requested_version_is_sent_and_reported(target, images):
    recorder, sleeps = _Recorder(), []
    with _recording_client(target, recorder, sleeps) as client:
        assert client.predict(images[:2], version=1).version == 1
        with pytest.raises(ServingError) as missing:
            client.predict(images[:2], version=999)
        with pytest.raises(ValueError):
            client.predict(images[:2], version=1, version_label="stable")
    assert missing.value.code == grpc.StatusCode.NOT_FOUND
    (_, _, sent), _ = recorder.attempts
    assert sent.model_spec.version.value == 1 and sent.model_spec.name == names.MODEL_NAME
    assert sent.model_spec.signature_name == names.SERVING_DEFAULT


def test_predict_files_batches_in_order(target, images, tmp_path):
    paths = []
    for i, image in enumerate(images[:5]):
        paths.append(tmp_path / f"{i}.png")
        paths[-1].write_bytes(encode_png(image, "RGB" if i % 2 else "L"))
    with PredictionClient(target) as client:
        batches = list(client.predict_files(paths, batch_size=2))
        whole = client.predict(images[:5])
    assert [len(b) for b in batches] == [2, 2, 1]
    np.testing.assert_allclose(np.concatenate([b.probabilities for b in batches]), whole.probabilities, atol=1e-4)


def test_top_k_ranks_best_first_and_keeps_label_order_on_ties():
    probabilities = np.zeros((2, names.NUM_CLASSES), np.float32)
    probabilities[0, [7, 5, 9]] = [0.6, 0.3, 0.1]
    probabilities[1, [2, 4]] = 0.5
    prediction = Prediction(probabilities, np.array([7, 2]), ["Sneaker", "Pullover"], names.MODEL_NAME, 3)
    assert prediction.top_k(3) == [
        [("Sneaker", pytest.approx(0.6)), ("Sandal", pytest.approx(0.3)), ("Ankle boot", pytest.approx(0.1))],
        [("Pullover", 0.5), ("Coat", 0.5), ("T-shirt/top", 0.0)],
    ]
    assert len(prediction.top_k(50)[0]) == names.NUM_CLASSES
    with pytest.raises(ValueError):
        prediction.top_k(0)


def test_status_metadata_and_wait_until_available(target):
    with PredictionClient(target) as client:
        assert client.wait_until_available(timeout=10) == 1
        (status,) = client.status().model_version_status
        metadata = client.metadata()
    assert (status.version, status.state) == (1, get_model_status_pb2.ModelVersionStatus.AVAILABLE)
    assert metadata.model_spec.name == names.MODEL_NAME and metadata.model_spec.version.value == 1
    signatures = get_model_metadata_pb2.SignatureDefMap()
    metadata.metadata["signature_def"].Unpack(signatures)
    assert set(names.SIGNATURES) <= set(signatures.signature_def)
    assert set(signatures.signature_def[names.PREDICT_IMAGES].inputs) == {names.INPUT_IMAGE_BYTES}


class _CannedChannel:
    """Just enough of a grpc.Channel for the generated stubs: every call answers ``response``."""

    def __init__(self, response):
        self.response = response

    def unary_unary(self, method, *args, **kwargs):
        return lambda request, timeout=None: self.response

    def close(self):
        pass


def test_any_tensor_encoding_a_server_may_answer_with_decodes_alike():
    """tensor_content (tf.make_tensor_proto), repeated *_val (TF Serving), and a *_val shorter than its shape."""
    probabilities = np.random.default_rng(0).dirichlet(np.ones(names.NUM_CLASSES), 3).astype(np.float32)
    class_ids = probabilities.argmax(axis=1).astype(np.int64)
    as_content = tf.make_tensor_proto(probabilities)
    as_values = tf.make_tensor_proto(probabilities)
    as_values.ClearField("tensor_content")
    as_values.float_val.extend(probabilities.ravel().tolist())
    splat = tf.make_tensor_proto(0.1, shape=probabilities.shape, dtype=tf.float32)
    assert not as_values.tensor_content and len(splat.float_val) == 1

    for proto, expected in ((as_content, probabilities), (as_values, probabilities), (splat, np.full((3, 10), 0.1))):
        response = predict_pb2.PredictResponse()
        response.model_spec.name, response.model_spec.version.value = names.MODEL_NAME, 7
        response.outputs[names.OUTPUT_PROBABILITIES].CopyFrom(proto)
        response.outputs[names.OUTPUT_CLASS_IDS].CopyFrom(tf.make_tensor_proto(class_ids))
        response.outputs[names.OUTPUT_CLASS_NAMES].CopyFrom(
            tf.make_tensor_proto([names.CLASS_NAMES[i].encode() for i in class_ids])
        )
        prediction = PredictionClient("canned", channel=_CannedChannel(response)).predict(np.zeros((3, 28, 28)))
        np.testing.assert_allclose(prediction.probabilities, expected, rtol=1e-6)
        np.testing.assert_array_equal(prediction.class_ids, class_ids)
        assert prediction.version == 7 and prediction.class_names == [names.CLASS_NAMES[i] for i in class_ids]

    del response.outputs[names.OUTPUT_CLASS_IDS]
    with pytest.raises(ServingError, match=f"malformed PredictResponse: no output {names.OUTPUT_CLASS_IDS}"):
        PredictionClient("canned", channel=_CannedChannel(response)).predict(np.zeros((3, 28, 28)))


def test_the_client_imports_neither_server_nor_pipeline_code():
    tree = ast.parse(Path(client_module.__file__).read_text())
    imported = {(n.module, a.name) for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    imported |= {(a.name, None) for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    third_party = {(m, name) for m, name in imported if m.split(".")[0] not in sys.stdlib_module_names}
    assert {m.split(".")[0] for m, _ in third_party} == {"grpc", "numpy", "fmnist"}
    # the shared names, the protos and their numpy conversion, the error types, the network probe, nothing else
    assert {m for m, _ in third_party if m.startswith("fmnist")} == {
        "fmnist.common",
        "fmnist.common.apis",
        "fmnist.common.errors",
        "fmnist.common.reachability",
    }
    assert {name for m, name in third_party if m == "fmnist.common"} == {"names", "tensors"}


# --- failures, retries, deadlines --------------------------------------------------------------


def test_unreachable_server_is_retried_with_growing_backoff_then_reported():
    dead = f"127.0.0.1:{_closed_port()}"
    recorder, sleeps = _Recorder(), []
    with _recording_client(dead, recorder, sleeps, retries=3, backoff=0.05, timeout=2.0) as client:
        with pytest.raises(ServingError) as failure:
            client.predict(np.zeros((1, 28, 28)))
    assert failure.value.code == UNAVAILABLE and failure.value.target == dead
    assert dead in str(failure.value) and "UNAVAILABLE" in str(failure.value)
    assert len(recorder.attempts) == 4
    assert sleeps == pytest.approx([0.05, 0.1, 0.2])


def test_a_retry_that_succeeds_returns_the_answer(target, images):
    recorder, sleeps = _Recorder(refuse=2), []
    with _recording_client(target, recorder, sleeps, retries=3, backoff=0.5, timeout=7.0) as client:
        assert client.predict(images[:3]).version == 1
    assert sleeps == [0.5, 1.0]
    assert [timeout for _, timeout, _ in recorder.attempts] == [7.0, 7.0, 7.0]  # every attempt carries a deadline
    assert {method for method, _, _ in recorder.attempts} == {"/tensorflow.serving.PredictionService/Predict"}


def test_client_errors_are_not_retried_unless_asked(target, images):
    recorder, sleeps = _Recorder(), []
    with _recording_client(target, recorder, sleeps) as client:
        with pytest.raises(ServingError) as wrong_shape:
            client.predict(images[:, :27])
        with pytest.raises(ServingError) as not_an_image:
            client.predict_encoded([b"not an image"])
    assert wrong_shape.value.code == not_an_image.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "\n" not in str(not_an_image.value) and target in str(not_an_image.value)
    assert (len(recorder.attempts), sleeps) == (2, [])

    recorder, sleeps = _Recorder(), []
    retry_all = frozenset({UNAVAILABLE, grpc.StatusCode.INVALID_ARGUMENT})
    with _recording_client(target, recorder, sleeps, retries=1, retry_codes=retry_all) as client:
        with pytest.raises(ServingError):
            client.predict_encoded([b"not an image"])
    assert len(recorder.attempts) == 2


def test_a_passed_deadline_is_reported_not_retried(target, dataset):
    slow = [encode_png(i) for i in dataset.test.images[:256]]  # decoding takes the server ~20 ms, 20x the deadline
    recorder, sleeps = _Recorder(), []
    with _recording_client(target, recorder, sleeps) as client:
        with pytest.raises(ServingError) as late:
            client.predict_encoded(slow, timeout=1e-3)
    assert late.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert (len(recorder.attempts), sleeps) == (1, [])


def test_wait_until_available_gives_up_after_its_timeout():
    with PredictionClient(f"127.0.0.1:{_closed_port()}", backoff=0.05) as client:
        with pytest.raises(ServingError, match="not AVAILABLE after 0.5s"):
            client.wait_until_available(timeout=0.5)


def test_tls_channel_verifies_the_server_certificate(tmp_path):
    """A TLS server whose certificate the client trusts answers; one it does not trust is UNAVAILABLE."""
    key, cert = _self_signed("localhost")

    class Status(model_service_pb2_grpc.ModelServiceServicer):
        def GetModelStatus(self, request, context):
            response = get_model_status_pb2.GetModelStatusResponse()
            response.model_version_status.add(version=4, state=get_model_status_pb2.ModelVersionStatus.AVAILABLE)
            return response

    tls_server = grpc.server(futures.ThreadPoolExecutor(1))
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(Status(), tls_server)
    port = tls_server.add_secure_port("localhost:0", grpc.ssl_server_credentials([(key, cert)]))
    tls_server.start()
    try:
        with PredictionClient(f"localhost:{port}", tls=True, root_certificates=cert) as client:
            assert client.wait_until_available(timeout=5) == 4
        _, other = _self_signed("localhost")
        with PredictionClient(f"localhost:{port}", root_certificates=other, retries=0) as client:
            with pytest.raises(ServingError) as untrusted:
                client.status()
        assert untrusted.value.code == UNAVAILABLE
    finally:
        tls_server.stop(None)


def _self_signed(host: str) -> tuple[bytes, bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


# --- fmnist classify ---------------------------------------------------------------------------


@pytest.fixture
def image_files(images, reference, tmp_path) -> dict[str, str]:
    """Three PNG files (grey, RGB, RGBA) → the class the SavedModel gives each."""
    expected = reference[names.SERVING_DEFAULT](**{names.INPUT_IMAGES: tf.constant(images[:3], tf.float32)})
    files = {}
    for image, mode, class_id in zip(
        images, ("L", "RGB", "RGBA"), expected[names.OUTPUT_CLASS_IDS].numpy(), strict=False
    ):
        path = tmp_path / f"item-{mode}.png"
        path.write_bytes(encode_png(image, mode))
        files[str(path)] = names.CLASS_NAMES[class_id]
    return files


def test_classify_prints_class_confidence_and_version(target, image_files, capsys):
    assert classify.main([*image_files, "--server", target]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(image_files)
    for line, (path, class_name) in zip(lines, image_files.items(), strict=False):
        assert line.startswith(f"{path}: {class_name} ") and line.endswith(f"({names.MODEL_NAME} v1)")
        assert "%" in line

    assert classify.main([*image_files, "--server", target, "--top-k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 * len(image_files)
    assert lines[1].startswith("  1. " + image_files[lines[0].split(": ")[0]])


def test_classify_json_lines(target, image_files, capsys):
    assert classify.main([*image_files, "--server", target, "--json", "--top-k", "3", "--batch-size", "2"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["path"] for r in records] == list(image_files)
    for record in records:
        assert record["class_name"] == image_files[record["path"]] == names.CLASS_NAMES[record["class_id"]]
        assert (record["model_name"], record["model_version"]) == (names.MODEL_NAME, 1)
        ranked = [entry["probability"] for entry in record["top_k"]]
        assert len(ranked) == 3 and ranked == sorted(ranked, reverse=True) and ranked[0] == record["confidence"]
        assert record["top_k"][0]["class_id"] == record["class_id"]


def test_classify_reports_bad_files_and_still_prints_good_ones(target, image_files, tmp_path, capsys):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(corrupt_png(encode_png(np.zeros((28, 28)))))  # the server refuses it; the header check cannot
    missing = tmp_path / "missing.png"
    good = list(image_files)
    assert classify.main([good[0], str(corrupt), good[1], str(missing), good[2], "--server", target]) == 1
    captured = capsys.readouterr()
    assert [line.split(":")[0] for line in captured.out.splitlines()] == good
    errors = captured.err.splitlines()
    assert len(errors) == 2
    assert any(str(missing) in e and "No such file" in e for e in errors)
    assert any(str(corrupt) in e and "INVALID_ARGUMENT" in e for e in errors)


def test_classify_asks_for_a_version_and_a_missing_one_is_one_error_not_one_per_file(target, image_files, capsys):
    assert classify.main([*image_files, "--server", target, "--model-version", "1"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == len(image_files)
    assert classify.main([*image_files, "--server", target, "--model-version", "999"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.splitlines()
    assert line.startswith(f"classify: {target}: NOT_FOUND")


def test_classify_unreachable_server_is_one_line_without_traceback(image_files):
    dead = f"127.0.0.1:{_closed_port()}"
    result = subprocess.run(
        [sys.executable, "-m", "fmnist.cli", "classify", next(iter(image_files)), "--server", dead, "--timeout", "2"],
        cwd=Path(__file__).parents[2],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1 and result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line == f"fmnist classify: cannot reach the server at {dead}: connection refused by {dead}"


def test_an_ipv6_address_is_written_as_people_write_it(image_files):
    with socket.socket(socket.AF_INET6) as probe:
        probe.bind(("::1", 0))  # a free port on the IPv6 loopback (and a check that there is one)
        dead = f"[::1]:{probe.getsockname()[1]}"
    result = subprocess.run(
        [sys.executable, "-m", "fmnist.cli", "classify", next(iter(image_files)), "--server", dead],
        cwd=Path(__file__).parents[2],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.stderr.splitlines() == [
        f"fmnist classify: cannot reach the server at {dead}: connection refused by {dead}"
    ]


def test_classify_help_and_usage_errors(capsys):
    with pytest.raises(SystemExit) as done:
        classify.main(["--help"], prog="fmnist classify")
    assert done.value.code == 0 and "--top-k" in capsys.readouterr().out
    with pytest.raises(SystemExit) as bad:
        classify.main(["x.png", "--top-k", "11"], prog="fmnist classify")
    assert bad.value.code == 2


def test_targets_one_server_a_list_of_replicas_or_a_dns_name_of_several():
    from fmnist.common.client import _target_uri

    assert _target_uri("127.0.0.1:8500") == "127.0.0.1:8500"
    assert _target_uri("serving:8500") == "dns:///serving:8500"  # every address the name resolves to
    assert _target_uri("10.0.0.5:8500, 10.0.0.6:8500") == "ipv4:10.0.0.5:8500,10.0.0.6:8500"
    assert _target_uri("[::1]:8500,[::2]:8500") == "ipv6:[::1]:8500,[::2]:8500"
    assert _target_uri("unix:/tmp/tfs.sock") == "unix:/tmp/tfs.sock"
    assert _target_uri("dns:///a:1") == "dns:///a:1"
    with pytest.raises(ValueError, match="give one DNS name that resolves to all of them"):
        _target_uri("a:1,b:2")
    with pytest.raises(ValueError, match="IP addresses of one family"):
        _target_uri("10.0.0.5:1,[::1]:2")
