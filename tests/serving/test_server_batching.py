"""The batch scheduler on its own, with a stand-in signature that records every batch it runs."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2

from fmnist.common.errors import ServingError
from fmnist.serving.batching import BatchingParameters, BatchScheduler
from fmnist.serving.signature import Signature


class Recorder:
    """y = 2x (and x's row sums), remembering the shape of every batch."""

    def __init__(self, fail_on: float | None = None):
        self.shapes: list[tuple[int, ...]] = []
        self.fail_on = fail_on
        self.signature = Signature("sig", meta_graph_pb2.SignatureDef(), self)

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = tf.constant(inputs["x"])
        self.shapes.append(tuple(x.shape))
        if self.fail_on is not None:
            tf.debugging.assert_none_equal(x, tf.constant(self.fail_on, x.dtype), message="poisoned row")
        return {"y": (x * 2).numpy(), "total": tf.reduce_sum(tf.reshape(x, [x.shape[0], -1]), axis=1).numpy()}


def run_concurrently(scheduler: BatchScheduler, signature: Signature, arrays: list[np.ndarray], timeout=5.0) -> list:
    results: list = [None] * len(arrays)

    def call(index: int) -> None:
        try:
            results[index] = scheduler.run("model", signature, {"x": arrays[index]}, timeout)
        except ServingError as error:
            results[index] = error

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(arrays))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


@pytest.fixture
def scheduler_for():
    made: list[BatchScheduler] = []

    def make(**params) -> BatchScheduler:
        made.append(BatchScheduler(BatchingParameters(num_batch_threads=1, **params)))
        return made[-1]

    yield make
    for scheduler in made:
        scheduler.stop()


def test_rows_are_merged_padded_to_an_allowed_size_and_split_back(scheduler_for):
    recorder = Recorder()
    scheduler = scheduler_for(max_batch_size=8, batch_timeout_micros=200_000, allowed_batch_sizes=(4, 8))
    arrays = [np.full((n, 3), float(i), np.float32) for i, n in enumerate((1, 2, 2))]
    results = run_concurrently(scheduler, recorder.signature, arrays)
    assert recorder.shapes == [(8, 3)]  # 5 rows in one batch, padded to 8
    for array, result in zip(arrays, results, strict=False):
        np.testing.assert_array_equal(result["y"], array * 2)
        np.testing.assert_array_equal(result["total"], array.sum(axis=1))


def test_a_full_batch_closes_before_the_timeout_and_big_tasks_are_refused(scheduler_for):
    recorder = Recorder()
    scheduler = scheduler_for(max_batch_size=4, batch_timeout_micros=10_000_000)
    started = time.monotonic()
    run_concurrently(scheduler, recorder.signature, [np.ones((2, 1), np.float32)] * 2)
    assert time.monotonic() - started < 5 and recorder.shapes == [(4, 1)]
    with pytest.raises(ServingError) as caught:
        scheduler.run("model", recorder.signature, {"x": np.ones((5, 1), np.float32)}, 1.0)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details == "Task size 5 is larger than maximum input batch size 4"


def test_full_queue_is_unavailable_and_deadline_is_deadline_exceeded(scheduler_for):
    recorder = Recorder()
    scheduler = scheduler_for(max_batch_size=4, max_enqueued_batches=1, batch_timeout_micros=600_000)
    waiting = threading.Thread(
        target=scheduler.run, args=("model", recorder.signature, {"x": np.ones((3, 1), np.float32)}, 5.0)
    )
    waiting.start()
    time.sleep(0.1)
    with pytest.raises(ServingError) as caught:
        scheduler.run("model", recorder.signature, {"x": np.ones((2, 1), np.float32)}, 5.0)
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE and "queue" in caught.value.details
    with pytest.raises(ServingError) as caught:  # other row shape: its own queue, waiting for its timeout
        scheduler.run("model", recorder.signature, {"x": np.ones((1, 2), np.float32)}, 0.05)
    assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    waiting.join()
    assert recorder.shapes == [(3, 1)]  # the expired task never ran


def test_ragged_rows_batch_separately_unless_padding_is_on(scheduler_for):
    separate = Recorder()
    scheduler = scheduler_for(max_batch_size=8, batch_timeout_micros=200_000)
    run_concurrently(scheduler, separate.signature, [np.ones((1, 2), np.float32), np.ones((1, 3), np.float32)])
    assert sorted(separate.shapes) == [(1, 2), (1, 3)]

    padded = Recorder()
    scheduler = scheduler_for(max_batch_size=8, batch_timeout_micros=200_000, pad_variable_length_inputs=True)
    results = run_concurrently(scheduler, padded.signature, [np.ones((1, 2), np.float32), np.ones((1, 3), np.float32)])
    assert padded.shapes == [(2, 3)]
    assert sorted(r["total"].tolist() for r in results) == [[2.0], [3.0]]  # zero padding adds nothing


def test_a_failing_batch_is_retried_per_request(scheduler_for):
    recorder = Recorder(fail_on=-1.0)
    scheduler = scheduler_for(max_batch_size=8, batch_timeout_micros=200_000)
    good, bad = np.ones((2, 1), np.float32), np.full((1, 1), -1.0, np.float32)
    results = run_concurrently(scheduler, recorder.signature, [good, bad])
    np.testing.assert_array_equal(results[0]["y"], good * 2)
    assert isinstance(results[1], ServingError) and results[1].code == grpc.StatusCode.INVALID_ARGUMENT
    assert results[1].details == "poisoned row"
    assert sorted(recorder.shapes) == [(1, 1), (2, 1), (3, 1)]


def test_unequal_batch_dimensions_are_invalid(scheduler_for):
    scheduler = scheduler_for()
    with pytest.raises(ServingError, match="equal 0th-dimension size"):
        scheduler.run("model", Recorder().signature, {"x": np.ones((2, 1)), "z": np.ones((3, 1))}, 1.0)
