"""The reactor: one thread that waits on many connections at once, so that a
connection waiting for its client holds a selector entry, not a thread.

The bounded pool runs one (``_pool``): the connections of framed handlers
live in it between requests, and a classic handler's connection waits in it
until its first byte. It does nothing but wait, call back and keep timers;
what a connection does when it is readable or writable is the connection's
(``_framed``, ``_pool``).

Everything here runs on the reactor's thread except ``call_soon`` and
``close``, which any thread may call.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import selectors
import threading
import time
from collections.abc import Callable
from typing import Any

from ._log import logger
from ._thread_signals import leave_signals_to_the_main_thread
from ._wakeup import Waker

# epoll, not poll: a reactor holds thousands of mostly idle connections, and
# poll() hands the kernel the whole list on every turn.
_Selector: type[selectors.BaseSelector] = getattr(selectors, "EpollSelector", selectors.DefaultSelector)

# Bytes read from a connection per readable event: one buffer, shared by all
# the reactor's connections (one thread reads them, one at a time).
READ_SIZE = 64 * 1024

Callback = Callable[[], object]


class Timer:
    """A call the reactor makes at ``when`` (monotonic), unless cancelled first."""

    __slots__ = ("callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callback) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Reactor:
    """A selector on a thread of its own, with thread-safe call_soon and timers."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._selector = _Selector()
        self._waker = Waker()
        self._selector.register(self._waker, selectors.EVENT_READ, None)
        self._calls: collections.deque[Callback] = collections.deque()
        self._woken = False  # a wake-up is on its way: later calls need not send another
        self._timers: list[tuple[float, int, Timer]] = []
        self._sequence = itertools.count()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closing = False
        self.read_buffer = memoryview(bytearray(READ_SIZE))

    # -- any thread ---------------------------------------------------------------

    def call_soon(self, callback: Callback) -> bool:
        """Run ``callback`` on the reactor's thread, soon (starting the thread
        if needed); False if the reactor is closed and it will never run."""
        with self._lock:
            if self._closing:
                return False
            self._calls.append(callback)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            wake = not self._woken
            self._woken = True
        if wake:
            self._waker.wake()
        return True

    def close(self, last: Callback | None = None) -> None:
        """Run ``last`` on the reactor's thread, stop the thread, join it, and
        release the selector. Calls made after this are not run."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
            thread = self._thread
            if thread is not None and last is not None:
                self._calls.append(last)
        if thread is None:
            if last is not None:
                last()
        else:
            self._waker.wake()
            thread.join()
        self._selector.close()
        self._waker.close()

    def on_reactor_thread(self) -> bool:
        return self._thread is threading.current_thread()

    # -- the reactor's thread -------------------------------------------------------

    def register(self, fileobj: Any, events: int, callback: Callable[[int], object]) -> None:
        """Call ``callback(events)`` whenever ``fileobj`` is ready for ``events``."""
        self._selector.register(fileobj, events, callback)

    def modify(self, fileobj: Any, events: int, callback: Callable[[int], object]) -> None:
        self._selector.modify(fileobj, events, callback)

    def unregister(self, fileobj: Any) -> None:
        try:
            self._selector.unregister(fileobj)
        except (KeyError, ValueError):
            pass  # not registered (any more), or already closed

    def call_later(self, delay: float, callback: Callback) -> Timer:
        timer = Timer(time.monotonic() + delay, callback)
        heapq.heappush(self._timers, (timer.when, next(self._sequence), timer))
        return timer

    def _run(self) -> None:
        leave_signals_to_the_main_thread()
        while True:
            timeout = self._next_timeout()
            for key, events in self._selector.select(timeout):
                if key.fileobj is self._waker:
                    self._waker.drain()
                else:
                    self._guarded(key.data, events)
            with self._lock:
                self._woken = False
                calls, self._calls = self._calls, collections.deque()
                closing = self._closing
            for call in calls:
                self._guarded(call)
            self._run_timers()
            if closing:
                return

    def _next_timeout(self) -> float | None:
        timers = self._timers
        while timers and timers[0][2].cancelled:
            heapq.heappop(timers)
        if not timers:
            return None
        return max(0.0, timers[0][0] - time.monotonic())

    def _run_timers(self) -> None:
        now = time.monotonic()
        timers = self._timers
        while timers and timers[0][0] <= now:
            timer = heapq.heappop(timers)[2]
            if not timer.cancelled:
                self._guarded(timer.callback)

    def _guarded(self, callback: Callable[..., object], *args: Any) -> None:
        # A bug in one connection's callback must not stop the others'.
        try:
            callback(*args)
        except Exception:
            logger.exception("%s: a callback failed", self._name)
