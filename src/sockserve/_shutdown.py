"""The shutdown handshake between a serve loop and whoever stops it, shared
by the synchronous and async servers.

``shutdown()`` may come from any thread, from a signal handler, from the
loop's own thread (a handler of a sequential server), before the loop runs or
after it ended. The stdlib's version deadlocks in three of those cases and
waits up to ``poll_interval`` in the others. Here a request sets a flag and
wakes the loop through a callback the loop registered (a self-pipe for the
sync loop, ``call_soon_threadsafe`` for an event loop); the requester then
waits for the loop to end, except on the loop's own thread, where waiting
could never end.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class ShutdownHandshake:
    """One serve loop's stop request and its end, thread-safe."""

    def __init__(self) -> None:
        # Reentrant: request() may run in a signal handler that interrupted
        # the loop's thread while it held the lock.
        self._lock = threading.RLock()
        self.requested = False
        self._serving: int | None = None
        self._wake: Callable[[], None] | None = None
        self._stopped = threading.Event()
        self._stopped.set()

    def begin(self, wake: Callable[[], None]) -> None:
        """The loop starts on this thread; ``wake()`` interrupts its wait.

        Raises:
            RuntimeError: a loop is already serving.
        """
        with self._lock:
            if self._serving is not None:
                raise RuntimeError("the server is already serving")
            self._serving = threading.get_ident()
            self._wake = wake
            self._stopped.clear()

    def end(self) -> None:
        """The loop has ended: a stop request is used up, waiters are released."""
        with self._lock:
            self.requested = False
            self._serving = None
            self._wake = None
            self._stopped.set()

    def request(self) -> int | None:
        """Ask the loop to stop and wake it; returns its thread's ident, or None
        if no loop is serving (then the request waits for the next one)."""
        with self._lock:
            self.requested = True
            if self._wake is not None:
                # Under the lock, so that end() cannot retire the waker between
                # reading it and using it.
                self._wake()
            return self._serving

    def request_and_wait(self) -> None:
        """``shutdown()``: ask the loop to stop, then wait until it has, unless
        no loop serves or this is the loop's own thread (it ends once control
        returns to it)."""
        serving = self.request()
        if serving is None or serving == threading.get_ident():
            return
        self._stopped.wait()

    def wait_stopped(self, timeout: float | None = None) -> bool:
        """Wait until no loop serves; False if ``timeout`` ran out first."""
        return self._stopped.wait(timeout)

    @property
    def serving(self) -> bool:
        return self._serving is not None

    def serving_here(self) -> bool:
        """True on the thread that runs the loop."""
        return self._serving == threading.get_ident()
