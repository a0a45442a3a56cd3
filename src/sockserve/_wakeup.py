"""A self-pipe (a socketpair) that lets any thread wake a select() at once.

``shutdown()`` writes one byte here, so ``serve_forever()`` returns without
waiting for its ``poll_interval`` to run out, as the stdlib's does.
"""

from __future__ import annotations

import select
import socket
import threading
import time

from ._signal_wakeup import drain, signal_wakeup

# Without a wake-up descriptor, the longest the main thread sleeps at once:
# how late a signal handler may run when the signal lands on another thread.
MAIN_THREAD_SLICE = 0.25


class Waker:
    """Two connected sockets: ``wake()`` makes ``fileno()`` readable."""

    def __init__(self) -> None:
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)

    def fileno(self) -> int:
        return self._reader.fileno()

    def wake(self) -> None:
        try:
            self._writer.send(b"\0")
        except BlockingIOError:
            pass  # the buffer is full of earlier wake-ups: the reader is awake already
        except OSError:
            pass  # closed by the loop that owned it: nobody is left to wake

    def drain(self) -> None:
        try:
            while self._reader.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def wait(self, timeout: float | None) -> bool:
        """Sleep up to ``timeout`` seconds (None: until woken); True if woken."""
        # poll() rather than select(): no FD_SETSIZE limit, and unlike epoll it
        # needs no descriptor of its own, so it works while we are out of them.
        poller = select.poll()
        poller.register(self._reader, select.POLLIN)
        signals = signal_wakeup()  # a signal's handler may be what wakes us: see _signal_wakeup
        if signals is not None:
            poller.register(signals, select.POLLIN)
        elif threading.current_thread() is threading.main_thread():
            return self._wait_in_slices(poller, timeout)
        ready = poller.poll(None if timeout is None else max(timeout, 0.0) * 1000.0)
        if signals is not None and any(fd == signals.fileno() for fd, _ in ready):
            drain(signals)
        return bool(ready)

    @staticmethod
    def _wait_in_slices(poller: select.poll, timeout: float | None) -> bool:
        """The main thread's wait when no wake-up descriptor is installed.

        A signal that lands on another thread (one running handlers, which
        does not block signals: see _thread_signals) does not interrupt the
        main thread's poll(), and its Python handler (a ``force_stop()``)
        would wait for the whole timeout, a grace period. Waking every
        MAIN_THREAD_SLICE seconds lets the interpreter run it between two
        slices; it then wakes this waker, and the next slice returns at once.
        Costs a wake-up per slice, only while the main thread waits here.
        """
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
        while True:
            step = MAIN_THREAD_SLICE if deadline is None else min(MAIN_THREAD_SLICE, deadline - time.monotonic())
            ready = poller.poll(max(step, 0.0) * 1000.0)
            if ready or step < MAIN_THREAD_SLICE:
                return bool(ready)

    def close(self) -> None:
        self._reader.close()
        self._writer.close()
