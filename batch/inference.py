"""Classify batches of encoded images: through the served model, or in-process with ``RunInference``.

Both paths share :func:`classify`. A batch goes out as one request (several
if its bytes exceed ``max_request_bytes``). When the model rejects a request
as a whole (INVALID_ARGUMENT: one file in it cannot be decoded), the batch is
bisected until the bad files are isolated, so a corrupt file costs about
2·log2(batch) extra calls and its neighbours are still classified. Any other
failure (server down after retries, wrong model name) fails the job, because
it is about the server, not about a file. Only the in-process path imports
TensorFlow, when it gets there (:func:`fmnist.quiet.import_tensorflow`): the
served path needs the client's protos alone, so its launcher and each
worker take about 160 MiB instead of 680 (bench/README.md, "Start-up").

Usage::

    read_batches | beam.ParDo(ServedClassify(ServerSettings("host:8500")))
    read_batches | RunInference(SavedModelHandler(LocalModel.resolve("models/fashion_mnist"), max_request_bytes=...))
"""

from __future__ import annotations

import posixpath
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import grpc
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler
from apache_beam.transforms.window import GlobalWindows
from apache_beam.utils.windowed_value import WindowedValue

from batch.outcomes import Classified, Failed, Image, Outcome, Reason
from fmnist import names, quiet
from serving.client import Prediction, PredictionClient, ServingError

NAMESPACE = "fmnist.batch"  # Beam metrics namespace of everything the job counts
# UNAVAILABLE: the server is restarting; DEADLINE_EXCEEDED: it was too slow this once.
RETRY_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
_MAX_DETAIL = 300  # characters of a model's error message kept in an error record
_TF_NOISE = re.compile(r"^(Graph execution error:|Detected at node|<stack traces unavailable>|\s*\[\[|\s*$)")


@dataclass(frozen=True)
class Scores:
    """A model's answer to one request: probabilities [n, classes] and who answered."""

    probabilities: np.ndarray
    model_name: str
    model_version: int

    @classmethod
    def of(cls, prediction: Prediction) -> Scores:
        return cls(prediction.probabilities, prediction.model_name, prediction.version)


Predict = Callable[[list[bytes]], Scores]


def classify(
    images: Sequence[Image],
    predict: Predict,
    is_rejection: Callable[[Exception], bool],
    *,
    max_request_bytes: int,
    clock: Callable[[], float] = time.perf_counter,
) -> list[Outcome]:
    """One outcome per image, in order; ``is_rejection(error)`` says "some input is bad", not "the model is"."""

    def attempt(chunk: Sequence[Image]) -> list[Outcome]:
        start = clock()
        try:
            scores = predict([image.data for image in chunk])
        except Exception as error:
            if not is_rejection(error):
                raise
            if len(chunk) == 1:
                return [Failed(chunk[0].path, Reason.REJECTED, _detail(error))]
            middle = len(chunk) // 2
            return attempt(chunk[:middle]) + attempt(chunk[middle:])
        return _answered(chunk, scores, clock() - start)

    return [outcome for chunk in _chunks(images, max_request_bytes) for outcome in attempt(chunk)]


def _answered(images: Sequence[Image], scores: Scores, seconds: float) -> list[Outcome]:
    """The images' outcomes from one request's answer, counted in the job's metrics."""
    Metrics.distribution(NAMESPACE, "batch_latency_ms").update(int(seconds * 1000))
    Metrics.counter(NAMESPACE, "requests").inc()
    return [
        Classified(image.path, image.label, tuple(map(float, row)), scores.model_name, scores.model_version, image.data)
        for image, row in zip(images, scores.probabilities, strict=True)  # a short answer must not lose files
    ]


def classify_read(
    items: Sequence[Image | Failed], predict: Predict, is_rejection: Callable[[Exception], bool], *, max_request_bytes: int
) -> list[Outcome]:
    """Outcomes of a batch as :class:`~batch.io.ReadImages` read it: files that failed to read stay failed."""
    images, failed = _partition(items)
    return failed + classify(images, predict, is_rejection, max_request_bytes=max_request_bytes)


def _partition(items: Sequence[Image | Failed]) -> tuple[list[Image], list[Outcome]]:
    """(the images to classify, the files that already failed) of a read batch."""
    images: list[Image] = []
    failed: list[Outcome] = []
    for item in items:
        (images if isinstance(item, Image) else failed).append(item)
    return images, failed


def _chunks(images: Sequence[Image], max_bytes: int) -> Iterator[Sequence[Image]]:
    """Consecutive runs of ``images`` whose bytes add up to at most ``max_bytes`` (one image per run at least)."""
    start, size = 0, 0
    for i, image in enumerate(images):
        if i > start and size + len(image.data) > max_bytes:
            yield images[start:i]
            start, size = i, 0
        size += len(image.data)
    if start < len(images):
        yield images[start:]


def _detail(error: Exception) -> str:
    """The line of a rejection that names the problem, as the server reduces it (TF pads it with node traces)."""
    text = error.details if isinstance(error, ServingError) else getattr(error, "message", str(error))
    lines = [line for line in str(text).splitlines() if not _TF_NOISE.match(line)]
    text = " ".join((lines[-1] if lines else str(text)).split())
    return text if len(text) <= _MAX_DETAIL else text[: _MAX_DETAIL - 1] + "…"


@dataclass(frozen=True)
class ServerSettings:
    """Where the served model is and how patiently to call it."""

    target: str
    model_name: str = names.MODEL_NAME
    timeout: float = 30.0  # deadline of each attempt, seconds
    retries: int = 3
    backoff: float = 0.5  # seconds before the first retry, doubling after

    def connect(self, client_factory: Callable[..., PredictionClient] = PredictionClient) -> PredictionClient:
        """A client with these settings, retrying the transient codes (:data:`RETRY_CODES`)."""
        return client_factory(
            self.target,
            model_name=self.model_name,
            timeout=self.timeout,
            retries=self.retries,
            backoff=self.backoff,
            retry_codes=RETRY_CODES,
        )


class ServedClassify(beam.DoFn):
    """A read batch (list of :class:`Image` or :class:`Failed`) → its list of outcomes, through one gRPC channel per worker.

    One request stays in flight: a batch is sent, then the previous batch's
    answer is collected, so the server decodes and runs one batch while this
    worker reads and writes the next. A request that fails is redone through
    :func:`classify`, which retries, bisects rejected batches, or fails the
    job. The client is made in ``setup()`` and closed in ``teardown()``, so a
    worker reuses its connection across bundles; only the settings and the
    factory (a class, picklable by reference) travel to workers.
    """

    def __init__(
        self,
        server: ServerSettings,
        *,
        max_request_bytes: int,
        client_factory: Callable[..., PredictionClient] = PredictionClient,
        clock: Callable[[], float] = time.perf_counter,
    ):
        self._server = server
        self._max_request_bytes = max_request_bytes
        self._client_factory = client_factory
        self._clock = clock
        self._client: PredictionClient | None = None

    def setup(self) -> None:
        self._client = self._server.connect(self._client_factory)

    def start_bundle(self) -> None:
        self._in_flight: _InFlight | None = None

    def process(self, batch: list[Image | Failed]) -> Iterator[list[Outcome]]:
        previous, self._in_flight = self._in_flight, self._send(batch)
        if previous is not None:
            yield self._collect(previous)

    def finish_bundle(self) -> Iterator[WindowedValue]:
        if self._in_flight is not None:
            last, self._in_flight = self._in_flight, None
            yield GlobalWindows.windowed_value(self._collect(last))

    def teardown(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _send(self, batch: list[Image | Failed]) -> _InFlight:
        images, failed = _partition(batch)
        if not images or sum(len(image.data) for image in images) > self._max_request_bytes:
            return _InFlight(images, failed, None, 0.0)  # nothing to send, or several requests: in _collect
        answer = self._client.predict_encoded_async([image.data for image in images])
        return _InFlight(images, failed, answer, self._clock())

    def _collect(self, sent: _InFlight) -> list[Outcome]:
        if sent.answer is not None:
            try:
                prediction = sent.answer()
            except ServingError:
                pass  # redone below, with retries and bisection
            else:
                return sent.failed + _answered(sent.images, Scores.of(prediction), self._clock() - sent.started)
        return sent.failed + classify(
            sent.images, self._predict, is_rejected_request, max_request_bytes=self._max_request_bytes
        )

    def _predict(self, encoded: list[bytes]) -> Scores:
        return Scores.of(self._client.predict_encoded(encoded))


@dataclass(frozen=True)
class _InFlight:
    images: list[Image]  # the batch's images and failures, as _partition splits it
    failed: list[Outcome]
    answer: Callable[[], Prediction] | None  # None: not sent ahead
    started: float


def is_rejected_request(error: Exception) -> bool:
    """The server refused the request's input (a file it cannot decode), not the request itself."""
    return isinstance(error, ServingError) and error.code == grpc.StatusCode.INVALID_ARGUMENT


@dataclass(frozen=True)
class LocalModel:
    """A SavedModel version directory, and the model name and version its records report."""

    path: str
    model_name: str
    version: int

    @classmethod
    def resolve(cls, model_dir: str, model_name: str = names.MODEL_NAME) -> LocalModel:
        """``model_dir`` is a version directory, or a base path whose newest numeric version is taken (as TF Serving does)."""
        tf = quiet.import_tensorflow()  # only the in-process mode needs TensorFlow, in the launcher or a worker

        def is_saved_model(path: str) -> bool:
            return tf.io.gfile.exists(posixpath.join(path, "saved_model.pb"))

        path = model_dir.rstrip("/")
        if not is_saved_model(path):
            versions = [
                int(child.rstrip("/"))
                for child in (tf.io.gfile.listdir(path) if tf.io.gfile.isdir(path) else [])
                if child.rstrip("/").isdigit() and is_saved_model(posixpath.join(path, child))
            ]
            if not versions:
                raise FileNotFoundError(f"{model_dir}: neither a SavedModel nor a folder of numbered SavedModel versions")
            path = posixpath.join(path, str(max(versions)))
        base = posixpath.basename(path)
        return cls(path, model_name, int(base) if base.isdigit() else 0)


class _LoadedSignature:
    """A SavedModel signature as a :data:`Predict`; holds the loaded object so its variables stay alive."""

    def __init__(self, model: LocalModel, signature: str):
        tf = quiet.import_tensorflow()  # a worker's first use of TensorFlow: its banner stays off stderr
        self._tf = tf
        self._model = model
        self._loaded = tf.saved_model.load(model.path)
        self._function = self._loaded.signatures[signature]

    def __call__(self, encoded: list[bytes]) -> Scores:
        outputs = self._function(**{names.INPUT_IMAGE_BYTES: self._tf.constant(encoded, self._tf.string)})
        return Scores(outputs[names.OUTPUT_PROBABILITIES].numpy(), self._model.model_name, self._model.version)


def _is_rejected_input(error: Exception) -> bool:
    import tensorflow as tf  # loaded by the model that raised ``error``

    return isinstance(error, tf.errors.InvalidArgumentError)


class SavedModelHandler(ModelHandler[list[Image | Failed], list[Outcome], _LoadedSignature]):
    """``RunInference`` handler running the served graph's ``predict_images`` signature in the worker.

    Beam's TF handlers feed tensors to a model's ``__call__``; this model's
    decoding lives in a signature that takes encoded bytes, so a small handler
    calling that signature keeps both modes on exactly the same graph. Its
    elements are batches already (as :class:`~batch.io.ReadImages` reads
    them), so RunInference passes them on one at a time.
    """

    def __init__(self, model: LocalModel, *, signature: str = names.PREDICT_IMAGES, max_request_bytes: int):
        super().__init__(min_batch_size=1, max_batch_size=1)
        self._model = model
        self._signature = signature
        self._max_request_bytes = max_request_bytes

    def load_model(self) -> _LoadedSignature:
        return _LoadedSignature(self._model, self._signature)

    def run_inference(
        self, batch: Sequence[list[Image | Failed]], model: _LoadedSignature, inference_args: dict[str, Any] | None = None
    ) -> list[list[Outcome]]:
        return [
            classify_read(items, model, _is_rejected_input, max_request_bytes=self._max_request_bytes) for items in batch
        ]

    def get_num_bytes(self, batch: Sequence[list[Image | Failed]]) -> int:
        return sum(len(item.data) for items in batch for item in items if isinstance(item, Image))
