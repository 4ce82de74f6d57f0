"""Request logging as TF Serving's model config spells it, with a log collector that works: TFRecord files.

A model's ``logging_config { sampling_config { sampling_rate: R }
log_collector_config { type: "file" filename_prefix: "PATH/prefix" } }`` makes
the server write a sample of its requests, each with its response, as
``PredictionLog`` records (the format of TF Serving's warmup files, of TFX
BulkInferrer's output, and what ``fmnist batch`` reads back as input). The
open-source ``tensorflow_model_server`` accepts that config but registers no
collector, so it fails ("No request-logger-creator provided"); here the
"file" type is implemented.

A request never waits for its log: the handler only samples and enqueues;
one writer thread per model builds, serializes and writes the records, to
``PREFIX.<start ms>.<n>.tfrecord`` files rotated by size or age. When the queue
is full or the disk refuses a write, the record is dropped and counted
(``dropped``), never the request. ``close()`` flushes what is queued.

Usage::

    logs = RequestLogs(); logs.configure(model_server_config)
    logs.log("predict", request, response)     # from the request thread, after the response is built
    logs.close()
"""

from __future__ import annotations

import logging
import os
import queue
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2
from tensorflow_serving.config import model_server_config_pb2

from fmnist.common import errors, names

log = logging.getLogger(__name__)

FILE_COLLECTOR = "file"
SUFFIX = names.REQUEST_LOG_SUFFIX
_STOP = object()
_FLUSH_EVERY = 1.0  # seconds
_DRAIN_EVERY = 0.1  # seconds between the writer's bursts
# request kind → the PredictionLog field that holds it and its log message type
_LOGS = {
    "predict": ("predict_log", prediction_log_pb2.PredictLog),
    "classify": ("classify_log", prediction_log_pb2.ClassifyLog),
    "regress": ("regress_log", prediction_log_pb2.RegressLog),
    "multi_inference": ("multi_inference_log", prediction_log_pb2.MultiInferenceLog),
}


@dataclass(frozen=True)
class Rotation:
    """When a log file is closed and the next one started: whichever of size and age comes first."""

    max_bytes: int = 64 << 20
    max_seconds: float = 300.0


class _Writer:
    """One model's queue and the thread that turns its entries into TFRecord files."""

    def __init__(
        self,
        model_name: str,
        config,
        rotation: Rotation,
        queue_size: int,
        on_drop: Callable[[str], None],
        clock: Callable[[], float],
    ):
        self.model_name = model_name
        self.config_key = config.SerializeToString()  # an unchanged config keeps its writer across reloads
        self.rate = config.sampling_config.sampling_rate
        self._prefix = config.log_collector_config.filename_prefix
        self._sampling = config.sampling_config
        self._rotation = rotation
        self._on_drop = on_drop
        self._clock = clock
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._file: tf.io.TFRecordWriter | None = None
        self._opened_at = 0.0
        self._bytes = 0
        self._files = 0
        self._thread = threading.Thread(target=self._drain, name=f"request-log-{model_name}", daemon=True)
        self._thread.start()

    def put(self, entry: tuple) -> None:
        try:
            self._queue.put_nowait(entry)
        except queue.Full:
            self._on_drop(self.model_name)

    def close(self) -> None:
        self._queue.put(_STOP)  # after everything queued before it
        self._thread.join()

    def _drain(self) -> None:
        """Write what is queued, a burst at a time.

        Waking up for every request made this thread take the GIL from the
        request threads just as they answered, slowing short requests; a
        burst every ``_DRAIN_EVERY`` seconds costs the same work but few
        wake-ups.
        """
        stopping = False
        while not stopping:
            entries = [self._queue.get()]
            time.sleep(_DRAIN_EVERY)
            while True:
                try:
                    entries.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            for entry in entries:
                if entry is _STOP:
                    stopping = True
                    continue
                try:
                    self._write(self._record(*entry))
                except (OSError, tf.errors.OpError) as error:  # a full or vanished disk: drop, count, go on
                    self._on_drop(self.model_name)
                    log.warning("request log for %s: record dropped: %s", self.model_name, error)
                    self._close_file()
        self._close_file()

    def _record(self, kind: str, request, response) -> bytes:
        field, log_type = _LOGS[kind]
        record = prediction_log_pb2.PredictionLog()
        metadata = record.log_metadata
        # the spec of the version that answered (a MultiInference response has one per task, all of one version)
        metadata.model_spec.CopyFrom(
            response.results[0].model_spec if kind == "multi_inference" else response.model_spec
        )
        metadata.sampling_config.CopyFrom(self._sampling)
        metadata.saved_model_tags.append(tf.saved_model.SERVING)
        metadata.timestamp_secs = int(self._clock())
        entry = getattr(record, field)
        entry.CopyFrom(log_type(request=request, response=response))
        return record.SerializeToString()

    def _write(self, data: bytes) -> None:
        now = self._clock()
        if self._file is not None and (
            self._bytes >= self._rotation.max_bytes or now - self._opened_at >= self._rotation.max_seconds
        ):
            self._close_file()
        if self._file is None:
            os.makedirs(os.path.dirname(self._prefix) or ".", exist_ok=True)
            self._file = tf.io.TFRecordWriter(f"{self._prefix}.{int(now * 1000)}.{self._files}{SUFFIX}")
            self._files += 1
            self._opened_at, self._flushed_at, self._bytes = now, now, 0
        self._file.write(data)
        self._bytes += len(data) + 16  # TFRecord framing: length, two CRCs
        if now - self._flushed_at >= _FLUSH_EVERY:  # on disk within a second for whoever tails the log,
            self._file.flush()  # without a system call per record
            self._flushed_at = now

    def _close_file(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except (OSError, tf.errors.OpError):
                pass
            self._file = None


class RequestLogs:
    """The request loggers of every model whose config has a ``logging_config``."""

    def __init__(
        self,
        *,
        rotation: Rotation = Rotation(),
        queue_size: int = 10_000,
        clock: Callable[[], float] = time.time,
        sample: Callable[[], float] = random.random,
        on_drop: Callable[[str], None] = lambda model: None,
    ):
        self._rotation = rotation
        self._queue_size = queue_size
        self._clock = clock
        self._sample = sample
        self._writers: dict[str, _Writer] = {}
        self._lock = threading.Lock()
        self.dropped: Counter = Counter()  # model name → records dropped (queue full, disk refused)
        self._on_drop = on_drop

    def configure(self, config: model_server_config_pb2.ModelServerConfig) -> None:
        """Start, keep or stop each model's logger as ``config`` says; an unknown collector is INVALID_ARGUMENT."""
        wanted = {}
        for entry in config.model_config_list.config:
            if not entry.HasField("logging_config"):
                continue
            collector = entry.logging_config.log_collector_config
            if collector.type != FILE_COLLECTOR:
                raise errors.InvalidArgument(
                    f"Model {entry.name}: unsupported log collector type {collector.type!r} "
                    f"(this server writes type {FILE_COLLECTOR!r}: TFRecord files)"
                )
            if not collector.filename_prefix:
                raise errors.InvalidArgument(f"Model {entry.name}: log_collector_config needs a filename_prefix")
            wanted[entry.name] = entry.logging_config
        with self._lock:
            old, self._writers = self._writers, {}
            for name, logging_config in wanted.items():
                same = old.get(name)
                if same is not None and same.config_key == logging_config.SerializeToString():
                    self._writers[name] = old.pop(name)
                else:
                    self._writers[name] = _Writer(
                        name, logging_config, self._rotation, self._queue_size, self._count_drop, self._clock
                    )
        for writer in old.values():
            writer.close()

    def _count_drop(self, model: str) -> None:
        self.dropped[model] += 1
        self._on_drop(model)

    def log(self, kind: str, request, response) -> None:
        """Sample and queue one answered request; costs the caller a dict lookup and a random draw."""
        spec = request.tasks[0].model_spec if kind == "multi_inference" else request.model_spec
        writer = self._writers.get(spec.name)
        if writer is not None and self._sample() < writer.rate:
            writer.put((kind, request, response))

    def close(self) -> None:
        """Write everything queued and close the files."""
        with self._lock:
            writers, self._writers = list(self._writers.values()), {}
        for writer in writers:
            writer.close()
