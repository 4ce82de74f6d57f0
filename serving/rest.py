"""TF Serving's REST API (and Prometheus metrics) over the same :class:`ServingCore` as the gRPC API.

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
JSON is read and written by :mod:`fmnist.serving.rest_json`; a ServingError
answers with the HTTP status its type names (TF Serving's ToHTTPStatusCode),
in one place, ``_Handler._answer``, which also counts each request.

Usage: ``rest = RestServer(core, "127.0.0.1", 8501, MonitoringConfig()); rest.start(); ...; rest.stop()``

Thread safety: one thread per connection (``ThreadingHTTPServer``), all calling the thread-safe core.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
import time
import urllib.parse
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    predict_pb2,
    regression_pb2,
)

from fmnist.common import errors, tensors
from fmnist.serving import metrics, rest_json
from fmnist.serving.core import ServingCore
from fmnist.serving.signature import DEFAULT_SIGNATURE

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


def _model_spec(match: re.Match) -> model_pb2.ModelSpec:
    """ParseModelInfo: a URL-decoded name and label, and a version that must fit an int64."""
    spec = model_pb2.ModelSpec(name=urllib.parse.unquote(match["name"] or ""))
    if match["version"]:
        version = int(match["version"])
        if version > _MAX_VERSION:
            raise errors.InvalidArgument(f"Failed to convert version: {match['version']} to numeric.")
        spec.version.value = version
    elif match["label"]:
        spec.version_label = urllib.parse.unquote(match["label"])
    return spec


class _HTTPServer(ThreadingHTTPServer):
    """One thread per connection, with a listen backlog that takes a burst of new connections.

    socketserver listens with a backlog of 5. Loopback clients opening more connections than
    that at once (16 bench threads, a pool's first requests) overflowed it: Linux answered the
    extra SYNs with SYN cookies, dropped their handshakes while the accept queue was full, and
    reset those connections when their first request arrived (ConnectionResetError on a
    fresh keep-alive connection). The kernel caps the backlog at ``net.core.somaxconn``.
    """

    request_queue_size = socket.SOMAXCONN
    daemon_threads = True


class RestServer:
    """A threaded HTTP server bound at construction (so a busy port fails start()).

    ``timeout`` (seconds, None: none) is ``--rest_api_timeout_in_ms``, every REST request's deadline.
    """

    def __init__(
        self,
        core: ServingCore,
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
        self._http = _HTTPServer((host, port), handler)
        self.port = self._http.server_address[1]
        self._thread = threading.Thread(target=self._http.serve_forever, name="rest", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._http.shutdown()
        self._http.server_close()

    # -- endpoints: one per HTTP method and action, each the JSON answer of one core call ------------

    def get_status(self, spec: model_pb2.ModelSpec) -> dict:
        if not spec.name:
            raise errors.InvalidArgument("Missing model name in request.")
        return rest_json.message_json(self.core.status(get_model_status_pb2.GetModelStatusRequest(model_spec=spec)))

    def get_metadata(self, spec: model_pb2.ModelSpec) -> dict:
        if not spec.name:
            raise errors.InvalidArgument("Missing model name in request.")
        request = get_model_metadata_pb2.GetModelMetadataRequest(model_spec=spec, metadata_field=["signature_def"])
        response = self.core.metadata(request)
        signature_defs = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_defs)
        return {
            "model_spec": rest_json.message_json(response.model_spec),
            "metadata": {"signature_def": rest_json.message_json(signature_defs)},
        }

    def post_predict(self, spec: model_pb2.ModelSpec, raw: bytes) -> dict:
        body = rest_json.parse_json(raw)
        if not isinstance(body, dict):
            raise errors.InvalidArgument("JSON Value: request body must be a JSON object")
        signature_name = body.get("signature_name", "")
        if not isinstance(signature_name, str):
            raise errors.InvalidArgument("'signature_name' key must be a string value.")
        spec.signature_name = signature_name
        version = self.core.manager.resolve(spec)
        key = signature_name or DEFAULT_SIGNATURE
        if key not in version.signature_defs:
            raise errors.InvalidArgument(f'Serving signature name: "{key}" not found in signature def')
        inputs = version.signature_defs[key].inputs
        columns, rows = rest_json.input_columns(body, inputs)
        request = predict_pb2.PredictRequest(model_spec=spec)
        for alias, value in columns.items():
            dtype = inputs[alias].dtype if alias in inputs else None
            tensors.fill(request.inputs[alias], rest_json.input_array(alias, value, dtype))
        response = self.core.predict(request, self.timeout)
        outputs = {
            alias: rest_json.json_value(alias, tensors.to_ndarray(t)) for alias, t in sorted(response.outputs.items())
        }
        if not rows:
            return {"outputs": next(iter(outputs.values())) if len(outputs) == 1 else outputs}
        if len(outputs) == 1:
            return {"predictions": next(iter(outputs.values()))}
        count = len(next(iter(outputs.values())))
        return {"predictions": [{alias: value[i] for alias, value in outputs.items()} for i in range(count)]}

    def _examples_request(self, request, raw: bytes):
        """Fill a Classify/Regress request from {"signature_name"?, "context"?, "examples": [...]}."""
        body = rest_json.unb64(rest_json.parse_json(raw))
        if not isinstance(body, dict) or not isinstance(body.get("examples"), list):
            raise errors.InvalidArgument("'examples' must be a JSON array of examples")
        signature_name = body.get("signature_name", "")
        if not isinstance(signature_name, str):
            raise errors.InvalidArgument("'signature_name' key must be a string value.")
        request.model_spec.signature_name = signature_name
        examples = [rest_json.example(item) for item in body["examples"]]
        if "context" in body:
            request.input.example_list_with_context.context.CopyFrom(rest_json.example(body["context"]))
            request.input.example_list_with_context.examples.extend(examples)
        else:
            request.input.example_list.examples.extend(examples)
        return request

    def post_classify(self, spec: model_pb2.ModelSpec, raw: bytes) -> dict:
        request = self._examples_request(classification_pb2.ClassificationRequest(model_spec=spec), raw)
        result = self.core.classify(request, self.timeout).result
        return {"results": [[[c.label, c.score] for c in row.classes] for row in result.classifications]}

    def post_regress(self, spec: model_pb2.ModelSpec, raw: bytes) -> dict:
        request = self._examples_request(regression_pb2.RegressionRequest(model_spec=spec), raw)
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
            raise errors.InvalidArgument(f"Malformed request: {method} {path}")
        return _model_spec(match), (match["action"] or "status").lower()

    def _answer(self, method: str) -> None:
        path = self.path.split("?", 1)[0]
        started, model, code = time.perf_counter(), "", grpc.StatusCode.OK
        try:
            # The whole body is read before anything can answer: a body left unread on a kept-alive
            # connection would be parsed as the next request (an HTML 400 "Bad request syntax" for
            # the client's next, valid one), and closing over unread bytes resets the connection.
            raw = self._read_body()
            if method == "GET" and self.rest.monitoring.enabled and path == self.rest.monitoring.path:
                self._send(HTTPStatus.OK, self.rest.core.metrics.exposition(), "text/plain; version=0.0.4")
                return
            if not path.lower().startswith(_API_PREFIX):
                raise errors.NotFound(f"Not found: {method} {path}")
            spec, action = self._route(method, path)
            model = spec.name
            if method == "GET":  # _route let only GET and POST through
                handler = self.rest.get_metadata if action == "metadata" else self.rest.get_status
                self._json(HTTPStatus.OK, handler(spec))
            else:
                handler = {
                    "predict": self.rest.post_predict,
                    "classify": self.rest.post_classify,
                    "regress": self.rest.post_regress,
                }[action]
                self._json(HTTPStatus.OK, handler(spec, raw))
        except errors.ServingError as error:
            code = error.code
            self._json(error.http_status, {"error": error.details})  # the type names its HTTP status
        except Exception as error:  # a request never takes the server down
            code = grpc.StatusCode.INTERNAL
            log.exception("REST %s %s failed", method, path)
            self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"{type(error).__name__}: {error}"})
        if model:
            self.rest.core.metrics.observe_request(model, f"REST {method}", code.name, time.perf_counter() - started)

    def _read_body(self) -> bytes:
        """The request's Content-Length bytes; a body over the limit is left unread and the connection closed."""
        text = (self.headers.get("Content-Length") or "0").strip()
        if not (text.isascii() and text.isdigit()):  # where this body ends is unknown
            self.close_connection = True
            raise errors.InvalidArgument(f"Malformed Content-Length: {text}")
        length = int(text)
        if length > self.rest.max_body_bytes:
            self.close_connection = True
            raise errors.ResourceExhausted(
                f"Request body of {length} bytes exceeds the limit of {self.rest.max_body_bytes}",
            )
        return self.rfile.read(length)

    def do_GET(self) -> None:
        self._answer("GET")

    def do_POST(self) -> None:
        self._answer("POST")

    # TF Serving's handler answers every other method on /v1/ paths as a malformed request.
    def do_PUT(self) -> None:
        self._answer("PUT")

    def do_DELETE(self) -> None:
        self._answer("DELETE")
