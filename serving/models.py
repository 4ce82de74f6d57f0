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

What a version is, which ones a policy wants and whether a config is valid
are :mod:`fmnist.serving.model_config`'s answers; loading one and replaying
its warmup are :mod:`fmnist.serving.loader`'s.

Usage::

    manager = ModelManager()
    manager.reload(model_config.single_model_config("fashion_mnist", "/models/fashion_mnist"))  # blocks
    manager.start_polling(1.0)
    version = manager.resolve(request.model_spec)

Ownership: the manager owns the loaded versions (their sessions close when
the last request holding one lets go), the poll thread and the request logs.

Thread safety: every method may be called from any thread. Reloads and polls
take turns under one lock; request threads read the loaded versions and labels
without a lock, because those maps are replaced whole, never changed in place.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import grpc
import tensorflow as tf
from google.protobuf.message import DecodeError
from tensorflow_serving.apis import get_model_status_pb2, model_pb2
from tensorflow_serving.config import model_server_config_pb2

from fmnist.common import errors, imagefile
from fmnist.serving import request_log
from fmnist.serving.loader import LoadedVersion, Loader, load_saved_model, replay_warmup
from fmnist.serving.model_config import aspired_versions, local_path, validate_config, version_folders

log = logging.getLogger(__name__)

State = get_model_status_pb2.ModelVersionStatus.State


def _load_error_code(error: Exception) -> grpc.StatusCode:
    """The status code a failed load reports, as close to TF Serving's as the exception tells."""
    if isinstance(error, errors.ServingError):
        return error.code
    if isinstance(error, tf.errors.OpError):
        return errors.status_code(error.error_code)
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
        warmup: Callable[[LoadedVersion, imagefile.Limits], int] = replay_warmup,
        limits: imagefile.Limits = imagefile.Limits(),
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
                raise errors.FailedPrecondition(
                    f"Request to assign label to version {version} of model {model.config.name}, "
                    "which is not currently available for inference",
                )
        model.labels = labels

    # -- lookups used by the services ----------------------------------------------

    def resolve(self, spec: model_pb2.ModelSpec) -> LoadedVersion:
        """The loaded version a ModelSpec names: explicit version, label, or the latest."""
        if not spec.name:
            raise errors.InvalidArgument("ModelSpec has no name specified.")
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
            raise errors.NotFound(f"Servable not found for request: {request}")
        return loaded

    def statuses(self, name: str, version: int | None = None) -> list[tuple[int, VersionStatus]]:
        """(version, status) newest first, as GetModelStatus lists them; NOT_FOUND as TF Serving."""
        model = self._models.get(name) or self._removed.get(name)
        with self._status_lock:
            statuses = dict(model.statuses) if model is not None else {}
        if version is not None:
            if version not in statuses:
                raise errors.NotFound(f"Could not find version {version} of model {name}")
            return [(version, statuses[version])]
        if not statuses:
            raise errors.NotFound(f"Could not find any versions of model {name}")
        return sorted(statuses.items(), reverse=True)

    def label_version(self, name: str, label: str) -> int:
        model = self._models.get(name)
        if model is None or label not in model.labels:
            raise errors.InvalidArgument(f"Unrecognized servable version label: {label}")
        return model.labels[label]
