"""Graceful stop for the synchronous servers: stop accepting at once, let the
requests in flight finish until a deadline, then cut off what remains.

``BaseServer`` inherits it. The order of the steps, the log lines and the
report are the shared policy in ``_drain``; waiting for the requests and
cutting them is the concurrency model's (``_model.ConcurrencyModel``).
"""

from __future__ import annotations

import socket
import threading

from ._drain import DEFAULT_GRACE, DrainReport, drain

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see sockserve/__init__.py)
if TYPE_CHECKING:
    from typing import Any

    from ._admission import Admission
    from ._model import ConcurrencyModel
    from ._pipeline import Job
    from ._shutdown import ShutdownHandshake


# At most this many queued connections are taken at a stop: a listen()
# backlog is 128-4096 on Linux, and a flood must not keep a stop from ending.
MAX_QUEUED_TAKEN = 4096


class GracefulStop:
    """stop(grace) and force_stop(); the server supplies the state below."""

    _force_requested: bool
    server_address: Any

    if TYPE_CHECKING:  # supplied by BaseServer
        _handshake: ShutdownHandshake
        _concurrency: ConcurrencyModel | None
        _admission_book: Admission | None

        def _concurrency_model(self) -> ConcurrencyModel: ...
        def _current_job(self) -> Job | None: ...
        def server_close(self) -> None: ...
        def get_request(self) -> tuple[Any, Any]: ...
        def _admit_and_dispatch(self, request: Any, client_address: Any) -> None: ...
        def _count_drain(self, seconds: float) -> None: ...

    def _start_graceful_stop(self) -> None:
        self._stop_lock = threading.Lock()
        self._stop_report: DrainReport | None = None

    def stop(self, grace: float | None = DEFAULT_GRACE) -> DrainReport:
        """Stop gracefully: stop accepting at once, let the requests in flight
        finish for up to ``grace`` seconds, then close what remains and the server.

        New connections are refused from the moment it is called.
        ``force_stop()`` from another thread or a signal handler ends the grace
        period early. Calling it again (or from two threads) stops once; every
        call returns the same report.

        Called from a request's handler (threads, pool), the server drains the
        other requests; the caller's own request is neither waited for nor
        cut off, and goes on once ``stop()`` returns. On the thread that runs
        ``serve_forever()`` (a sequential server's handler, a signal handler),
        it cannot wait: call ``shutdown()`` there, and ``stop()`` once
        ``serve_forever()`` has returned, which is what ``sockserve.serve()`` does.

        Closing a request that outlived the grace period shuts its socket
        down, which ends a handler blocked reading or writing it. A handler
        blocked on something else is still waited for by ``server_close()``,
        as the stdlib's ``block_on_close`` promises.

        Returns:
            A DrainReport: how many requests were in flight, and how many had to be closed.
        """
        if self._handshake.serving_here():
            raise RuntimeError(
                "stop() would wait for its own request: call shutdown(), then stop() after serve_forever()"
            )
        with self._stop_lock:
            report = self._stop_report
            if report is None:
                report = self._stop_report = self._drain_requests(grace)
        self.server_close()
        return report

    def _drain_requests(self, grace: float | None) -> DrainReport:
        job = self._current_job()
        own = job.ticket if job is not None and job.admission is self._admission_book else None
        model = self._concurrency_model()
        self._handshake.request()
        if not model.runs_on_loop:
            self._handshake.wait_stopped()  # at once: its handlers run elsewhere
        self._stop_accepting()
        if self._force_requested:
            model.interrupt()
        in_flight = model.in_flight() - (1 if own is not None and not own.released else 0)
        datagram = getattr(self, "socket_type", None) == socket.SOCK_DGRAM
        report = drain(
            self.server_address,
            in_flight,
            grace,
            lambda timeout: model.wait(timeout, own),
            lambda reason: model.force(reason, own),
            lambda: self._force_requested,
            unit="datagram" if datagram else "connection",
        )
        self._count_drain(report.seconds)
        # A sequential server's loop ends once the handler it runs has ended.
        self._handshake.wait_stopped()
        return report

    def force_stop(self) -> None:
        """End a graceful stop's grace period now, or make the next stop()
        close everything at once. Safe from any thread and from a signal handler."""
        self._force_requested = True
        model = self._concurrency
        if model is not None:
            model.interrupt()

    @property
    def forced(self) -> bool:
        """True once force_stop() has been called."""
        return self._force_requested

    def _stop_accepting(self) -> None:
        """Make new connections fail at once: close a stream server's listening
        socket. A datagram server keeps its socket until server_close(): the
        handlers still in flight reply through it, and since the loop has
        stopped, nothing new is read from it."""
        sock = getattr(self, "socket", None)
        if sock is not None and sock.type == socket.SOCK_STREAM:
            if not self._concurrency_model().runs_on_loop:
                self._take_the_queued(sock)
            sock.close()

    def _take_the_queued(self, sock: socket.socket) -> None:
        """Serve the connections already in the kernel's accept queue before
        the listening socket closes: closing it resets them, after their
        client (a load balancer) saw them connect, which it may not retry.
        Taken until the queue is empty, as the serve loop would have; those
        that complete their handshake after this are refused by the close,
        which a client can retry elsewhere. Only where handlers run off the
        loop's thread: a sequential server's loop is still in its handler."""
        try:
            sock.setblocking(False)
        except OSError:
            return  # closed already
        for _ in range(MAX_QUEUED_TAKEN):
            try:
                request, client_address = self.get_request()
            except OSError:  # BlockingIOError: nothing (more) is queued
                return
            self._admit_and_dispatch(request, client_address)
