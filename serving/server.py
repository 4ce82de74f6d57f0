"""Start-up of the embedded TensorFlow-Serving-conformant model server: :func:`start` and the running :class:`Server`.

TF Serving's ``Server::BuildAndStart`` (model_servers/server.cc): from a
:class:`~fmnist.serving.config.ServerConfig`, load the initial versions,
start the batch scheduler, register the gRPC services
(:mod:`fmnist.serving.grpc_services`) and the health service, bind the gRPC
port (with TLS, and a Unix socket if asked), start the REST server
(:mod:`fmnist.serving.rest`) and the file-system and config-file polling.
The server speaks TF Serving's gRPC API and, with ``rest_api_port``, its REST
API and Prometheus metrics, with the same directory rules, version policies,
batching parameters, status codes and messages, so a client written for TF
Serving works unchanged against it. The command line is :mod:`fmnist.serving.serve`.

Usage::

    server = start(ServerConfig(port=0, model_name="m", model_base_path="/models/m"))
    ...; server.stop()

Ownership: a :class:`Server` owns all that :func:`start` made (the gRPC and
REST servers, the batch scheduler, the model manager and its request logs, the
config-file watcher) and :meth:`Server.stop` releases them, in that order.

Thread safety: :meth:`Server.stop` may be called from any thread, more than
once; requests run on gRPC's and the REST server's threads.
"""

from __future__ import annotations

import functools
import logging
import signal
import threading
import time
from collections.abc import Callable
from concurrent import futures
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

from fmnist.common import errors, imagefile
from fmnist.serving import batching, metrics, model_config, models, request_log
from fmnist.serving.config import ServerConfig, channel_arguments
from fmnist.serving.core import ServingCore
from fmnist.serving.grpc_services import ModelService, PredictionService
from fmnist.serving.loader import LoadedVersion, Loader, load_saved_model, replay_warmup

if TYPE_CHECKING:
    from fmnist.serving.rest import RestServer

log = logging.getLogger(__name__)


class Server:
    """A running server: ``port`` (bound gRPC port), ``rest_port``, ``stop()``, ``wait()``."""

    def __init__(
        self,
        grpc_server: grpc.Server,
        port: int,
        core: ServingCore,
        health_servicer: health.HealthServicer,
        rest_server: RestServer | None = None,
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


def _bind(server: grpc.Server, config: ServerConfig) -> int:
    """Bind the gRPC port (TLS if configured) and, with --grpc_socket_path, a Unix socket."""
    address = config.address(config.port)
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
                    manager.reload(model_config.read_config_file(path))
            except (OSError, ValueError, errors.ServingError) as error:
                log.error("Cannot reload model config file %s: %s", path, error)

    thread = threading.Thread(target=watch, name="config-watcher", daemon=True)
    thread.start()
    return thread


def start(
    config: ServerConfig,
    *,
    loader: Loader | None = None,
    warmup: Callable[[LoadedVersion, imagefile.Limits], int] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Server:
    """Load the initial versions, then start serving; returns the running Server.

    ``loader`` defaults to :func:`~fmnist.serving.loader.load_saved_model` with the config's thread settings,
    ``warmup`` to :func:`~fmnist.serving.loader.replay_warmup` (none with ``enable_model_warmup`` off).

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
            functools.partial(replay_warmup, iterations=config.num_request_iterations_for_warmup)
            if config.enable_model_warmup
            else _no_warmup
        )
    if loader is None:
        loader = functools.partial(
            load_saved_model,
            intra_op_threads=config.tensorflow_intra_op_parallelism,
            inter_op_threads=config.tensorflow_inter_op_parallelism,
            mixed_precision=config.mixed_precision,
            tags=config.saved_model_tag_set(),
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
    except errors.ServingError as error:
        manager.stop()
        raise ValueError(error.details) from None
    scheduler = batching.BatchScheduler(params, clock=clock, on_batch=monitor.observe_batch) if params else None
    core = ServingCore(manager, config.limits(), scheduler, monitor, config.enable_signature_method_name_check)

    options = [
        *channel_arguments(config.grpc_channel_arguments),
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=config.grpc_threads(params)), options=options)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(core), grpc_server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(core), grpc_server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, grpc_server)
    rest_server = None
    try:
        port = _bind(grpc_server, config)
        if config.rest_api_port:
            from fmnist.serving import rest  # only servers with REST pay for it

            timeout = config.rest_api_timeout_in_ms / 1000 if config.rest_api_timeout_in_ms > 0 else None
            try:
                rest_server = rest.RestServer(
                    core, config.host, config.rest_api_port, monitoring, config.max_message_bytes, timeout
                )
            except OSError as error:
                raise OSError(f"cannot bind REST to {config.address(config.rest_api_port)}: {error.strerror}") from None
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
    log.info("Running gRPC ModelServer at %s ...", config.address(port))
    if rest_server is not None:
        log.info("Exporting HTTP/REST API at %s ...", config.address(rest_server.port))
    return server


def _no_warmup(version: LoadedVersion, limits: imagefile.Limits) -> int:
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
