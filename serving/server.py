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
from concurrent import futures
from pathlib import Path
from typing import Callable

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from tensorflow_serving.config import model_server_config_pb2

from fmnist import names
from serving import batching, classification, metrics, models, predict
from serving.predict import ServingError

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

    def __post_init__(self) -> None:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("TLS needs both --tls-cert and --tls-key")
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


class ServingCore:
    """The protocol-independent request handlers behind both the gRPC and the REST front end.

    Each raises ServingError with TF Serving's code and message.
    """

    def __init__(
        self,
        manager: models.ModelManager,
        limits: predict.Limits,
        scheduler: batching.BatchScheduler | None,
        monitor: metrics.Metrics,
    ):
        self.manager = manager
        self.limits = limits
        self.scheduler = scheduler
        self.metrics = monitor

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
        version = self._resolve(request.model_spec, timeout)
        signature = predict.find_signature(version.signatures, request.model_spec.signature_name)
        inputs, aliases = predict.prepare(signature, request, self.limits)
        outputs = self._run(version, signature, inputs, timeout)
        return predict.make_response(request.model_spec.name, version.version, signature.key, outputs, aliases)

    def classify(
        self, request: classification_pb2.ClassificationRequest, timeout: float | None
    ) -> classification_pb2.ClassificationResponse:
        version = self._resolve(request.model_spec, timeout)
        signature = classification.find_signature(version.signatures, request.model_spec.signature_name)
        examples = classification.serialized_examples(request.input)
        outputs = self._run(version, signature, {classification.INPUTS: examples}, timeout)
        return classification.make_response(request, version.version, outputs, len(examples))

    def metadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest) -> get_model_metadata_pb2.GetModelMetadataResponse:
        if not request.HasField("model_spec"):
            raise predict.invalid("Missing ModelSpec")
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

    def status(self, request: get_model_status_pb2.GetModelStatusRequest) -> get_model_status_pb2.GetModelStatusResponse:
        if not request.HasField("model_spec"):
            raise predict.invalid("Missing ModelSpec")
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
    Classify = _serve("Classify", lambda r: r.model_spec.name, lambda core, r, ctx: core.classify(r, ctx.time_remaining()))
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
            self._stopped.set()
        if self.config_watcher is not None:
            self.config_watcher.join()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until stopped (True) or ``timeout`` passes (False)."""
        return self._stopped.wait(timeout)

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _bind(server: grpc.Server, config: ServerConfig) -> int:
    address = _address(config.host, config.port)
    try:
        if config.tls_cert:
            key, cert = Path(config.tls_key).read_bytes(), Path(config.tls_cert).read_bytes()
            port = server.add_secure_port(address, grpc.ssl_server_credentials([(key, cert)]))
        else:
            port = server.add_insecure_port(address)
    except RuntimeError as error:
        raise OSError(f"cannot bind gRPC to {address}: {error}") from None
    if not port:
        raise OSError(f"cannot bind gRPC to {address}")
    return port


def _watch_config_file(path: str, wait_seconds: float, manager: models.ModelManager, stopped: threading.Event) -> threading.Thread:
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
    warmup: Callable[[models.LoadedVersion, predict.Limits], int] = models.replay_warmup,
    clock: Callable[[], float] = time.monotonic,
) -> Server:
    """Load the initial versions, then start serving; returns the running Server.

    ``loader`` defaults to :func:`models.load_saved_model` with the config's thread settings.

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

    if loader is None:
        loader = functools.partial(
            models.load_saved_model,
            intra_op_threads=config.tensorflow_intra_op_parallelism,
            inter_op_threads=config.tensorflow_inter_op_parallelism,
            mixed_precision=config.mixed_precision,
        )
    manager = models.ModelManager(
        loader=loader,
        warmup=warmup,
        limits=config.limits(),
        on_change=on_change,
        max_num_load_retries=config.max_num_load_retries,
        load_retry_interval_micros=config.load_retry_interval_micros,
    )
    for entry in initial.model_config_list.config:
        health_servicer.set(entry.name, health_pb2.HealthCheckResponse.NOT_SERVING)
    try:
        manager.reload(initial)
    except ServingError as error:
        manager.stop()
        raise ValueError(error.message) from None
    scheduler = batching.BatchScheduler(params, clock=clock, on_batch=monitor.observe_batch) if params else None
    core = ServingCore(manager, config.limits(), scheduler, monitor)

    options = [
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
            from serving import rest  # only servers with REST pay for it

            rest_server = rest.RestServer(core, config.host, config.rest_api_port, monitoring, config.max_message_bytes)
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
    tf_flags.add_argument("--model_config_file", help="text-format ModelServerConfig (several models, policies, labels)")
    tf_flags.add_argument("--model_config_file_poll_wait_seconds", type=float, default=0.0, help="re-read the config file this often (0: once)")
    tf_flags.add_argument("--file_system_poll_wait_seconds", type=float, default=1.0, help="scan for new/removed versions this often")
    tf_flags.add_argument("--max_num_load_retries", type=int, default=5, help="retries of a failed version load (0: try once)")
    tf_flags.add_argument("--load_retry_interval_micros", type=int, default=60_000_000, help="wait between load retries (negative: none)")
    tf_flags.add_argument(
        "--enable_batching", nargs="?", const=True, default=False, type=_bool_flag, metavar="BOOL",
        help="batch concurrent requests (--enable_batching or --enable_batching=true, as the real server takes it)",
    )
    tf_flags.add_argument("--batching_parameters_file", help="text-format BatchingParameters")
    tf_flags.add_argument("--monitoring_config_file", help="text-format MonitoringConfig (Prometheus path)")
    tf_flags.add_argument("--grpc_max_threads", type=int, help="gRPC worker threads (default: 4 per core)")
    tf_flags.add_argument("--tensorflow_intra_op_parallelism", type=int, default=0, metavar="N",
                          help="threads one op may use (0: TensorFlow picks; 1 suits small models under concurrent load)")
    tf_flags.add_argument("--tensorflow_inter_op_parallelism", type=int, default=0, metavar="N",
                          help="threads for independent ops of a graph (0: TensorFlow picks)")
    tf_flags.add_argument("--mixed_precision", default="", choices=models.MIXED_PRECISION_MODES, metavar="MODE",
                          help="bfloat16: run matmuls and convolutions in bfloat16 (pays on CPUs with "
                          "AVX512-BF16 or AMX: about 1.5x the cnn's throughput here); default off")
    ours = parser.add_argument_group("embedded server only")
    ours.add_argument("--host", default="127.0.0.1", help="interface to bind (0.0.0.0 to expose)")
    ours.add_argument("--use-tf-serving", action="store_true", help=f"run {TF_SERVING_BINARY} (must be on PATH)")
    ours.add_argument("--max-message-bytes", type=int, default=DEFAULT_MAX_MESSAGE_BYTES, help="largest gRPC message")
    ours.add_argument("--max-image-bytes", type=int, default=predict.DEFAULT_MAX_IMAGE_BYTES, help="largest encoded image")
    ours.add_argument("--max-image-pixels", type=int, default=predict.DEFAULT_MAX_IMAGE_PIXELS, help="largest image a header may claim")
    ours.add_argument("--max-tensor-bytes", type=int, default=predict.DEFAULT_MAX_TENSOR_BYTES, help="largest decoded input tensor")
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
