"""Graceful stop for the synchronous servers: stop accepting at once, let the
requests in flight finish until a deadline, then cut off what remains.

``BaseServer`` inherits it; the order of the steps and the report are the
shared policy in ``_drain``. A concurrency model with its own notion of "in
flight" (``ForkingMixIn``: child processes) overrides the three steps
``_in_flight``, ``_wait_in_flight`` and ``_force_in_flight``.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any

from ._drain import DEFAULT_GRACE, DrainReport, drain

if TYPE_CHECKING:
    from ._limits import ConnectionTracker


class GracefulStop:
    """stop(grace) and force_stop(); the server supplies the hooks below."""

    _force_requested: bool
    server_address: Any

    if TYPE_CHECKING:  # supplied by BaseServer

        def _tracker_if_any(self) -> ConnectionTracker | None: ...
        def _serving_here(self) -> bool: ...
        def shutdown(self) -> None: ...
        def server_close(self) -> None: ...

    def stop(self, grace: float | None = DEFAULT_GRACE) -> DrainReport:
        """Stop gracefully: stop accepting at once, let the requests in flight
        finish for up to ``grace`` seconds, then close what remains and the server.

        Call it from any thread but the one running ``serve_forever()`` (there,
        call ``shutdown()`` and then ``stop()`` once ``serve_forever()`` has
        returned, which is what ``sockserve.serve()`` does). New connections
        are refused from the moment it is called. ``force_stop()`` from another
        thread or a signal handler ends the grace period early.

        Closing a request that outlived the grace period shuts its socket
        down, which ends a handler blocked reading or writing it. A handler
        blocked on something else is still waited for by ``server_close()``,
        as the stdlib's ``block_on_close`` promises.

        Returns:
            A DrainReport: how many requests were in flight, and how many had to be closed.
        """
        if self._serving_here():
            raise RuntimeError(
                "stop() would wait for its own request: call shutdown(), then stop() after serve_forever()"
            )
        self.shutdown()
        self._stop_accepting()
        try:
            return drain(self.server_address, self._in_flight(), grace, self._wait_in_flight, self._force_in_flight)
        finally:
            self.server_close()

    def force_stop(self) -> None:
        """End a graceful stop's grace period now, or make the next stop()
        close everything at once. Safe from any thread and from a signal handler."""
        self._force_requested = True
        self._interrupt_drain()

    @property
    def forced(self) -> bool:
        """True once force_stop() has been called."""
        return self._force_requested

    def _interrupt_drain(self) -> None:
        """Wake whatever a drain is waiting on. Models with their own waits extend it."""
        tracker = self._tracker_if_any()
        if tracker is not None:
            tracker.interrupt()

    def _stop_accepting(self) -> None:
        """Make new connections fail at once: close a stream server's listening
        socket. A datagram server keeps its socket until server_close(): the
        handlers still in flight reply through it, and since the loop has
        stopped, nothing new is read from it."""
        sock = getattr(self, "socket", None)
        if sock is not None and sock.type == socket.SOCK_STREAM:
            sock.close()

    def _in_flight(self) -> int:
        tracker = self._tracker_if_any()
        return 0 if tracker is None else len(tracker)

    def _wait_in_flight(self, timeout: float | None) -> bool:
        tracker = self._tracker_if_any()
        if tracker is None or self._force_requested:
            return tracker is None or not len(tracker)
        return tracker.wait_idle(timeout)

    def _force_in_flight(self) -> int:
        """Close the connections still in flight: their handlers' reads end and
        their writes fail, so the handler threads finish."""
        tracker = self._tracker_if_any()
        if tracker is None:
            return 0
        forced = 0
        for record in tracker.snapshot():
            if abort_request(record.request):
                forced += 1
        return forced


def abort_request(request: Any) -> bool:
    """Shut a stream request down from another thread; False if not a stream.

    shutdown(), not close(): closing a descriptor another thread is blocked on
    could let a new connection reuse the number under that thread's feet.
    """
    if not isinstance(request, socket.socket):
        return False
    try:
        request.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed or reset by the client: it is ending anyway
    return True
