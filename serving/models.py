"""Model manager: which versions exist, which are loaded, and which one answers a request.

Follows TF Serving's ServerCore with the file-system source and the
availability-preserving policy: only numeric sub-directories of a model's
``base_path`` are versions; the version policy (latest N, all, specific)
picks the aspired ones; a new version is loaded and its warmup records are
replayed before it takes traffic; an old version is unloaded only once an
aspired one is available (or nothing is aspired any more), so a version that
fails to load leaves the serving one in place, with the error in its status.
A failed load is retried ``max_num_load_retries`` times,
``load_retry_interval_micros`` apart (LoaderHarness::Load), so a version
directory that appeared before its files were complete still loads; a base
path that cannot be listed changes nothing (FileSystemStoragePathSource emits
no aspired versions for it), while a listable, empty one unloads everything.

Usage::

    manager = ModelManager()
    manager.reload(single_model_config("fashion_mnist", "/models/fashion_mnist"))  # blocks while loading
    manager.start_polling(1.0)
    version = manager.resolve(request.model_spec)
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf.message import DecodeError
from tensorflow.core.protobuf import config_pb2, meta_graph_pb2, rewriter_config_pb2
from tensorflow_serving.apis import get_model_status_pb2, model_pb2, prediction_log_pb2
from tensorflow_serving.config import model_server_config_pb2

from fmnist.serving import inference, predict, protos, request_log
from fmnist.serving.predict import ServingError

log = logging.getLogger(__name__)

State = get_model_status_pb2.ModelVersionStatus.State
SERVE_TAG = "serve"
WARMUP_PATH = ("assets.extra", "tf_serving_warmup_requests")  # where TF Serving looks
MAX_WARMUP_RECORDS = 1000  # TF Serving's limit
FILE_SCHEME = "file://"
TENSORFLOW_PLATFORM = "tensorflow"


@dataclass(frozen=True)
class LoadedVersion:
    """One loaded, servable version. ``handle`` keeps the SavedModel (and its variables) alive."""

    name: str
    version: int
    path: str
    signature_defs: Mapping[str, meta_graph_pb2.SignatureDef]  # every one, as GetModelMetadata returns
    signatures: Mapping[str, predict.Signature]  # the callable ones
    handle: object = None


Loader = Callable[[str, int, str], LoadedVersion]


MIXED_PRECISION_MODES = ("", "bfloat16")  # TF Serving's --mixed_precision values ("": off)


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
    that halves the model call (0.30 → 0.16 ms for one image); convolutions
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
        key: predict.Signature(key, definition, _session_callable(session, definition))
        for key, definition in signature_defs.items()
        if not key.startswith("__")  # __saved_model_init_op: run by the loader, not callable
    }
    return LoadedVersion(name, version, path, signature_defs, signatures, session)


@contextlib.contextmanager
def _tf_warnings_off() -> Iterator[None]:
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _session_callable(session: tf.compat.v1.Session, definition: meta_graph_pb2.SignatureDef) -> predict.Function:
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


def replay_warmup(version: LoadedVersion, limits: predict.Limits, iterations: int = 1) -> int:
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
    version: LoadedVersion, entry: prediction_log_pb2.PredictionLog, limits: predict.Limits
) -> list[tuple[predict.Signature, dict[str, np.ndarray]]]:
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


def version_folders(base_path: str) -> dict[int, str]:
    """Version → folder name for the numeric sub-directories of ``base_path``, oldest first.

    A folder name is parsed as a number, as TF Serving's file-system source
    does, so ``00000123`` is version 123 (and is loaded from ``00000123``);
    anything else (staging dirs, files) is ignored. Raises OSError when
    ``base_path`` itself cannot be listed: a missing base path is not an
    empty one, and must not unload what is serving.
    """
    folders: dict[int, str] = {}
    with os.scandir(local_path(base_path)) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            if entry.name.isascii() and entry.name.isdigit() and entry.is_dir():
                folders.setdefault(int(entry.name), entry.name)
    return dict(sorted(folders.items()))


def local_path(base_path: str) -> str:
    """A base path as a local path: TF Serving takes ``file://`` URIs for local directories."""
    return base_path[len(FILE_SCHEME) :] if base_path.startswith(FILE_SCHEME) else base_path


def _is_relative(base_path: str) -> bool:
    """TF Serving's UriIsRelativePath: no scheme, no host and not an absolute path."""
    return "://" not in base_path and not os.path.isabs(base_path)


def aspired_versions(config: model_server_config_pb2.ModelConfig, present: list[int]) -> set[int]:
    """The versions the model's version policy wants loaded, of those on disk."""
    policy = config.model_version_policy
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return set(present)
    if choice == "specific":
        return set(present) & set(policy.specific.versions)
    count = policy.latest.num_versions if choice == "latest" and policy.latest.num_versions > 0 else 1
    return set(present[-count:])


def single_model_config(name: str, base_path: str) -> model_server_config_pb2.ModelServerConfig:
    """The config ``--model_name``/``--model_base_path`` stand for."""
    config = model_server_config_pb2.ModelServerConfig()
    entry = config.model_config_list.config.add()
    entry.name, entry.base_path, entry.model_platform = name, base_path, TENSORFLOW_PLATFORM
    return config


def read_config_file(path: str | os.PathLike) -> model_server_config_pb2.ModelServerConfig:
    """Parse a text-format ModelServerConfig file (``--model_config_file``); ValueError if bad."""
    return protos.parse_text_file(path, model_server_config_pb2.ModelServerConfig())


def validate_config(config: model_server_config_pb2.ModelServerConfig) -> None:
    """ServerCore's checks, as INVALID_ARGUMENT ServingErrors."""
    if config.WhichOneof("config") != "model_config_list":
        raise predict.invalid(
            "ServerModelConfig type not supported by HandleReloadConfigRequest. "
            "Only ModelConfigList is currently supported"
        )
    seen: set[str] = set()
    for entry in config.model_config_list.config:
        if not entry.name:
            raise predict.invalid("Model config entry without a name")
        if entry.name in seen:
            raise predict.invalid(f"Illegal to list model {entry.name} multiple times in config list")
        seen.add(entry.name)
        if not entry.base_path:
            raise predict.invalid(f"Model {entry.name} has no base_path")
        if _is_relative(entry.base_path):
            raise predict.invalid(
                f"Expected model {entry.name} to have an absolute path or URI; got base_path()={entry.base_path}"
            )
    for entry in config.model_config_list.config:
        _check_platform(entry)


def _check_platform(entry: model_server_config_pb2.ModelConfig) -> None:
    """ServerCore's GetPlatform checks: TensorFlow, named by ``model_platform`` or the deprecated ``model_type``."""
    if entry.model_type != model_server_config_pb2.MODEL_TYPE_UNSPECIFIED:
        if entry.model_platform:
            raise predict.invalid(
                "Illegal setting both ModelServerConfig::model_type (deprecated) and ModelServerConfig::model_platform."
            )
        if entry.model_type != model_server_config_pb2.TENSORFLOW:
            raise predict.invalid(f"ModelServerConfig::model_type choice {entry.model_type} not supported.")
        return
    if not entry.model_platform:
        raise predict.invalid(
            "Illegal setting neither ModelServerConfig::model_type (deprecated) nor ModelServerConfig::model_platform."
        )
    if entry.model_platform != TENSORFLOW_PLATFORM:
        raise predict.invalid(f"Model {entry.name} has unsupported model_platform '{entry.model_platform}'")


def _load_error_code(error: Exception) -> grpc.StatusCode:
    """The status code a failed load reports, as close to TF Serving's as the exception tells."""
    if isinstance(error, ServingError):
        return error.code
    if isinstance(error, tf.errors.OpError):
        return predict.status_code(error.error_code)
    if isinstance(error, DecodeError):
        return grpc.StatusCode.DATA_LOSS
    if isinstance(error, FileNotFoundError):
        return grpc.StatusCode.NOT_FOUND
    return grpc.StatusCode.UNKNOWN


@dataclass
class VersionStatus:
    """What GetModelStatus reports for one version."""

    state: int
    error_code: grpc.StatusCode = grpc.StatusCode.OK
    error_message: str = ""


@dataclass
class _Model:
    config: model_server_config_pb2.ModelConfig
    # Replaced, never mutated, so request threads read them without a lock.
    loaded: Mapping[int, LoadedVersion] = field(default_factory=dict)
    labels: Mapping[str, int] = field(default_factory=dict)
    statuses: dict[int, VersionStatus] = field(default_factory=dict)
    failed: set[int] = field(default_factory=set)  # retries used up: not loaded again while their directory stays
    folders: Mapping[int, str] = field(default_factory=dict)  # version → its folder's name, from the last scan
    scan_problem: str | None = None  # what the last scan of base_path found wrong, logged once per spell


class ModelManager:
    """Owns every configured model's versions; thread-safe; loads in the caller's or the poll thread."""

    def __init__(
        self,
        *,
        loader: Loader = load_saved_model,
        warmup: Callable[[LoadedVersion, predict.Limits], int] = replay_warmup,
        limits: predict.Limits = predict.Limits(),
        on_change: Callable[[str, list[int]], None] = lambda name, versions: None,
        max_num_load_retries: int = 5,
        load_retry_interval_micros: int = 60_000_000,
        allow_version_labels_for_unavailable_models: bool = False,
        request_logs: request_log.RequestLogs | None = None,
    ):
        """``max_num_load_retries``, ``load_retry_interval_micros`` and
        ``allow_version_labels_for_unavailable_models`` mean what TF Serving's flags of those
        names mean, with the same defaults (5 retries, one minute apart; negative: no wait).
        ``request_logs`` follows each config's ``logging_config``s."""
        self._labels_for_unavailable = allow_version_labels_for_unavailable_models
        self.request_logs = request_logs or request_log.RequestLogs()
        self._loader = loader
        self._max_num_load_retries = max(max_num_load_retries, 0)
        self._load_retry_interval = max(load_retry_interval_micros, 0) / 1e6
        self._warmup = warmup
        self._limits = limits
        self._on_change = on_change
        self._models: Mapping[str, _Model] = {}
        self._removed: Mapping[str, _Model] = {}  # dropped from the config; kept for their statuses
        self._sync_lock = threading.Lock()  # one reload/poll at a time
        self._status_lock = threading.Lock()  # statuses, read by GetModelStatus
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    # -- configuration and polling -------------------------------------------------

    def reload(self, config: model_server_config_pb2.ModelServerConfig) -> None:
        """Switch to ``config``: add/remove models, load their versions, then apply labels.

        Blocks until every model's aspired versions were tried, as
        ServerCore::ReloadConfig waits for them. Raises ServingError.
        """
        validate_config(config)
        self.request_logs.configure(config)  # before anything changes: a bad logging_config refuses the whole config
        with self._sync_lock:
            entries = {entry.name: entry for entry in config.model_config_list.config}
            models = {name: self._models.get(name) or _Model(entry) for name, entry in entries.items()}
            for name, model in models.items():
                model.config = entries[name]
            removed = [m for name, m in self._models.items() if name not in models]
            # New models load while removed ones still serve, as in ServerCore (new routes first).
            self._models = {**{m.config.name: m for m in removed}, **models}
            for model in models.values():
                self._sync(model)
            # As TF Serving's state monitor, a model dropped from the config still reports its
            # versions, in END; one added back starts afresh.
            self._removed = {
                **{name: m for name, m in self._removed.items() if name not in models},
                **{m.config.name: m for m in removed},
            }
            self._models = models
            for model in removed:
                self._unload(model, list(model.loaded))
                self._on_change(model.config.name, [])
            for model in models.values():
                self._apply_labels(model)

    def start_polling(self, wait_seconds: float) -> None:
        """Re-scan every base path every ``wait_seconds`` (≤ 0: never, as TF Serving's one-shot)."""
        if wait_seconds <= 0 or self._poller is not None:
            return
        self._poller = threading.Thread(target=self._poll, args=(wait_seconds,), name="model-poller", daemon=True)
        self._poller.start()

    def stop(self) -> None:
        """Stop polling and unload everything (states go to END)."""
        self._stop.set()
        if self._poller is not None:
            self._poller.join()
        with self._sync_lock:
            for model in self._models.values():
                self._unload(model, list(model.loaded))

    def poll_once(self) -> None:
        """One scan of every model's base path (what the poll thread does each period)."""
        with self._sync_lock:
            for model in self._models.values():
                self._sync(model)

    def _poll(self, wait_seconds: float) -> None:
        while not self._stop.wait(wait_seconds):
            try:
                self.poll_once()
            except Exception:  # a poll must never kill the poller
                log.exception("model poll failed")

    def _set_status(self, model: _Model, version: int, status: VersionStatus) -> None:
        with self._status_lock:
            model.statuses[version] = status

    def _sync(self, model: _Model) -> None:
        name, base_path = model.config.name, model.config.base_path
        try:
            model.folders = version_folders(base_path)
            present = list(model.folders)
            problem = None if present else f"No versions of servable {name} found under base path {base_path}"
        except OSError as error:
            present, problem = None, f"Could not find base path {base_path} for servable {name} with error {error}"
        if problem is not None and problem != model.scan_problem:  # once per spell, not every poll
            log.warning("%s", problem)
        model.scan_problem = problem
        if present is None:
            return
        model.failed &= set(present)
        aspired = aspired_versions(model.config, present)
        changed = False
        for version in sorted(aspired - set(model.loaded) - model.failed, reverse=True):
            changed |= self._load(model, version)
        stale = [v for v in model.loaded if v not in aspired]
        if stale and (not aspired or aspired & set(model.loaded)):
            self._unload(model, stale)
            changed = True
        if changed:
            self._on_change(name, sorted(model.loaded))

    def _load(self, model: _Model, version: int) -> bool:
        folder = model.folders.get(version, str(version))
        name, path = model.config.name, os.path.join(local_path(model.config.base_path), folder)
        self._set_status(model, version, VersionStatus(State.LOADING))
        log.info("Loading servable: {name: %s version: %d} from %s", name, version, path)
        loaded: LoadedVersion | None = None
        failure: Exception | None = None
        for attempt in range(self._max_num_load_retries + 1):
            if attempt:
                if self._stop.wait(self._load_retry_interval) or not self._still_aspired(model, version):
                    log.info("Load cancelled for servable: {name: %s version: %d}", name, version)
                    break
                log.info("Retrying load on servable version: {name: %s version: %d} retry: %d", name, version, attempt)
            try:
                candidate = self._loader(name, version, path)
                replayed = self._warmup(candidate, self._limits)
            except Exception as error:
                failure = error
                log.error("Servable {name: %s version: %d} load failure: %s", name, version, error)
                continue
            loaded = candidate
            break
        if loaded is None:
            message = f"Failed to load servable {name} version {version} from {path}: {failure}"
            model.failed.add(version)
            self._set_status(model, version, VersionStatus(State.END, _load_error_code(failure), message))
            return False
        model.loaded = {**model.loaded, version: loaded}
        self._set_status(model, version, VersionStatus(State.AVAILABLE))
        log.info("Successfully loaded servable {name: %s version: %d} (%d warmup requests)", name, version, replayed)
        return True

    def _still_aspired(self, model: _Model, version: int) -> bool:
        """Whether a failing version is still worth retrying: TF Serving cancels the retries of a
        version its source no longer aspires (its directory went, or a newer one displaced it)."""
        try:
            return version in aspired_versions(model.config, list(version_folders(model.config.base_path)))
        except OSError:  # an unlistable base path aspires nothing new, and withdraws nothing either
            return True

    def _unload(self, model: _Model, versions: list[int]) -> None:
        for version in versions:
            self._set_status(model, version, VersionStatus(State.UNLOADING))
        model.loaded = {v: lv for v, lv in model.loaded.items() if v not in versions}
        for version in versions:
            self._set_status(model, version, VersionStatus(State.END))
            log.info("Unloaded servable {name: %s version: %d}", model.config.name, version)

    def _apply_labels(self, model: _Model) -> None:
        """Labels must name available versions; with ``allow_version_labels_for_unavailable_models``
        a label not yet in use may name one still to come (TF Serving's rule: moving a label in
        use to an unavailable version would send its traffic nowhere)."""
        labels = dict(model.config.version_labels)
        for label, version in labels.items():
            new_label = label not in model.labels
            if version not in model.loaded and not (self._labels_for_unavailable and new_label):
                raise ServingError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"Request to assign label to version {version} of model {model.config.name}, "
                    "which is not currently available for inference",
                )
        model.labels = labels

    # -- lookups used by the services ----------------------------------------------

    def resolve(self, spec: model_pb2.ModelSpec) -> LoadedVersion:
        """The loaded version a ModelSpec names: explicit version, label, or the latest."""
        if not spec.name:
            raise predict.invalid("ModelSpec has no name specified.")
        model = self._models.get(spec.name)
        choice = spec.WhichOneof("version_choice")
        if choice == "version_label":
            version = self.label_version(spec.name, spec.version_label)
            request = f"Specific({spec.name}, {version})"
        elif choice == "version":
            version = spec.version.value
            request = f"Specific({spec.name}, {version})"
        else:
            version = max(model.loaded) if model is not None and model.loaded else None
            request = f"Latest({spec.name})"
        loaded = model.loaded.get(version) if model is not None and version is not None else None
        if loaded is None:
            raise ServingError(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: {request}")
        return loaded

    def statuses(self, name: str, version: int | None = None) -> list[tuple[int, VersionStatus]]:
        """(version, status) newest first, as GetModelStatus lists them; NOT_FOUND as TF Serving."""
        model = self._models.get(name) or self._removed.get(name)
        with self._status_lock:
            statuses = dict(model.statuses) if model is not None else {}
        if version is not None:
            if version not in statuses:
                raise ServingError(grpc.StatusCode.NOT_FOUND, f"Could not find version {version} of model {name}")
            return [(version, statuses[version])]
        if not statuses:
            raise ServingError(grpc.StatusCode.NOT_FOUND, f"Could not find any versions of model {name}")
        return sorted(statuses.items(), reverse=True)

    def label_version(self, name: str, label: str) -> int:
        model = self._models.get(name)
        if model is None or label not in model.labels:
            raise predict.invalid(f"Unrecognized servable version label: {label}")
        return model.labels[label]
