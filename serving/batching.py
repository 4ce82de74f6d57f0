"""Server-side batching with TF Serving's BatchingParameters semantics.

Concurrent requests for the same model version and signature (and, unless
``pad_variable_length_inputs``, the same per-row shapes) wait in one queue;
a batch is closed when it holds ``max_batch_size`` rows or its oldest request
has waited ``batch_timeout_micros``; ``num_batch_threads`` workers run closed
batches as one call and hand each caller its own rows. A request is never
split; one bigger than ``max_batch_size`` is INVALID_ARGUMENT and a full queue
(``max_enqueued_batches`` batches) is UNAVAILABLE, as in TF Serving. When
``allowed_batch_sizes`` is set a batch is padded up to the next allowed size.
A batch that fails is re-run request by request, so one bad image only fails
its own caller.

Usage::

    scheduler = BatchScheduler(read_batching_parameters("batching.config"))
    outputs = scheduler.run(("fashion_mnist", 1), signature, inputs, timeout=5.0)

Thread safety: ``run`` is called from many request threads at once and blocks
each until its rows are done; the scheduler owns its batch threads, which
``stop()`` ends after running what is queued.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field

import numpy as np
from google.protobuf import text_format

from fmnist.common import errors
from fmnist.serving import protos
from fmnist.serving.signature import Signature

log = logging.getLogger(__name__)


# tensorflow.serving.BatchingParameters (session_bundle_config.proto), every field, so any file
# the real server reads parses here too.
_SCHEMA = """
name: "fmnist/batching_parameters.proto" package: "tensorflow.serving" syntax: "proto3"
dependency: "google/protobuf/wrappers.proto"
message_type {
  name: "BatchingParameters"
  field { name: "max_batch_size" number: 1 label: LABEL_OPTIONAL
          type: TYPE_MESSAGE type_name: ".google.protobuf.Int64Value" }
  field { name: "batch_timeout_micros" number: 2 label: LABEL_OPTIONAL
          type: TYPE_MESSAGE type_name: ".google.protobuf.Int64Value" }
  field { name: "max_enqueued_batches" number: 3 label: LABEL_OPTIONAL
          type: TYPE_MESSAGE type_name: ".google.protobuf.Int64Value" }
  field { name: "num_batch_threads" number: 4 label: LABEL_OPTIONAL
          type: TYPE_MESSAGE type_name: ".google.protobuf.Int64Value" }
  field { name: "allowed_batch_sizes" number: 6 label: LABEL_REPEATED type: TYPE_INT64 }
  field { name: "pad_variable_length_inputs" number: 7 label: LABEL_OPTIONAL type: TYPE_BOOL }
  field { name: "thread_pool_name" number: 5 label: LABEL_OPTIONAL
          type: TYPE_MESSAGE type_name: ".google.protobuf.StringValue" }
  field { name: "enable_large_batch_splitting" number: 8 label: LABEL_OPTIONAL
          type: TYPE_MESSAGE type_name: ".google.protobuf.BoolValue" }
  field { name: "max_execution_batch_size" number: 9 label: LABEL_OPTIONAL
          type: TYPE_MESSAGE type_name: ".google.protobuf.Int64Value" }
  field { name: "low_priority_max_batch_size" number: 10 label: LABEL_OPTIONAL
          type: TYPE_MESSAGE type_name: ".google.protobuf.Int64Value" }
  field { name: "low_priority_batch_timeout_micros" number: 11 label: LABEL_OPTIONAL
          type: TYPE_MESSAGE type_name: ".google.protobuf.Int64Value" }
  field { name: "low_priority_max_enqueued_batches" number: 12 label: LABEL_OPTIONAL
          type: TYPE_MESSAGE type_name: ".google.protobuf.Int64Value" }
  field { name: "low_priority_allowed_batch_sizes" number: 13 label: LABEL_REPEATED type: TYPE_INT64 }
  field { name: "mixed_priority_batching_policy" number: 14 label: LABEL_OPTIONAL type: TYPE_STRING }
}
"""
# Fields TF Serving uses to split oversized requests and to schedule low-priority traffic: the
# embedded server has neither (a request above max_batch_size is refused; every request is high
# priority), so they are accepted and their being ignored is logged.
_NOT_HONOURED = (
    "enable_large_batch_splitting",
    "max_execution_batch_size",
    "low_priority_max_batch_size",
    "low_priority_batch_timeout_micros",
    "low_priority_max_enqueued_batches",
    "low_priority_allowed_batch_sizes",
    "mixed_priority_batching_policy",
)
_BatchingParametersProto = protos.message_class(_SCHEMA, "tensorflow.serving.BatchingParameters")


@dataclass(frozen=True)
class BatchingParameters:
    """TF Serving's defaults (BasicBatchScheduler / batching_session)."""

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    allowed_batch_sizes: tuple[int, ...] = ()
    pad_variable_length_inputs: bool = False
    thread_pool_name: str = "batch_threads"  # names the batch threads

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_enqueued_batches", "num_batch_threads"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.batch_timeout_micros < 0:
            raise ValueError("batch_timeout_micros must be non-negative")
        sizes = self.allowed_batch_sizes
        if sizes:
            if any(b <= a for a, b in itertools.pairwise(sizes)) or sizes[0] <= 0:
                raise ValueError("allowed_batch_sizes entries must be monotonically increasing")
            if sizes[-1] != self.max_batch_size:
                raise ValueError("final entry in allowed_batch_sizes must equal max_batch_size")


def parse_batching_parameters(text: str) -> BatchingParameters:
    """Text-format BatchingParameters → BatchingParameters; ValueError naming the problem."""
    try:
        proto = text_format.Parse(text, _BatchingParametersProto())
    except text_format.ParseError as error:
        raise ValueError(f"bad batching parameters: {error}") from None
    return _parameters(proto)


def _parameters(proto) -> BatchingParameters:
    values = {
        name: getattr(proto, name).value
        for name in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads")
        if proto.HasField(name)
    }
    ignored = [name for name in _NOT_HONOURED if _is_set(proto, name)]
    if ignored:
        log.warning("Batching parameters the embedded server does not implement are ignored: %s", ", ".join(ignored))
    return BatchingParameters(
        **values,
        allowed_batch_sizes=tuple(proto.allowed_batch_sizes),
        pad_variable_length_inputs=proto.pad_variable_length_inputs,
        **({"thread_pool_name": proto.thread_pool_name.value} if proto.HasField("thread_pool_name") else {}),
    )


def _is_set(proto, name: str) -> bool:
    field = proto.DESCRIPTOR.fields_by_name[name]
    if field.label == field.LABEL_REPEATED:
        return bool(getattr(proto, name))
    return proto.HasField(name) if field.message_type is not None else bool(getattr(proto, name))


def read_batching_parameters(path: str | os.PathLike) -> BatchingParameters:
    """``--batching_parameters_file``; ValueError naming the problem."""
    return _parameters(protos.parse_text_file(path, _BatchingParametersProto()))


@dataclass
class _Task:
    signature: Signature
    inputs: Mapping[str, np.ndarray]
    size: int
    enqueued: float
    done: threading.Event = field(default_factory=threading.Event)
    cancelled: bool = False
    result: dict[str, np.ndarray] | None = None
    error: errors.ServingError | None = None


@dataclass
class _Queue:
    tasks: collections.deque = field(default_factory=collections.deque)
    rows: int = 0


def _batch_size(inputs: Mapping[str, np.ndarray]) -> int:
    """The rows of a request, with batching_session.cc's checks and messages."""
    if any(array.ndim == 0 for array in inputs.values()):
        raise errors.InvalidArgument("Batching Run() input tensors must have at least one dimension")
    sizes = {array.shape[0] for array in inputs.values()}
    if len(sizes) != 1:
        raise errors.InvalidArgument("Batching Run() input tensors must have equal 0th-dimension size")
    return sizes.pop()


def _pad_to(array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if array.shape[1:] == shape:
        return array
    widths = [(0, 0)] + [(0, want - have) for have, want in zip(array.shape[1:], shape, strict=False)]
    return np.pad(array, widths, constant_values=b"" if array.dtype == object else 0)


def _merge(tasks: list[_Task], rows: int, pad_variable: bool) -> dict[str, np.ndarray]:
    """Concatenate the tasks' inputs, padding rows (and ragged dims) as configured."""
    merged = {}
    for alias in tasks[0].inputs:
        parts = [task.inputs[alias] for task in tasks]
        if pad_variable:
            inner = tuple(np.max([p.shape[1:] for p in parts], axis=0))
            parts = [_pad_to(p, inner) for p in parts]
        array = np.concatenate(parts) if len(parts) > 1 else parts[0]
        if rows > len(array):  # pad with copies of the first row, as TF Serving does
            array = np.concatenate([array, np.repeat(array[:1], rows - len(array), axis=0)])
        merged[alias] = array
    return merged


class BatchScheduler:
    """Queues per (caller key, signature, row shapes) and a pool of batch threads."""

    def __init__(
        self,
        params: BatchingParameters,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_batch: Callable[[int, int], None] = lambda rows, padded: None,
    ):
        self.params = params
        self._clock = clock
        self._on_batch = on_batch
        self._timeout = params.batch_timeout_micros / 1e6
        self._capacity = params.max_enqueued_batches * params.max_batch_size
        self._cond = threading.Condition()
        self._queues: dict[Hashable, _Queue] = {}
        self._closed = False
        self._workers = [
            threading.Thread(target=self._work, name=f"{params.thread_pool_name}-{i}", daemon=True)
            for i in range(params.num_batch_threads)
        ]
        for worker in self._workers:
            worker.start()

    def run(
        self, key: Hashable, signature: Signature, inputs: Mapping[str, np.ndarray], timeout: float | None
    ) -> dict[str, np.ndarray]:
        """Run ``inputs`` as part of a batch; blocks until done or ``timeout`` seconds pass."""
        size = _batch_size(inputs)
        if size > self.params.max_batch_size:
            raise errors.InvalidArgument(
                f"Task size {size} is larger than maximum input batch size {self.params.max_batch_size}"
            )
        if self.params.pad_variable_length_inputs:
            shapes = tuple((alias, a.dtype.str, a.ndim) for alias, a in sorted(inputs.items()))
        else:
            shapes = tuple((alias, a.dtype.str, a.shape[1:]) for alias, a in sorted(inputs.items()))
        task = _Task(signature, inputs, size, self._clock())
        with self._cond:
            if self._closed:
                raise errors.Unavailable("Batch scheduler is shutting down")
            queue = self._queues.setdefault((key, signature.key, shapes), _Queue())
            if queue.rows + size > self._capacity:
                raise errors.Unavailable("The batch scheduling queue to which this task was submitted is full")
            queue.tasks.append(task)
            queue.rows += size
            self._cond.notify()
        if not task.done.wait(timeout):
            with self._cond:
                task.cancelled = True
            raise errors.DeadlineExceeded("Deadline Exceeded")
        if task.error is not None:
            raise task.error
        return task.result

    def stop(self) -> None:
        """Run what is queued, then end the workers."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for worker in self._workers:
            worker.join()

    def _take(self) -> tuple[list[_Task], float | None]:
        """A closed batch if one is ready, else the seconds until one may be. Holds the lock."""
        now = self._clock()
        wake: float | None = None
        for key, queue in list(self._queues.items()):
            while queue.tasks and queue.tasks[0].cancelled:
                queue.rows -= queue.tasks.popleft().size
            if not queue.tasks:
                del self._queues[key]
                continue
            due = queue.tasks[0].enqueued + self._timeout
            if queue.rows < self.params.max_batch_size and now < due and not self._closed:
                wake = due - now if wake is None else min(wake, due - now)
                continue
            batch, rows = [], 0
            while queue.tasks and rows + queue.tasks[0].size <= self.params.max_batch_size:
                task = queue.tasks.popleft()
                queue.rows -= task.size
                if not task.cancelled:
                    batch.append(task)
                    rows += task.size
            if batch:
                return batch, None
        return [], wake

    def _work(self) -> None:
        while True:
            with self._cond:
                while True:
                    batch, wake = self._take()
                    if batch or (self._closed and not self._queues):
                        break
                    self._cond.wait(wake)
            if not batch:
                return
            self._execute(batch)

    def _padded_size(self, rows: int) -> int:
        return next((size for size in self.params.allowed_batch_sizes if size >= rows), rows)

    def _execute(self, batch: list[_Task]) -> None:
        rows = sum(task.size for task in batch)
        padded = self._padded_size(rows)
        try:
            outputs = batch[0].signature.run(_merge(batch, padded, self.params.pad_variable_length_inputs))
        except errors.ServingError as error:
            if len(batch) > 1:
                for task in batch:
                    self._execute([task])
                return
            self._finish(batch[0], error=error)
            return
        except Exception as error:  # never let a worker die with callers waiting
            log.exception("batch failed")
            for task in batch:
                self._finish(task, error=errors.Internal(str(error)))
            return
        self._on_batch(rows, padded)
        start = 0
        for task in batch:
            end = start + task.size
            self._finish(
                task,
                result={
                    alias: value[start:end] if value.ndim and value.shape[0] == padded else value
                    for alias, value in outputs.items()
                },
            )
            start = end

    @staticmethod
    def _finish(task: _Task, *, result: dict | None = None, error: errors.ServingError | None = None) -> None:
        task.result, task.error = result, error
        task.done.set()
