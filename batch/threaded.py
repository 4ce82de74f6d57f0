"""A DoFn whose work runs in threads of its own, a few elements behind the stage: :class:`ThreadedDoFn`.

The job's fused stage (read → model → checkpoint → records → write) runs in
one thread, and a call of the model mostly waits for its answer. A step
whose outputs nobody needs at once (the next batch's files read ahead; the
model's answers to several batches; the last batch's checkpoint saved and
its records formatted) does its work in threads of its own, which run while
the stage's thread waits with the GIL released. Beam's receivers are not
thread-safe, so the outputs are emitted from the stage's thread, with the
element's own timestamp and window, when the next element arrives or when
the bundle ends. The outputs leave in the elements' order; at most
``in_flight`` elements are worked on at once (the model's step keeps several
requests in flight, as a user's own client would), and a failure in the work
fails its own bundle.

Beam's ``Metrics`` (and its workers' logs) find their step through the
calling thread's state tracker, which only the stage's thread has: a metric
updated in the work would be dropped. Beam's own ``ParDo`` with a timeout
hands the dispatching thread's tracker to the thread it runs ``process`` in,
which waits; the stage's thread here moves on to other steps, so its tracker
would name whichever step it is in by then. Each piece of work is handed a
:class:`_StepTracker` instead, which answers with the state the step was in
when its element arrived; metric cells take updates from any thread.

A thread that runs Python keeps the GIL for up to the interpreter's switch
interval (5 ms by default) once another thread asks for it, so the stage's
thread, back from its wait, would stand idle that long behind the work; the
worker's switch interval is set to :data:`SWITCH_INTERVAL` instead.

Usage::

    class Save(ThreadedDoFn):
        def work(self, element):
            save(element)
            return [element]
"""

from __future__ import annotations

import collections
import concurrent.futures
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.pvalue import TaggedOutput
from apache_beam.runners.worker import statesampler
from apache_beam.utils.windowed_value import WindowedValue

SWITCH_INTERVAL = 0.001  # seconds; the stage's thread waits for a model's answer about 100 times a second


class ThreadedDoFn(beam.DoFn):
    """``work(element)`` → its outputs (values, or ``TaggedOutput``s), run in ``in_flight`` threads of its own.

    An element's outputs leave as soon as its work and that of every element
    before it are done, and at the latest when ``in_flight`` newer elements wait
    behind it (or the bundle ends), so a bundle holds at most ``in_flight`` + 1.
    """

    in_flight = 1  # elements worked on at once; a subclass or an instance may set more

    def work(self, element: Any) -> Sequence[Any]:
        raise NotImplementedError

    def emitted(self, element: Any, outputs: Sequence[Any]) -> None:
        """Called in the stage's thread once ``element``'s outputs are out (to count them, say)."""

    def setup(self) -> None:
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL))
        self._threads = concurrent.futures.ThreadPoolExecutor(self.in_flight, thread_name_prefix=type(self).__name__)

    def start_bundle(self) -> None:
        self._pending: collections.deque[tuple] = collections.deque()
        self._failed = False  # set by the first work that raises, in its own thread

    def process(
        self, element: Any, timestamp=beam.DoFn.TimestampParam, window=beam.DoFn.WindowParam
    ) -> Iterator[WindowedValue | TaggedOutput]:
        tracker = statesampler.get_current_tracker()
        step = _StepTracker(tracker) if tracker is not None else None
        work = self._threads.submit(self._work_tracked, step, element)
        self._pending.append((element, timestamp, window, work))
        while self._pending and (len(self._pending) > self.in_flight or self._pending[0][3].done()):
            yield from self._outputs(*self._pending.popleft())

    def finish_bundle(self) -> Iterator[WindowedValue | TaggedOutput]:
        while self._pending:
            yield from self._outputs(*self._pending.popleft())

    def teardown(self) -> None:
        self._threads.shutdown(cancel_futures=True)

    def _work_tracked(self, tracker, element: Any) -> Sequence[Any]:
        if self._failed:
            # An earlier element's work failed, so the bundle does: work queued behind it is not started
            # (a failed request's neighbours would only try the same lost server again).
            raise _GaveUp(type(self).__name__)
        statesampler.set_current_tracker(tracker)
        try:
            return self.work(element)
        except BaseException:
            self._failed = True
            raise

    def _outputs(
        self, element: Any, timestamp, window, done: concurrent.futures.Future
    ) -> Iterator[WindowedValue | TaggedOutput]:
        try:
            outputs = done.result()  # the work's exception, if any, is raised here, in the stage's thread
        except BaseException:
            self._pending.clear()  # the bundle fails; work still queued gives up (_work_tracked)
            raise
        for output in outputs:
            if isinstance(output, TaggedOutput):
                yield TaggedOutput(output.tag, WindowedValue(output.value, timestamp, (window,)))
            else:
                yield WindowedValue(output, timestamp, (window,))
        self.emitted(element, outputs)


class _GaveUp(Exception):
    """Work not started because an earlier element's work in the same bundle failed (never the bundle's error:
    the earlier failure is raised first)."""


class _StepTracker:
    """What Beam's metrics and worker logs ask of the calling thread's state tracker, for a work thread: the
    current state (its step's name and metrics container) as it was when the element reached the step."""

    def __init__(self, tracker):
        self.stage_name = getattr(tracker, "stage_name", None)
        self._state = tracker.current_state()

    def current_state(self):
        return self._state

    def update_metric(self, typed_metric_name, value) -> None:
        container = self._state.metrics_container
        if container is not None:
            container.get_metric_cell(typed_metric_name).update(value)
