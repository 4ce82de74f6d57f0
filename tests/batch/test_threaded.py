"""batch.threaded.ThreadedDoFn: work in a thread of its own, outputs emitted in order from the stage's thread."""

from __future__ import annotations

import threading

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue

from fmnist.batch.launcher import local_runner
from fmnist.batch.threaded import ThreadedDoFn


def _pipeline() -> beam.Pipeline:
    return beam.Pipeline(runner=local_runner(PipelineOptions()), options=PipelineOptions())


class _Split(ThreadedDoFn):
    """n → main: n * 10, "odd": n when odd; records in which thread work and emitted ran."""

    def work(self, n: int) -> list:
        outputs = [n * 10, threading.current_thread().name]
        if n % 2:
            outputs.append(beam.pvalue.TaggedOutput("odd", n))
        return outputs

    def emitted(self, n: int, outputs: list) -> None:
        assert threading.current_thread().name != outputs[1], "emitted runs in the stage's thread, not the work's"


def test_every_output_comes_out_once_with_its_tag_and_from_a_thread_of_its_own():
    with _pipeline() as pipeline:
        outputs = (
            pipeline | beam.Create(range(20), reshuffle=False) | beam.ParDo(_Split()).with_outputs("odd", main="main")
        )
        numbers = outputs.main | "Numbers" >> beam.Filter(lambda x: isinstance(x, int))
        threads = outputs.main | "Threads" >> beam.Filter(lambda x: isinstance(x, str)) | beam.Distinct()
        assert_that(numbers, equal_to([n * 10 for n in range(20)]), label="main")
        assert_that(outputs.odd, equal_to([n for n in range(20) if n % 2]), label="odd")
        assert_that(threads, equal_to(["_Split_0"]), label="thread")


class _Same(ThreadedDoFn):
    def work(self, element):
        return [element]


def test_outputs_keep_their_elements_timestamps():
    with _pipeline() as pipeline:
        stamped = (
            pipeline
            | beam.Create([(n, 1000 + n) for n in range(5)], reshuffle=False)
            | beam.MapTuple(lambda n, ts: TimestampedValue(n, ts))
            | beam.ParDo(_Same())
            | beam.Map(lambda n, ts=beam.DoFn.TimestampParam: (n, int(ts.micros // 1_000_000)))
        )
        assert_that(stamped, equal_to([(n, 1000 + n) for n in range(5)]))


class _FailsOnThree(ThreadedDoFn):
    def work(self, n: int) -> list:
        if n == 3:
            raise ValueError("three is refused")
        return [n]


def test_a_failure_in_the_work_fails_the_pipeline_with_its_message():
    with pytest.raises(Exception, match="three is refused"):
        with _pipeline() as pipeline:
            _ = pipeline | beam.Create(range(6), reshuffle=False) | beam.ParDo(_FailsOnThree())


class _Overlapping(ThreadedDoFn):
    """n → n, after waiting until ``in_flight`` pieces of work run at once (or a second has passed)."""

    in_flight = 3

    def setup(self) -> None:
        super().setup()
        self._lock = threading.Lock()
        self._running = 0
        self._all_in = threading.Event()

    def work(self, n: int) -> list:
        with self._lock:
            self._running += 1
            if self._running == self.in_flight:
                self._all_in.set()
        met = self._all_in.wait(timeout=1.0)
        with self._lock:
            self._running -= 1
        return [(n, met)]


def test_in_flight_elements_are_worked_on_at_once_and_leave_in_order():
    with _pipeline() as pipeline:
        outputs = pipeline | beam.Create(range(12), reshuffle=False) | beam.ParDo(_Overlapping())
        assert_that(
            outputs | beam.combiners.ToList(),
            equal_to([[(n, True) for n in range(12)]]),
        )


class _RecordsStarts(ThreadedDoFn):
    started: list[int] = []  # shared with the test, in this process

    def work(self, n: int) -> list:
        _RecordsStarts.started.append(n)
        if n == 3:
            raise ValueError("three is refused")
        return [n]


def test_work_queued_behind_a_failure_is_not_started():
    _RecordsStarts.started.clear()
    with pytest.raises(Exception, match="three is refused"):
        with _pipeline() as pipeline:
            _ = pipeline | beam.Create(range(8), reshuffle=False) | beam.ParDo(_RecordsStarts())
    assert _RecordsStarts.started == [0, 1, 2, 3]
