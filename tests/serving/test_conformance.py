"""TF Serving's own test cases, ported, run against the embedded server with TF Serving's test models.

Each test names the TF Serving case it ports (file and test name in its
docstring) and sends what that case sends and asserts what it asserts, over
real gRPC on loopback and real HTTP. The models are rebuilt by
``conformance_models`` the way TF Serving's export scripts build them:
half_plus_two (version folder ``00000123``), half_plus_two_2_versions,
half_plus_three, a stateful counter, and TF2 and Keras exports.

Sources, in tensorflow/serving: model_servers/tensorflow_model_server_test.py
(TMS), model_servers/http_rest_api_handler_test.cc (REST), server_core_test.cc,
servables/tensorflow/{predict_impl,classifier,regressor,multi_inference}_test.cc.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
from conformance_models import ConformanceModels, build_all
from google.protobuf import text_format
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from fmnist.serving import serve
from fmnist.serving import server as serving_server

RPC_TIMEOUT = 5.0
State = get_model_status_pb2.ModelVersionStatus.State


@pytest.fixture(scope="session")
def tfs_models(tmp_path_factory) -> ConformanceModels:
    return build_all(tmp_path_factory.mktemp("tfs_models"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(base: Path | None = None, *, name: str = "default", **overrides) -> serving_server.Server:
    """A server as TMS's RunServer starts one: gRPC and REST ports, a 5 s REST timeout."""
    settings = dict(
        port=0,
        rest_api_port=free_port(),
        rest_api_timeout_in_ms=5000,
        file_system_poll_wait_seconds=0,
        max_num_load_retries=0,
    )
    if base is not None:
        settings.update(model_name=name, model_base_path=str(base))
    settings.update(overrides)
    return serving_server.start(serving_server.ServerConfig(**settings))


class Stubs:
    def __init__(self, target: str, credentials: grpc.ChannelCredentials | None = None, options=()):
        self.channel = (
            grpc.secure_channel(target, credentials, options) if credentials else grpc.insecure_channel(target, options)
        )
        self.predictions = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.models = model_service_pb2_grpc.ModelServiceStub(self.channel)


def stubs(server: serving_server.Server) -> Stubs:
    return Stubs(f"localhost:{server.port}")


def rest(server: serving_server.Server, path: str, body=None, method: str | None = None, raw: bytes | None = None):
    """(HTTP status, parsed JSON) of one REST call, as TMS's CallREST makes it."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(f"http://localhost:{server.rest_port}{path}", data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=RPC_TIMEOUT) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def rpc_error(call, *args, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(*args, **kwargs)
    return caught.value


def predict_request(model="default", signature="serving_default", output_filter=("y",), batch_input=False):
    """TMS's VerifyPredictRequest: x = [2.0] with shape [1] (or [1, 1])."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    request.inputs["x"].dtype = types_pb2.DT_FLOAT
    request.inputs["x"].float_val.append(2.0)
    request.inputs["x"].tensor_shape.dim.add().size = 1
    if batch_input:
        request.inputs["x"].tensor_shape.dim.add().size = 1
    request.output_filter.extend(output_filter)
    return request


def verify_predict(target: Stubs, expected: float, version: int, **kwargs) -> None:
    request = predict_request(**kwargs)
    result = target.predictions.Predict(request, RPC_TIMEOUT)
    assert "y" in result.outputs
    assert result.outputs["y"].dtype == types_pb2.DT_FLOAT
    assert list(result.outputs["y"].float_val) == [expected]
    assert result.model_spec.name == request.model_spec.name
    assert result.model_spec.signature_name == request.model_spec.signature_name
    assert result.model_spec.version.value == version


def example_input(request, x: float = 2.0, feature: str = "x") -> None:
    request.input.example_list.examples.add().features.feature[feature].float_list.value.append(x)


@pytest.fixture(scope="module")
def default_server(tfs_models):
    """TMS's RunServer('default', saved_model_half_plus_two): one read-only server."""
    server = start(tfs_models.half_plus_two)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def two_versions_server(tfs_models, tmp_path_factory):
    """http_rest_api_handler_test.cc's server core: half_plus_two_2_versions, specific version 123,
    labelled Version_Label."""
    config = tmp_path_factory.mktemp("rest_config") / "models.config"
    config.write_text(
        'model_config_list { config { name: "saved_model_half_plus_two_2_versions" '
        f'base_path: "{tfs_models.half_plus_two_2_versions}" model_platform: "tensorflow" '
        "model_version_policy { specific { versions: 123 } } "
        'version_labels { key: "Version_Label" value: 123 } } }'
    )
    server = start(model_config_file=str(config))
    yield server
    server.stop()


TWO = "/v1/models/saved_model_half_plus_two_2_versions"


# -- tensorflow_model_server_test.py --------------------------------------------------


def test_get_model_status(default_server):
    """TMS testGetModelStatus: version folder 00000123 is version 123, AVAILABLE, error code 0."""
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "default"
    result = stubs(default_server).models.GetModelStatus(request, RPC_TIMEOUT)
    assert len(result.model_version_status) == 1
    assert result.model_version_status[0].version == 123
    assert result.model_version_status[0].state == State.AVAILABLE
    assert result.model_version_status[0].status.error_code == 0


def test_classify(default_server):
    """TMS testClassify: classify_x_to_y of x=2 scores 3.0; the response names model, signature, 123."""
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "default"
    request.model_spec.signature_name = "classify_x_to_y"
    example_input(request)
    result = stubs(default_server).predictions.Classify(request, RPC_TIMEOUT)
    assert len(result.result.classifications) == 1
    assert len(result.result.classifications[0].classes) == 1
    assert result.result.classifications[0].classes[0].score == 3.0
    assert (result.model_spec.name, result.model_spec.signature_name, result.model_spec.version.value) == (
        "default",
        "classify_x_to_y",
        123,
    )


def test_regress(default_server):
    """TMS testRegress: regress_x_to_y of x=2 is 3.0."""
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = "default"
    request.model_spec.signature_name = "regress_x_to_y"
    example_input(request)
    result = stubs(default_server).predictions.Regress(request, RPC_TIMEOUT)
    assert len(result.result.regressions) == 1
    assert result.result.regressions[0].value == 3.0
    assert (result.model_spec.name, result.model_spec.signature_name, result.model_spec.version.value) == (
        "default",
        "regress_x_to_y",
        123,
    )


def test_multi_inference(default_server):
    """TMS testMultiInference: a regress and a classify task over one example, both 3.0."""
    verify_multi_inference(default_server, 123)


def test_multi_inference_tf2(tfs_models):
    """TMS testMultiInferenceTf2: the same tasks on a TF2 export, whose regress_x_to_y and
    classify_x_to_y are functions fed through placeholders of their own (names that differ)."""
    server = start(tfs_models.tf2)
    try:
        verify_multi_inference(server, 1)
    finally:
        server.stop()


def verify_multi_inference(server: serving_server.Server, version: int) -> None:
    """TMS _TestMultiInference: regress_x_to_y and classify_x_to_y of x=2 are 3.0; specs echoed."""
    request = inference_pb2.MultiInferenceRequest()
    for signature, method in (
        ("regress_x_to_y", "tensorflow/serving/regress"),
        ("classify_x_to_y", "tensorflow/serving/classify"),
    ):
        task = request.tasks.add(method_name=method)
        task.model_spec.name = "default"
        task.model_spec.signature_name = signature
    example_input(request)
    result = stubs(server).predictions.MultiInference(request, RPC_TIMEOUT)
    assert len(result.results) == 2
    assert result.results[0].regression_result.regressions[0].value == 3.0
    assert result.results[1].classification_result.classifications[0].classes[0].score == 3.0
    for task, answer in zip(request.tasks, result.results, strict=True):
        assert answer.model_spec.name == task.model_spec.name
        assert answer.model_spec.signature_name == task.model_spec.signature_name
        assert answer.model_spec.version.value == version


@pytest.mark.parametrize("batch_input", [False, True])
def test_predict_saved_model(default_server, batch_input):
    """TMS testPredictSavedModel (_TestPredict): x=[2.0] of shape [1] (or [1, 1]) to a [-1, 1] input
    answers y=3.0, with and without an output filter: TF Serving never checks shapes itself."""
    target = stubs(default_server)
    verify_predict(target, 3.0, 123, batch_input=batch_input)
    verify_predict(target, 3.0, 123, output_filter=(), batch_input=batch_input)


def test_predict_batching(tfs_models, tmp_path):
    """TMS testPredictBatching: the same answers with --enable_batching and a batching file that sets
    every BatchingParameters field (the ones the embedded server cannot honour are accepted)."""
    params = tmp_path / "batching_config.txt"
    params.write_text(
        "max_batch_size { value: 128 } batch_timeout_micros { value: 0 } max_enqueued_batches { value: 1000000 } "
        'num_batch_threads { value: 8 } thread_pool_name { value: "batch_threads" } allowed_batch_sizes: 128 '
        "pad_variable_length_inputs: true enable_large_batch_splitting { value: true } "
        "max_execution_batch_size { value: 128 }"
    )
    server = start(tfs_models.half_plus_two, enable_batching=True, batching_parameters_file=str(params))
    try:
        verify_predict(stubs(server), 3.0, 123)
        verify_predict(stubs(server), 3.0, 123, output_filter=())
    finally:
        server.stop()


def test_good_model_config(tfs_models, tmp_path):
    """TMS testGoodModelConfig: two models from a config file (file:// URI and a plain path)."""
    config = tmp_path / "good_model_config.conf"
    config.write_text(
        "model_config_list {"
        f' config {{ name: "half_plus_two" base_path: "file://{tfs_models.half_plus_two}" '
        f'model_platform: "tensorflow" }}'
        f' config {{ name: "half_plus_three" base_path: "{tfs_models.half_plus_three}" model_platform: "tensorflow" }}'
        "}"
    )
    server = start(model_config_file=str(config))
    try:
        target = stubs(server)
        for model, expected in (("half_plus_two", 3.0), ("half_plus_three", 4.0)):
            verify_predict(target, expected, 123, model=model)
            verify_predict(target, expected, 123, model=model, output_filter=())
    finally:
        server.stop()


def test_bad_model_config(tmp_path, capsys):
    """TMS testBadModelConfig: an unparsable config file stops start-up; stderr holds protobuf's
    "Error parsing text-format tensorflow.serving.ModelServerConfig" (the words TMS looks for) and
    ParseProtoTextFile's "Invalid protobuf file: '<path>'"."""
    bad = tmp_path / "bad_model_config.txt"
    bad.write_text("improperly formatted file")
    assert serve.main(["--port", "0", "--model_config_file", str(bad)], prog="fmnist serve") == 1
    err = capsys.readouterr().err
    assert "Error parsing text-format tensorflow.serving.ModelServerConfig" in err
    assert f"Invalid protobuf file: '{bad}'" in err


def test_good_grpc_channel_args(tfs_models):
    """TMS testGoodGrpcChannelArgs: the server starts with --grpc_channel_arguments and answers."""
    server = start(
        tfs_models.half_plus_two, grpc_channel_arguments="grpc.max_connection_age_ms=2000,grpc.lb_policy_name=grpclb"
    )
    try:
        verify_predict(stubs(server), 3.0, 123, output_filter=())
    finally:
        server.stop()
    with pytest.raises(ValueError, match="key=value"):
        serving_server.ServerConfig(model_base_path="/m", grpc_channel_arguments="no_value")


def test_predict_uds(tfs_models, tmp_path):
    """TMS testPredictUDS: with --grpc_socket_path the same API answers on the Unix socket."""
    socket_path = tmp_path / "tf-serving.sock"
    server = start(tfs_models.half_plus_two, grpc_socket_path=str(socket_path))
    try:
        verify_predict(Stubs(f"unix:{socket_path}"), 3.0, 123)
        verify_predict(stubs(server), 3.0, 123)
    finally:
        server.stop()


def test_classify_rest(default_server):
    """TMS testClassifyREST: {"results": [[["", 3.0]]]}."""
    assert rest(
        default_server, "/v1/models/default:classify", {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]}
    ) == (200, {"results": [[["", 3.0]]]})


def test_regress_rest(default_server):
    """TMS testRegressREST: {"results": [3.0]}."""
    assert rest(
        default_server, "/v1/models/default:regress", {"signature_name": "regress_x_to_y", "examples": [{"x": 2.0}]}
    ) == (200, {"results": [3.0]})


def test_predict_rest(default_server):
    """TMS testPredictREST: row format, scalars per instance."""
    assert rest(default_server, "/v1/models/default:predict", {"instances": [2.0, 3.0, 4.0]}) == (
        200,
        {"predictions": [3.0, 3.5, 4.0]},
    )


def test_predict_columnar_rest(default_server):
    """TMS testPredictColumnarREST: columnar format answers under "outputs"."""
    assert rest(default_server, "/v1/models/default:predict", {"inputs": [2.0, 3.0, 4.0]}) == (
        200,
        {"outputs": [3.0, 3.5, 4.0]},
    )


def test_get_status_rest(default_server):
    """TMS testGetStatusREST: version as a string, state and error code by name."""
    assert rest(default_server, "/v1/models/default") == (
        200,
        {
            "model_version_status": [
                {"version": "123", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
            ]
        },
    )


def _info(name: str, dtype: str, dims: list[int] | None) -> dict:
    """A TensorInfo as TF Serving prints it: every dim with "name", rank known or not."""
    shape = (
        {"dim": [], "unknown_rank": True}
        if dims is None
        else {"dim": [{"size": str(d), "name": ""} for d in dims], "unknown_rank": False}
    )
    return {"dtype": dtype, "tensor_shape": shape, "name": name}


def _signature(inputs: dict, outputs: dict, method: str) -> dict:
    return {"inputs": inputs, "outputs": outputs, "method_name": f"tensorflow/serving/{method}", "defaults": {}}


def expected_half_plus_two_metadata(name: str) -> dict:
    """TF Serving's saved_model_half_plus_two_2_versions_metadata.json, for the same graph."""
    example = _info("tf_example:0", "DT_STRING", None)
    column = [-1, 1]
    return {
        "model_spec": {"name": name, "signature_name": "", "version": "123"},
        "metadata": {
            "signature_def": {
                "signature_def": {
                    "serving_default": _signature(
                        {"x": _info("x:0", "DT_FLOAT", column)}, {"y": _info("y:0", "DT_FLOAT", column)}, "predict"
                    ),
                    "classify_x_to_y": _signature(
                        {"inputs": example}, {"scores": _info("y:0", "DT_FLOAT", column)}, "classify"
                    ),
                    "regress_x_to_y": _signature(
                        {"inputs": example}, {"outputs": _info("y:0", "DT_FLOAT", column)}, "regress"
                    ),
                    "regress_x_to_y2": _signature(
                        {"inputs": example}, {"outputs": _info("y2:0", "DT_FLOAT", column)}, "regress"
                    ),
                    "regress_x2_to_y3": _signature(
                        {"inputs": _info("x2:0", "DT_FLOAT", column)},
                        {"outputs": _info("y3:0", "DT_FLOAT", column)},
                        "regress",
                    ),
                    "classify_x2_to_y3": _signature(
                        {"inputs": _info("x2:0", "DT_FLOAT", column)},
                        {"scores": _info("y3:0", "DT_FLOAT", column)},
                        "classify",
                    ),
                }
            }
        },
    }


def test_get_model_metadata_rest(default_server):
    """TMS testGetModelMetadataREST: the metadata JSON equals TF Serving's after parsing."""
    assert rest(default_server, "/v1/models/default/metadata") == (200, expected_half_plus_two_metadata("default"))


def test_prometheus_endpoint(tfs_models, tmp_path):
    """TMS testPrometheusEndpoint: with a MonitoringConfig the metrics path serves request counts."""
    config = tmp_path / "monitoring_config.txt"
    config.write_text('prometheus_config { enable: true path: "/monitoring/prometheus/metrics" }')
    server = start(tfs_models.half_plus_two, monitoring_config_file=str(config))
    try:
        verify_predict(stubs(server), 3.0, 123)
        with urllib.request.urlopen(f"http://localhost:{server.rest_port}/monitoring/prometheus/metrics") as response:
            text = response.read().decode()
        assert "# TYPE" in text and ":tensorflow:serving:request_count" in text
    finally:
        server.stop()


@pytest.mark.parametrize("model", ["tf2", "keras"])
def test_tf2_and_keras_saved_models(tfs_models, model):
    """TMS testPredictSavedModelTF2 / Keras: a TF2 tf.function export and a Keras export serve
    predict (x [[2.0]] → 3.0) and their metadata, with no TF1 method names in sight."""
    server = start(getattr(tfs_models, model))
    try:
        status, body = rest(server, "/v1/models/default:predict", {"instances": [[2.0]]})
        assert (status, body) == (200, {"predictions": [[3.0]]})
        status, body = rest(server, "/v1/models/default/metadata")
        assert status == 200 and "serving_default" in body["metadata"]["signature_def"]["signature_def"]
    finally:
        server.stop()


# -- http_rest_api_handler_test.cc ----------------------------------------------------


@pytest.mark.parametrize(
    "method, path, message",
    [
        ("GET", "/v1/foo", "Malformed request"),
        ("POST", "/v1/foo", "Malformed request"),
        ("GET", "/v1/models", "Missing model name"),
        ("GET", "/v1/models/debug/model_name", "Malformed request"),
        ("POST", "/v1/models", "Malformed request"),
        ("GET", "/v1/models/foo:predict", "Malformed request"),
        ("GET", "/v1/models/foo/version/50:predict", "Malformed request"),
        ("POST", "/v1/models/foo/version/50:regress", "Malformed request"),
        ("POST", "/v1/models/foo/versions/HELLO:regress", "Malformed request"),
        ("POST", f"/v1/models/foo/versions/{2**64 - 1}:regress", "Failed to convert version"),
        ("POST", "/v1/models/foo/metadata", "Malformed request"),
        ("POST", "/v1/models/foo/label/some_label:regress", "Malformed request"),
        ("POST", "/v1/models/foo/versions/50/labels/some_label:regress", "Malformed request"),
        ("POST", "/v1/models/foo/versions/some_label:regress", "Malformed request"),
        ("PUT", "/v1/models/foo:predict", "Malformed request"),
        ("DELETE", "/v1/models/foo", "Malformed request"),
    ],
)
def test_unsupported_api_calls(default_server, method, path, message):
    """REST UnsupportedApiCalls: malformed paths are INVALID_ARGUMENT (400), never 404 or 500."""
    status, body = rest(default_server, path, method=method, raw=b"" if method in ("POST", "PUT") else None)
    assert status == 400 and message in body["error"]


def test_predict_model_name_version_errors(two_versions_server):
    """REST PredictModelNameVersionErrors: unknown model or version is NOT_FOUND (404)."""
    for path in ("/v1/models/foo:predict", "/v1/models/foo/versions/50:predict", f"{TWO}/versions/99:predict"):
        assert rest(two_versions_server, path, {"instances": [1]})[0] == 404


@pytest.mark.parametrize(
    "path, raw, message",
    [
        (f"{TWO}:predict", b"", "JSON Parse error: The document is empty"),
        (f"{TWO}:predict", b"instances = [1, 2]", "JSON Parse error: Invalid value"),
        (f"{TWO}:predict", b'{ "instances": ["x", "y"] }', "not of expected type: float"),
        (
            f"{TWO}/labels/Version_Nonexistent:predict",
            b'{ "instances": ["x", "y"] }',
            "Unrecognized servable version label",
        ),
        (f"{TWO}:predict", b'{ "signature_name": 100 }', "'signature_name' key must be a string value."),
    ],
)
def test_predict_request_errors(two_versions_server, path, raw, message):
    """REST PredictRequestErrors: each is INVALID_ARGUMENT (400) with TF Serving's words."""
    status, body = rest(two_versions_server, path, raw=raw)
    assert status == 400 and message in body["error"]


def test_rest_predict(two_versions_server):
    """REST Predict: latest, a version, a label, an explicit signature, columnar; [[1, 2], [3, 4]]
    runs on a [-1, 1] input because the session, not the server, judges shapes."""
    cases = [
        (f"{TWO}:predict", {"instances": [[1.0, 2.0], [3.0, 4.0]]}, {"predictions": [[2.5, 3.0], [3.5, 4.0]]}),
        (f"{TWO}/versions/123:predict", {"instances": [1.0, 2.0]}, {"predictions": [2.5, 3.0]}),
        (f"{TWO}/labels/Version_Label:predict", {"instances": [1.0, 2.0]}, {"predictions": [2.5, 3.0]}),
        (
            f"{TWO}/versions/123:predict",
            {"signature_name": "serving_default", "instances": [3.0, 4.0]},
            {"predictions": [3.5, 4.0]},
        ),
        (
            f"{TWO}/versions/123:predict",
            {"signature_name": "serving_default", "inputs": [3.0, 4.0]},
            {"outputs": [3.5, 4.0]},
        ),
    ]
    for path, body, expected in cases:
        assert rest(two_versions_server, path, body) == (200, expected)


def test_rest_regress(two_versions_server):
    """REST Regress: x=80 → 42 for latest, version 123 and Version_Label."""
    body = {"signature_name": "regress_x_to_y", "examples": [{"x": 80.0}]}
    for path in (f"{TWO}:regress", f"{TWO}/versions/123:regress", f"{TWO}/labels/Version_Label:regress"):
        assert rest(two_versions_server, path, body) == (200, {"results": [42]})


def test_rest_classify(two_versions_server):
    """REST Classify: x=20 → [["", 12]], x=10 by label → [["", 7]]."""
    assert rest(
        two_versions_server, f"{TWO}:classify", {"signature_name": "classify_x_to_y", "examples": [{"x": 20.0}]}
    ) == (200, {"results": [[["", 12]]]})
    assert rest(
        two_versions_server,
        f"{TWO}/labels/Version_Label:classify",
        {"signature_name": "classify_x_to_y", "examples": [{"x": 10.0}]},
    ) == (200, {"results": [[["", 7]]]})


def test_rest_get_status(two_versions_server):
    """REST GetStatus: all versions, one version, a label: only 123 (specific policy), AVAILABLE."""
    expected = {
        "model_version_status": [
            {"version": "123", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        ]
    }
    for path in (TWO, f"{TWO}/versions/123", f"{TWO}/labels/Version_Label"):
        assert rest(two_versions_server, path) == (200, expected)


def test_rest_get_model_metadata(two_versions_server):
    """REST GetModelMetadata: equals saved_model_half_plus_two_2_versions_metadata.json after parsing."""
    expected = expected_half_plus_two_metadata("saved_model_half_plus_two_2_versions")
    assert rest(two_versions_server, f"{TWO}/metadata") == (200, expected)


def test_rest_keep_alive_answers_without_delayed_ack_stalls(default_server):
    """Not a TF Serving case: 20 predicts on one kept-alive connection take far less than the 40 ms
    each a response split over several small writes costs (Nagle meets delayed ACK)."""
    connection = http.client.HTTPConnection("localhost", default_server.rest_port, timeout=RPC_TIMEOUT)
    body = json.dumps({"instances": [2.0]})
    try:
        connection.request("POST", "/v1/models/default:predict", body)  # connect and warm up
        connection.getresponse().read()
        started = time.perf_counter()
        for _ in range(20):
            connection.request("POST", "/v1/models/default:predict", body)
            response = connection.getresponse()
            assert json.loads(response.read()) == {"predictions": [3.0]}
        assert time.perf_counter() - started < 20 * 0.040 * 0.75  # stalls alone would take 0.8 s
    finally:
        connection.close()


# -- predict_impl_test.cc, classifier/regressor/multi_inference tests --------------------


def _requests_without_model_spec():
    example = classification_pb2.ClassificationRequest()
    example_input(example)
    regress = regression_pb2.RegressionRequest()
    example_input(regress)
    return {
        "Predict": predict_pb2.PredictRequest(),
        "Classify": example,
        "Regress": regress,
        "GetModelMetadata": get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"]),
    }


@pytest.mark.parametrize("api", ["Predict", "Classify", "Regress", "GetModelMetadata"])
def test_missing_or_empty_model_spec(default_server, api):
    """predict_impl_test MissingOrEmptyModelSpec (and its classify, regress and metadata twins):
    no ModelSpec → "Missing ModelSpec"; an empty one → INVALID_ARGUMENT; a wrong name → NOT_FOUND."""
    call = getattr(stubs(default_server).predictions, api)
    request = _requests_without_model_spec()[api]
    error = rpc_error(call, request, RPC_TIMEOUT)
    assert (error.code(), error.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
    request.model_spec.SetInParent()
    error = rpc_error(call, request, RPC_TIMEOUT)
    assert (error.code(), error.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "ModelSpec has no name specified.")
    request.model_spec.name = "test"
    assert rpc_error(call, request, RPC_TIMEOUT).code() == grpc.StatusCode.NOT_FOUND


def test_predict_input_and_output_errors(default_server):
    """predict_impl_test EmptyInputList / InputTensorsDontMatchModelSpecInputs / OutputFiltersDontMatch /
    PredictionInvalidTensor / signature not found: TF Serving's codes and words."""
    predict = stubs(default_server).predictions.Predict
    cases = []
    empty = predict_request()
    del empty.inputs["x"]
    cases.append((empty, grpc.StatusCode.INVALID_ARGUMENT, "input size does not match signature: 0!=1"))
    renamed = predict_request()
    renamed.inputs["z"].CopyFrom(renamed.inputs.pop("x"))
    cases.append((renamed, grpc.StatusCode.INVALID_ARGUMENT, "input tensor alias not found in signature: z"))
    cases.append(
        (
            predict_request(output_filter=("w",)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "output tensor alias not found in signature: w",
        )
    )
    cases.append(
        (
            predict_request(output_filter=("y", "y")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "duplicate output tensor alias: y",
        )
    )
    strings = predict_request()
    strings.inputs["x"].Clear()
    strings.inputs["x"].dtype = types_pb2.DT_STRING
    strings.inputs["x"].string_val.append(b"string")
    strings.inputs["x"].tensor_shape.dim.add().size = 1
    cases.append((strings, grpc.StatusCode.INVALID_ARGUMENT, "Expects arg[0] to be float but string is provided"))
    cases.append(
        (
            predict_request(signature="foo"),
            grpc.StatusCode.FAILED_PRECONDITION,
            'Serving signature key "foo" not found.',
        )
    )
    for request, code, message in cases:
        error = rpc_error(predict, request, RPC_TIMEOUT)
        assert error.code() == code and message in error.details()


def test_predict_signature_without_shape_takes_any_shape(tfs_models):
    """predict_util.cc never checks shapes: a signature that declares none takes [2, 2] and a scalar."""
    server = start(tfs_models.no_shape)
    try:
        assert rest(server, "/v1/models/default:predict", {"inputs": [[2.0, 4.0], [6.0, 8.0]]}) == (
            200,
            {"outputs": [[3.0, 4.0], [5.0, 6.0]]},
        )
        assert rest(server, "/v1/models/default:predict", {"inputs": 2.0}) == (200, {"outputs": 3.0})
    finally:
        server.stop()


def test_stateful_counter(tfs_models):
    """export_counter.py's model: signatures without inputs run, and the session keeps its state."""
    server = start(tfs_models.counter)
    target = stubs(server)

    def call(signature: str, delta: float | None = None) -> float:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "default"
        request.model_spec.signature_name = signature
        if delta is not None:
            request.inputs["delta"].dtype = types_pb2.DT_FLOAT
            request.inputs["delta"].float_val.append(delta)
        return target.predictions.Predict(request, RPC_TIMEOUT).outputs["output"].float_val[0]

    try:
        assert [call("incr_counter"), call("incr_counter"), call("incr_counter_by", 3.0), call("get_counter")] == [
            1,
            2,
            5,
            5,
        ]
        assert [call("reset_counter"), call("get_counter")] == [0, 0]
    finally:
        server.stop()


def test_classify_and_regress_errors(default_server):
    """classifier_test / regressor_test: unknown signature, empty input, a signature of the wrong shape."""
    target = stubs(default_server).predictions
    regress = regression_pb2.RegressionRequest()
    regress.model_spec.name = "default"
    regress.model_spec.signature_name = "foo"
    example_input(regress)
    error = rpc_error(target.Regress, regress, RPC_TIMEOUT)
    assert (error.code(), error.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "No signature was found with the name: foo",
    )
    classify = classification_pb2.ClassificationRequest()
    classify.model_spec.name = "default"
    classify.model_spec.signature_name = "classify_x_to_y"
    error = rpc_error(target.Classify, classify, RPC_TIMEOUT)
    assert (error.code(), error.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "Input is empty.")
    classify.model_spec.signature_name = "classify_x2_to_y3"  # its input is x2, a float, not the examples
    example_input(classify)
    error = rpc_error(target.Classify, classify, RPC_TIMEOUT)
    assert (error.code(), error.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "Expects arg[0] to be float but string is provided",
    )
    regress.model_spec.signature_name = "classify_x_to_y"  # outputs "scores", not "outputs"
    error = rpc_error(target.Regress, regress, RPC_TIMEOUT)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details().startswith("No regression outputs found in SignatureDef")


def test_signature_method_name_check(tfs_models, default_server):
    """--enable_signature_method_name_check: off by default (TF Serving's default, for TF2 exports);
    on, a predict signature is refused to Regress and Classify, and Predict runs only the three
    TF Serving methods."""
    regress = regression_pb2.RegressionRequest()
    regress.model_spec.name = "default"
    regress.model_spec.signature_name = "serving_default"
    example_input(regress)
    classify = classification_pb2.ClassificationRequest()
    classify.model_spec.CopyFrom(regress.model_spec)
    example_input(classify)
    server = start(tfs_models.half_plus_two, enable_signature_method_name_check=True)
    try:
        target = stubs(server).predictions
        error = rpc_error(target.Regress, regress, RPC_TIMEOUT)
        assert error.details() == (
            "Expected regression signature method_name to be tensorflow/serving/regress. Was: "
            "tensorflow/serving/predict"
        )
        error = rpc_error(target.Classify, classify, RPC_TIMEOUT)
        assert error.details() == (
            "Expected classification signature method_name to be tensorflow/serving/classify. "
            "Was: tensorflow/serving/predict"
        )
        verify_predict(stubs(server), 3.0, 123)
    finally:
        server.stop()
    error = rpc_error(stubs(default_server).predictions.Regress, regress, RPC_TIMEOUT)  # unchecked: the structure fails
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details().startswith("No regression inputs found in SignatureDef")


@pytest.mark.parametrize(
    "tasks, code, message",
    [
        (
            [("default", "regress_x_to_y", "tensorflow/serving/regress")] * 2,
            grpc.StatusCode.INVALID_ARGUMENT,
            "Duplicate evaluation of signature: regress_x_to_y",
        ),
        (
            [
                ("default", "regress_x_to_y", "tensorflow/serving/regress"),
                ("other", "classify_x_to_y", "tensorflow/serving/classify"),
            ],
            grpc.StatusCode.INVALID_ARGUMENT,
            "All ModelSpecs in a MultiInferenceRequest must access the same model name.",
        ),
        (
            [("default", "regress_x_to_y", "tensorflow/serving/predict")],
            grpc.StatusCode.UNIMPLEMENTED,
            "Unsupported signature method_name: tensorflow/serving/predict",
        ),
        (
            [("default", "foo", "tensorflow/serving/regress")],
            grpc.StatusCode.INVALID_ARGUMENT,
            "Requested signature not found in model graph: foo",
        ),
        (
            [
                ("default", "regress_x_to_y", "tensorflow/serving/regress"),
                ("default", "regress_x2_to_y3", "tensorflow/serving/regress"),
            ],
            grpc.StatusCode.INVALID_ARGUMENT,
            "Input tensor must be the same for all Signatures.",
        ),
        (
            [
                ("default", "regress_x_to_y", "tensorflow/serving/regress"),
                ("", "classify_x_to_y", "tensorflow/serving/classify"),
            ],
            grpc.StatusCode.INVALID_ARGUMENT,
            "Found ModelSpec with an empty model name.",
        ),
    ],
)
def test_multi_inference_errors(default_server, tasks, code, message):
    """multi_inference_test: each malformed task list is refused with TF Serving's code and words."""
    request = inference_pb2.MultiInferenceRequest()
    for model, signature, method in tasks:
        task = request.tasks.add(method_name=method)
        task.model_spec.name = model
        task.model_spec.signature_name = signature
    example_input(request)
    error = rpc_error(stubs(default_server).predictions.MultiInference, request, RPC_TIMEOUT)
    assert (error.code(), error.details()) == (code, message)


def test_multi_inference_regressions_of_one_input(default_server):
    """multi_inference_test: two regressions of the same examples (y and y2), one result each."""
    request = inference_pb2.MultiInferenceRequest()
    for signature in ("regress_x_to_y", "regress_x_to_y2"):
        task = request.tasks.add(method_name="tensorflow/serving/regress")
        task.model_spec.name = "default"
        task.model_spec.signature_name = signature
    example_input(request, 4.0)
    example_input(request, 6.0)
    result = stubs(default_server).predictions.MultiInference(request, RPC_TIMEOUT)
    assert [[r.value for r in answer.regression_result.regressions] for answer in result.results] == [
        [4.0, 5.0],
        [5.0, 6.0],
    ]


# -- server_core_test.cc and main.cc flags -------------------------------------------


def _reload(server, text: str):
    request = model_management_pb2.ReloadConfigRequest()
    text_format.Parse(text, request.config)
    return stubs(server).models.HandleReloadConfigRequest(request, RPC_TIMEOUT)


def _status(server, name: str) -> dict[int, int]:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = name
    return {s.version: s.state for s in stubs(server).models.GetModelStatus(request, RPC_TIMEOUT).model_version_status}


def test_config_validation_and_removed_model_status(tfs_models):
    """server_core_test: relative base paths, model_type with model_platform, and neither, are
    INVALID_ARGUMENT; a model removed from the config reports its versions in END."""
    two, three = tfs_models.half_plus_two, tfs_models.half_plus_three
    entry = 'config {{ name: "{name}" base_path: "{path}" {platform} }}'
    server = start(model_config_file=None, model_base_path=str(two), model_name="half_plus_two")
    try:
        for config, message in (
            (
                entry.format(name="m", path="relative/path", platform='model_platform: "tensorflow"'),
                "Expected model m to have an absolute path or URI; got base_path()=relative/path",
            ),
            (
                entry.format(name="m", path=three, platform='model_type: TENSORFLOW model_platform: "tensorflow"'),
                "Illegal setting both ModelServerConfig::model_type (deprecated) and "
                "ModelServerConfig::model_platform.",
            ),
            (
                entry.format(name="m", path=three, platform=""),
                "Illegal setting neither ModelServerConfig::model_type (deprecated) nor "
                "ModelServerConfig::model_platform.",
            ),
        ):
            error = rpc_error(_reload, server, f"model_config_list {{ {config} }}")
            assert (error.code(), error.details()) == (grpc.StatusCode.INVALID_ARGUMENT, message)
        assert _reload(
            server,
            f"model_config_list {{ "
            f"{entry.format(name='half_plus_three', path=three, platform='model_type: TENSORFLOW')} }}",
        )
        verify_predict(stubs(server), 4.0, 123, model="half_plus_three")
        assert _status(server, "half_plus_two") == {123: State.END}
        assert (
            rpc_error(verify_predict, stubs(server), 3.0, 123, model="half_plus_two").code()
            == grpc.StatusCode.NOT_FOUND
        )
    finally:
        server.stop()


def test_version_labels_for_unavailable_models(tfs_models):
    """server_core_test AssignLabel...: a label naming a version that is not available is
    FAILED_PRECONDITION, unless --allow_version_labels_for_unavailable_models and the label is new."""
    base = tfs_models.half_plus_two_2_versions
    config = (
        f'model_config_list {{ config {{ name: "m" base_path: "{base}" model_platform: "tensorflow" '
        "model_version_policy { specific { versions: 123 } } %s } }"
    )
    label = 'version_labels { key: "%s" value: %d }'
    for allowed in (False, True):
        server = start(model_base_path=str(base), model_name="m", allow_version_labels_for_unavailable_models=allowed)
        try:
            _reload(server, config % (label % ("stable", 123)))
            new_label = config % (label % ("stable", 123) + " " + label % ("canary", 124))
            if allowed:
                assert _reload(server, new_label)
            else:
                assert rpc_error(_reload, server, new_label).code() == grpc.StatusCode.FAILED_PRECONDITION
            moved = rpc_error(_reload, server, config % (label % ("stable", 124)))
            assert moved.code() == grpc.StatusCode.FAILED_PRECONDITION and "not currently available" in moved.details()
        finally:
            server.stop()


def test_rest_api_timeout_in_ms(tfs_models, tmp_path):
    """--rest_api_timeout_in_ms is every REST request's deadline: a request queued behind a
    2 s batch timeout is DEADLINE_EXCEEDED (504) after 200 ms."""
    params = tmp_path / "batching.config"
    params.write_text("max_batch_size { value: 64 } batch_timeout_micros { value: 2000000 }")
    server = start(
        tfs_models.half_plus_two, enable_batching=True, batching_parameters_file=str(params), rest_api_timeout_in_ms=200
    )
    try:
        started = time.monotonic()
        status, body = rest(server, "/v1/models/default:predict", {"instances": [[2.0]]})
        assert (status, body) == (504, {"error": "Deadline Exceeded"}) and time.monotonic() - started < 1.5
    finally:
        server.stop()


def test_enable_model_warmup(tfs_models, tmp_path):
    """--enable_model_warmup=false skips assets.extra/tf_serving_warmup_requests (here unreadable,
    which fails the load when warmup is on)."""
    base = tmp_path / "m"
    shutil.copytree(tfs_models.half_plus_two, base)
    (base / "00000123" / "assets.extra").mkdir()
    (base / "00000123" / "assets.extra" / "tf_serving_warmup_requests").write_bytes(b"not a TFRecord")
    for warmup, state in ((True, State.END), (False, State.AVAILABLE)):
        server = start(base, enable_model_warmup=warmup, max_num_load_retries=0)
        try:
            assert _status(server, "default") == {123: state}
        finally:
            server.stop()


def _mutual_tls_files(tmp_path: Path) -> dict[str, Path]:
    """A server certificate, a CA, a client certificate it signed and one it did not."""

    def openssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    files = {
        name: tmp_path / f"{name}.pem"
        for name in ("server_key", "server", "ca_key", "ca", "client_key", "client", "stranger_key", "stranger")
    }
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl(
        "req",
        "-x509",
        *ec,
        "-days",
        "1",
        "-subj",
        "/CN=localhost",
        "-addext",
        "subjectAltName=DNS:localhost",
        "-keyout",
        str(files["server_key"]),
        "-out",
        str(files["server"]),
    )
    openssl(
        "req",
        "-x509",
        *ec,
        "-days",
        "1",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        str(files["ca_key"]),
        "-out",
        str(files["ca"]),
    )
    csr = tmp_path / "client.csr"
    openssl("req", *ec, "-subj", "/CN=client", "-keyout", str(files["client_key"]), "-out", str(csr))
    openssl(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(files["ca"]),
        "-CAkey",
        str(files["ca_key"]),
        "-CAcreateserial",
        "-days",
        "1",
        "-out",
        str(files["client"]),
    )
    openssl(
        "req",
        "-x509",
        *ec,
        "-days",
        "1",
        "-subj",
        "/CN=stranger",
        "-keyout",
        str(files["stranger_key"]),
        "-out",
        str(files["stranger"]),
    )
    return files


@pytest.mark.slow
def test_ssl_config_file_mutual_tls(tfs_models, tmp_path):
    """--ssl_config_file (TF Serving's SSLConfig): TLS on the gRPC port, and with client_verify a
    client must present a certificate signed by custom_ca; one without, or with a stranger's, is refused."""
    files = _mutual_tls_files(tmp_path)
    config = tmp_path / "ssl.config"
    config.write_text(
        f"server_key: {json.dumps(files['server_key'].read_text())}\n"
        f"server_cert: {json.dumps(files['server'].read_text())}\n"
        f"custom_ca: {json.dumps(files['ca'].read_text())}\nclient_verify: true\n"
    )
    server = start(tfs_models.half_plus_two, ssl_config_file=str(config))
    options = [("grpc.ssl_target_name_override", "localhost")]
    target = f"localhost:{server.port}"

    def client(key: str | None, cert: str | None) -> Stubs:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=files["server"].read_bytes(),
            private_key=files[key].read_bytes() if key else None,
            certificate_chain=files[cert].read_bytes() if cert else None,
        )
        return Stubs(target, credentials, options)

    try:
        verify_predict(client("client_key", "client"), 3.0, 123)
        for key, cert in ((None, None), ("stranger_key", "stranger")):
            assert rpc_error(verify_predict, client(key, cert), 3.0, 123).code() == grpc.StatusCode.UNAVAILABLE
        assert rpc_error(verify_predict, stubs(server), 3.0, 123).code() == grpc.StatusCode.UNAVAILABLE  # plaintext
    finally:
        server.stop()


def test_tuning_hint_flags_are_accepted_and_logged_once(tfs_models, caplog, monkeypatch):
    """main.cc's tuning hints (thread counts, caches, GPU memory) are taken, each logged once as ignored."""
    ran = []
    monkeypatch.setattr(serving_server, "run", lambda config: ran.append(config) or 0)
    argv = [
        "--port",
        "0",  # fmnist serve binds its port before it runs the server: 8500 may be taken on this machine
        "--model_base_path",
        str(tfs_models.half_plus_two),
        "--rest_api_num_threads",
        "16",
        "--num_load_threads",
        "4",
        "--grpc_channel_arguments",
        "grpc.max_connection_age_ms=2000",
        "--enable_signature_method_name_check",
    ]
    with caplog.at_level("INFO", logger="fmnist.serving.serve"):
        assert serve.main(argv, prog="fmnist serve") == 0
    ignored = [r.getMessage() for r in caplog.records if "ignores it" in r.getMessage()]
    assert len(ignored) == 2 and "--rest_api_num_threads" in ignored[0] and "--num_load_threads" in ignored[1]
    assert (
        ran[0].enable_signature_method_name_check and ran[0].grpc_channel_arguments == "grpc.max_connection_age_ms=2000"
    )


@pytest.mark.slow
def test_new_flags_pass_through_to_the_real_binary(tmp_path):
    """With tensorflow_model_server on PATH, fmnist serve runs it with these flags as given."""
    fake = tmp_path / "tensorflow_model_server"
    fake.write_text('#!/bin/sh\necho "$@" > "$0.args"\n')
    fake.chmod(0o755)
    flags = [
        "--port=9000",
        "--model_base_path=/models/m",
        "--ssl_config_file=/c/ssl.config",
        "--grpc_socket_path=/tmp/tf.sock",
        "--grpc_channel_arguments=grpc.max_connection_age_ms=2000",
        "--rest_api_timeout_in_ms=5000",
        "--allow_version_labels_for_unavailable_models=true",
        "--enable_signature_method_name_check=true",
        "--enable_model_warmup=false",
        "--num_request_iterations_for_warmup=2",
        "--saved_model_tags=serve,tpu",
        "--num_load_threads=4",
    ]
    done = subprocess.run(
        [sys.executable, "-m", "fmnist.cli", "serve", *flags],
        capture_output=True,
        timeout=120,
        env={**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"},
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "tensorflow_model_server.args").read_text().split() == flags


def _write_warmup(version_dir: Path, entries) -> None:
    import tensorflow as tf

    (version_dir / "assets.extra").mkdir()
    with tf.io.TFRecordWriter(str(version_dir / "assets.extra" / "tf_serving_warmup_requests")) as writer:
        for entry in entries:
            writer.write(entry.SerializeToString())


def test_num_request_iterations_for_warmup(tfs_models, tmp_path):
    """saved_model_warmup_test: each warmup record runs --num_request_iterations_for_warmup times
    before the version serves (the counter counts them)."""
    from tensorflow_serving.apis import prediction_log_pb2

    base = tmp_path / "counter"
    shutil.copytree(tfs_models.counter, base)
    entry = prediction_log_pb2.PredictionLog()
    entry.predict_log.request.model_spec.signature_name = "incr_counter"
    _write_warmup(base / "1", [entry])
    server = start(base, num_request_iterations_for_warmup=3)
    try:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "default"
        request.model_spec.signature_name = "get_counter"
        assert stubs(server).predictions.Predict(request, RPC_TIMEOUT).outputs["output"].float_val == [3.0]
    finally:
        server.stop()


def test_classify_regress_and_multi_inference_warmup_records(tfs_models, tmp_path):
    """saved_model_warmup_test: Classify, Regress and MultiInference logs replay too; a record the
    model fails fails the load."""
    from tensorflow_serving.apis import prediction_log_pb2

    good, bad = prediction_log_pb2.PredictionLog(), prediction_log_pb2.PredictionLog()
    good.classify_log.request.model_spec.signature_name = "classify_x_to_y"
    example_input(good.classify_log.request)
    regress = prediction_log_pb2.PredictionLog()
    regress.regress_log.request.model_spec.signature_name = "regress_x_to_y"
    example_input(regress.regress_log.request)
    multi = prediction_log_pb2.PredictionLog()
    multi.multi_inference_log.request.tasks.add(
        method_name="tensorflow/serving/regress"
    ).model_spec.signature_name = "regress_x_to_y2"
    example_input(multi.multi_inference_log.request)
    bad.regress_log.request.model_spec.signature_name = "regress_x_to_y"
    example_input(bad.regress_log.request, feature="not_x")  # x is a required feature
    for name, entries, state in (("good", [good, regress, multi], State.AVAILABLE), ("bad", [good, bad], State.END)):
        base = tmp_path / name
        shutil.copytree(tfs_models.half_plus_two, base)
        _write_warmup(base / "00000123", entries)
        server = start(base)
        try:
            assert _status(server, "default") == {123: state}
        finally:
            server.stop()


def test_saved_model_tags(tfs_models):
    """--saved_model_tags picks the meta graph: the default serve loads; serve,gpu (absent) fails the load."""
    for tags, state in (("serve", State.AVAILABLE), ("serve,gpu", State.END)):
        server = start(tfs_models.half_plus_two, saved_model_tags=tags)
        try:
            assert _status(server, "default") == {123: state}
        finally:
            server.stop()


def test_get_model_status_impl(default_server):
    """get_model_status_impl_test: Missing ModelSpec, unknown model, unknown version (NOT_FOUND with
    TF Serving's words), all versions and one version."""
    status = stubs(default_server).models.GetModelStatus
    error = rpc_error(status, get_model_status_pb2.GetModelStatusRequest(), RPC_TIMEOUT)
    assert (error.code(), error.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "nonexistent"
    error = rpc_error(status, request, RPC_TIMEOUT)
    assert (error.code(), error.details()) == (
        grpc.StatusCode.NOT_FOUND,
        "Could not find any versions of model nonexistent",
    )
    request.model_spec.name = "default"
    request.model_spec.version.value = 999
    error = rpc_error(status, request, RPC_TIMEOUT)
    assert (error.code(), error.details()) == (grpc.StatusCode.NOT_FOUND, "Could not find version 999 of model default")
    request.model_spec.version.value = 123
    assert [(s.version, s.state) for s in status(request, RPC_TIMEOUT).model_version_status] == [(123, State.AVAILABLE)]


def test_get_model_metadata(default_server):
    """TMS testGetModelMetadata: the gRPC response packs the same signature defs the REST JSON shows."""
    from google.protobuf import json_format

    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "default"
    response = stubs(default_server).predictions.GetModelMetadata(request, RPC_TIMEOUT)
    signature_defs = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signature_defs)
    assert (response.model_spec.name, response.model_spec.version.value) == ("default", 123)
    as_json = json_format.MessageToDict(
        signature_defs, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    assert as_json == expected_half_plus_two_metadata("default")["metadata"]["signature_def"]


def test_model_config_reload(tfs_models, tmp_path):
    """TMS testModelConfigReload: with --model_config_file_poll_wait_seconds an edited config file is
    applied: half_plus_two goes (its version END), half_plus_three serves."""
    config = tmp_path / "models.config"
    entry = 'model_config_list { config { name: "%s" base_path: "%s" model_platform: "tensorflow" } }'
    config.write_text(entry % ("half_plus_two", tfs_models.half_plus_two))
    server = start(model_config_file=str(config), model_config_file_poll_wait_seconds=0.2)
    try:
        verify_predict(stubs(server), 3.0, 123, model="half_plus_two")
        config.write_text(entry % ("half_plus_three", tfs_models.half_plus_three))
        deadline = time.monotonic() + 20
        while _status(server, "half_plus_two") != {123: State.END} and time.monotonic() < deadline:
            time.sleep(0.1)
        verify_predict(stubs(server), 4.0, 123, model="half_plus_three")
        assert _status(server, "half_plus_two") == {123: State.END}
    finally:
        server.stop()


def test_logging_config_needs_a_collector_this_server_has(tfs_models, tmp_path):
    """TF Serving refuses a logging_config it has no log collector for ("No request-logger-creator
    provided" in the open-source build, which has none); this server has one, type "file"
    (tests/serving/test_request_log.py), and refuses the others the same way, at start."""
    config = tmp_path / "models.config"
    config.write_text(
        f'model_config_list {{ config {{ name: "default" base_path: "{tfs_models.half_plus_two}" '
        f'model_platform: "tensorflow" '
        'logging_config { sampling_config { sampling_rate: 1.0 } log_collector_config { type: "bigquery" } } } }'
    )
    with pytest.raises(ValueError, match="unsupported log collector type 'bigquery'"):
        start(model_config_file=str(config))
