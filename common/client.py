"""A small client for TF Serving's gRPC API, as served by ``fmnist serve`` or ``tensorflow_model_server``.

It speaks only the public ``tensorflow-serving-api`` protos, so it works the
same against the embedded server and the real binary; it imports them
through :mod:`fmnist.common.apis`, which keeps TensorFlow's runtime out of the
process (``fmnist classify`` starts in well under a second). Requests are built from
numpy directly (``tensor_content`` bytes, ``string_val``) rather than through
``tf.make_tensor_proto``, because the batch job builds one per batch in a hot
loop. Only UNAVAILABLE is retried by default: the server is down, restarting
or shedding load, and every call here is idempotent, so trying again is safe
and may help; any other failure would only repeat, so it is reported at once,
as a :class:`~fmnist.common.errors.ServingError` of the gRPC code's type, naming the server
(``str(error)`` reads "target: CODE: details").

Usage::

    with PredictionClient("localhost:8500") as client:
        prediction = client.predict_encoded([open("shoe.png", "rb").read()])
        print(prediction.class_names[0], prediction.top_k(3)[0], prediction.version)
"""

from __future__ import annotations

import ipaddress
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import grpc
import numpy as np

from fmnist.common import names, tensors
from fmnist.common.apis import (  # the official protos, without TensorFlow's start-up (see common/apis.py)
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_pb2,
    model_server_config_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from fmnist.common.errors import (
    DeadlineExceeded,
    Internal,
    ServingError,
    Unavailable,
    from_code,
    one_line,
    status_code,
)
from fmnist.common.reachability import unreachable

_AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE
_MAX_POLL_INTERVAL = 1.0  # seconds between GetModelStatus polls, at most


@dataclass(frozen=True, eq=False)  # eq on arrays is ambiguous, so identity
class Prediction:
    """One response's rows, decoded; row ``i`` is input ``i`` of the request."""

    probabilities: np.ndarray  # float32 [n, NUM_CLASSES]
    class_ids: np.ndarray  # int64 [n]
    class_names: list[str]  # [n]
    model_name: str
    version: int  # the version that answered, which may differ between calls while versions roll
    # How unlike the training images each input is, and whether beyond the version's threshold (its class then
    # a guess: docs/trust.md); None where the version serves no such outputs (an older export, another model).
    ood_scores: np.ndarray | None = None  # float32 [n]
    unfamiliar: np.ndarray | None = None  # bool [n]

    def __len__(self) -> int:
        return len(self.class_ids)

    def top_k(self, k: int) -> list[list[tuple[str, float]]]:
        """Per row, the ``k`` likeliest (class name, probability), best first; ties keep label order."""
        order = self.top_k_ids(k)
        return [
            [(names.CLASS_NAMES[i], float(row[i])) for i in idx]
            for row, idx in zip(self.probabilities, order, strict=False)
        ]

    def top_k_ids(self, k: int) -> np.ndarray:
        """Per row, the ``k`` likeliest class ids, best first; ties keep label order (int64 [n, k])."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        return np.argsort(-self.probabilities, axis=1, kind="stable")[:, :k]


class PredictionClient:
    """Calls to one model on one server, over one channel, with deadlines and retries.

    ``timeout`` is the deadline of each attempt; a call makes at most
    ``1 + retries`` attempts, sleeping ``backoff * 2**i`` seconds before retry
    ``i + 1`` and only when the failure's code is in ``retry_codes``. The
    channel and ``sleep`` are injectable so tests and the batch job can share
    a channel or skip real waiting.
    """

    def __init__(
        self,
        target: str = f"localhost:{names.GRPC_PORT}",
        *,
        model_name: str = names.MODEL_NAME,
        timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.1,
        retry_codes: frozenset[grpc.StatusCode] = frozenset({grpc.StatusCode.UNAVAILABLE}),
        tls: bool = False,
        root_certificates: bytes | None = None,
        max_message_bytes: int = 64 << 20,
        channel: grpc.Channel | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self.target = target
        self.model_name = model_name
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.retry_codes = frozenset(retry_codes)
        self._sleep = sleep
        self._owns_channel = channel is None
        self._tls = tls or root_certificates is not None
        if channel is None:
            channel = open_channel(
                target, tls=tls, root_certificates=root_certificates, max_message_bytes=max_message_bytes
            )
        self._channel = channel
        self._predictions = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)

    def predict(
        self,
        images: np.ndarray,
        *,
        version: int | None = None,
        version_label: str | None = None,
        timeout: float | None = None,
    ) -> Prediction:
        """Classify raw images, float-convertible [n, 28, 28] of 0-255 intensities (``serving_default``)."""
        pixels = np.asarray(images, dtype=np.float32)
        request = self._predict_request(names.SERVING_DEFAULT, version, version_label)
        tensors.fill(request.inputs[names.INPUT_IMAGES], pixels)
        return self._predict(request, timeout)

    def predict_encoded(
        self,
        encoded: Sequence[bytes],
        *,
        version: int | None = None,
        version_label: str | None = None,
        timeout: float | None = None,
    ) -> Prediction:
        """Classify encoded image files (PNG/JPEG/GIF/BMP bytes) via ``predict_images``; the server decodes them."""
        return self._predict(self._encoded_request(encoded, version, version_label), timeout)

    def predict_encoded_async(
        self,
        encoded: Sequence[bytes],
        *,
        version: int | None = None,
        version_label: str | None = None,
        timeout: float | None = None,
    ) -> Callable[[], Prediction]:
        """Send as :meth:`predict_encoded` does and return at once; calling the result waits for the answer.

        One attempt, no retries, so the caller can keep a request in flight
        while it prepares the next (the batch job does) and redo a failed
        one with :meth:`predict_encoded`. The answer raises ServingError as
        a failed call would.
        """
        request = self._encoded_request(encoded, version, version_label)
        future = self._predictions.Predict.future(request, timeout=self.timeout if timeout is None else timeout)

        def answer() -> Prediction:
            try:
                response = future.result()
            except grpc.RpcError as error:
                raise self._error(error) from None
            return self._prediction_of(response)

        return answer

    def predict_files(
        self, paths: Iterable[str | os.PathLike], *, batch_size: int = 64, **kwargs
    ) -> Iterator[Prediction]:
        """One :class:`Prediction` per ``batch_size`` files, in order; files are read lazily, a batch at a time.

        ``kwargs`` go to :meth:`predict_encoded`. An unreadable file raises its
        ``OSError``; a file the server cannot decode fails its whole batch with
        INVALID_ARGUMENT, so callers that must isolate bad files resend singly.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        iterator = iter(paths)
        while batch := list(islice(iterator, batch_size)):
            yield self.predict_encoded([Path(p).read_bytes() for p in batch], **kwargs)

    def metadata(
        self, *, version: int | None = None, timeout: float | None = None
    ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        """The model's signature_def metadata, exactly as the server returns it."""
        request = get_model_metadata_pb2.GetModelMetadataRequest(
            model_spec=self._model_spec(None, version, None), metadata_field=["signature_def"]
        )
        return self._call(self._predictions.GetModelMetadata, request, timeout)

    def status(
        self, *, version: int | None = None, timeout: float | None = None
    ) -> get_model_status_pb2.GetModelStatusResponse:
        """The state of every version the server knows (or of ``version`` alone)."""
        request = get_model_status_pb2.GetModelStatusRequest(model_spec=self._model_spec(None, version, None))
        return self._call(self._models.GetModelStatus, request, timeout)

    def reload_config(self, config: model_server_config_pb2.ModelServerConfig, *, timeout: float | None = None) -> None:
        """Make the server serve ``config`` (every model it lists) with ``HandleReloadConfigRequest``.

        The server answers OK only once the new config is in force; its refusal
        (a label for a version it does not have, say) is raised as a ServingError.
        """
        request = model_management_pb2.ReloadConfigRequest(config=config)
        response = self._call(self._models.HandleReloadConfigRequest, request, timeout)
        if response.status.error_code:  # a failed reload's status may also come here, in an OK RPC
            code = status_code(response.status.error_code)
            raise from_code(code, one_line(response.status.error_message), target=self.target)

    def wait_until_available(self, timeout: float = 30.0, grace: float | None = None) -> int:
        """Block until some version is AVAILABLE and return the newest such; raise ServingError after ``timeout`` s.

        A server still starting answers UNAVAILABLE, and one still loading its
        first version answers NOT_FOUND; both mean "poll again". Any other
        code means waiting cannot help, so it is raised at once. With
        ``grace``, a server absent for that many seconds is taken at its
        word and raised then, not after ``timeout``: one that says NOT_FOUND
        has no such model, and one that cannot be reached at all
        (:func:`unreachable`: its name does not resolve, it refuses the
        connection, it does not speak HTTP/2) is not coming.
        """
        deadline = time.monotonic() + timeout
        request = get_model_status_pb2.GetModelStatusRequest(model_spec=self._model_spec(None, None, None))
        interval = self.backoff
        last = "no version AVAILABLE yet"
        absent_since = None
        while True:
            remaining = deadline - time.monotonic()
            try:
                response = self._models.GetModelStatus(request, timeout=max(min(self.timeout, remaining), 0.001))
            except grpc.RpcError as error:
                if error.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND):
                    raise self._error(error) from None
                cause = self._unreachable_cause(error)
                failure = self._failure(error, cause)
                last = f"{failure.code.name}: {failure.details}"
                if cause is not None or error.code() == grpc.StatusCode.NOT_FOUND:
                    absent_since = absent_since or time.monotonic()
                    if grace is not None and time.monotonic() - absent_since >= grace:
                        raise failure from None
                else:
                    absent_since = None
            else:
                available = [s.version for s in response.model_version_status if s.state == _AVAILABLE]
                if available:
                    return max(available)
                absent_since = None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeadlineExceeded(
                    f"model {self.model_name!r} not AVAILABLE after {timeout:g}s (last: {last})", target=self.target
                )
            self._sleep(min(interval, remaining))
            interval = min(interval * 2, _MAX_POLL_INTERVAL)

    def close(self) -> None:
        """Close the channel if this client opened it; a channel passed in belongs to its creator."""
        if self._owns_channel:
            self._channel.close()

    def __enter__(self) -> PredictionClient:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _model_spec(self, signature: str | None, version: int | None, version_label: str | None) -> model_pb2.ModelSpec:
        if version is not None and version_label is not None:
            raise ValueError("give a version or a version_label, not both")
        spec = model_pb2.ModelSpec(name=self.model_name, signature_name=signature or "")
        if version is not None:
            spec.version.value = version
        elif version_label is not None:
            spec.version_label = version_label
        return spec

    def _predict_request(
        self, signature: str, version: int | None, version_label: str | None
    ) -> predict_pb2.PredictRequest:
        return predict_pb2.PredictRequest(model_spec=self._model_spec(signature, version, version_label))

    def _encoded_request(
        self, encoded: Sequence[bytes], version: int | None, version_label: str | None
    ) -> predict_pb2.PredictRequest:
        request = self._predict_request(names.PREDICT_IMAGES, version, version_label)
        tensors.fill(request.inputs[names.INPUT_IMAGE_BYTES], encoded)
        return request

    def _predict(self, request: predict_pb2.PredictRequest, timeout: float | None) -> Prediction:
        return self._prediction_of(self._call(self._predictions.Predict, request, timeout))

    def _prediction_of(self, response: predict_pb2.PredictResponse) -> Prediction:
        try:
            if missing := [alias for alias in names.OUTPUTS if alias not in response.outputs]:
                raise ValueError(f"no output {', '.join(missing)}")
            probabilities = tensors.to_ndarray(response.outputs[names.OUTPUT_PROBABILITIES], np.float32)
            class_ids = tensors.to_ndarray(response.outputs[names.OUTPUT_CLASS_IDS], np.int64)
            class_names = [s.decode() for s in response.outputs[names.OUTPUT_CLASS_NAMES].string_val]
            trust = [
                tensors.to_ndarray(response.outputs[alias], dtype) if alias in response.outputs else None
                for alias, dtype in zip(names.TRUST_OUTPUTS, (np.float32, np.bool_), strict=True)
            ]
            rows = [len(probabilities), len(class_ids), len(class_names), *(len(t) for t in trust if t is not None)]
            if len(set(rows)) > 1:
                raise ValueError(f"outputs disagree on the number of rows: {tuple(rows)}")
        except ValueError as error:
            raise Internal(f"malformed PredictResponse: {error}", target=self.target) from None
        return Prediction(
            probabilities=probabilities,
            class_ids=class_ids,
            class_names=class_names,
            model_name=response.model_spec.name or self.model_name,
            version=response.model_spec.version.value,
            ood_scores=trust[0],
            unfamiliar=trust[1],
        )

    def _call(self, method, request, timeout: float | None):
        """``method(request)`` with a deadline, retrying codes in ``retry_codes`` with exponential backoff."""
        deadline = self.timeout if timeout is None else timeout
        attempt = 0
        while True:
            try:
                return method(request, timeout=deadline)
            except grpc.RpcError as error:
                if error.code() not in self.retry_codes or attempt >= self.retries:
                    raise self._error(error) from None
            self._sleep(self.backoff * 2**attempt)
            attempt += 1

    def _error(self, error: grpc.RpcError) -> ServingError:
        """``error`` as its ServingError type; an UNAVAILABLE one says why the server cannot be reached, where the
        socket layer can tell (:func:`unreachable`)."""
        return self._failure(error, self._unreachable_cause(error))

    def _unreachable_cause(self, error: grpc.RpcError) -> str | None:
        return unreachable(self.target, tls=self._tls) if error.code() == grpc.StatusCode.UNAVAILABLE else None

    def _failure(self, error: grpc.RpcError, unreachable_cause: str | None) -> ServingError:
        if unreachable_cause is not None:
            return Unavailable(unreachable_cause, target=self.target)
        return from_code(error.code(), one_line(error.details()), target=self.target)


def open_channel(
    target: str,
    *,
    tls: bool = False,
    root_certificates: bytes | None = None,
    private_key: bytes | None = None,
    certificate_chain: bytes | None = None,
    max_message_bytes: int = 64 << 20,
    options: Sequence[tuple[str, object]] = (),
) -> grpc.Channel:
    """A channel to one server or to several replicas, balanced round-robin by gRPC itself.

    ``target`` is ``host:port``, a comma-separated list of ``ip:port`` (each
    replica gets every n-th call), or any gRPC target URI. A host name is
    resolved through DNS to all of its addresses (a headless service of
    replicas, say), and gRPC's ``round_robin`` policy spreads calls over the
    ones that answer: a replica that goes away costs the calls in flight to it,
    which a retry sends to another. ``private_key`` and ``certificate_chain``
    present a client certificate (mutual TLS).
    """
    channel_options = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.lb_policy_name", "round_robin"),
        *options,
    ]
    uri = _target_uri(target)
    if tls or root_certificates is not None or private_key is not None:
        credentials = grpc.ssl_channel_credentials(root_certificates, private_key, certificate_chain)
        return grpc.secure_channel(uri, credentials, channel_options)
    return grpc.insecure_channel(uri, channel_options)


def _target_uri(target: str) -> str:
    """gRPC's URI for ``target``: several ``ip:port`` → its static ``ipv4:``/``ipv6:`` list, a name → ``dns:///``."""
    if ":/" in target or target.startswith(("ipv4:", "ipv6:", "unix:", "unix-abstract:")):
        return target  # a URI already
    addresses = [address.strip() for address in target.split(",") if address.strip()]
    literal = {address: _ip_family(address) for address in addresses}
    if len(addresses) == 1:
        return target if literal[target.strip()] else f"dns:///{target.strip()}"
    if None in literal.values() or len(set(literal.values())) > 1:
        raise ValueError(
            f"several servers must be IP addresses of one family ({target!r}); for replicas "
            "known by name, give one DNS name that resolves to all of them"
        )
    return f"{next(iter(literal.values()))}:{','.join(addresses)}"


def _ip_family(address: str) -> str | None:
    """ "ipv4" or "ipv6" when ``address`` (``host:port``, ``[v6]:port``) names an IP literal; None for a name."""
    host = address.rsplit(":", 1)[0].strip("[]")
    try:
        return "ipv4" if ipaddress.ip_address(host).version == 4 else "ipv6"
    except ValueError:
        return None
