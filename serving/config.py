"""The embedded server's options: :class:`ServerConfig`, what ``fmnist serve``'s flags set.

TF Serving's ``Server::Options`` (model_servers/server.h): one frozen value,
checked when it is made, that start-up (:mod:`fmnist.serving.server`) reads
and nothing changes. Field names are tensorflow_model_server's flags, so
``--model_base_path`` is ``model_base_path``. Besides the fields, the config
derives what start-up needs from them: the initial ModelServerConfig, the
gRPC worker count, the request limits and the TLS credentials.

Nothing here starts TensorFlow, so ``fmnist serve`` refuses contradicting
flags before it pays for that.

Usage::

    config = ServerConfig(port=0, model_name="m", model_base_path="/models/m")  # ValueError: flags contradict
    initial = config.model_server_config()      # ValueError when the config file does not parse

Thread safety: immutable.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from fmnist.common import imagefile, names
from fmnist.serving import model_config, protos

if TYPE_CHECKING:
    from fmnist.common.apis import model_server_config_pb2
    from fmnist.serving.batching import BatchingParameters

DEFAULT_MODEL_NAME = "default"  # tensorflow_model_server's --model_name default
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
MAX_AUTO_THREADS = 256
SERVE_TAG = "serve"  # --saved_model_tags' default: the meta graph a SavedModel serves from
MIXED_PRECISION_MODES = ("", "bfloat16")  # TF Serving's --mixed_precision values ("": off)


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """Everything ``fmnist serve`` accepts; field names follow tensorflow_model_server's flags."""

    port: int = names.GRPC_PORT  # 0 = pick a free port
    host: str = "127.0.0.1"  # fmnist serve's --host defaults to all interfaces, as tensorflow_model_server
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
    max_image_bytes: int = names.MAX_IMAGE_BYTES
    max_image_pixels: int = names.MAX_IMAGE_PIXELS
    max_tensor_bytes: int = imagefile.DEFAULT_MAX_TENSOR_BYTES
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
    saved_model_tags: str = SERVE_TAG  # comma-separated tags of the meta graph to load

    def __post_init__(self) -> None:
        if self.model_config_file and self.model_base_path:
            raise ValueError("--model_config_file and --model_base_path are mutually exclusive")
        if not self.model_config_file and not self.model_base_path:
            raise ValueError("one of --model_base_path or --model_config_file is required")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("TLS needs both --tls-cert and --tls-key")
        if self.tls_cert and self.ssl_config_file:
            raise ValueError("--ssl_config_file and --tls-cert/--tls-key are alternatives; give one")
        channel_arguments(self.grpc_channel_arguments)  # refuse a malformed list before anything starts
        for name in ("port", "rest_api_port"):
            if not 0 <= getattr(self, name) < 65536:
                raise ValueError(f"--{name} must be between 0 and 65535")
        if self.rest_api_port and self.rest_api_port == self.port:
            raise ValueError("--rest_api_port cannot be the same as --port")
        if self.mixed_precision not in MIXED_PRECISION_MODES:
            raise ValueError(f"--mixed_precision must be bfloat16 or empty, not {self.mixed_precision!r}")

    def model_server_config(self) -> model_server_config_pb2.ModelServerConfig:
        """The initial ModelServerConfig these settings describe; ValueError if the config file does not parse."""
        if self.model_config_file:
            return model_config.read_config_file(self.model_config_file)
        base_path = os.path.abspath(self.model_base_path)
        return model_config.single_model_config(self.model_name or DEFAULT_MODEL_NAME, base_path)

    def grpc_threads(self, batching_params: BatchingParameters | None) -> int:
        """Worker threads: as given, else 4 per core (TF Serving's default), and with batching
        at least one full batch of waiting requests (each waits on a thread here)."""
        if self.grpc_max_threads:
            return self.grpc_max_threads
        threads = 4 * (os.cpu_count() or 1)
        if batching_params is not None:
            threads = max(threads, min(batching_params.max_batch_size, MAX_AUTO_THREADS))
        return threads

    def limits(self) -> imagefile.Limits:
        """What a request may make the server decode (``--max-image-bytes``, ``-pixels``, ``--max-tensor-bytes``)."""
        return imagefile.Limits(self.max_image_bytes, self.max_image_pixels, self.max_tensor_bytes)

    def saved_model_tag_set(self) -> tuple[str, ...]:
        """``--saved_model_tags`` as the loader takes them: comma-separated, blanks dropped."""
        return tuple(tag.strip() for tag in self.saved_model_tags.split(",") if tag.strip())

    def address(self, port: int) -> str:
        """``host:port`` as gRPC takes it and the logs and errors name it (``[::1]:port`` for IPv6)."""
        return f"[{self.host}]:{port}" if ":" in self.host else f"{self.host}:{port}"

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


def channel_arguments(text: str) -> list[tuple[str, int | str]]:
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
