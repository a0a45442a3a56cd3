"""Signals to events: the handlers only record the signal and wake the
supervisor's loop through a pipe; the loop acts and logs (never the handler).
"""

from __future__ import annotations

import collections
import os
import select
import signal
from collections.abc import Sequence
from types import FrameType

SUPERVISOR_SIGNALS = (
    signal.SIGTERM,  # graceful stop
    signal.SIGINT,  # graceful stop (Ctrl-C)
    signal.SIGQUIT,  # immediate stop
    signal.SIGHUP,  # graceful reload
    signal.SIGTTIN,  # one worker more
    signal.SIGTTOU,  # one worker fewer
    signal.SIGCHLD,  # a worker exited
)


class SignalQueue:
    """Installs handlers that enqueue; ``wait()`` returns what arrived."""

    def __init__(self, signals: tuple[signal.Signals, ...] = SUPERVISOR_SIGNALS) -> None:
        self._signals = signals
        self._pending: collections.deque[signal.Signals] = collections.deque()
        self._reader, self._writer = os.pipe()
        os.set_blocking(self._reader, False)
        os.set_blocking(self._writer, False)
        self._previous: dict[signal.Signals, object] = {}
        self._previous_wakeup = -1

    def install(self) -> None:
        for sig in self._signals:
            self._previous[sig] = signal.signal(sig, self._enqueue)
        # The pipe is also the wake-up descriptor: the C-level handler writes
        # to it, so wait() returns even when the signal lands just before it
        # blocks, where the Python handler would run only after the wait.
        self._previous_wakeup = signal.set_wakeup_fd(self._writer, warn_on_full_buffer=False)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        if self._previous:
            signal.set_wakeup_fd(self._previous_wakeup)
        self._previous.clear()

    def close(self) -> None:
        """Restore the handlers and close the pipe; a second call does nothing
        (the descriptors' numbers may belong to someone else by then)."""
        self.restore()
        if self._reader >= 0:
            os.close(self._reader)
            os.close(self._writer)
            self._reader = self._writer = -1

    def _enqueue(self, signum: int, frame: FrameType | None) -> None:
        self._pending.append(signal.Signals(signum))
        try:
            os.write(self._writer, b"\0")
        except BlockingIOError:
            pass  # the pipe is full of wake-ups already: the loop will look

    def put(self, sig: signal.Signals) -> None:
        """Inject a signal as if it had arrived (for embedding and tests)."""
        self._enqueue(sig, None)

    def wait(self, timeout: float | None, also: Sequence[int | tuple[int, int]] = ()) -> list[signal.Signals]:
        """Wait up to ``timeout`` seconds for signals, or for one of the
        descriptors ``also`` to become readable (or ready for the events
        given with it, ``(fd, select.POLLOUT)``); return the signals that arrived."""
        if not self._pending:
            poller = select.poll()
            poller.register(self._reader, select.POLLIN)
            for item in also:
                fd, events = item if isinstance(item, tuple) else (item, select.POLLIN)
                poller.register(fd, events)
            poller.poll(None if timeout is None else max(0.0, timeout) * 1000.0)
        try:
            while os.read(self._reader, 512):
                pass
        except BlockingIOError:
            pass
        arrived = []
        while self._pending:
            arrived.append(self._pending.popleft())
        return arrived
