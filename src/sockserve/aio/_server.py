"""AsyncBaseServer: the serve loop on an event loop, the server hooks, and
the async side of a connection's walk (the graceful stop is ``_stop``'s).

It knows no socket type: subclasses bind the socket and say what to do when
it is readable (accept a connection, receive a datagram). What it shares with
the synchronous servers is the same code: ``ServerCore`` (limits, the admit
step, ``max_requests``, the shutdown handshake), ``accept_batch`` and
``AcceptBackoff`` (taking what waits, running out of descriptors), the
stages, and the log lines of limits that fire.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from .._accept import BACKOFF_SECONDS, AcceptBackoff
from .._admission import FOLD_INTERVAL, Ticket
from .._errors import ConnectionDeadlineExceeded
from .._limits import limits_of
from .._log import format_address, log_limit, logger, report_request_error
from .._server_core import ServerCore
from ._inflight import InFlight
from ._loop import LoopChoice, new_event_loop
from ._signals import signals_wake
from ._stop import SETTLE_SECONDS, AsyncGracefulStop, resolve


class AsyncBaseServer(ServerCore, AsyncGracefulStop):
    """Base class of the async servers.

    Methods for the caller:

    - ``await serve()``, or ``serve_forever()``: blocking from plain code (it
      runs its own event loop), or ``await server.serve_forever()`` inside a
      running loop
    - ``shutdown()``: from any thread, a signal handler or the loop itself
    - ``stop(grace)`` / ``await aclose(grace)``: graceful stop
    - ``force_stop()``, ``server_close()``, ``fileno()``

    Methods that may be overridden (called on the event loop's thread):
    ``server_bind()``, ``server_activate()``, ``verify_request(request,
    client_address)``, ``service_actions()``, ``handle_error(request,
    client_address)``, ``server_close()``.

    Class variables that may be overridden by subclasses or instances:
    ``limits`` (a ``sockserve.Limits``) and ``event_loop`` (``"auto"``:
    uvloop when installed, else asyncio; or ``"asyncio"``/``"uvloop"``), the
    loop that a blocking ``serve_forever()`` creates.
    """

    event_loop: LoopChoice = "auto"
    socket: socket.socket

    def __init__(self, server_address: Any, RequestHandlerClass: type[Any]) -> None:  # noqa: N803 - stdlib name
        self.server_address = server_address
        self.RequestHandlerClass = RequestHandlerClass
        self._start_core()
        self._serving_loop: asyncio.AbstractEventLoop | None = None  # where the connections run
        self._own_loop: asyncio.AbstractEventLoop | None = None  # made by serve_forever()
        self._own_loop_lock = threading.Lock()
        self._serve_waiter: asyncio.Future[None] | None = None
        self._serve_running = False
        self._listener_watched = False  # the listening socket is registered with the loop
        self._listener_closed = False
        self._backoff_timer: asyncio.TimerHandle | None = None
        self._accept_backoff = AcceptBackoff(self._count_refused)
        # Failures of the loop's own accept, reported by the loop (see AsyncTCPServer._loop_accept_error).
        self._loop_accept_failures = 0
        self._fold_timer: asyncio.TimerHandle | None = None  # see serve()
        # Connections the loop accepts before the next look at the
        # descriptors (None: never; see AsyncTCPServer._descriptors_low).
        self._fd_countdown: int | None = None
        # While sockserve accepts in the loop's stead: the loop accepts
        # again once no more than this many connections are open.
        self._resume_loop_accept_at: int | None = None
        self._loop_accept_failing_since = 0.0
        self._handler_tasks: set[asyncio.Task[None]] = set()
        self._idle_waiter: asyncio.Future[bool] | None = None
        self._drain_done: asyncio.Future[None] | None = None
        self._force_requested = False

    # -- hooks ------------------------------------------------------------------------

    def server_activate(self) -> None:
        """Called by the constructor to activate the server. May be overridden."""

    def service_actions(self) -> None:
        """Called every ``poll_interval`` seconds while serving. May be overridden."""

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Return True to serve the request, False to drop it. May be overridden."""
        return True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Report an exception raised while handling a request. May be overridden.

        Called inside the ``except`` block, so ``sys.exc_info()`` is the error.
        Logs it with its traceback on the ``sockserve`` logger; the server goes
        on. A limit that fired gets one line naming the limit and the client.
        """
        report_request_error(
            client_address,
            limits_of(self).idle_timeout,
            datagram=getattr(self, "socket_type", None) == socket.SOCK_DGRAM,
        )

    def fileno(self) -> int:
        return self.socket.fileno()

    def _on_serve(self, loop: asyncio.AbstractEventLoop) -> Callable[[], None] | None:
        """Called when ``serve()`` starts on ``loop``. Subclasses may prepare
        it, and return what undoes that when ``serve()`` ends."""
        return None

    def _on_readable(self) -> None:
        """The socket is readable: accept, or receive. Supplied by subclasses."""
        raise NotImplementedError

    # -- serving ------------------------------------------------------------------------

    async def serve(self, poll_interval: float = 0.5) -> None:
        """Serve on the running loop until ``shutdown()``.

        New connections wait in the backlog once it returns; the connections
        in flight go on running on the loop (``aclose()`` drains them).
        """
        self._know_edge()  # the edge options as they are now (and a tls on a datagram server fails here)
        if self.tls is not None:
            self._tls_source()  # a TLS configuration that cannot load fails here, not at the first client
        loop = asyncio.get_running_loop()
        if (
            self._serving_loop is not None
            and self._serving_loop is not loop
            and not self._serving_loop.is_closed()
            and self._in_flight_count()
        ):
            raise RuntimeError("this server's connections run on another event loop")
        try:
            self._handshake.begin(lambda: self._wake_from_anywhere(loop))
        except RuntimeError:
            raise RuntimeError("serve() is already running on this server") from None
        self._serving_loop = loop
        handshake = self._handshake
        restore_exception_handler = None
        try:
            self._admission()
            restore_exception_handler = self._on_serve(loop)
            self._serve_running = True
            self._start_accepting()
            # Without a service_actions() of its own, no timer is armed: a
            # pending timer makes every turn of asyncio's loop read the clock
            # and compute a timeout, a cost paid on every request.
            ticking = type(self).service_actions is not AsyncBaseServer.service_actions
            if self.metrics.read_elsewhere:
                # Another process reads the metrics (a prefork worker's
                # slot): fold the counts in every FOLD_INTERVAL, as the
                # synchronous loop does. The only timer a server arms
                # without a service_actions(), and only then.
                self._fold_timer = loop.call_later(FOLD_INTERVAL, self._fold_on_a_clock, loop)
            while not handshake.requested:
                wake: asyncio.Future[None] = loop.create_future()
                self._serve_waiter = wake
                timer = loop.call_later(poll_interval, resolve, wake) if ticking else None
                try:
                    await wake
                finally:
                    if timer is not None:
                        timer.cancel()
                    self._serve_waiter = None
                if handshake.requested:
                    break
                self.service_actions()
        finally:
            if self._fold_timer is not None:
                self._fold_timer.cancel()
                self._fold_timer = None
            self._serve_running = False
            self._pause_accepting()
            try:
                if self._drain_done is not None:
                    # aclose() runs on this loop: serve_forever() must keep
                    # the loop running until the drain is over.
                    await asyncio.shield(self._drain_done)
            finally:
                if restore_exception_handler is not None:
                    restore_exception_handler()
                handshake.end()

    def _fold_on_a_clock(self, loop: asyncio.AbstractEventLoop) -> None:
        """See serve(): fold, then again in FOLD_INTERVAL, while it serves."""
        if not self._serve_running:
            return
        admission = self._admission_book
        if admission is not None:
            admission.fold()
        self._fold_timer = loop.call_later(FOLD_INTERVAL, self._fold_on_a_clock, loop)

    def serve_forever(self, poll_interval: float = 0.5, *, loop: LoopChoice | None = None) -> None:
        """Serve until ``shutdown()``, blocking: it runs an event loop of its
        own (the kind is ``loop``, else ``event_loop``), which is kept for
        ``stop()`` until ``server_close()``.

        Raises:
            RuntimeError: called inside a running event loop; there, use
                ``await server.serve()``.
        """
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise RuntimeError("serve_forever() blocks; inside a running event loop, use await server.serve()")
        own = self._own_loop
        if own is None or own.is_closed():
            own = self._own_loop = new_event_loop(loop or self.event_loop)
        task = own.create_task(self.serve(poll_interval))
        try:
            with signals_wake(own):
                own.run_until_complete(task)
        except BaseException:
            # KeyboardInterrupt or SystemExit out of the loop: end serve()
            # properly, so the server is not left looking as if it served.
            if not task.done():
                task.cancel()
                try:
                    own.run_until_complete(task)
                except asyncio.CancelledError:
                    pass  # the cancellation asked for just above
            raise
        if self._listener_closed:
            # stop() or server_close() ran from another thread while serving:
            # nothing can be served any more, so the loop is not kept.
            self._close_own_loop()

    def shutdown(self) -> None:
        """Make ``serve()``/``serve_forever()`` return, and wait until it has.

        Safe from any thread, any number of times, before or after serving.
        From the loop's own thread (a handler, a signal handler) it does not
        wait, which would deadlock: the loop returns once control is back with
        it. Called while nothing serves, the next ``serve()`` returns at once.
        """
        self._handshake.request_and_wait()

    def _wake_from_anywhere(self, loop: asyncio.AbstractEventLoop) -> None:
        """The handshake's wake-up: resolve serve()'s future on its loop."""
        try:
            loop.call_soon_threadsafe(self._wake_serve)
        except RuntimeError:
            pass  # the loop closed meanwhile: serve() is over

    def _wake_serve(self) -> None:
        if self._serve_waiter is not None:
            resolve(self._serve_waiter)

    # -- accepting ----------------------------------------------------------------------

    def _start_accepting(self) -> None:
        """Watch the socket, unless stopped, paused at capacity or backing off."""
        loop = self._serving_loop
        if (
            self._listener_watched
            or not self._serve_running
            or self._listener_closed
            or self._backoff_timer is not None
            or loop is None
            or self._admission().at_capacity()
        ):
            return
        loop.add_reader(self.socket.fileno(), self._on_readable)
        self._listener_watched = True

    def _pause_accepting(self) -> None:
        """Stop watching the socket; what arrives waits in the kernel."""
        if self._listener_watched and self._serving_loop is not None:
            self._serving_loop.remove_reader(self.socket.fileno())
        self._listener_watched = False

    def _back_off(self) -> None:
        """Out of descriptors (see _accept): try again in BACKOFF_SECONDS."""
        self._pause_accepting()
        if self._serving_loop is not None and self._backoff_timer is None:
            self._backoff_timer = self._serving_loop.call_later(BACKOFF_SECONDS, self._end_back_off)

    def _end_back_off(self) -> None:
        self._backoff_timer = None
        self._start_accepting()

    def _capacity_freed(self) -> None:
        # Called by the admission on release (on the loop's thread) when it
        # goes from full to not full.
        self._start_accepting()

    def _close_listener(self) -> None:
        """Refuse new connections from now on: close the listening socket."""
        loop = self._serving_loop
        if (
            self._listener_watched
            and loop is not None
            and self._handshake.serving
            and not self._handshake.serving_here()
        ):
            done = threading.Event()

            def close_there() -> None:
                self._close_listener_here()
                done.set()

            try:
                loop.call_soon_threadsafe(close_there)
                done.wait(SETTLE_SECONDS)
            except RuntimeError:
                pass  # the loop closed meanwhile, and unregistered the socket
        self._close_listener_here()

    def _close_listener_here(self, *, keep_datagram_socket: bool = False) -> None:
        """Stop reading the socket and close it. ``keep_datagram_socket``: a
        drain has begun, and the datagram handlers in flight still reply
        through the socket, so it stays open (unread) until server_close()."""
        self._pause_accepting()
        if self._backoff_timer is not None:
            self._backoff_timer.cancel()
            self._backoff_timer = None
        self._listener_closed = True
        sock = getattr(self, "socket", None)
        if sock is not None and not (keep_datagram_socket and sock.type == socket.SOCK_DGRAM):
            sock.close()

    # -- connections in flight ----------------------------------------------------------

    def _admit_item(self, item: InFlight, request: Any) -> bool:
        """The admit step for ``item``; False if it must be dropped (the caller
        closes it). Pauses accepting at ``max_connections``, and arms the
        item's ``connection_timeout``."""
        ticket = self._admit(request, item.client_address)
        if ticket is None:
            return False
        item.admitted(ticket)
        admission = self._admission_book
        if admission is None:
            admission = self._admission()
        limits = admission.limits
        if limits.max_connections is not None and admission.at_capacity():
            self._pause_accepting()
            logger.debug("%s at capacity: not accepting", format_address(self.server_address))
        limit = limits.connection_timeout
        if limit is not None and self._serving_loop is not None:
            item.timer = self._serving_loop.call_later(limit, self._deadline_passed, ticket, limit)
        return True

    def _admit_accepted(self, item: InFlight, request: Any, transport: asyncio.Transport) -> bool:
        """The admit step for a connection the loop accepted (its transport
        exists already); False if it was refused, and its transport aborted.

        One accepted after the server was closed is refused without a word:
        it was in the backlog a moment ago. During a drain it is admitted,
        as an accepted connection is promised its handler."""
        if self._loop_accept_failures:
            logger.warning(
                "accepting on %s again after %d failed tries in %.2fs",
                format_address(self.server_address),
                self._loop_accept_failures,
                time.monotonic() - self._loop_accept_failing_since,
            )
            self._loop_accept_failures = 0
        countdown = self._fd_countdown
        if countdown is not None:
            if countdown:
                self._fd_countdown = countdown - 1
            else:
                self._check_descriptors(request)
        if (self._listener_closed and self._drain_done is None) or not self._admit_item(item, request):
            transport.abort()
            return False
        return True

    def _check_descriptors(self, request: Any) -> None:
        """Every few connections the loop accepts (``_fd_countdown``): is
        the process near its descriptor limit? Supplied by the stream servers."""

    def _descriptors_recovered(self) -> None:
        """Enough connections closed since ``_descriptors_low()``. Supplied by the stream servers."""

    def _deadline_passed(self, ticket: Ticket, limit: float) -> None:
        exc = ConnectionDeadlineExceeded(limit, ticket.peer)
        if ticket.cut(exc):
            log_limit(exc)

    def _release_ticket(self, ticket: Ticket) -> None:
        """Count an item out (on the loop's thread): the items call this when they finish."""
        admission = self._admission_book
        if admission is None:
            admission = self._admission()
        admission.release(ticket)
        resume_at = self._resume_loop_accept_at
        if resume_at is not None and len(admission) <= resume_at:
            self._descriptors_recovered()
        waiter = self._idle_waiter
        if waiter is not None and not len(admission) and not waiter.done():
            waiter.set_result(True)

    def _spawn_task(self, coro: Any) -> asyncio.Task[None]:
        """A task the server owns until it ends."""
        assert self._serving_loop is not None
        task: asyncio.Task[None] = self._serving_loop.create_task(coro)
        self._handler_tasks.add(task)
        task.add_done_callback(self._handler_tasks.discard)
        return task
