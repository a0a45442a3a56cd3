"""AsyncBaseServer: the serve loop on an event loop, the server hooks, the
shutdown handshake and the limits of the async servers (the graceful stop is
``_stop``'s).

It knows no socket type: subclasses bind the socket and say what to do when
it is readable (accept a connection, receive a datagram). What it shares with
the synchronous servers is shared code: ``Limits`` and ``ConnectionTracker``
count and cap the connections, ``AcceptBackoff`` handles running out of
descriptors.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Generator
from typing import TYPE_CHECKING, Any

from .._accept import BACKOFF_SECONDS, AcceptBackoff
from .._errors import ConnectionDeadlineExceeded, LimitExceeded
from .._limits import NO_LIMITS, ConnectionTracker, Limits
from .._log import format_address, logger, report_request_error
from ._loop import LoopChoice, new_event_loop
from ._signals import signals_wake
from ._stop import SETTLE_SECONDS, AsyncGracefulStop, InFlight, resolve

if TYPE_CHECKING:
    import socket


class AsyncBaseServer(AsyncGracefulStop):
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

    limits: Limits = NO_LIMITS
    event_loop: LoopChoice = "auto"
    socket: socket.socket

    def __init__(self, server_address: Any, RequestHandlerClass: type[Any]) -> None:  # noqa: N803 - stdlib name
        self.server_address = server_address
        self.RequestHandlerClass = RequestHandlerClass
        # Reentrant: shutdown() may run in a signal handler that interrupted
        # this thread while it held the lock.
        self._state_lock = threading.RLock()
        self._shutdown_request = False
        self._is_shut_down = threading.Event()
        self._is_shut_down.set()
        self._serving_thread: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # where the connections run
        self._own_loop: asyncio.AbstractEventLoop | None = None  # made by serve_forever()
        self._wake: asyncio.Future[None] | None = None
        self._serving = False
        self._accepting = False  # the listening socket is registered with the loop
        self._listener_closed = False
        self._backoff_timer: asyncio.TimerHandle | None = None
        self._accept_backoff = AcceptBackoff()
        self._tracker: ConnectionTracker | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle_waiter: asyncio.Future[bool] | None = None
        self._drain_done: asyncio.Future[None] | None = None
        self._force = False

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
        report_request_error(client_address, self.limits.idle_timeout)

    def fileno(self) -> int:
        return self.socket.fileno()

    def _on_serve(self, loop: asyncio.AbstractEventLoop) -> None:
        """Called when ``serve()`` starts on ``loop``. Subclasses may prepare it."""

    def _on_readable(self) -> None:
        """The socket is readable: accept, or receive. Supplied by subclasses."""
        raise NotImplementedError

    # -- serving ------------------------------------------------------------------------

    async def serve(self, poll_interval: float = 0.5) -> None:
        """Serve on the running loop until ``shutdown()``.

        New connections wait in the backlog once it returns; the connections
        in flight go on running on the loop (``aclose()`` drains them).
        """
        loop = asyncio.get_running_loop()
        with self._state_lock:
            if self._serving_thread is not None:
                raise RuntimeError("serve() is already running on this server")
            if self._loop is not None and self._loop is not loop and not self._loop.is_closed() and self._in_flight():
                raise RuntimeError("this server's connections run on another event loop")
            self._loop = loop
            self._serving_thread = threading.get_ident()
            self._is_shut_down.clear()
        try:
            self._get_tracker()
            self._on_serve(loop)
            self._serving = True
            self._start_accepting()
            # Without a service_actions() of its own, no timer is armed: a
            # pending timer makes every turn of asyncio's loop read the clock
            # and compute a timeout, a cost paid on every request.
            ticking = type(self).service_actions is not AsyncBaseServer.service_actions
            while not self._shutdown_request:
                wake: asyncio.Future[None] = loop.create_future()
                self._wake = wake
                timer = loop.call_later(poll_interval, resolve, wake) if ticking else None
                try:
                    await wake
                finally:
                    if timer is not None:
                        timer.cancel()
                    self._wake = None
                if self._shutdown_request:
                    break
                self.service_actions()
        finally:
            self._serving = False
            self._pause_accepting()
            try:
                if self._drain_done is not None:
                    # aclose() runs on this loop: serve_forever() must keep
                    # the loop running until the drain is over.
                    await asyncio.shield(self._drain_done)
            finally:
                with self._state_lock:
                    self._shutdown_request = False
                    self._serving_thread = None
                    self._is_shut_down.set()

    def serve_forever(self, poll_interval: float = 0.5, *, loop: LoopChoice | None = None) -> Awaitable[None]:
        """Serve until ``shutdown()``.

        From plain code it blocks, running an event loop of its own (the kind
        is ``loop``, else ``event_loop``), which is kept for ``stop()`` until
        ``server_close()``. Inside a running loop it returns ``serve()``, so
        ``await server.serve_forever()`` serves on that loop.
        """
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            return self.serve(poll_interval)
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
        return _FINISHED

    def shutdown(self) -> None:
        """Make ``serve()``/``serve_forever()`` return, and wait until it has.

        Safe from any thread, any number of times, before or after serving.
        From the loop's own thread (a handler, a signal handler) it does not
        wait, which would deadlock: the loop returns once control is back with
        it. Called while nothing serves, the next ``serve()`` returns at once.
        """
        serving = self._request_shutdown()
        if serving is None or serving == threading.get_ident():
            return
        self._is_shut_down.wait()

    def _request_shutdown(self) -> int | None:
        with self._state_lock:
            self._shutdown_request = True
            serving = self._serving_thread
            loop = self._loop
        if serving is not None and loop is not None:
            try:
                loop.call_soon_threadsafe(self._wake_serve)
            except RuntimeError:
                pass  # the loop closed meanwhile: serve() is over
        return serving

    def _wake_serve(self) -> None:
        if self._wake is not None:
            resolve(self._wake)

    # -- accepting ----------------------------------------------------------------------

    def _start_accepting(self) -> None:
        """Watch the socket, unless stopped, paused at capacity or backing off."""
        loop = self._loop
        if (
            self._accepting
            or not self._serving
            or self._listener_closed
            or self._backoff_timer is not None
            or loop is None
            or self._get_tracker().at_capacity()
        ):
            return
        loop.add_reader(self.socket.fileno(), self._on_readable)
        self._accepting = True

    def _pause_accepting(self) -> None:
        """Stop watching the socket; what arrives waits in the kernel."""
        if self._accepting and self._loop is not None:
            self._loop.remove_reader(self.socket.fileno())
        self._accepting = False

    def _back_off(self) -> None:
        """Out of descriptors (see _accept): try again in BACKOFF_SECONDS."""
        self._pause_accepting()
        if self._loop is not None and self._backoff_timer is None:
            self._backoff_timer = self._loop.call_later(BACKOFF_SECONDS, self._end_back_off)

    def _end_back_off(self) -> None:
        self._backoff_timer = None
        self._start_accepting()

    def _capacity_freed(self) -> None:
        # Called by the tracker on release (on the loop's thread) when it goes
        # from full to not full.
        self._start_accepting()

    def _close_listener(self) -> None:
        """Refuse new connections from now on: close the listening socket."""
        loop = self._loop
        if self._accepting and loop is not None and self._serving_thread not in (None, threading.get_ident()):
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

    def _close_listener_here(self) -> None:
        self._pause_accepting()
        if self._backoff_timer is not None:
            self._backoff_timer.cancel()
            self._backoff_timer = None
        self._listener_closed = True
        sock = getattr(self, "socket", None)
        if sock is not None:
            sock.close()

    # -- connections in flight ----------------------------------------------------------

    def _get_tracker(self) -> ConnectionTracker:
        """The connections in flight; made on first use, with the limits then in force."""
        if self._tracker is None:
            self._tracker = ConnectionTracker(self.limits, on_free=self._capacity_freed)
        return self._tracker

    def _in_flight(self) -> int:
        return 0 if self._tracker is None else len(self._tracker)

    def _admit(self, item: InFlight, request: Any) -> bool:
        """Count ``item`` in and ask ``verify_request``; False if it must be dropped
        (the caller closes it). Pauses accepting at ``max_connections``."""
        tracker = self._get_tracker()
        client_address = item.client_address
        try:
            tracker.admit(item, client_address)
        except LimitExceeded as exc:
            logger.warning("%s", exc)
            return False
        try:
            verified = self.verify_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
            verified = False
        if not verified:
            tracker.release(item)
            return False
        if tracker.at_capacity():
            self._pause_accepting()
            logger.debug("%s at capacity: not accepting", format_address(self.server_address))
        return True

    def _deadline_timer(self, item: InFlight) -> asyncio.TimerHandle | None:
        """The timer that enforces ``connection_timeout`` on ``item``, if there is one."""
        limit = self._get_tracker().limits.connection_timeout
        if limit is None or self._loop is None:
            return None
        return self._loop.call_later(limit, self._deadline_passed, item, limit)

    def _deadline_passed(self, item: InFlight, limit: float) -> None:
        exc = ConnectionDeadlineExceeded(limit, item.client_address)
        logger.warning("%s: closing the connection", exc)
        item.abort(exc)

    def _release(self, item: InFlight) -> None:
        """Count ``item`` out (on the loop's thread)."""
        if self._tracker is None:
            return
        self._tracker.release(item)
        waiter = self._idle_waiter
        if waiter is not None and not len(self._tracker) and not waiter.done():
            waiter.set_result(True)

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        """A task the server owns until it ends."""
        assert self._loop is not None
        task: asyncio.Task[None] = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


class _Finished:
    """What a blocking ``serve_forever()`` returns: awaiting it returns at once."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        return
        yield  # pragma: no cover - makes this a generator


_FINISHED = _Finished()
