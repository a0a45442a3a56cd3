"""Enforces ``Limits.connection_timeout`` for the synchronous servers.

One thread per server, started with the first connection: it sleeps until
the earliest deadline among the connections in flight, then shuts the overdue
ones down (their handler's reads end, writes fail) and logs which limit fired
for which client. The async servers enforce the same limit on their loop.
"""

from __future__ import annotations

import threading
import time

from ._errors import ConnectionDeadlineExceeded
from ._graceful import abort_request
from ._limits import ConnectionTracker
from ._log import logger


class DeadlineWatchdog:
    """Closes connections that outlive ``connection_timeout``."""

    def __init__(self, tracker: ConnectionTracker) -> None:
        self._tracker = tracker
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
        limit = self._tracker.limits.connection_timeout
        assert limit is not None
        with self._wakeup:
            while not self._closed:
                for record in self._tracker.overdue():
                    if abort_request(record.request):
                        logger.warning(
                            "%s: closing the connection", ConnectionDeadlineExceeded(limit, record.client_address)
                        )
                    record.deadline = None  # dealt with; its handler is ending and will release it
                next_deadline = self._tracker.next_deadline()
                self._idle = next_deadline is None
                timeout = None if next_deadline is None else max(0.0, next_deadline - time.monotonic())
                self._wakeup.wait(timeout)
