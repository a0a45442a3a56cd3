"""The pool as a concurrency model: workers for handlers, and a reactor where
stream connections wait without a worker.

- A classic handler's connection waits in the reactor until it has sent its
  first byte (and passed its stages, run here without blocking); then it
  waits for a worker, which runs the handler to the end, as before. One
  whose first bytes are there when it is accepted (and has no stages) goes
  to the workers at once. A connection that sends nothing never takes a
  thread.
- A framed handler's connection lives in the reactor, and a worker takes it
  only for one complete request at a time (``_framed_connection``).

The serve loop stops accepting when more connections are ready than there
are workers: then overload waits in the kernel's backlog, not in memory.
A datagram pool has no reactor: its requests go straight to the workers.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._framed import is_framed_handler
from ._framed_connection import FramedConnection
from ._log import log_stage_failed
from ._model import TicketModel
from ._reactor import READABLE
from ._stages import StageRunner, consume, peek

if TYPE_CHECKING:
    from ._admission import Admission, Ticket
    from ._pipeline import Job
    from ._reactor import Reactor
    from ._worker_pool import WorkerPool


def _first_byte_in(sock: socket.socket) -> bool:
    """True if a handler reading ``sock`` now would not wait: bytes are
    there, or the client finished or failed (the handler sees which)."""
    try:
        sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        pass  # reset or closed: the handler's first read reports it
    return True


class PoolModel(TicketModel):
    """Workers and, for stream servers, a reactor."""

    def __init__(self, admission: Admission, pool: WorkerPool, reactor: Reactor | None, server: Any) -> None:
        super().__init__(admission)
        self.pool = pool
        self.reactor = reactor
        self.server = server
        self.framed = is_framed_handler(server.RequestHandlerClass)
        # The reactor's thread cuts a framed connection at its deadline itself.
        self.cuts_own_deadlines = self.framed
        self._connections: set[FramedConnection] = set()  # on the reactor's thread only
        self._waiting: dict[socket.socket, Job] = {}  # classic: waiting for a first byte; reactor's thread only
        self._draining = False

    # -- ConcurrencyModel ------------------------------------------------------------------

    def at_capacity(self) -> bool:
        if self.reactor is None:
            return self.pool.full()
        return self.pool.waiting() >= self.pool.max_workers

    def wait(self, timeout: float | None, ignore: Ticket | None = None) -> bool:
        if self.reactor is not None and not self._draining:
            self._draining = True
            self.reactor.call_soon(self._drain)
        return super().wait(timeout, ignore)

    def close(self) -> None:
        if self.reactor is not None:
            self.reactor.close(last=self._abort_all)
        self.pool.shutdown()

    # -- FramedHost ------------------------------------------------------------------------

    def queue_work(self, work: Callable[[], object]) -> None:
        self.pool.queue(work)

    def others_waiting(self) -> bool:
        return self.pool.any_waiting()

    def handle_error(self, request: Any, client_address: Any) -> None:
        self.server.handle_error(request, client_address)

    def connection_ended(self, connection: FramedConnection) -> None:
        self._connections.discard(connection)  # (a set: safe from a worker after the reactor closed)
        connection.job.release()

    # -- taking connections ----------------------------------------------------------------

    def adopt(self, job: Job, target: Callable[[Any, Any], object]) -> None:
        """A stream connection admitted by the serve loop: into the reactor."""
        reactor = self.reactor
        assert reactor is not None
        if self.framed:
            connection = FramedConnection(self, reactor, job, self.server.RequestHandlerClass, self.server, job.stages)
            job.stages = ()
            if not reactor.call_soon(lambda: self._start_framed(connection)):
                connection.closed_without_reactor()  # the server closed meanwhile
        elif not job.stages and _first_byte_in(job.request):
            # The client has sent already (98% of connect_20's connections
            # at accept): straight to a worker, with no detour through the
            # reactor's thread, which has to be woken and win the GIL
            # before it passes the connection on (the waits of up to 39 ms
            # that made the pool's p99, traced in issue 11).
            self.pool.queue(job.run, target)
        elif not reactor.call_soon(lambda: self._wait_first_byte(job, target)):
            self.server.shutdown_request(job.request)
            job.release()

    def _start_framed(self, connection: FramedConnection) -> None:
        if self._draining:
            connection.drain()
        self._connections.add(connection)
        connection.start()

    def _wait_first_byte(self, job: Job, target: Callable[[Any, Any], object]) -> None:
        sock: socket.socket = job.request
        runner = StageRunner(job.stages, job.client_address) if job.stages else None
        job.stages = ()

        reactor = self.reactor
        assert reactor is not None

        fd = sock.fileno()

        def readable(events: int) -> None:
            if runner is not None and not runner.done and not self._run_stages(job, runner):
                if sock in self._waiting:
                    reactor.arm(fd, READABLE)  # the stages want more
                return
            reactor.unregister(fd)
            del self._waiting[sock]
            self.pool.queue(job.run, target)

        self._waiting[sock] = job
        try:
            reactor.register(fd, READABLE, readable)
        except (OSError, ValueError):  # closed meanwhile (a forced stop)
            del self._waiting[sock]
            self.pool.queue(job.run, target)

    def _run_stages(self, job: Job, runner: StageRunner) -> bool:
        """The stages of a classic connection, without blocking (the loop
        driver): True once they are done, the connection's handler due."""
        sock: socket.socket = job.request
        try:
            data = peek(sock)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            data = b""
        step = runner.feed(data)
        try:
            if step.send:
                sock.send(step.send, socket.MSG_DONTWAIT)
            consume(sock, step.consumed)
        except OSError:
            step.failed = step.failed or "the client went away during the stages"
        if step.failed is not None:
            log_stage_failed(runner.failure(step.failed), runner.prepared.client_address)
            self._close_waiting(job)
            return False
        if step.done:
            job.client_address = runner.prepared.client_address
        return step.done

    def _close_waiting(self, job: Job) -> None:
        """A classic connection that never reached its handler: closed, counted out."""
        sock: socket.socket = job.request
        if self.reactor is not None and sock.fileno() >= 0:
            self.reactor.unregister(sock.fileno())
        self._waiting.pop(sock, None)
        self.server.shutdown_request(sock)
        job.release()

    # -- stopping ------------------------------------------------------------------------

    def _drain(self) -> None:
        """A graceful stop began. Framed connections finish what they began.
        Classic connections still waiting for their first byte keep waiting:
        accepting one promised its client a handler, as a thread's handler
        would wait for it, and the grace period bounds the wait."""
        for connection in list(self._connections):
            connection.drain()

    def _abort_all(self) -> None:
        """The server closes: whatever is still in the reactor is cut."""
        for job in list(self._waiting.values()):
            self._close_waiting(job)
        for connection in list(self._connections):
            connection.abort(ConnectionAbortedError("the server was closed"))
