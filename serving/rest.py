"""TF Serving's REST API (and Prometheus metrics) over the same handlers as the gRPC API.

Endpoints, as TF Serving names and shapes them::

    GET  /v1/models/<name>[/versions/<v>|/labels/<l>]            → model status
    GET  /v1/models/<name>[/versions/<v>|/labels/<l>]/metadata   → signature defs
    POST /v1/models/<name>[/versions/<v>|/labels/<l>]:predict    → {"instances"|"inputs": ...}
    POST /v1/models/<name>[/versions/<v>|/labels/<l>]:classify   → {"examples": [...], "context"?: {...}}
    POST /v1/models/<name>[/versions/<v>|/labels/<l>]:regress    → {"examples": [...], "context"?: {...}}
    GET  /monitoring/prometheus/metrics                          → Prometheus text

Binary strings travel as ``{"b64": "..."}``, in requests and (for outputs
whose alias ends in ``_bytes`` or that are not UTF-8) in responses. Paths are
matched as TF Serving's handler matches them (case-insensitively); any other
``/v1/`` path is 400 "Malformed request". Each response leaves in one write on
a TCP_NODELAY socket, so kept-alive connections do not wait on delayed ACKs.

Usage: ``rest = RestServer(core, "127.0.0.1", 8501, MonitoringConfig()); rest.start(); ...; rest.stop()``
"""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
import time
import urllib.parse
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.example import example_pb2
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    predict_pb2,
    regression_pb2,
)

from fmnist.serving import metrics, predict
from fmnist.serving.predict import ServingError

log = logging.getLogger(__name__)

# TF Serving's http_rest_api_util.cc patterns: POST for the three inference APIs, GET for
# status (a missing model name is its own error) and metadata.
_API_PREFIX = "/v1/"
_POST_PATH = re.compile(
    r"/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
    r":(?P<action>classify|regress|predict)",
    re.IGNORECASE,
)
_GET_PATH = re.compile(
    r"/v1/models(?:/(?P<name>[^/:]+))?(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
    r"(?:/(?P<action>metadata))?",
    re.IGNORECASE,
)
_MAX_VERSION = 2**63 - 1  # versions are int64

# rapidjson's words for the parse errors TF Serving reports, by Python's.
_JSON_ERRORS = {
    "Expecting value": "Invalid value.",
    "Extra data": "The document root must not be followed by other values.",
    "Expecting property name enclosed in double quotes": "Missing a name for object member.",
    "Expecting ':' delimiter": "Missing a colon after a name of object member.",
    "Expecting ',' delimiter": "Missing a comma or ']' after an array element.",
    "Unterminated string starting at": "Missing a closing quotation mark in string.",
    "Invalid control character at": "Invalid encoding in string.",
    "Invalid \\escape": "Invalid escape character in string.",
}

# Google's canonical gRPC → HTTP mapping, which TF Serving's REST API uses.
_HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: HTTPStatus.BAD_REQUEST,
    grpc.StatusCode.FAILED_PRECONDITION: HTTPStatus.BAD_REQUEST,
    grpc.StatusCode.OUT_OF_RANGE: HTTPStatus.BAD_REQUEST,
    grpc.StatusCode.NOT_FOUND: HTTPStatus.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS: HTTPStatus.CONFLICT,
    grpc.StatusCode.ABORTED: HTTPStatus.CONFLICT,
    grpc.StatusCode.PERMISSION_DENIED: HTTPStatus.FORBIDDEN,
    grpc.StatusCode.UNAUTHENTICATED: HTTPStatus.UNAUTHORIZED,
    grpc.StatusCode.DEADLINE_EXCEEDED: HTTPStatus.GATEWAY_TIMEOUT,
    grpc.StatusCode.RESOURCE_EXHAUSTED: HTTPStatus.TOO_MANY_REQUESTS,
    grpc.StatusCode.UNIMPLEMENTED: HTTPStatus.NOT_IMPLEMENTED,
    grpc.StatusCode.UNAVAILABLE: HTTPStatus.SERVICE_UNAVAILABLE,
}


def _model_spec(match: re.Match) -> model_pb2.ModelSpec:
    """ParseModelInfo: a URL-decoded name and label, and a version that must fit an int64."""
    spec = model_pb2.ModelSpec(name=urllib.parse.unquote(match["name"] or ""))
    if match["version"]:
        version = int(match["version"])
        if version > _MAX_VERSION:
            raise predict.invalid(f"Failed to convert version: {match['version']} to numeric.")
        spec.version.value = version
    elif match["label"]:
        spec.version_label = urllib.parse.unquote(match["label"])
    return spec


def _parse_json(body: bytes) -> Any:
    """The request body as JSON, or INVALID_ARGUMENT in rapidjson's words, as TF Serving reports it."""
    if not body.strip():
        raise predict.invalid("JSON Parse error: The document is empty. at offset: 0")
    try:
        return json.loads(body)
    except json.JSONDecodeError as error:
        reason = _JSON_ERRORS.get(error.msg, error.msg)
        raise predict.invalid(f"JSON Parse error: {reason} at offset: {error.pos}") from None
    except UnicodeDecodeError:
        raise predict.invalid("JSON Parse error: Invalid encoding in string.") from None


def _unb64(value: Any) -> Any:
    """Replace every {"b64": "..."} in a JSON value by its bytes."""
    if isinstance(value, dict):
        if set(value) == {"b64"}:
            try:
                return base64.b64decode(value["b64"], validate=True)
            except (ValueError, TypeError):
                raise predict.invalid("Unable to base64 decode") from None
        return {key: _unb64(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_unb64(item) for item in value]
    return value


# The JSON value kinds each tensor kind takes, as TF Serving's json_tensor.cc: any number for
# floats, integers for integers, true/false for bools.
_ACCEPTED_KINDS = {"f": "fiu", "c": "fiu", "i": "iu", "u": "iu", "b": "b"}


def _fits(value: Any, kinds: str) -> bool:
    if isinstance(value, bool):
        return "b" in kinds
    if isinstance(value, int):
        return "i" in kinds
    return isinstance(value, float) and "f" in kinds


def _first_misfit(value: Any, kinds: str) -> Any:
    """The first leaf of a JSON array that is not of ``kinds``."""
    if isinstance(value, list):
        for item in value:
            misfit = _first_misfit(item, kinds)
            if misfit is not None:
                return misfit
        return None
    return None if _fits(value, kinds) else value


def _json_text(value: Any) -> str:
    return json.dumps(value if not isinstance(value, bytes) else {"b64": base64.b64encode(value).decode()})


def _array(alias: str, value: Any, dtype: int | None) -> np.ndarray:
    """The array for one input; ``dtype`` None (an alias the signature lacks) is inferred.

    A value of the wrong JSON type is refused as TF Serving words it:
    ``JSON Value: "x" not of expected type: float``.
    """
    try:
        if dtype is None:
            return np.array(value)
        if dtype == types_pb2.DT_STRING:
            encode = np.vectorize(lambda v: v if isinstance(v, bytes) else str(v).encode(), otypes=[object])
            return encode(np.array(value, dtype=object))
        inferred = np.array(value)
    except (ValueError, TypeError) as error:
        kind = types_pb2.DataType.Name(dtype) if dtype is not None else "tensor"
        raise predict.invalid(f"input '{alias}' is not a well-formed {kind} value: {error}") from None
    target = np.dtype(tf.dtypes.as_dtype(dtype).as_numpy_dtype)
    kinds = _ACCEPTED_KINDS.get(target.kind, "")
    if inferred.size and inferred.dtype.kind not in kinds:
        misfit = _first_misfit(value, kinds)
        raise predict.invalid(f"JSON Value: {_json_text(misfit)} not of expected type: {predict.dtype_text(dtype)}")
    return inferred.astype(target, copy=False)


def _columns(body: dict, inputs: dict) -> tuple[dict[str, Any], bool]:
    """(alias → value, row format?) from a predict body's "instances" or "inputs"."""
    if ("instances" in body) == ("inputs" in body):
        raise predict.invalid(
            "Missing 'inputs' or 'instances' key"
            if "instances" not in body
            else "Not formatted correctly expecting only one of 'inputs' or 'instances' keys exist"
        )
    if "inputs" in body:
        value = _unb64(body["inputs"])
        return (value if isinstance(value, dict) else {next(iter(inputs)): value}), False
    instances = _unb64(body["instances"])
    if not isinstance(instances, list):
        raise predict.invalid("'instances' must be a JSON array")
    if instances and all(isinstance(row, dict) for row in instances):
        keys = set(instances[0])
        if any(set(row) != keys for row in instances):
            raise predict.invalid("The instances do not all have the same named inputs")
        return {key: [row[key] for row in instances] for key in keys}, True
    if len(inputs) != 1:
        raise predict.invalid("instances without names need a signature with exactly one input")
    return {next(iter(inputs)): instances}, True


def _example(value: Any) -> example_pb2.Example:
    """A JSON object of feature name → value or list (numbers, strings, b64 bytes) as a tf.Example."""
    if not isinstance(value, dict):
        raise predict.invalid("an example must be a JSON object of features")
    example = example_pb2.Example()
    for name, feature_value in value.items():
        values = feature_value if isinstance(feature_value, list) else [feature_value]
        feature = example.features.feature[name]
        if all(isinstance(v, (bytes, str)) for v in values):
            feature.bytes_list.value.extend(v if isinstance(v, bytes) else v.encode() for v in values)
        elif all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            feature.int64_list.value.extend(values)
        elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            feature.float_list.value.extend(values)
        else:
            raise predict.invalid(f"feature '{name}' must hold numbers or strings, not a mix")
    return example


def _json_value(alias: str, array: np.ndarray) -> Any:
    if array.dtype != object:
        return array.tolist()

    def text(value: bytes) -> Any:
        if not alias.endswith("_bytes"):
            try:
                return value.decode()
            except UnicodeDecodeError:
                pass
        return {"b64": base64.b64encode(value).decode()}

    return np.vectorize(text, otypes=[object])(array).tolist() if array.ndim else text(array.item())


def _message_json(message) -> dict:
    """A message as TF Serving prints it: proto field names, every field without presence
    (``"defaults": {}``, ``"name": ""``, ``"unknown_rank": false``, ``"dim": []``) included."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


class RestServer:
    """A threaded HTTP server bound at construction (so a busy port fails start()).

    ``timeout`` (seconds, None: none) is ``--rest_api_timeout_in_ms``, every REST request's deadline.
    """

    def __init__(
        self,
        core,
        host: str,
        port: int,
        monitoring: metrics.MonitoringConfig,
        max_body_bytes: int = 64 << 20,
        timeout: float | None = 30.0,
    ):
        self.core = core
        self.monitoring = monitoring
        self.max_body_bytes = max_body_bytes
        self.timeout = timeout
        handler = type("Handler", (_Handler,), {"rest": self})
        self._http = ThreadingHTTPServer((host, port), handler)
        self._http.daemon_threads = True
        self.port = self._http.server_address[1]
        self._thread = threading.Thread(target=self._http.serve_forever, name="rest", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._http.shutdown()
        self._http.server_close()

    # -- endpoints -------------------------------------------------------------------

    def status(self, spec: model_pb2.ModelSpec) -> dict:
        if not spec.name:
            raise predict.invalid("Missing model name in request.")
        return _message_json(self.core.status(get_model_status_pb2.GetModelStatusRequest(model_spec=spec)))

    def metadata(self, spec: model_pb2.ModelSpec) -> dict:
        if not spec.name:
            raise predict.invalid("Missing model name in request.")
        request = get_model_metadata_pb2.GetModelMetadataRequest(model_spec=spec, metadata_field=["signature_def"])
        response = self.core.metadata(request)
        signature_defs = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_defs)
        return {
            "model_spec": _message_json(response.model_spec),
            "metadata": {"signature_def": _message_json(signature_defs)},
        }

    def predict(self, spec: model_pb2.ModelSpec, body: Any) -> dict:
        if not isinstance(body, dict):
            raise predict.invalid("JSON Value: request body must be a JSON object")
        signature_name = body.get("signature_name", "")
        if not isinstance(signature_name, str):
            raise predict.invalid("'signature_name' key must be a string value.")
        spec.signature_name = signature_name
        version = self.core.manager.resolve(spec)
        key = signature_name or predict.DEFAULT_SIGNATURE
        if key not in version.signature_defs:
            raise predict.invalid(f'Serving signature name: "{key}" not found in signature def')
        inputs = version.signature_defs[key].inputs
        columns, rows = _columns(body, inputs)
        request = predict_pb2.PredictRequest(model_spec=spec)
        for alias, value in columns.items():
            dtype = inputs[alias].dtype if alias in inputs else None
            request.inputs[alias].CopyFrom(tf.make_tensor_proto(_array(alias, value, dtype)))
        response = self.core.predict(request, self.timeout)
        outputs = {alias: _json_value(alias, tf.make_ndarray(t)) for alias, t in sorted(response.outputs.items())}
        if not rows:
            return {"outputs": next(iter(outputs.values())) if len(outputs) == 1 else outputs}
        if len(outputs) == 1:
            return {"predictions": next(iter(outputs.values()))}
        count = len(next(iter(outputs.values())))
        return {"predictions": [{alias: value[i] for alias, value in outputs.items()} for i in range(count)]}

    def _examples_request(self, request, body: Any):
        """Fill a Classify/Regress request from {"signature_name"?, "context"?, "examples": [...]}."""
        body = _unb64(body)
        if not isinstance(body, dict) or not isinstance(body.get("examples"), list):
            raise predict.invalid("'examples' must be a JSON array of examples")
        signature_name = body.get("signature_name", "")
        if not isinstance(signature_name, str):
            raise predict.invalid("'signature_name' key must be a string value.")
        request.model_spec.signature_name = signature_name
        examples = [_example(item) for item in body["examples"]]
        if "context" in body:
            request.input.example_list_with_context.context.CopyFrom(_example(body["context"]))
            request.input.example_list_with_context.examples.extend(examples)
        else:
            request.input.example_list.examples.extend(examples)
        return request

    def classify(self, spec: model_pb2.ModelSpec, body: Any) -> dict:
        request = self._examples_request(classification_pb2.ClassificationRequest(model_spec=spec), body)
        result = self.core.classify(request, self.timeout).result
        return {"results": [[[c.label, c.score] for c in row.classes] for row in result.classifications]}

    def regress(self, spec: model_pb2.ModelSpec, body: Any) -> dict:
        request = self._examples_request(regression_pb2.RegressionRequest(model_spec=spec), body)
        result = self.core.regress(request, self.timeout).result
        return {"results": [regression.value for regression in result.regressions]}


class _Handler(BaseHTTPRequestHandler):
    rest: RestServer
    protocol_version = "HTTP/1.1"
    # One write per response (the buffered writer is flushed once the request is handled) on a
    # TCP_NODELAY socket: headers and body in separate small writes met the client's delayed ACK
    # on kept-alive connections (Nagle), costing 40 ms a request.
    disable_nagle_algorithm = True
    wbufsize = -1

    def log_message(self, format: str, *args) -> None:  # http.server prints to stderr otherwise
        log.debug("%s " + format, self.address_string(), *args)

    def _send(self, status: int, payload: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _json(self, status: int, value: Any) -> None:
        self._send(status, json.dumps(value, indent=1).encode())

    def _route(self, method: str, path: str) -> tuple[model_pb2.ModelSpec, str]:
        """(model spec, action) of a /v1/ path, as TF Serving's ParseModelInfo reads it."""
        pattern = {"POST": _POST_PATH, "GET": _GET_PATH}.get(method)
        match = pattern.fullmatch(path) if pattern is not None else None
        if match is None:
            raise predict.invalid(f"Malformed request: {method} {path}")
        return _model_spec(match), (match["action"] or "status").lower()

    def _answer(self, method: str) -> None:
        path = self.path.split("?", 1)[0]
        started, model, code = time.perf_counter(), "", grpc.StatusCode.OK
        try:
            if method == "GET" and self.rest.monitoring.enabled and path == self.rest.monitoring.path:
                self._send(HTTPStatus.OK, self.rest.core.metrics.exposition(), "text/plain; version=0.0.4")
                return
            if not path.lower().startswith(_API_PREFIX):
                raise ServingError(grpc.StatusCode.NOT_FOUND, f"Not found: {method} {path}")
            spec, action = self._route(method, path)
            model = spec.name
            if method == "GET":  # _route let only GET and POST through
                handler = self.rest.metadata if action == "metadata" else self.rest.status
                self._json(HTTPStatus.OK, handler(spec))
            else:
                handler = {"predict": self.rest.predict, "classify": self.rest.classify, "regress": self.rest.regress}[
                    action
                ]
                self._json(HTTPStatus.OK, handler(spec, self._body()))
        except ServingError as error:
            code = error.code
            self._json(_HTTP_STATUS.get(error.code, HTTPStatus.INTERNAL_SERVER_ERROR), {"error": error.message})
        except Exception as error:  # a request never takes the server down
            code = grpc.StatusCode.INTERNAL
            log.exception("REST %s %s failed", method, path)
            self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"{type(error).__name__}: {error}"})
        if model:
            self.rest.core.metrics.observe_request(model, f"REST {method}", code.name, time.perf_counter() - started)

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        if length > self.rest.max_body_bytes:
            self.close_connection = True
            raise ServingError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"Request body of {length} bytes exceeds the limit of {self.rest.max_body_bytes}",
            )
        return _parse_json(self.rfile.read(length))

    def do_GET(self) -> None:
        self._answer("GET")

    def do_POST(self) -> None:
        self._answer("POST")

    # TF Serving's handler answers every other method on /v1/ paths as a malformed request.
    def do_PUT(self) -> None:
        self._answer("PUT")

    def do_DELETE(self) -> None:
        self._answer("DELETE")
