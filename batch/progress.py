"""Whole-job progress for local runs: workers report files done, the launcher shows done / total, rate, time left.

The local runners report no Beam metrics until a job ends, and with
``--direct_running_mode=multi_processing`` each worker is its own process, so
each worker's count reaches the launcher as a UDP datagram on loopback: a
send never blocks nor fails a worker, and a lost datagram only makes the bar
lag (the summary's counts come from the data, not from here). On a terminal
the launcher draws a tqdm bar; otherwise it writes a line every few seconds,
and one at the end.
Remote runners show progress in their own UIs; their workers' datagrams go
nowhere.

Usage::

    with Progress(total=10_000) as progress:          # launcher
        ... ParDo(SomeDoFn(progress.address)) ...      # worker: reporter = Reporter(address); reporter.add(64)
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

from tqdm import tqdm

_SEND_EVERY = 0.25  # seconds between a worker's datagrams, at most 4 a second
_MAX_DATAGRAM = 32
_UNIT = "file"  # what is counted, in the bar and in the lines alike


class Reporter:
    """A worker's side: counts files done and sends the count since the last send, now and then."""

    def __init__(self, address: tuple[str, int] | None, clock: Callable[[], float] = time.monotonic):
        self._address = address
        self._clock = clock
        self._socket: socket.socket | None = None
        self._unsent = 0
        self._sent_at = 0.0

    def add(self, files: int) -> None:
        if self._address is None:
            return
        self._unsent += files
        if self._clock() - self._sent_at >= _SEND_EVERY:
            self.flush()

    def flush(self) -> None:
        if self._address is None or not self._unsent:
            return
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                self._socket.setblocking(False)
            self._socket.sendto(str(self._unsent).encode(), self._address)
        except OSError:  # no listener, a full buffer: progress is best effort, the job goes on
            return
        self._unsent = 0
        self._sent_at = self._clock()

    def close(self) -> None:
        self.flush()
        if self._socket is not None:
            self._socket.close()
            self._socket = None


class Progress:
    """The launcher's side: listens on loopback and shows the sum of what every worker reported (of ``total``,
    when it is known)."""

    def __init__(self, total: int | None, *, every: float = 10.0, stream: TextIO | None = None):
        self.total = total
        self.done = 0
        self._every = every
        self._stream = stream or sys.stderr
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._socket.bind(("127.0.0.1", 0))
        self._socket.settimeout(0.2)
        self._stopped = threading.Event()
        self._bar = tqdm(
            total=total,
            unit=_UNIT,
            unit_scale=False,
            file=self._stream,
            dynamic_ncols=True,
            smoothing=0.1,
            disable=not self._stream.isatty(),
        )
        self._started = self._logged = time.monotonic()
        self._thread = threading.Thread(target=self._listen, name="progress", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        return self._socket.getsockname()

    def __enter__(self) -> Progress:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stopped.set()
        self._thread.join()
        self._socket.close()
        self._bar.close()
        if self._bar.disable:
            self._write_line()

    def _listen(self) -> None:
        while True:
            try:
                data = self._socket.recv(_MAX_DATAGRAM)
            except TimeoutError:  # quiet for 0.2 s: the end, if the job has finished, else wait on
                if self._stopped.is_set():
                    return
                continue
            except OSError:
                return
            try:
                files = int(data)
            except ValueError:  # not ours: anyone on this host can send a datagram to the port
                continue
            self.done += files
            self._bar.update(files)
            self._log_line()

    def _log_line(self) -> None:
        """Without a terminal, a line every ``every`` seconds."""
        if self._bar.disable and time.monotonic() - self._logged >= self._every:
            self._write_line()

    def _write_line(self) -> None:
        """done/total, elapsed, time left and rate, in tqdm's words."""
        self._logged = time.monotonic()
        meter = tqdm.format_meter(self.done, self.total, self._logged - self._started, unit=_UNIT, ascii=True)
        print(f"progress: {meter}", file=self._stream, flush=True)
