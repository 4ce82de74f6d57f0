"""A DoFn whose work runs in a thread of its own, one element behind the stage: :class:`ThreadedDoFn`.

The job's fused stage (read → RunInference → checkpoint → records → write)
runs in one thread, and much of that thread's time is waiting: RunInference
calls the model synchronously, and the model's answer to a batch takes as
long as the Python work around it. A step whose outputs nobody needs at once
(the next batch's files read ahead; the last batch's checkpoint saved and its
records formatted) does its work in its own thread, which runs while the
stage's thread waits with the GIL released. Beam's receivers are not
thread-safe, so the outputs are emitted from the stage's thread, with the
element's own timestamp and window, when the next element arrives or when
the bundle ends: one element is held at most, and a failure in the work
fails its own bundle.

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

import concurrent.futures
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.pvalue import TaggedOutput
from apache_beam.utils.windowed_value import WindowedValue

SWITCH_INTERVAL = 0.001  # seconds; the stage's thread waits for a model's answer about 100 times a second


class ThreadedDoFn(beam.DoFn):
    """``work(element)`` → its outputs (values, or ``TaggedOutput``s), run in a thread one element behind."""

    def work(self, element: Any) -> Sequence[Any]:
        raise NotImplementedError

    def emitted(self, element: Any, outputs: Sequence[Any]) -> None:
        """Called in the stage's thread once ``element``'s outputs are out (to count them, say)."""

    def setup(self) -> None:
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL))
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=type(self).__name__)

    def start_bundle(self) -> None:
        self._pending: tuple | None = None

    def process(
        self, element: Any, timestamp=beam.DoFn.TimestampParam, window=beam.DoFn.WindowParam
    ) -> Iterator[WindowedValue | TaggedOutput]:
        previous, self._pending = self._pending, (element, timestamp, window, self._thread.submit(self.work, element))
        if previous is not None:
            yield from self._outputs(*previous)

    def finish_bundle(self) -> Iterator[WindowedValue | TaggedOutput]:
        if self._pending is not None:
            last, self._pending = self._pending, None
            yield from self._outputs(*last)

    def teardown(self) -> None:
        self._thread.shutdown()

    def _outputs(
        self, element: Any, timestamp, window, done: concurrent.futures.Future
    ) -> Iterator[WindowedValue | TaggedOutput]:
        outputs = done.result()  # the work's exception, if any, is raised here, in the stage's thread
        for output in outputs:
            if isinstance(output, TaggedOutput):
                yield TaggedOutput(output.tag, WindowedValue(output.value, timestamp, (window,)))
            else:
                yield WindowedValue(output, timestamp, (window,))
        self.emitted(element, outputs)
