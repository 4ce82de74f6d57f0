"""``fmnist serve``: tensorflow_model_server's command line, for the embedded server or the real binary.

TF Serving's main.cc: the flags, with tensorflow_model_server's names,
defaults and meanings, become a :class:`~fmnist.serving.config.ServerConfig`
for :func:`fmnist.serving.server.run`. Its tuning hints that mean nothing here
(``--num_load_threads``, ``--rest_api_num_threads``, ...) are accepted and
logged once as ignored, so one command line serves both servers. When the
real ``tensorflow_model_server`` is on PATH (or with ``--use-tf-serving``)
the command runs that instead, with the same arguments, unless
``--use-embedded`` is given. The binary runs with ``FMNIST_SERVE_HANDED_OFF``
set in its environment, and a ``fmnist serve`` that finds it set serves
embedded: a stand-in ``tensorflow_model_server`` that runs ``fmnist serve``
(the Docker stand-in image's) is run once, never in a loop. Like the real
binary, the command listens on all interfaces unless ``--host`` says otherwise.

Usage::

    fmnist serve --model_name fashion_mnist --model_base_path models/fashion_mnist
    config = config_from(build_parser("fmnist serve").parse_args(["--model_base_path", "/models/m"]))
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path

from fmnist.common import imagefile, logs, names, quiet, usage
from fmnist.serving.config import (
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_MODEL_NAME,
    MIXED_PRECISION_MODES,
    SERVE_TAG,
    ServerConfig,
)

log = logging.getLogger(__name__)

TF_SERVING_BINARY = "tensorflow_model_server"
# tensorflow_model_server listens on 0.0.0.0:<port> (server.cc), so the command does too; ServerConfig's
# own default stays the loopback, for servers started inside another process (tests, the demo).
ALL_INTERFACES = "0.0.0.0"
# Set for the tensorflow_model_server this command hands off to: if that is a stand-in that runs
# fmnist serve again, the second fmnist serve sees it and serves embedded instead of handing off again.
HANDED_OFF = "FMNIST_SERVE_HANDED_OFF"

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


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = usage.CommandParser(
        prog=prog,
        description="Serve SavedModels over TensorFlow Serving's gRPC (and REST) API. "
        f"Runs {TF_SERVING_BINARY} instead when it is on PATH (unless --use-embedded) or --use-tf-serving is given.",
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
        default=SERVE_TAG,
        metavar="TAGS",
        help="comma-separated tags of the meta graph to load (default serve)",
    )
    for flag, meaning in _HINT_FLAGS.items():
        tf_flags.add_argument(f"--{flag}", metavar="VALUE", help=f"accepted and ignored: {meaning}")
    tf_flags.add_argument(
        "--mixed_precision",
        default="",
        choices=MIXED_PRECISION_MODES,
        metavar="MODE",
        help="bfloat16: run matmuls and convolutions in bfloat16 (pays on CPUs with "
        "AVX512-BF16 or AMX: about 1.5x the cnn's throughput here); default off",
    )
    ours = parser.add_argument_group("embedded server only")
    ours.add_argument(
        "--host",
        default=ALL_INTERFACES,
        help="interface gRPC and REST bind (default: all, as tensorflow_model_server; 127.0.0.1: this machine only)",
    )
    which = ours.add_mutually_exclusive_group()
    which.add_argument("--use-tf-serving", action="store_true", help=f"run {TF_SERVING_BINARY} (must be on PATH)")
    which.add_argument(
        "--use-embedded", action="store_true", help=f"serve embedded even when {TF_SERVING_BINARY} is on PATH"
    )
    ours.add_argument("--max-message-bytes", type=int, default=DEFAULT_MAX_MESSAGE_BYTES, help="largest gRPC message")
    ours.add_argument("--max-image-bytes", type=int, default=names.MAX_IMAGE_BYTES, help="largest encoded image")
    ours.add_argument(
        "--max-image-pixels",
        type=int,
        default=names.MAX_IMAGE_PIXELS,
        help="largest image a header may claim",
    )
    ours.add_argument(
        "--max-tensor-bytes", type=int, default=imagefile.DEFAULT_MAX_TENSOR_BYTES, help="largest decoded input tensor"
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
    """``fmnist serve``: 0 after a clean stop, 1 when the server cannot start, 2 for a usage error (or never
    returns: the real binary replaces this process).

    Flags, their combinations and the ports are checked before TensorFlow is imported or any
    model loads, so a mistyped flag or a busy port is one line at once, not after the load.
    """
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    name = parser.prog
    logs.configure(args.log_level)
    binary = shutil.which(TF_SERVING_BINARY)
    handed_off = HANDED_OFF in os.environ  # a tensorflow_model_server that this command ran runs it again
    if args.use_tf_serving:
        if not binary:
            return usage.refuse(name, f"--use-tf-serving given but {TF_SERVING_BINARY} is not on PATH")
        if handed_off:
            return usage.refuse(
                name,
                f"--use-tf-serving given, but the {TF_SERVING_BINARY} on PATH ({binary}) runs "
                f"{name} itself ({HANDED_OFF} is set): it is a stand-in, not the real server",
            )
    if binary and not args.use_embedded and not handed_off:
        command = _tf_serving_argv(binary, args, parser)
        log.info("Running %s", " ".join(command))
        os.execve(binary, command, {**os.environ, HANDED_OFF: "1"})
    if binary and handed_off and not args.use_embedded:
        log.info("%s was run by %s; serving embedded rather than running it again", name, binary)
    try:
        config = config_from(args)
    except ValueError as error:  # flags that contradict each other
        return usage.refuse(name, str(error))
    for flag in _HINT_FLAGS:
        if getattr(args, flag) is not None:
            log.info("--%s is a tuning hint of %s; the embedded server ignores it", flag, TF_SERVING_BINARY)
    try:
        check_ports(config)
        quiet.import_tensorflow()  # the server needs it; its C++ start-up banner stays off stderr
        from fmnist.serving import server

        return server.run(config)
    except (ValueError, OSError) as error:
        print(f"{name}: error: {error}", file=sys.stderr)
        return 1


def check_ports(config: ServerConfig) -> None:
    """OSError naming the first of the gRPC and REST ports that cannot be bound (0, any free port, always can).

    Each is bound once and let go, as the servers will bind it (``SO_REUSEADDR``, so a port a
    stopped server left in TIME_WAIT is free), so a busy port is reported before the models
    load. tensorflow_model_server finds out only when it binds, after loading, and exits with
    "Failed to BuildAndStart gRPC server". Another process can still take the port in between;
    then the bind at start-up reports it in the same words.
    """
    for api, port in (("gRPC", config.port), ("REST", config.rest_api_port)):
        if not port:
            continue
        try:
            family, kind, protocol, _, address = socket.getaddrinfo(
                config.host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )[0]
            with socket.socket(family, kind, protocol) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind(address)
        except OSError as error:
            raise OSError(f"cannot bind {api} to {config.address(port)}: {error.strerror or error}") from None


def config_from(args: argparse.Namespace) -> ServerConfig:
    """The config ``build_parser()``'s ``args`` describe: every ServerConfig field is a flag of the same name."""
    return ServerConfig(**{field.name: getattr(args, field.name) for field in dataclasses.fields(ServerConfig)})


if __name__ == "__main__":
    sys.exit(main())
