"""Classify batches of encoded images with ``RunInference``: through the served model, or in-process.

Both paths are one ``RunInference(ImageBatches(handler))`` over the job's
read batches; ``handler`` is Beam's kind of model handler for encoded images:
:class:`~batch.tfserving.TFServingModelHandler` for the served model,
:class:`SignatureHandler` for a SavedModel in the worker. Every batch goes
through :func:`predict_splitting_rejected`. A batch goes out as one request
(several if its bytes exceed ``max_request_bytes``). When the model rejects a
request as a whole (INVALID_ARGUMENT: one file in it cannot be decoded), the
batch is bisected until the bad files are isolated, so a corrupt file costs
about 2·log2(batch) extra calls and its neighbours are still classified. A
batch that fails otherwise becomes error records (``inference_failed``, with
the failure's status or type and its message, taken from the exception where
it is caught), and the job goes on; a server lost after retries, or one that
does not know the model, fails the job, naming it. Only the in-process path imports
TensorFlow, when it gets there (:func:`fmnist.common.quiet.import_tensorflow`):
the served path needs the client's protos alone, so its launcher and each
worker stay a fraction of a TensorFlow process's size (bench/startup.py measures it).

Usage::

    handler = ImageBatches(ServerSettings("host:8500").handler(), max_request_bytes=32 << 20)
    outcomes = read_batches | RunInference(handler)   # one list of outcomes per read batch

(:class:`batch.job_steps.InferBatches` is that step.)
"""

from __future__ import annotations

import functools
import posixpath
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from fmnist.batch.outcomes import Classified, Failed, Image, Outcome, Reason
from fmnist.batch.output import FailureNotes
from fmnist.batch.tfserving import TRANSIENT_CODES, TFServingModelHandler, per_example
from fmnist.common import errors, imagefile, names, quiet
from fmnist.common.client import Prediction, PredictionClient
from fmnist.common.errors import ServingError, one_line

NAMESPACE = "fmnist.batch"  # Beam metrics namespace of everything the job counts
# What the jobs retry: the handler's transient codes (the server restarting, too slow this once, shedding
# load) and CANCELLED: a server that stops cancels the calls it is answering, and the retry then finds
# another replica, or UNAVAILABLE, which names the problem.
RETRY_CODES = TRANSIENT_CODES | {grpc.StatusCode.CANCELLED}
_MAX_DETAIL = 300  # characters of a model's error message kept in an error record
_TF_NOISE = re.compile(r"^(Graph execution error:|Detected at node|<stack traces unavailable>|\s*\[\[|\s*$)")


@dataclass(frozen=True)
class Scores:
    """A model's answer to one request: probabilities [n, classes], who answered, and, where the version serves
    them, its ``ood_scores`` [n] and ``unfamiliar`` [n] (docs/trust.md)."""

    probabilities: np.ndarray
    model_name: str
    model_version: int
    ood_scores: np.ndarray | None = None
    unfamiliar: np.ndarray | None = None

    @classmethod
    def of(cls, prediction: Prediction) -> Scores:
        return cls(
            prediction.probabilities,
            prediction.model_name,
            prediction.version,
            prediction.ood_scores,
            prediction.unfamiliar,
        )


Predict = Callable[[list[bytes]], Scores]


def predict_splitting_rejected(
    images: Sequence[Image],
    predict: Predict,
    is_rejection: Callable[[Exception], bool],
    *,
    max_request_bytes: int,
    clock: Callable[[], float] = time.perf_counter,
) -> list[Outcome]:
    """One outcome per image, in order: ``images`` sent in requests of at most ``max_request_bytes``, and a request
    the model rejects split in halves until its bad images are alone. ``is_rejection(error)`` says "some input is
    bad", not "the model is"; any other error is raised."""

    def attempt(chunk: Sequence[Image]) -> list[Outcome]:
        start = clock()
        try:
            scores = predict([image.data for image in chunk])
        except Exception as error:
            if not is_rejection(error):
                raise
            if len(chunk) == 1:
                return [_refused(chunk[0], error)]
            middle = len(chunk) // 2
            return attempt(chunk[:middle]) + attempt(chunk[middle:])
        return _answered(chunk, scores, clock() - start)

    return [outcome for chunk in _chunks(images, max_request_bytes) for outcome in attempt(chunk)]


def _refused(image: Image, error: Exception) -> Failed:
    """A file the model refused on its own: ``rejected_by_model``, or ``too_large`` when it is beyond the serving
    side's default limits, which the job's own, raised, let through (the server and the model's graph check
    them too, and refuse with the same INVALID_ARGUMENT as an undecodable file)."""
    beyond = imagefile.check(image.data, imagefile.Limits())
    if beyond is not None and beyond[0] == imagefile.TOO_LARGE:
        return Failed(
            image.path,
            Reason.TOO_LARGE,
            f"refused by the server's limit, which the job's raised one let through: {beyond[1]} by default, and "
            "fmnist serve takes the same option (for pixels, so does fmnist train: its model checks them too) "
            f"[server: {_detail(error)}]",
        )
    return Failed(image.path, Reason.REJECTED, _detail(error))


def _answered(images: Sequence[Image], scores: Scores, seconds: float) -> list[Outcome]:
    """The images' outcomes from one request's answer, counted in the job's metrics."""
    Metrics.distribution(NAMESPACE, "batch_latency_ms").update(int(seconds * 1000))
    Metrics.counter(NAMESPACE, "requests").inc()
    rows = len(images)  # a version without the trust outputs: None for each file
    ood = [None] * rows if scores.ood_scores is None else scores.ood_scores.tolist()
    unfamiliar = [None] * rows if scores.unfamiliar is None else scores.unfamiliar.tolist()
    return [
        Classified(image.path, image.label, tuple(row), scores.model_name, scores.model_version, image.data, *trust)
        # tolist: Python floats for the whole answer at once; strict: a short answer must not lose files
        for image, row, *trust in zip(images, scores.probabilities.tolist(), ood, unfamiliar, strict=True)
    ]


def predict_read_batch(
    items: Sequence[Image | Failed],
    predict: Predict,
    is_rejection: Callable[[Exception], bool],
    *,
    max_request_bytes: int,
) -> list[Outcome]:
    """Outcomes of a batch as :class:`~batch.readers.ReadImages` read it (:func:`predict_splitting_rejected` of its
    images); files that failed to read stay failed, first."""
    images, failed = _partition(items)
    return failed + predict_splitting_rejected(images, predict, is_rejection, max_request_bytes=max_request_bytes)


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
    if isinstance(error, ServingError):
        text = error.details
    elif isinstance(error, grpc.RpcError):
        text = error.details()
    else:
        text = getattr(error, "message", str(error))
    lines = [line for line in str(text).splitlines() if not _TF_NOISE.match(line)]
    text = one_line(lines[-1] if lines else str(text))
    return text if len(text) <= _MAX_DETAIL else text[: _MAX_DETAIL - 1] + "…"


@dataclass(frozen=True)
class ServerSettings:
    """Where the served model is and how patiently to call it, and which outputs of ``predict_images`` to ask for
    (the launcher adds the trust outputs where the signature has them: :func:`batch.launcher.served_outputs`)."""

    target: str
    model_name: str = names.MODEL_NAME
    timeout: float = 30.0  # deadline of each attempt, seconds
    retries: int = 3
    backoff: float = 0.5  # seconds before the client's first retry, doubling after (the handler: Beam's backoff)
    outputs: tuple[str, ...] = (names.OUTPUT_PROBABILITIES,)

    def handler(self, handler_class: type[TFServingModelHandler] = TFServingModelHandler) -> TFServingModelHandler:
        """The ``RunInference`` handler of ``predict_images`` on this server (retrying :data:`RETRY_CODES`);
        ``handler_class`` may be a subclass (one that counts or fails requests, say)."""
        return handler_class(
            self.target,
            model_name=self.model_name,
            signature_name=names.PREDICT_IMAGES,
            input_alias=names.INPUT_IMAGE_BYTES,
            output_aliases=self.outputs,
            timeout=self.timeout,
            num_retries=self.retries,
            retry_codes=RETRY_CODES,
        )

    def connect(self, client_factory: Callable[..., PredictionClient] = PredictionClient) -> PredictionClient:
        """A client with these settings, retrying :data:`RETRY_CODES` as the job's handler does."""
        return client_factory(
            self.target,
            model_name=self.model_name,
            timeout=self.timeout,
            retries=self.retries,
            backoff=self.backoff,
            retry_codes=RETRY_CODES,
        )


# Codes about the server or the model's identity, not about the batch: the job fails, naming the server.
SERVER_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.CANCELLED,
    }
)


class ImageBatches(ModelHandler[list[Image | Failed], list[Outcome], Any]):
    """``RunInference`` handler for the job's elements, one read batch each, over a handler of encoded images.

    ``images`` is any handler whose ``run_inference`` takes encoded images and
    returns one ``PredictionResult`` per image with a ``probabilities`` row and
    ``model_id`` = ``name:version``: :class:`~batch.tfserving.TFServingModelHandler`
    for the served model (Beam's retries with backoff and client-side
    throttling included), :class:`SignatureHandler` in-process. Each batch
    goes through :func:`predict_read_batch`: requests capped at
    ``max_request_bytes``, and a batch the model rejects (INVALID_ARGUMENT: a
    file it cannot decode) bisected down to its bad files. A failure about
    the server or the model's identity (:data:`SERVER_CODES`) raises the
    :mod:`fmnist.common.errors` type of the status, naming the server, noted
    in ``failures`` first, where the launcher finds it as a type (Beam hands
    it the worker's exception as text). Any other failure is the batch's
    own: its images become ``inference_failed`` outcomes, each detail made
    here from the exception itself (its status or type, and its message),
    and the job goes on.
    """

    def __init__(self, images: ModelHandler, *, max_request_bytes: int, failures: FailureNotes | None = None):
        super().__init__(min_batch_size=1, max_batch_size=1)  # the elements are batches already
        self._images = images
        self._max_request_bytes = max_request_bytes
        self._failures = failures

    def load_model(self) -> Any:
        return self._images.load_model()

    def run_inference(
        self, batch: Sequence[list[Image | Failed]], model: Any, inference_args: dict[str, Any] | None = None
    ) -> list[list[Outcome]]:
        predict = functools.partial(self._scores, model)
        outcomes = []
        for items in batch:
            try:
                outcomes.append(
                    predict_read_batch(items, predict, is_rejected_input, max_request_bytes=self._max_request_bytes)
                )
            except grpc.RpcError as error:
                if error.code() in SERVER_CODES:
                    stopped = errors.from_code(
                        error.code(), one_line(error.details()), target=getattr(self._images, "target", "?")
                    )
                    if self._failures is not None:
                        self._failures.note(stopped)
                    raise stopped from error
                outcomes.append(_failed_batch(items, f"{error.code().name}: {_detail(error)}"))
            except Exception as error:  # the model's own failure on this batch, whatever it raised
                outcomes.append(_failed_batch(items, f"{type(error).__name__}: {_detail(error)}"))
        return outcomes

    def _scores(self, model: Any, encoded: list[bytes]) -> Scores:
        results = list(self._images.run_inference(encoded, model))
        name, _, version = results[0].model_id.rpartition(":")
        probabilities = np.stack([result.inference[names.OUTPUT_PROBABILITIES] for result in results])
        trust = [  # where the version serves them
            np.stack([result.inference[alias] for result in results]) if alias in results[0].inference else None
            for alias in names.TRUST_OUTPUTS
        ]
        return Scores(probabilities, name, int(version), *trust)

    def get_num_bytes(self, batch: Sequence[list[Image | Failed]]) -> int:
        return sum(len(item.data) for items in batch for item in items if isinstance(item, Image))

    def get_metrics_namespace(self) -> str:
        return NAMESPACE

    def __repr__(self) -> str:
        return f"ImageBatches({self._images!r})"


def _failed_batch(items: Sequence[Image | Failed], detail: str) -> list[Outcome]:
    """A batch the model failed on as a whole → an outcome per file: its images ``inference_failed``, with
    ``detail``; files that failed to read keep their own error."""
    return [item if isinstance(item, Failed) else Failed(item.path, Reason.INFERENCE_FAILED, detail) for item in items]


def is_rejected_input(error: Exception) -> bool:
    """The model refused the request's input (a file it cannot decode), not the request itself: INVALID_ARGUMENT
    from the server (through the client or a raw stub) or from TensorFlow in-process."""
    if isinstance(error, ServingError):
        return error.code == grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(error, grpc.RpcError):
        return error.code() == grpc.StatusCode.INVALID_ARGUMENT
    tf = sys.modules.get("tensorflow")  # loaded already wherever TensorFlow raised ``error``
    return tf is not None and isinstance(error, tf.errors.InvalidArgumentError)


@dataclass(frozen=True)
class LocalModel:
    """A SavedModel version directory, and the model name and version its records report."""

    path: str
    model_name: str
    version: int

    @classmethod
    def resolve(cls, model_dir: str, model_name: str = names.MODEL_NAME) -> LocalModel:
        """``model_dir`` is a version directory, or a base path whose newest numeric version is taken.

        The newest version is the one TF Serving's default policy would serve.
        """
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
                raise FileNotFoundError(
                    f"{model_dir}: neither a SavedModel nor a folder of numbered SavedModel versions"
                )
            path = posixpath.join(path, str(max(versions)))
        base = posixpath.basename(path)
        return cls(path, model_name, int(base) if base.isdigit() else 0)


class _LoadedSignature:
    """A SavedModel signature as a callable of one input; holds the loaded object so its variables stay alive."""

    def __init__(self, path: str, signature: str):
        tf = quiet.import_tensorflow()  # a worker's first use of TensorFlow: its banner stays off stderr
        self._tf = tf
        self._loaded = tf.saved_model.load(path)
        self._function = self._loaded.signatures[signature]

    def __call__(self, alias: str, inputs: Sequence[Any]) -> dict[str, np.ndarray]:
        dtype = self._tf.string if inputs and isinstance(inputs[0], bytes) else None
        return {k: v.numpy() for k, v in self._function(**{alias: self._tf.constant(list(inputs), dtype)}).items()}


class SignatureHandler(ModelHandler[Any, PredictionResult, _LoadedSignature]):
    """``RunInference`` handler running one signature of a SavedModel in the worker; the in-process twin of
    :class:`~batch.tfserving.TFServingModelHandler`, with the same results (a ``PredictionResult`` per example,
    ``model_id`` = ``name:version``).

    Beam's TF handlers feed tensors to a model's ``__call__``; this model's
    decoding lives in a signature that takes encoded bytes, so the job's two
    paths run exactly the same graph.
    """

    def __init__(
        self, model: LocalModel, *, signature: str = names.PREDICT_IMAGES, input_alias: str = names.INPUT_IMAGE_BYTES
    ):
        super().__init__()
        self._model = model
        self._signature = signature
        self._input_alias = input_alias

    def load_model(self) -> _LoadedSignature:
        return _LoadedSignature(self._model.path, self._signature)

    def run_inference(
        self, batch: Sequence[Any], model: _LoadedSignature, inference_args: dict[str, Any] | None = None
    ) -> list[PredictionResult]:
        outputs = model(self._input_alias, batch)
        return per_example(batch, outputs, f"{self._model.model_name}:{self._model.version}", self._model.path)

    def __repr__(self) -> str:
        return f"SignatureHandler({self._model.path!r}, signature={self._signature!r})"
