"""A RunInference model handler for any model behind TensorFlow Serving's gRPC Predict API.

Beam ships handlers for models it loads itself and for a few hosted services,
none for TF Serving. This one is a ``RemoteModelHandler``, so Beam's own
machinery does the rest: batching (``BatchElements`` with the size and
duration bounds given here), retries with exponential backoff (only on
UNAVAILABLE, DEADLINE_EXCEEDED and RESOURCE_EXHAUSTED: any other code would
only repeat), client-side adaptive throttling (``cumulativeThrottlingSeconds``),
and, with ``RunInference(...).with_exception_handling()``, a dead-letter output
for batches that fail for good. Nothing in it is specific to this project's
model: any signature, any input alias, numeric arrays or encoded bytes.

Each worker opens one channel (``serving.client.open_channel``): one address,
a comma-separated list of replicas, or a DNS name resolving to several, spread
round-robin by gRPC. Every request names the model, the signature, a version or
label when given, and a deadline; each ``PredictionResult`` carries its row of
every output and ``model_id`` = ``name:version`` of the version that answered.

Usage::

    images | RunInference(TFServingModelHandler("host:8500", model_name="m", signature_name="predict_images",
                                                input_alias="image_bytes"))
    keyed | RunInference(KeyedModelHandler(TFServingModelHandler(...)))
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Iterable, Sequence
from typing import Any

import grpc
import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult, RemoteModelHandler

from fmnist.common import tensors
from fmnist.common.apis import predict_pb2, prediction_service_pb2_grpc
from fmnist.common.client import open_channel

# The server is down or restarting, was slow this once, or sheds load: a later try may succeed.
TRANSIENT_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}
)


def _is_transient(codes: Collection[grpc.StatusCode], error: Exception) -> bool:
    return isinstance(error, grpc.RpcError) and error.code() in codes


def _size_in_bytes(example: Any) -> int:
    """An example's weight for ``max_batch_weight``: its bytes, as they will travel."""
    return len(example) if isinstance(example, (bytes, str)) else np.asarray(example).nbytes


class TFServingModelHandler(
    RemoteModelHandler[Any, PredictionResult, prediction_service_pb2_grpc.PredictionServiceStub]
):
    """Examples (encoded bytes or arrays, one per row) → ``PredictionResult``s from a TF Serving model.

    ``output_aliases`` filters the outputs (all of the signature's by default);
    ``version`` and ``version_label`` pick a version as ``ModelSpec`` does
    (neither: the server's latest). ``timeout`` is each request's deadline in
    seconds; ``num_retries`` retries transient failures with Beam's backoff.
    The batching bounds become ``RunInference``'s ``BatchElements`` arguments.
    ``max_batch_weight`` caps the bytes of one request (it must stay under the
    server's message limit): a batch heavier than that goes as several
    requests, an example heavier than that alone. (Beam 2.77's ModelHandler
    takes a ``max_batch_weight`` that its ``BatchElements`` then refuses, so
    the cap is kept here.) Everything here is picklable: the channel is
    opened on the worker.
    """

    def __init__(
        self,
        target: str,
        *,
        model_name: str,
        signature_name: str = "serving_default",
        input_alias: str,
        output_aliases: Sequence[str] = (),
        version: int | None = None,
        version_label: str | None = None,
        timeout: float = 30.0,
        tls: bool = False,
        root_certificates: bytes | None = None,
        private_key: bytes | None = None,
        certificate_chain: bytes | None = None,
        channel_options: Sequence[tuple[str, Any]] = (),
        max_message_bytes: int = 64 << 20,
        num_retries: int = 5,
        retry_codes: Collection[grpc.StatusCode] = TRANSIENT_CODES,
        min_batch_size: int | None = None,
        max_batch_size: int | None = None,
        max_batch_weight: int | None = None,
        max_batch_duration_secs: int | None = None,
        **throttling: Any,
    ):
        if version is not None and version_label is not None:
            raise ValueError("give a version or a version_label, not both")
        RemoteModelHandler.__init__(
            self,
            namespace="TFServingModelHandler",
            num_retries=num_retries,
            retry_filter=functools.partial(_is_transient, frozenset(retry_codes)),
            **throttling,
        )
        # RemoteModelHandler leaves the batching arguments to ModelHandler, whose __init__ it does not call.
        ModelHandler.__init__(
            self,
            min_batch_size=min_batch_size,
            max_batch_size=max_batch_size,
            max_batch_duration_secs=max_batch_duration_secs,
        )
        self._max_request_bytes = max_batch_weight
        self.target = target
        self._spec = dict(name=model_name, signature_name=signature_name)
        if version is not None:
            self._spec["version"] = {"value": version}
        elif version_label is not None:
            self._spec["version_label"] = version_label
        self._input_alias = input_alias
        self._output_aliases = tuple(output_aliases)
        self._timeout = timeout
        self._channel_settings = dict(
            tls=tls,
            root_certificates=root_certificates,
            private_key=private_key,
            certificate_chain=certificate_chain,
            max_message_bytes=max_message_bytes,
            options=tuple(channel_options),
        )

    def create_client(self) -> prediction_service_pb2_grpc.PredictionServiceStub:
        return prediction_service_pb2_grpc.PredictionServiceStub(open_channel(self.target, **self._channel_settings))

    def request(
        self,
        batch: Sequence[Any],
        model: prediction_service_pb2_grpc.PredictionServiceStub,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[PredictionResult]:
        return [result for chunk in self._chunks(batch) for result in self._predict(chunk, model)]

    def _chunks(self, batch: Sequence[Any]) -> Iterable[Sequence[Any]]:
        """``batch`` in consecutive pieces of at most ``max_batch_weight`` bytes (an example too heavy: alone)."""
        if self._max_request_bytes is None:
            yield batch
            return
        start, weight = 0, 0
        for i, example in enumerate(batch):
            size = _size_in_bytes(example)
            if i > start and weight + size > self._max_request_bytes:
                yield batch[start:i]
                start, weight = i, 0
            weight += size
        if start < len(batch):
            yield batch[start:]

    def _predict(
        self, batch: Sequence[Any], model: prediction_service_pb2_grpc.PredictionServiceStub
    ) -> list[PredictionResult]:
        request = predict_pb2.PredictRequest(model_spec=self._spec, output_filter=self._output_aliases)
        tensors.fill(request.inputs[self._input_alias], _stacked(batch))
        response = model.Predict(request, timeout=self._timeout)  # grpc.RpcError: retried when transient
        outputs = {alias: tensors.to_ndarray(tensor) for alias, tensor in response.outputs.items()}
        model_id = f"{response.model_spec.name}:{response.model_spec.version.value}"
        return per_example(batch, outputs, model_id, self.target)

    def get_num_bytes(self, batch: Sequence[Any]) -> int:
        return sum(map(_size_in_bytes, batch))

    def __repr__(self) -> str:
        model, signature = self._spec["name"], self._spec["signature_name"]
        return f"TFServingModelHandler({self.target!r}, model={model!r}, signature={signature!r})"


def per_example(
    batch: Sequence[Any], outputs: dict[str, np.ndarray], model_id: str, source: str
) -> list[PredictionResult]:
    """One ``PredictionResult`` per example of ``batch``: its row of every output, and ``model_id``; a ValueError
    naming ``source`` when an output does not have one row per example (a short answer must not lose examples)."""
    if short := {alias: len(rows) for alias, rows in outputs.items() if np.ndim(rows) == 0 or len(rows) != len(batch)}:
        raise ValueError(f"{source}: outputs {short} do not have one row per example ({len(batch)})")
    return [
        PredictionResult(example, {alias: rows[i] for alias, rows in outputs.items()}, model_id)
        for i, example in enumerate(batch)
    ]


def _stacked(batch: Sequence[Any]) -> np.ndarray | list:
    """One tensor of the batch: encoded bytes as a string vector, arrays stacked along a new first axis."""
    if all(isinstance(example, (bytes, str)) for example in batch):
        return list(batch)
    return np.stack([np.asarray(example) for example in batch])
