"""InfraValidator: serve the candidate in a sandboxed model server and check its answers, before the Pusher.

As TFX's InfraValidator in its load-and-query mode: a model that trains and
evaluates well can still fail where it is served (an op the server lacks, a
signature that fails at run time, warmup records the server refuses), and a
version that fails there would be picked up by every server watching the
model's directory. So the candidate is copied into a private base path, a
model server is started on it as a subprocess on a free loopback port, and
its own warmup requests are replayed over gRPC; the answers must equal the
in-process model's. Only then does the Pusher make it a version.

The server is ``fmnist serve``, which runs the real ``tensorflow_model_server``
where it is installed and the embedded server otherwise; the pipeline talks
to it through the public gRPC API only (``fmnist.common``), never imports it.

Usage: ``result = run(InfraConfig(), candidate_dir, "fashion_mnist", expected=lambda signature, inputs: {...})``
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
import numpy as np

from fmnist.common import errors, names, tensors
from fmnist.common.apis import (
    get_model_status_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_log_pb2,
    prediction_service_pb2_grpc,
)
from fmnist.common.client import open_channel

# -P: the current folder stays off sys.path, so a source checkout's fmnist/ (the top layer alone) in the
# folder the exporter runs from cannot shadow the installed package, as it would in the Docker image's /app.
SERVE_COMMAND = (sys.executable, "-P", "-m", "fmnist.cli", "serve")
_VERSION = "1"  # the candidate's version in its sandbox
_POLL_S = 0.25
_STOP_S = 10.0  # for the server to exit after SIGTERM, before it is killed
_RTOL, _ATOL = 1e-4, 1e-4  # a session in another process may order float sums differently

Expected = Callable[[str, Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]


@dataclass(frozen=True)
class InfraConfig:
    """Args:
    command: the model server, taking TF Serving's flags (``--port``, ``--model_name``, ...).
    timeout_s: for the server to start, load the candidate and answer every request.
    """

    command: tuple[str, ...] = SERVE_COMMAND
    timeout_s: float = 180.0


@dataclass(frozen=True)
class InfraResult:
    passed: bool
    reason: str  # one line: what was checked, or why the candidate was refused
    requests: int  # warmup requests answered as in process
    seconds: float  # what the check took, server start and stop included

    def as_dict(self) -> dict:
        return asdict(self)


class _Refused(Exception):
    """The candidate failed in the sandbox; the message says how."""


def run(config: InfraConfig, candidate: Path, model_name: str, expected: Expected) -> InfraResult:
    """Serve ``candidate`` (a SavedModel directory with its warmup records) and replay the records against it.

    Args:
        expected: (signature key, inputs by alias) → outputs by alias, computed in process.
    """
    started = time.monotonic()
    requests = warmup_requests(candidate)
    answered = 0
    with tempfile.TemporaryDirectory(prefix="infra-validator-") as sandbox:
        base = Path(sandbox) / model_name
        shutil.copytree(candidate, base / _VERSION)
        port = _free_port()
        log_path = Path(sandbox) / "server.log"
        with open(log_path, "wb") as log:
            server = subprocess.Popen(
                [
                    *config.command,
                    "--port",
                    str(port),
                    "--model_name",
                    model_name,
                    "--model_base_path",
                    str(base),
                    "--max_num_load_retries",
                    "0",  # a load that fails once is the answer
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=sandbox,
            )
        deadline = started + config.timeout_s
        try:
            with open_channel(f"127.0.0.1:{port}") as channel:
                _wait_until_loaded(channel, model_name, server, log_path, deadline)
                stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
                for request in requests:
                    _check(stub, request, expected, deadline)
                    answered += 1
        except _Refused as refusal:
            return InfraResult(False, str(refusal), answered, round(time.monotonic() - started, 1))
        finally:
            _stop(server)
    server_name = " ".join([Path(config.command[0]).name, *config.command[1:]])
    reason = f"{answered} warmup requests answered over gRPC as in process, by a sandboxed `{server_name}`"
    return InfraResult(True, reason, answered, round(time.monotonic() - started, 1))


def warmup_requests(saved_model_dir: Path) -> list[predict_pb2.PredictRequest]:
    """The PredictRequests of ``assets.extra/tf_serving_warmup_requests``, as the server replays them."""
    import tensorflow as tf  # the records' TFRecord framing; the pipeline has TensorFlow loaded already

    path = Path(saved_model_dir) / names.ASSETS_EXTRA / names.WARMUP_FILE
    if not path.is_file():
        return []
    logs = (prediction_log_pb2.PredictionLog.FromString(r.numpy()) for r in tf.data.TFRecordDataset(str(path)))
    return [log.predict_log.request for log in logs if log.WhichOneof("log_type") == "predict_log"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _remaining(deadline: float) -> float:
    return max(deadline - time.monotonic(), 0.001)


def _wait_until_loaded(
    channel: grpc.Channel, model_name: str, server: subprocess.Popen, log_path: Path, deadline: float
) -> None:
    """Return once the candidate is AVAILABLE; refuse when the server exits, fails to load it, or runs out of time."""
    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    request = get_model_status_pb2.GetModelStatusRequest(model_spec=model_pb2.ModelSpec(name=model_name))
    available = get_model_status_pb2.ModelVersionStatus.AVAILABLE
    last = "no answer yet"
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise _Refused(f"the model server exited with status {server.returncode}: {_last_line(log_path)}")
        try:
            response = stub.GetModelStatus(request, timeout=min(_remaining(deadline), 5.0))
        except grpc.RpcError as error:  # UNAVAILABLE while it starts, NOT_FOUND while it loads
            last = f"{error.code().name}: {errors.one_line(error.details() or '')}"
        else:
            for status in response.model_version_status:
                if status.status.error_code:
                    raise _Refused(
                        f"the model server could not load it: {errors.one_line(status.status.error_message)}"
                    )
                if status.state == available:
                    return
            last = "loading"
        time.sleep(_POLL_S)
    raise _Refused(f"not AVAILABLE in the model server after the timeout (last: {last})")


def _check(stub, request: predict_pb2.PredictRequest, expected: Expected, deadline: float) -> None:
    signature = request.model_spec.signature_name or names.SERVING_DEFAULT
    try:
        response = stub.Predict(request, timeout=_remaining(deadline))
    except grpc.RpcError as error:
        raise _Refused(
            f"Predict {signature} failed: {error.code().name}: {errors.one_line(error.details() or '')}"
        ) from None
    inputs = {alias: tensors.to_ndarray(proto) for alias, proto in request.inputs.items()}
    batch = len(next(iter(inputs.values()))) if inputs else 0
    want = {alias: np.asarray(value) for alias, value in expected(signature, inputs).items()}
    if set(response.outputs) != set(want):
        raise _Refused(f"Predict {signature} answered outputs {sorted(response.outputs)}, expected {sorted(want)}")
    for alias, value in want.items():
        got = tensors.to_ndarray(response.outputs[alias])
        same = got.shape == value.shape and (
            np.allclose(got, value, rtol=_RTOL, atol=_ATOL)
            if value.dtype.kind == "f"
            else np.array_equal(got.astype(value.dtype), value)
        )
        if not same:
            raise _Refused(f"Predict {signature} (batch of {batch}) answered a different {alias} than in process")


def _stop(server: subprocess.Popen) -> None:
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)  # it finishes what is in flight and exits
        try:
            server.wait(_STOP_S)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _last_line(log_path: Path) -> str:
    lines = [line for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    return errors.one_line(lines[-1]) if lines else "(it printed nothing)"
