"""Loading one version: its SavedModel in a session of its own, then its warmup requests replayed.

What TF Serving's SavedModelBundleFactory and saved_model_warmup do for a
version before it takes traffic: load the meta graph the tags name, make each
signature a callable, and replay ``assets.extra/tf_serving_warmup_requests``
so the first real request does not pay for the graph's first run. The
:class:`~fmnist.serving.models.ModelManager` calls :func:`load_saved_model` and
:func:`replay_warmup` (or stand-ins for them in tests).

Usage::

    version = load_saved_model("fashion_mnist", 3, "/models/fashion_mnist/3", intra_op_threads=1)
    replayed = replay_warmup(version, Limits())

Thread safety: a :class:`LoadedVersion` is immutable and its signatures may be
called from any number of threads at once (each runs in the calling thread).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import config_pb2, meta_graph_pb2, rewriter_config_pb2
from tensorflow_serving.apis import prediction_log_pb2

from fmnist.common import imagefile
from fmnist.serving import inference, predict
from fmnist.serving.config import MIXED_PRECISION_MODES, SERVE_TAG
from fmnist.serving.signature import Function, Signature

WARMUP_PATH = ("assets.extra", "tf_serving_warmup_requests")  # where TF Serving looks
MAX_WARMUP_RECORDS = 1000  # TF Serving's limit


@dataclass(frozen=True)
class LoadedVersion:
    """One loaded, servable version. ``handle`` keeps the SavedModel (and its variables) alive.

    ``functions`` is true for a TF2 export (``tf.saved_model.save``, Keras ``export``): each
    signature is a function of its own, fed through a placeholder of its own, where a TF1
    export's signatures name tensors of one shared graph.
    """

    name: str
    version: int
    path: str
    signature_defs: Mapping[str, meta_graph_pb2.SignatureDef]  # every one, as GetModelMetadata returns
    signatures: Mapping[str, Signature]  # the callable ones
    handle: object = None
    functions: bool = False


Loader = Callable[[str, int, str], LoadedVersion]


def load_saved_model(
    name: str,
    version: int,
    path: str,
    *,
    intra_op_threads: int = 0,
    inter_op_threads: int = 0,
    mixed_precision: str = "",
    tags: tuple[str, ...] = (SERVE_TAG,),
) -> LoadedVersion:
    """The real loader: the ``serve`` meta graph in a session of its own, as TF Serving loads a SavedModel.

    Each signature becomes a session callable run in the calling thread
    (``inter_op_thread_pool=-1``): no Python-level argument binding of a
    concrete function and no hand-off to TF's inter-op threads. For the mlp
    that is a large share of a one-image call; convolutions
    still use the intra-op threads. The session closes when the last request
    holding this version lets go of it. The thread counts are TF Serving's
    ``--tensorflow_intra_op_parallelism`` and ``--tensorflow_inter_op_parallelism`` (0: TF picks).

    ``tags`` pick the meta graph (``--saved_model_tags``, default ``serve``).

    ``mixed_precision="bfloat16"`` is TF Serving's ``--mixed_precision=bfloat16``:
    TF's oneDNN auto-mixed-precision rewrite runs the float32 graph's matmuls
    and convolutions in bfloat16. TF applies it on any AVX-512 CPU but it pays
    only where bfloat16 is native (AVX512-BF16, AMX); the exported model stays
    float32, so the choice belongs to the host that serves it.
    """
    if mixed_precision not in MIXED_PRECISION_MODES:
        raise ValueError(f"unknown mixed_precision {mixed_precision!r}; choose bfloat16 or leave it empty")
    graph = tf.Graph()
    config = tf.compat.v1.ConfigProto(
        intra_op_parallelism_threads=intra_op_threads, inter_op_parallelism_threads=inter_op_threads
    )
    if mixed_precision == "bfloat16":
        config.graph_options.rewrite_options.auto_mixed_precision_onednn_bfloat16 = (
            rewriter_config_pb2.RewriterConfig.ON
        )
    session = tf.compat.v1.Session(graph=graph, config=config)
    with graph.as_default(), _tf_warnings_off():  # the v1 loader is "deprecated" for training code, not for this
        meta_graph = tf.compat.v1.saved_model.loader.load(session, list(tags), path)
    signature_defs = dict(meta_graph.signature_def)
    signatures = {
        key: Signature(key, definition, _session_callable(session, definition))
        for key, definition in signature_defs.items()
        if not key.startswith("__")  # __saved_model_init_op: run by the loader, not callable
    }
    # A TF2 export carries its object graph (its functions and variables); a TF1 export has none.
    functions = bool(meta_graph.object_graph_def.nodes)
    return LoadedVersion(name, version, path, signature_defs, signatures, session, functions)


@contextlib.contextmanager
def _tf_warnings_off() -> Iterator[None]:
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _session_callable(session: tf.compat.v1.Session, definition: meta_graph_pb2.SignatureDef) -> Function:
    """The signature as one session callable, fed and fetched by tensor name, run inline.

    Built from CallableOptions, as TF Serving's session runs it: the feeds go to the C++
    session as they are, which refuses a wrong dtype ("Expects arg[0] to be float but string
    is provided") and leaves shapes to the graph. (``Session.make_callable`` with a feed list
    would go through ``Session.run``, which casts feeds and refuses shapes the placeholder
    does not declare, unlike TF Serving.)
    """
    inputs, outputs = sorted(definition.inputs), sorted(definition.outputs)
    options = config_pb2.CallableOptions(
        feed=[definition.inputs[alias].name for alias in inputs],
        fetch=[definition.outputs[alias].name for alias in outputs],
    )
    options.run_options.inter_op_thread_pool = -1
    call = session._make_callable_from_options(options)  # the public make_callable's fetch-only path

    def run(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(outputs, call(*(arrays[alias] for alias in inputs)), strict=False))

    return run


def replay_warmup(version: LoadedVersion, limits: imagefile.Limits, iterations: int = 1) -> int:
    """Run the version's warmup records, as TF Serving does before a version takes traffic.

    Predict, Classify, Regress and MultiInference logs are replayed, each
    ``iterations`` times (``--num_request_iterations_for_warmup``). Any failing
    record fails the load. Returns the number of records replayed.
    """
    path = Path(version.path, *WARMUP_PATH)
    if not path.is_file():
        return 0
    count = 0
    for record in tf.data.TFRecordDataset(str(path)):
        count += 1
        if count > MAX_WARMUP_RECORDS:
            raise ValueError(f"Number of warmup records exceeds the maximum ({MAX_WARMUP_RECORDS}) at {path}")
        runs = _warmup_runs(version, prediction_log_pb2.PredictionLog.FromString(record.numpy()), limits)
        for _ in range(iterations):
            for signature, inputs in runs:
                signature.run(inputs)
    return count


def _warmup_runs(
    version: LoadedVersion, entry: prediction_log_pb2.PredictionLog, limits: imagefile.Limits
) -> list[tuple[Signature, dict[str, np.ndarray]]]:
    """The (signature, inputs) calls one warmup record stands for."""
    kind = entry.WhichOneof("log_type")
    if kind == "predict_log":
        request = entry.predict_log.request
        signature = predict.find_signature(version.signatures, request.model_spec.signature_name)
        inputs, _ = predict.prepare(signature, request, limits)
        return [(signature, inputs)]
    if kind in ("classify_log", "regress_log", "multi_inference_log"):
        request = getattr(entry, kind).request
        specs = [task.model_spec for task in request.tasks] if kind == "multi_inference_log" else [request.model_spec]
        examples = {inference.INPUTS: inference.serialized_examples(request.input)}
        return [(inference.find_signature(version.signatures, spec.signature_name), examples) for spec in specs]
    raise ValueError(f"Unsupported log_type for warmup: {kind}")
