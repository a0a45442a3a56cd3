"""The reactor: one thread that waits on many connections at once, so that a
connection waiting for its client holds a kernel entry, not a thread.

The bounded pool runs one (``_pool_model``): the connections of framed
handlers live in it between requests, and a classic handler's connection
waits in it until its first byte. It does nothing but wait, call back and
keep timers; what a connection does when it is ready is the connection's
(``_framed_connection``, ``_pool_model``).

Interest is one-shot (``EPOLLONESHOT``): an event disarms its descriptor
until someone arms it again, and ``arm()`` may be called from any thread
(``epoll_ctl`` is thread-safe). So a worker that finishes with a connection
hands it back by arming it, without waking the reactor: in a busy
request-reply exchange, a request costs no reactor wake-up at all.

Everything here runs on the reactor's thread except ``call_soon``, ``arm``,
``register_running`` and ``close``, which any thread may call.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import select
import threading
import time
from collections.abc import Callable
from typing import Any

from ._log import logger
from ._thread_signals import leave_signals_to_the_main_thread
from ._wakeup import Waker

READABLE = select.EPOLLIN
WRITABLE = select.EPOLLOUT
# What the kernel reports besides: a hang-up or an error wakes a reader, whose read then says which.
_ENDED = select.EPOLLHUP | select.EPOLLERR
_ONE_SHOT = select.EPOLLONESHOT

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
    """An epoll on a thread of its own, with thread-safe call_soon and arming, and timers."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._epoll = select.epoll()
        self._waker = Waker()
        self._epoll.register(self._waker.fileno(), select.EPOLLIN)
        self._callbacks: dict[int, Callable[[int], object]] = {}
        self._calls: collections.deque[Callback] = collections.deque()
        self._woken = False  # a wake-up is on its way: later calls need not send another
        self._timers: list[tuple[float, int, Timer]] = []
        self._sequence = itertools.count()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closing = False

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

    def arm(self, fd: int, events: int) -> None:
        """Wait for ``events`` on ``fd`` (registered), once: the next event disarms it again."""
        self._epoll.modify(fd, events | _ONE_SHOT)

    def register_running(self, fd: int, events: int, callback: Callable[[int], object]) -> bool:
        """``register()`` from any thread, without waking the reactor: False
        (and nothing registered) unless its thread runs and is not closing,
        so that whatever is registered here is seen by a running loop, and
        by the ``last`` call of ``close()``."""
        with self._lock:
            if self._thread is None or self._closing:
                return False
            self._callbacks[fd] = callback
            try:
                self._epoll.register(fd, events | _ONE_SHOT)
            except BaseException:
                del self._callbacks[fd]
                raise
        return True

    def close(self, last: Callback | None = None) -> None:
        """Run ``last`` on the reactor's thread, stop the thread, join it, and
        release the epoll. Calls made after this are not run."""
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
        self._epoll.close()
        self._waker.close()

    # -- the reactor's thread -------------------------------------------------------

    def register(self, fd: int, events: int, callback: Callable[[int], object]) -> None:
        """Call ``callback(events)`` when ``fd`` is ready for ``events`` (once; see ``arm``)."""
        self._callbacks[fd] = callback
        self._epoll.register(fd, events | _ONE_SHOT)

    def unregister(self, fd: int) -> None:
        if self._callbacks.pop(fd, None) is not None:
            try:
                self._epoll.unregister(fd)
            except (OSError, ValueError):
                pass  # already closed: the kernel forgot it with its last descriptor

    def call_later(self, delay: float, callback: Callback) -> Timer:
        timer = Timer(time.monotonic() + delay, callback)
        heapq.heappush(self._timers, (timer.when, next(self._sequence), timer))
        return timer

    def _run(self) -> None:
        leave_signals_to_the_main_thread()
        waker = self._waker.fileno()
        while True:
            timeout = self._next_timeout()
            for fd, events in self._epoll.poll(-1 if timeout is None else timeout):
                if fd == waker:
                    self._waker.drain()
                    continue
                callback = self._callbacks.get(fd)
                if callback is not None:
                    self._guarded(callback, events | (READABLE if events & _ENDED else 0))
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
