"""Enforces ``Limits.connection_timeout`` for the synchronous servers.

One thread per server, started with the first connection that has a
deadline: it sleeps until the earliest deadline among the connections in
flight, then cuts the overdue ones (through their ticket: their handler's
reads end, writes fail) and logs which limit fired for which client. A forked
child enforces its own connection's deadline (``Job.start_deadline_in_child``);
the async servers enforce the limit on their loop.
"""

from __future__ import annotations

import threading
import time

from ._admission import Admission
from ._errors import ConnectionDeadlineExceeded
from ._log import log_limit
from ._thread_signals import leave_signals_to_the_main_thread


class DeadlineWatchdog:
    """Cuts connections that outlive ``connection_timeout``."""

    def __init__(self, admission: Admission) -> None:
        self._admission = admission
        self._wakeup = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._idle = True  # sleeping with no deadline to wait for

    def ensure_running(self) -> None:
        """Start the thread if needed, and make it look at the deadlines again."""
        with self._wakeup:
            if self._closed:
                return
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="sockserve deadline watchdog", daemon=True)
                self._thread.start()
            elif self._idle:
                # Every connection gets the same timeout, so a new one never
                # has the earliest deadline: wake only a watchdog with none.
                self._wakeup.notify()

    def close(self) -> None:
        with self._wakeup:
            self._closed = True
            self._wakeup.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _run(self) -> None:
        leave_signals_to_the_main_thread()
        limit = self._admission.limits.connection_timeout
        assert limit is not None
        with self._wakeup:
            while not self._closed:
                for ticket in self._admission.overdue():
                    exc = ConnectionDeadlineExceeded(limit, ticket.peer)
                    if ticket.cut(exc):
                        log_limit(exc)
                    ticket.deadline = None  # dealt with; its handler is ending and will release it
                next_deadline = self._admission.next_deadline()
                self._idle = next_deadline is None
                timeout = None if next_deadline is None else max(0.0, next_deadline - time.monotonic())
                self._wakeup.wait(timeout)
