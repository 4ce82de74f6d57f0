"""The embedded TensorFlow-Serving-conformant model server, and ``fmnist serve``.

Speaks TF Serving's gRPC API (PredictionService.Predict/Classify/GetModelMetadata,
ModelService.GetModelStatus/HandleReloadConfigRequest, grpc.health.v1) and,
with ``--rest_api_port``, its REST API and Prometheus metrics, with the same
flags, directory rules, version policies, batching parameters, status codes
and messages, so a client written for TF Serving works unchanged against it.
When the real ``tensorflow_model_server`` is on PATH (or ``--use-tf-serving``)
``fmnist serve`` runs that instead, with the same arguments.

Usage::

    fmnist serve --model_name fashion_mnist --model_base_path models/fashion_mnist
    server = start(ServerConfig(port=0, model_name="m", model_base_path="/models/m"))
    ...; server.stop()
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)
from tensorflow_serving.config import model_server_config_pb2

from fmnist.common import names
from fmnist.serving import batching, inference, metrics, models, predict, protos, request_log
from fmnist.serving.predict import ServingError

log = logging.getLogger(__name__)

TF_SERVING_BINARY = "tensorflow_model_server"
DEFAULT_MODEL_NAME = "default"  # tensorflow_model_server's --model_name default
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
SIGNATURE_DEF_FIELD = "signature_def"
MAX_AUTO_THREADS = 256


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """Everything ``fmnist serve`` accepts; field names follow tensorflow_model_server's flags."""

    port: int = names.GRPC_PORT  # 0 = pick a free port
    host: str = "127.0.0.1"
    rest_api_port: int = 0  # 0 = off
    model_name: str | None = None  # with model_base_path, one model
    model_base_path: str | None = None
    model_config_file: str | None = None  # text-format ModelServerConfig
    model_config_file_poll_wait_seconds: float = 0.0  # 0 = read once
    file_system_poll_wait_seconds: float = 1.0  # <= 0: scan once
    max_num_load_retries: int = 5  # retries of a failed version load, as TF Serving
    load_retry_interval_micros: int = 60_000_000  # between those retries; negative: no wait
    enable_batching: bool = False
    batching_parameters_file: str | None = None
    monitoring_config_file: str | None = None
    grpc_max_threads: int | None = None  # None: see grpc_threads()
    tensorflow_intra_op_parallelism: int = 0  # threads per op (matmul, conv); 0: TensorFlow picks
    tensorflow_inter_op_parallelism: int = 0  # threads for independent ops; 0: TensorFlow picks
    mixed_precision: str = ""  # "bfloat16": run float32 graphs' matmuls and convolutions in bfloat16
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_image_bytes: int = predict.DEFAULT_MAX_IMAGE_BYTES
    max_image_pixels: int = predict.DEFAULT_MAX_IMAGE_PIXELS
    max_tensor_bytes: int = predict.DEFAULT_MAX_TENSOR_BYTES
    tls_cert: str | None = None  # PEM files; both or neither
    tls_key: str | None = None
    ssl_config_file: str | None = None  # text-format SSLConfig: TF Serving's way to TLS (and mutual TLS)
    grpc_socket_path: str = ""  # also serve gRPC on this Unix socket
    grpc_channel_arguments: str = ""  # "key=value,...": gRPC server arguments, ints where they parse
    rest_api_timeout_in_ms: int = 30_000  # REST requests' deadline; <= 0: none
    allow_version_labels_for_unavailable_models: bool = False
    enable_signature_method_name_check: bool = False
    enable_model_warmup: bool = True  # replay assets.extra/tf_serving_warmup_requests before serving
    num_request_iterations_for_warmup: int = 1  # times each warmup record is replayed
    saved_model_tags: str = models.SERVE_TAG  # comma-separated tags of the meta graph to load

    def __post_init__(self) -> None:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("TLS needs both --tls-cert and --tls-key")
        if self.tls_cert and self.ssl_config_file:
            raise ValueError("--ssl_config_file and --tls-cert/--tls-key are alternatives; give one")
        _channel_arguments(self.grpc_channel_arguments)  # refuse a malformed list before anything starts
        for name in ("port", "rest_api_port"):
            if not 0 <= getattr(self, name) < 65536:
                raise ValueError(f"--{name} must be between 0 and 65535")
        if self.mixed_precision not in models.MIXED_PRECISION_MODES:
            raise ValueError(f"--mixed_precision must be bfloat16 or empty, not {self.mixed_precision!r}")

    def model_server_config(self) -> model_server_config_pb2.ModelServerConfig:
        """The initial ModelServerConfig these settings describe; ValueError if contradictory."""
        if self.model_config_file and self.model_base_path:
            raise ValueError("--model_config_file and --model_base_path are mutually exclusive")
        if self.model_config_file:
            return models.read_config_file(self.model_config_file)
        if not self.model_base_path:
            raise ValueError("one of --model_base_path or --model_config_file is required")
        base_path = os.path.abspath(self.model_base_path)
        return models.single_model_config(self.model_name or DEFAULT_MODEL_NAME, base_path)

    def grpc_threads(self, batching_params: batching.BatchingParameters | None) -> int:
        """Worker threads: as given, else 4 per core (TF Serving's default), and with batching
        at least one full batch of waiting requests (each waits on a thread here)."""
        if self.grpc_max_threads:
            return self.grpc_max_threads
        threads = 4 * (os.cpu_count() or 1)
        if batching_params is not None:
            threads = max(threads, min(batching_params.max_batch_size, MAX_AUTO_THREADS))
        return threads

    def limits(self) -> predict.Limits:
        return predict.Limits(self.max_image_bytes, self.max_image_pixels, self.max_tensor_bytes)

    def server_credentials(self) -> grpc.ServerCredentials | None:
        """TLS for the gRPC port from --ssl_config_file or --tls-cert/--tls-key; None: plaintext.

        With SSLConfig's ``client_verify`` a client must present a certificate signed by ``custom_ca``.
        """
        if self.tls_cert:
            key, cert = Path(self.tls_key).read_bytes(), Path(self.tls_cert).read_bytes()
            return grpc.ssl_server_credentials([(key, cert)])
        if not self.ssl_config_file:
            return None
        ssl = read_ssl_config(self.ssl_config_file)
        try:
            return grpc.ssl_server_credentials(
                [(ssl.server_key.encode(), ssl.server_cert.encode())],
                root_certificates=ssl.custom_ca.encode() or None,
                require_client_auth=ssl.client_verify,
            )
        except (ValueError, TypeError) as error:
            raise ValueError(f"bad SSL config {self.ssl_config_file}: {error}") from None


# tensorflow.serving.SSLConfig (ssl_config.proto), which tensorflow-serving-api does not ship.
_SSL_SCHEMA = """
name: "fmnist/ssl_config.proto" package: "tensorflow.serving" syntax: "proto3"
message_type {
  name: "SSLConfig"
  field { name: "server_key" number: 1 label: LABEL_OPTIONAL type: TYPE_STRING }
  field { name: "server_cert" number: 2 label: LABEL_OPTIONAL type: TYPE_STRING }
  field { name: "custom_ca" number: 3 label: LABEL_OPTIONAL type: TYPE_STRING }
  field { name: "client_verify" number: 4 label: LABEL_OPTIONAL type: TYPE_BOOL }
}
"""
SSLConfig = protos.message_class(_SSL_SCHEMA, "tensorflow.serving.SSLConfig")


def read_ssl_config(path: str | os.PathLike):
    """Parse a text-format SSLConfig (``--ssl_config_file``); ValueError naming the problem."""
    return protos.parse_text_file(path, SSLConfig())


def _channel_arguments(text: str) -> list[tuple[str, int | str]]:
    """``--grpc_channel_arguments``: comma-separated key=value pairs; a value that parses as an
    int is passed as one, as TF Serving does, and gRPC ignores keys it does not know."""
    arguments = []
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--grpc_channel_arguments: expected key=value, got {item!r}")
        try:
            arguments.append((key.strip(), int(value)))
        except ValueError:
            arguments.append((key.strip(), value))
    return arguments


class ServingCore:
    """The protocol-independent request handlers behind both the gRPC and the REST front end.

    Each raises ServingError with TF Serving's code and message.
    ``check_method_names`` is ``--enable_signature_method_name_check``.
    """

    def __init__(
        self,
        manager: models.ModelManager,
        limits: predict.Limits,
        scheduler: batching.BatchScheduler | None,
        monitor: metrics.Metrics,
        check_method_names: bool = False,
    ):
        self.manager = manager
        self.limits = limits
        self.scheduler = scheduler
        self.metrics = monitor
        self.check_method_names = check_method_names

    def _resolve(self, spec: model_pb2.ModelSpec, timeout: float | None) -> models.LoadedVersion:
        if timeout is not None and timeout <= 0:
            raise ServingError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
        return self.manager.resolve(spec)

    def _run(
        self, version: models.LoadedVersion, signature: predict.Signature, inputs: dict, timeout: float | None
    ) -> dict[str, np.ndarray]:
        """Run validated inputs, through the batch scheduler when batching is on."""
        if self.scheduler is None:
            return signature.run(inputs)
        return self.scheduler.run((version.name, version.version), signature, inputs, timeout)

    def predict(self, request: predict_pb2.PredictRequest, timeout: float | None) -> predict_pb2.PredictResponse:
        _require_model_spec(request)
        version = self._resolve(request.model_spec, timeout)
        signature = predict.find_signature(version.signatures, request.model_spec.signature_name)
        if self.check_method_names:
            predict.check_method_name(signature.definition)
        inputs, aliases = predict.prepare(signature, request, self.limits)
        outputs = self._run(version, signature, inputs, timeout)
        response = predict.make_response(request.model_spec.name, version.version, signature.key, outputs, aliases)
        self.manager.request_logs.log("predict", request, response)
        return response

    def classify(
        self, request: classification_pb2.ClassificationRequest, timeout: float | None
    ) -> classification_pb2.ClassificationResponse:
        return self._on_examples(
            "classify",
            request,
            timeout,
            inference.check_classification,
            classification_pb2.ClassificationResponse(),
            inference.classification_result,
        )

    def regress(
        self, request: regression_pb2.RegressionRequest, timeout: float | None
    ) -> regression_pb2.RegressionResponse:
        return self._on_examples(
            "regress",
            request,
            timeout,
            inference.check_regression,
            regression_pb2.RegressionResponse(),
            inference.regression_result,
        )

    def _on_examples(self, kind: str, request, timeout: float | None, check: Callable, response, fill: Callable):
        """Classify or Regress: one signature over tf.Examples, its outputs into ``response.result``."""
        _require_model_spec(request)
        version = self._resolve(request.model_spec, timeout)
        signature = inference.find_signature(version.signatures, request.model_spec.signature_name)
        check(signature.definition, self.check_method_names)
        examples = inference.serialized_examples(request.input)
        inference.check_examples_input(signature.definition)
        outputs = self._run(version, signature, {inference.INPUTS: examples}, timeout)
        inference.model_spec(request.model_spec.name, signature.key, version.version, response.model_spec)
        fill(outputs, len(examples), response.result)
        self.manager.request_logs.log(kind, request, response)
        return response

    def multi_inference(
        self, request: inference_pb2.MultiInferenceRequest, timeout: float | None
    ) -> inference_pb2.MultiInferenceResponse:
        """Classify and regress tasks on one model over the same examples (multi_inference.cc's checks).

        Each task's signature runs as its own call over the shared examples, where TF Serving
        fetches the union of their outputs in one session run: the same answers for any
        stateless graph.
        """
        first = request.tasks[0].model_spec if request.tasks else model_pb2.ModelSpec()
        version = self._resolve(first, timeout)
        checks = {
            inference.CLASSIFY_METHOD: inference.check_classification,
            inference.REGRESS_METHOD: inference.check_regression,
        }
        plan, keys, input_tensor = [], set(), None
        for task in request.tasks:
            if not task.model_spec.name:
                raise predict.invalid("Found ModelSpec with an empty model name.")
            if task.model_spec.name != first.name:
                raise predict.invalid("All ModelSpecs in a MultiInferenceRequest must access the same model name.")
            key = task.model_spec.signature_name or predict.DEFAULT_SIGNATURE
            if key in keys:
                raise predict.invalid(f"Duplicate evaluation of signature: {key}")
            keys.add(key)
            if key not in version.signatures:
                raise predict.invalid(f"Requested signature not found in model graph: {key}")
            if task.method_name not in checks:
                raise ServingError(
                    grpc.StatusCode.UNIMPLEMENTED, f"Unsupported signature method_name: {task.method_name}"
                )
            signature = version.signatures[key]
            checks[task.method_name](signature.definition, self.check_method_names)
            tensor = signature.definition.inputs[inference.INPUTS].name
            if input_tensor not in (None, tensor):
                raise predict.invalid("Input tensor must be the same for all Signatures.")
            input_tensor = tensor
            plan.append((task, signature))
        examples = inference.serialized_examples(request.input)
        inference.check_examples_input(plan[0][1].definition)  # every task shares this input
        response = inference_pb2.MultiInferenceResponse()
        for task, signature in plan:
            outputs = self._run(version, signature, {inference.INPUTS: examples}, timeout)
            result = response.results.add()
            inference.model_spec(task.model_spec.name, signature.key, version.version, result.model_spec)
            if task.method_name == inference.CLASSIFY_METHOD:
                inference.classification_result(outputs, len(examples), result.classification_result)
            else:
                inference.regression_result(outputs, len(examples), result.regression_result)
        self.manager.request_logs.log("multi_inference", request, response)
        return response

    def metadata(
        self, request: get_model_metadata_pb2.GetModelMetadataRequest
    ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        _require_model_spec(request)
        if not request.metadata_field:
            raise predict.invalid("GetModelMetadataRequest must specify at least one metadata_field")
        for field in request.metadata_field:
            if field != SIGNATURE_DEF_FIELD:
                raise predict.invalid(f"Metadata field {field} is not supported")
        version = self.manager.resolve(request.model_spec)
        signature_defs = get_model_metadata_pb2.SignatureDefMap()
        for key, definition in version.signature_defs.items():
            signature_defs.signature_def[key].CopyFrom(definition)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = version.version
        response.metadata[SIGNATURE_DEF_FIELD].Pack(signature_defs)
        return response

    def status(
        self, request: get_model_status_pb2.GetModelStatusRequest
    ) -> get_model_status_pb2.GetModelStatusResponse:
        _require_model_spec(request)
        spec = request.model_spec
        choice = spec.WhichOneof("version_choice")
        if choice == "version":
            version = spec.version.value
        elif choice == "version_label":
            version = self.manager.label_version(spec.name, spec.version_label)
        else:
            version = None
        response = get_model_status_pb2.GetModelStatusResponse()
        for number, status in self.manager.statuses(spec.name, version):
            entry = response.model_version_status.add(version=number, state=status.state)
            entry.status.error_code = status.error_code.value[0]
            entry.status.error_message = status.error_message
        return response

    def reload(self, request: model_management_pb2.ReloadConfigRequest) -> model_management_pb2.ReloadConfigResponse:
        self.manager.reload(request.config)
        return model_management_pb2.ReloadConfigResponse()


def _require_model_spec(request) -> None:
    """Every TF Serving API but MultiInference refuses a request without a ModelSpec first."""
    if not request.HasField("model_spec"):
        raise predict.invalid("Missing ModelSpec")


def _serve(api: str, model_of: Callable, handler: Callable) -> Callable:
    """A gRPC method from a core handler: ServingError → the status TF Serving sends, plus metrics."""

    def method(self, request, context: grpc.ServicerContext):
        started = time.perf_counter()
        code, message, response = grpc.StatusCode.OK, "", None
        try:
            response = handler(self.core, request, context)
        except ServingError as error:
            code, message = error.code, error.message
        except Exception as error:  # no request may take the server down
            log.exception("%s failed", api)
            code, message = grpc.StatusCode.INTERNAL, f"{type(error).__name__}: {error}"
        self.core.metrics.observe_request(model_of(request), api, code.name, time.perf_counter() - started)
        if code is not grpc.StatusCode.OK:
            context.abort(code, message)
        return response

    return method


class _PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, core: ServingCore):
        self.core = core

    Predict = _serve("Predict", lambda r: r.model_spec.name, lambda core, r, ctx: core.predict(r, ctx.time_remaining()))
    Classify = _serve(
        "Classify", lambda r: r.model_spec.name, lambda core, r, ctx: core.classify(r, ctx.time_remaining())
    )
    Regress = _serve("Regress", lambda r: r.model_spec.name, lambda core, r, ctx: core.regress(r, ctx.time_remaining()))
    MultiInference = _serve(
        "MultiInference",
        lambda r: r.tasks[0].model_spec.name if r.tasks else "",
        lambda core, r, ctx: core.multi_inference(r, ctx.time_remaining()),
    )
    GetModelMetadata = _serve("GetModelMetadata", lambda r: r.model_spec.name, lambda core, r, ctx: core.metadata(r))


class _ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, core: ServingCore):
        self.core = core

    GetModelStatus = _serve("GetModelStatus", lambda r: r.model_spec.name, lambda core, r, ctx: core.status(r))
    HandleReloadConfigRequest = _serve("HandleReloadConfigRequest", lambda r: "", lambda core, r, ctx: core.reload(r))


class Server:
    """A running server: ``port`` (bound gRPC port), ``rest_port``, ``stop()``, ``wait()``."""

    def __init__(
        self,
        grpc_server: grpc.Server,
        port: int,
        core: ServingCore,
        health_servicer: health.HealthServicer,
        rest_server=None,
    ):
        self.port = port
        self.core = core
        self._grpc = grpc_server
        self._health = health_servicer
        self._rest = rest_server
        self.rest_port = rest_server.port if rest_server is not None else 0
        self.stopping = threading.Event()  # set as stop() begins; background loops end on it
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()
        self.config_watcher: threading.Thread | None = None

    def stop(self, grace: float | None = 5.0) -> None:
        """Stop accepting, let in-flight requests finish for up to ``grace`` seconds, unload models."""
        with self._stop_lock:
            if self._stopped.is_set():
                return
            log.info("Stopping server (grace %s s)", grace)
            self.stopping.set()
            self._health.enter_graceful_shutdown()
            if self._rest is not None:
                self._rest.stop()
            self._grpc.stop(grace).wait()
            if self.core.scheduler is not None:
                self.core.scheduler.stop()
            self.core.manager.stop()
            self.core.manager.request_logs.close()  # after the last request: every sampled one is written
            self._stopped.set()
        if self.config_watcher is not None:
            self.config_watcher.join()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until stopped (True) or ``timeout`` passes (False)."""
        return self._stopped.wait(timeout)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _bind(server: grpc.Server, config: ServerConfig) -> int:
    """Bind the gRPC port (TLS if configured) and, with --grpc_socket_path, a Unix socket."""
    address = _address(config.host, config.port)
    credentials = config.server_credentials()
    try:
        if credentials is not None:
            port = server.add_secure_port(address, credentials)
        else:
            port = server.add_insecure_port(address)
        if config.grpc_socket_path:  # local clients only, so plaintext, as in TF Serving
            server.add_insecure_port(f"unix:{config.grpc_socket_path}")
    except RuntimeError as error:
        raise OSError(f"cannot bind gRPC to {address}: {error}") from None
    if not port:
        raise OSError(f"cannot bind gRPC to {address}")
    return port


def _watch_config_file(
    path: str, wait_seconds: float, manager: models.ModelManager, stopped: threading.Event
) -> threading.Thread:
    """Re-read ``--model_config_file`` every period and reload it when its content changed."""

    def watch() -> None:
        last = Path(path).read_text()
        while not stopped.wait(wait_seconds):
            try:
                text = Path(path).read_text()
                if text != last:
                    last = text
                    log.info("Model config file %s changed; reloading", path)
                    manager.reload(models.read_config_file(path))
            except (OSError, ValueError, ServingError) as error:
                log.error("Cannot reload model config file %s: %s", path, error)

    thread = threading.Thread(target=watch, name="config-watcher", daemon=True)
    thread.start()
    return thread


def start(
    config: ServerConfig,
    *,
    loader: models.Loader | None = None,
    warmup: Callable[[models.LoadedVersion, predict.Limits], int] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Server:
    """Load the initial versions, then start serving; returns the running Server.

    ``loader`` defaults to :func:`models.load_saved_model` with the config's thread settings,
    ``warmup`` to :func:`models.replay_warmup` (none with ``enable_model_warmup`` off).

    Raises ValueError for a bad configuration and OSError when a port cannot be bound.
    A version that fails to load does not stop the start: its status says why.
    """
    initial = config.model_server_config()
    params = None
    if config.enable_batching:
        params = (
            batching.read_batching_parameters(config.batching_parameters_file)
            if config.batching_parameters_file
            else batching.BatchingParameters()
        )
    monitoring = (
        metrics.read_monitoring_config(config.monitoring_config_file)
        if config.monitoring_config_file
        else metrics.MonitoringConfig()
    )
    monitor = metrics.Metrics()
    health_servicer = health.HealthServicer()

    def on_change(model: str, versions: list[int]) -> None:
        serving = health_pb2.HealthCheckResponse.SERVING if versions else health_pb2.HealthCheckResponse.NOT_SERVING
        health_servicer.set(model, serving)
        monitor.set_versions(model, versions)

    if warmup is None:
        warmup = (
            functools.partial(models.replay_warmup, iterations=config.num_request_iterations_for_warmup)
            if config.enable_model_warmup
            else _no_warmup
        )
    if loader is None:
        loader = functools.partial(
            models.load_saved_model,
            intra_op_threads=config.tensorflow_intra_op_parallelism,
            inter_op_threads=config.tensorflow_inter_op_parallelism,
            mixed_precision=config.mixed_precision,
            tags=tuple(tag.strip() for tag in config.saved_model_tags.split(",") if tag.strip()),
        )
    manager = models.ModelManager(
        request_logs=request_log.RequestLogs(on_drop=monitor.observe_log_dropped),
        loader=loader,
        warmup=warmup,
        limits=config.limits(),
        on_change=on_change,
        max_num_load_retries=config.max_num_load_retries,
        load_retry_interval_micros=config.load_retry_interval_micros,
        allow_version_labels_for_unavailable_models=config.allow_version_labels_for_unavailable_models,
    )
    for entry in initial.model_config_list.config:
        health_servicer.set(entry.name, health_pb2.HealthCheckResponse.NOT_SERVING)
    try:
        manager.reload(initial)
    except ServingError as error:
        manager.stop()
        raise ValueError(error.message) from None
    scheduler = batching.BatchScheduler(params, clock=clock, on_batch=monitor.observe_batch) if params else None
    core = ServingCore(manager, config.limits(), scheduler, monitor, config.enable_signature_method_name_check)

    options = [
        *_channel_arguments(config.grpc_channel_arguments),
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=config.grpc_threads(params)), options=options)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(_PredictionService(core), grpc_server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(_ModelService(core), grpc_server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, grpc_server)
    rest_server = None
    try:
        port = _bind(grpc_server, config)
        if config.rest_api_port:
            from fmnist.serving import rest  # only servers with REST pay for it

            timeout = config.rest_api_timeout_in_ms / 1000 if config.rest_api_timeout_in_ms > 0 else None
            rest_server = rest.RestServer(
                core, config.host, config.rest_api_port, monitoring, config.max_message_bytes, timeout
            )
    except (OSError, ValueError):
        grpc_server.stop(None)
        if scheduler is not None:
            scheduler.stop()
        manager.stop()
        raise
    grpc_server.start()
    if rest_server is not None:
        rest_server.start()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    manager.start_polling(config.file_system_poll_wait_seconds)
    server = Server(grpc_server, port, core, health_servicer, rest_server)
    if config.model_config_file and config.model_config_file_poll_wait_seconds > 0:
        server.config_watcher = _watch_config_file(
            config.model_config_file, config.model_config_file_poll_wait_seconds, manager, server.stopping
        )
    log.info("Running gRPC ModelServer at %s ...", _address(config.host, port))
    if rest_server is not None:
        log.info("Exporting HTTP/REST API at %s ...", _address(config.host, rest_server.port))
    return server


def _no_warmup(version: models.LoadedVersion, limits: predict.Limits) -> int:
    return 0


def run(config: ServerConfig) -> int:
    """Serve until SIGTERM/SIGINT, then stop gracefully; returns 0."""
    server = start(config)
    requested = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: requested.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        while not requested.wait(0.5) and not server.wait(0):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.stop()
    return 0


# -- command line ---------------------------------------------------------------

# tensorflow_model_server's tuning hints: how many threads, caches, GPU memory. The embedded
# server has nothing they would tune, so it takes them (one command line serves both) and logs
# once that it ignores them.
_HINT_FLAGS = {
    "rest_api_num_threads": "threads of the REST server (here: one per connection)",
    "num_load_threads": "threads loading versions (here: one load at a time)",
    "num_unload_threads": "threads unloading versions",
    "flush_filesystem_caches": "flush file-system caches after the initial load",
    "tensorflow_session_parallelism": "both TensorFlow thread pools at once (use the intra/inter_op flags)",
    "per_process_gpu_memory_fraction": "GPU memory share (the embedded server runs on the CPU)",
    "remove_unused_fields_from_bundle_metagraph": "memory saved by trimming the loaded MetaGraphDef",
    "xla_cpu_compilation_enabled": "XLA JIT on the CPU",
}

# Flags that tensorflow_model_server itself understands, passed through to it as given.
_REAL_FLAGS = (
    "port",
    "rest_api_port",
    "model_name",
    "model_base_path",
    "model_config_file",
    "model_config_file_poll_wait_seconds",
    "file_system_poll_wait_seconds",
    "max_num_load_retries",
    "load_retry_interval_micros",
    "enable_batching",
    "batching_parameters_file",
    "monitoring_config_file",
    "grpc_max_threads",
    "tensorflow_intra_op_parallelism",
    "tensorflow_inter_op_parallelism",
    "mixed_precision",
    "ssl_config_file",
    "grpc_socket_path",
    "grpc_channel_arguments",
    "rest_api_timeout_in_ms",
    "allow_version_labels_for_unavailable_models",
    "enable_signature_method_name_check",
    "enable_model_warmup",
    "num_request_iterations_for_warmup",
    "saved_model_tags",
    *tuple(_HINT_FLAGS),
)


def _bool_flag(text: str) -> bool:
    """A boolean flag's value as tensorflow_model_server spells it (true/false/1/0)."""
    value = {"true": True, "1": True, "false": False, "0": False}.get(text.lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return value


def _parser(prog: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Serve SavedModels over TensorFlow Serving's gRPC (and REST) API. "
        f"Runs {TF_SERVING_BINARY} instead when it is on PATH or --use-tf-serving is given.",
    )
    tf_flags = parser.add_argument_group("tensorflow_model_server flags (same names and meanings)")
    tf_flags.add_argument("--port", type=int, default=names.GRPC_PORT, help="gRPC port (0: any free port)")
    tf_flags.add_argument("--rest_api_port", type=int, default=0, help="REST/metrics port (0: off)")
    tf_flags.add_argument("--model_name", default=DEFAULT_MODEL_NAME, help="name of the single model")
    tf_flags.add_argument("--model_base_path", help="directory holding the model's numeric version directories")
    tf_flags.add_argument(
        "--model_config_file", help="text-format ModelServerConfig (several models, policies, labels)"
    )
    tf_flags.add_argument(
        "--model_config_file_poll_wait_seconds",
        type=float,
        default=0.0,
        help="re-read the config file this often (0: once)",
    )
    tf_flags.add_argument(
        "--file_system_poll_wait_seconds", type=float, default=1.0, help="scan for new/removed versions this often"
    )
    tf_flags.add_argument(
        "--max_num_load_retries", type=int, default=5, help="retries of a failed version load (0: try once)"
    )
    tf_flags.add_argument(
        "--load_retry_interval_micros", type=int, default=60_000_000, help="wait between load retries (negative: none)"
    )
    tf_flags.add_argument(
        "--enable_batching",
        nargs="?",
        const=True,
        default=False,
        type=_bool_flag,
        metavar="BOOL",
        help="batch concurrent requests (--enable_batching or --enable_batching=true, as the real server takes it)",
    )
    tf_flags.add_argument("--batching_parameters_file", help="text-format BatchingParameters")
    tf_flags.add_argument("--monitoring_config_file", help="text-format MonitoringConfig (Prometheus path)")
    tf_flags.add_argument("--grpc_max_threads", type=int, help="gRPC worker threads (default: 4 per core)")
    tf_flags.add_argument(
        "--tensorflow_intra_op_parallelism",
        type=int,
        default=0,
        metavar="N",
        help="threads one op may use (0: TensorFlow picks; 1 suits small models under concurrent load)",
    )
    tf_flags.add_argument(
        "--tensorflow_inter_op_parallelism",
        type=int,
        default=0,
        metavar="N",
        help="threads for independent ops of a graph (0: TensorFlow picks)",
    )
    tf_flags.add_argument(
        "--rest_api_timeout_in_ms", type=int, default=30_000, help="REST request deadline (<= 0: none)"
    )
    tf_flags.add_argument("--grpc_socket_path", default="", help="also serve gRPC on this Unix socket")
    tf_flags.add_argument(
        "--grpc_channel_arguments",
        default="",
        metavar="K=V,...",
        help="gRPC server arguments, e.g. grpc.max_connection_age_ms=2000",
    )
    tf_flags.add_argument(
        "--ssl_config_file", help="text-format SSLConfig: server_key, server_cert, custom_ca, client_verify"
    )
    for flag, help_text in (
        ("allow_version_labels_for_unavailable_models", "a new version label may name a version not yet loaded"),
        ("enable_signature_method_name_check", "Predict/Classify/Regress check the signature's method_name"),
    ):
        tf_flags.add_argument(
            f"--{flag}", nargs="?", const=True, default=False, type=_bool_flag, metavar="BOOL", help=help_text
        )
    tf_flags.add_argument(
        "--enable_model_warmup",
        nargs="?",
        const=True,
        default=True,
        type=_bool_flag,
        metavar="BOOL",
        help="replay assets.extra/tf_serving_warmup_requests before a version serves (default true)",
    )
    tf_flags.add_argument(
        "--num_request_iterations_for_warmup",
        type=int,
        default=1,
        metavar="N",
        help="replay each warmup record N times",
    )
    tf_flags.add_argument(
        "--saved_model_tags",
        default=models.SERVE_TAG,
        metavar="TAGS",
        help="comma-separated tags of the meta graph to load (default serve)",
    )
    for flag, meaning in _HINT_FLAGS.items():
        tf_flags.add_argument(f"--{flag}", metavar="VALUE", help=f"accepted and ignored: {meaning}")
    tf_flags.add_argument(
        "--mixed_precision",
        default="",
        choices=models.MIXED_PRECISION_MODES,
        metavar="MODE",
        help="bfloat16: run matmuls and convolutions in bfloat16 (pays on CPUs with "
        "AVX512-BF16 or AMX: about 1.5x the cnn's throughput here); default off",
    )
    ours = parser.add_argument_group("embedded server only")
    ours.add_argument("--host", default="127.0.0.1", help="interface to bind (0.0.0.0 to expose)")
    ours.add_argument("--use-tf-serving", action="store_true", help=f"run {TF_SERVING_BINARY} (must be on PATH)")
    ours.add_argument("--max-message-bytes", type=int, default=DEFAULT_MAX_MESSAGE_BYTES, help="largest gRPC message")
    ours.add_argument(
        "--max-image-bytes", type=int, default=predict.DEFAULT_MAX_IMAGE_BYTES, help="largest encoded image"
    )
    ours.add_argument(
        "--max-image-pixels",
        type=int,
        default=predict.DEFAULT_MAX_IMAGE_PIXELS,
        help="largest image a header may claim",
    )
    ours.add_argument(
        "--max-tensor-bytes", type=int, default=predict.DEFAULT_MAX_TENSOR_BYTES, help="largest decoded input tensor"
    )
    ours.add_argument("--tls-cert", help="PEM certificate chain (with --tls-key: serve gRPC over TLS)")
    ours.add_argument("--tls-key", help="PEM private key")
    ours.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


def _tf_serving_argv(binary: str, args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[str]:
    """The real binary's command line: its own flags as given, TLS as an --ssl_config_file."""
    argv = [binary]
    for flag in _REAL_FLAGS:
        value = getattr(args, flag)
        if value != parser.get_default(flag) or flag == "port":
            argv.append(f"--{flag}={str(value).lower() if isinstance(value, bool) else value}")
    if args.tls_cert and args.tls_key:
        ssl_config = Path(tempfile.mkdtemp(prefix="fmnist-ssl-")) / "ssl.config"
        ssl_config.write_text(
            f"server_key: {Path(args.tls_key).read_text()!r}\nserver_cert: {Path(args.tls_cert).read_text()!r}\n"
        )
        argv.append(f"--ssl_config_file={ssl_config}")
    return argv


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = _parser(prog)
    args = parser.parse_args(argv)
    name = parser.prog
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    binary = shutil.which(TF_SERVING_BINARY)
    if args.use_tf_serving or binary:
        if not binary:
            print(f"{name}: error: --use-tf-serving given but {TF_SERVING_BINARY} is not on PATH", file=sys.stderr)
            return 2
        command = _tf_serving_argv(binary, args, parser)
        log.info("Running %s", " ".join(command))
        os.execv(binary, command)
    for flag in _HINT_FLAGS:
        if getattr(args, flag) is not None:
            log.info("--%s is a tuning hint of %s; the embedded server ignores it", flag, TF_SERVING_BINARY)
    try:
        return run(_config_from(args))
    except (ValueError, OSError) as error:
        print(f"{name}: error: {error}", file=sys.stderr)
        return 1


def _config_from(args: argparse.Namespace) -> ServerConfig:
    """Every ServerConfig field is a flag with the same destination name."""
    return ServerConfig(**{field.name: getattr(args, field.name) for field in dataclasses.fields(ServerConfig)})


if __name__ == "__main__":
    sys.exit(main())
