"""BaseServer: the request loop, the server hooks and the shutdown handshake.

It knows no socket type: subclasses supply ``get_request()``, ``fileno()`` and
the socket. Behaviour follows the stdlib's ``socketserver.BaseServer``, with
these deliberate differences, all invisible to code that works on the stdlib:

* ``shutdown()`` wakes ``serve_forever()`` through a self-pipe, so it returns at
  once instead of after up to ``poll_interval`` seconds.
* ``shutdown()`` never deadlocks: called while no ``serve_forever()`` runs, it
  leaves the request pending and returns; called from the thread that runs
  ``serve_forever()`` (a handler of a synchronous server, a signal handler),
  it returns at once and the loop ends after the current request.
* Several pending requests are taken per wake-up (see ``_accept``).
* Running out of descriptors backs off instead of spinning (see ``_accept``).
* An exception in ``verify_request()`` is reported like one in the handler,
  instead of escaping ``serve_forever()`` and leaking the connection.
* ``handle_error()`` logs to the ``sockserve`` logger instead of printing.
"""

from __future__ import annotations

import select
import selectors
import threading
import time
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._accept import ACCEPT_BATCH, BACKOFF_SECONDS, AcceptBackoff
from ._errors import LimitExceeded
from ._graceful import GracefulStop
from ._limits import NO_LIMITS, ConnectionTracker, Limits
from ._log import format_address, logger, report_request_error
from ._wakeup import Waker
from ._watchdog import DeadlineWatchdog

if TYPE_CHECKING:
    import socket

    from typing_extensions import Self

    from ._handlers import BaseRequestHandler

# poll() needs no descriptor of its own (epoll does), which matters when the
# process is out of them, and has no FD_SETSIZE limit (select does).
if hasattr(selectors, "PollSelector"):
    _ServerSelector: type[selectors.BaseSelector] = selectors.PollSelector
else:  # pragma: no cover - Windows
    _ServerSelector = selectors.SelectSelector


class BaseServer(GracefulStop):
    """Base class for server classes.

    Methods for the caller:

    - __init__(server_address, RequestHandlerClass)
    - serve_forever(poll_interval=0.5)
    - shutdown()
    - handle_request()  # if you do not use serve_forever()
    - fileno() -> int   # for selector

    Methods that may be overridden:

    - server_bind()
    - server_activate()
    - get_request() -> request, client_address
    - handle_timeout()
    - verify_request(request, client_address)
    - server_close()
    - process_request(request, client_address)
    - shutdown_request(request)
    - close_request(request)
    - service_actions()
    - handle_error()

    Methods for derived classes:

    - finish_request(request, client_address)

    Class variables that may be overridden by derived classes or instances:

    - timeout
    - address_family
    - socket_type
    - allow_reuse_address
    - allow_reuse_port

    Instance variables:

    - RequestHandlerClass
    - socket
    """

    timeout: float | None = None
    # sockserve's own: connection caps and timeouts (none by default, as in
    # the stdlib). Set on a subclass or an instance before serving.
    limits: Limits = NO_LIMITS
    socket: socket.socket

    def __init__(
        self,
        server_address: Any,
        RequestHandlerClass: Callable[[Any, Any, Self], BaseRequestHandler],  # noqa: N803 - stdlib name
    ) -> None:
        self.server_address = server_address
        self.RequestHandlerClass: Callable[[Any, Any, Any], BaseRequestHandler] = RequestHandlerClass
        # The name-mangled spelling matches the stdlib's on purpose: programs
        # that stop a server with ``server._BaseServer__shutdown_request = True``
        # from inside a handler keep working.
        self.__shutdown_request = False
        self.__is_shut_down = threading.Event()
        self.__is_shut_down.set()
        # Reentrant: shutdown() may run in a signal handler that interrupted
        # serve_forever() on the same thread while it held this lock.
        self.__state_lock = threading.RLock()
        self.__serving_thread: int | None = None
        self.__waker: Waker | None = None
        self._accept_backoff = AcceptBackoff()
        self.__paused = False  # the loop stopped watching the socket: at capacity
        self._force_requested = False  # force_stop() was called
        self.__tracker: ConnectionTracker | None = None
        self.__selector: selectors.BaseSelector | None = None  # serve_forever()'s, while it runs
        self.__watchdog: DeadlineWatchdog | None = None

    def server_activate(self) -> None:
        """Called by the constructor to activate the server. May be overridden."""

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Handle one request at a time until shutdown.

        ``poll_interval`` is how often ``service_actions()`` runs when idle;
        ``shutdown()`` does not wait for it.
        """
        waker = Waker()
        with self.__state_lock:
            if self.__serving_thread is not None:
                waker.close()
                raise RuntimeError("serve_forever() is already running on this server")
            self.__serving_thread = threading.get_ident()
            self.__waker = waker
            self.__is_shut_down.clear()
        try:
            with _ServerSelector() as selector:
                selector.register(self, selectors.EVENT_READ)
                selector.register(waker, selectors.EVENT_READ)
                # A bare poll object to ask "is another request waiting?" after
                # each accept: a fraction of a selector's cost per call.
                pending = select.poll()
                pending.register(self.fileno(), select.POLLIN)
                self.__selector = selector
                watching = True
                while not self.__shutdown_request:
                    # At capacity the listening socket is not watched, so new
                    # connections wait in the kernel backlog; a slot freeing up
                    # wakes the loop (see _capacity_freed). The flag is set
                    # before capacity is checked again, so a slot freed in
                    # between is never missed.
                    self.__paused = True
                    paused = self._accepting_paused()
                    self.__paused = paused
                    if paused == watching:
                        if paused:
                            selector.unregister(self)
                            logger.debug("%s at capacity: not accepting", format_address(self.server_address))
                        else:
                            selector.register(self, selectors.EVENT_READ)
                        watching = not paused
                    ready = selector.select(poll_interval)
                    if self.__shutdown_request:
                        break
                    for key, _ in ready:
                        if key.fileobj is waker:
                            waker.drain()
                        elif key.fileobj is self:
                            self._serve_pending(pending)
                        else:
                            self._unwatch(key.fileobj)  # a watched descriptor: its event wakes the loop once
                    self.service_actions()
        finally:
            self.__selector = None
            self.__paused = False
            with self.__state_lock:
                self.__shutdown_request = False
                self.__serving_thread = None
                self.__waker = None
                waker.close()
                self.__is_shut_down.set()

    def shutdown(self) -> None:
        """Stop the serve_forever() loop and wait until it has stopped.

        Safe to call from any thread, any number of times, before or after
        ``serve_forever()`` runs. From the thread that runs ``serve_forever()``
        itself (a synchronous server's handler, a signal handler) it does not
        wait, since that would deadlock: the loop ends once control returns to it.
        """
        with self.__state_lock:
            self.__shutdown_request = True
            if self.__waker is not None:
                self.__waker.wake()
            serving = self.__serving_thread
        if serving is None or serving == threading.get_ident():
            return
        self.__is_shut_down.wait()

    def service_actions(self) -> None:
        """Called once per turn of the serve_forever() loop. May be overridden."""

    def handle_request(self) -> None:
        """Handle one request, waiting at most ``timeout`` seconds for it."""
        timeout = self.socket.gettimeout()
        if timeout is None:
            timeout = self.timeout
        elif self.timeout is not None:
            timeout = min(timeout, self.timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        with _ServerSelector() as selector:
            selector.register(self, selectors.EVENT_READ)
            while True:
                if selector.select(timeout):
                    return self._handle_request_noblock()
                if deadline is not None:
                    timeout = deadline - time.monotonic()
                    if timeout < 0:
                        return self.handle_timeout()

    def _handle_request_noblock(self) -> None:
        """Handle one request, without blocking (the socket is known readable)."""
        self._accept_and_dispatch()

    def _serve_pending(self, pending: select.poll) -> None:
        """Take up to ACCEPT_BATCH requests that are already waiting."""
        for _ in range(ACCEPT_BATCH):
            if not self._accept_and_dispatch() or self.__shutdown_request:
                return
            if self._accepting_paused() or not pending.poll(0):
                return

    def _accept_and_dispatch(self) -> bool:
        """Get one request and run it through the hooks; False if none was got."""
        try:
            request, client_address = self.get_request()
        except OSError as exc:
            if self._accept_backoff.failed(exc, self.server_address):
                self._back_off()
            return False
        self._accept_backoff.succeeded(self.server_address)
        try:
            self._tracker().admit(request, client_address)
        except LimitExceeded as exc:
            logger.warning("%s", exc)
            self.shutdown_request(request)
            return True
        try:
            if self.verify_request(request, client_address):
                self.process_request(request, client_address)
            else:
                self.shutdown_request(request)
        except Exception:
            self.handle_error(request, client_address)
            self.shutdown_request(request)
        except BaseException:
            self.shutdown_request(request)
            raise
        return True

    def _tracker(self) -> ConnectionTracker:
        """The connections in flight; made on first use, with the limits then in force."""
        tracker = self.__tracker
        if tracker is None:
            with self.__state_lock:
                if self.__tracker is None:
                    self.__tracker = ConnectionTracker(self.limits, on_free=self._capacity_freed)
                    if self.limits.connection_timeout is not None:
                        self.__watchdog = DeadlineWatchdog(self.__tracker)
                tracker = self.__tracker
        if self.__watchdog is not None:
            self.__watchdog.ensure_running()
        return tracker

    def _release(self, request: Any) -> None:
        """Count a request out of the tracker (called when it is closed)."""
        if self.__tracker is not None:
            self.__tracker.release(request)

    def _accepting_paused(self) -> bool:
        """True while the server must not accept. Concurrency models with a
        capacity of their own (the bounded pool) extend this."""
        tracker = self.__tracker
        return tracker is not None and tracker.at_capacity()

    def _capacity_freed(self) -> None:
        """Called from any thread when a slot frees up: wake a paused loop."""
        if self.__paused:
            waker = self.__waker
            if waker is not None:
                waker.wake()

    def _watch(self, fd: int) -> bool:
        """Wake the serve loop once when ``fd`` becomes readable (then it is
        unwatched). Only from the loop's own thread while it serves; False
        otherwise. ForkingMixIn watches its children's pidfds this way."""
        selector = self.__selector
        if selector is None or not self._serving_here():
            return False
        selector.register(fd, selectors.EVENT_READ)
        return True

    def _unwatch(self, fd: Any) -> None:
        selector = self.__selector
        if selector is not None and self._serving_here():
            try:
                selector.unregister(fd)
            except KeyError:
                pass  # not watched (any more): nothing to undo

    def _tracker_if_any(self) -> ConnectionTracker | None:
        return self.__tracker

    def _serving_here(self) -> bool:
        """True on the thread that runs serve_forever()."""
        return self.__serving_thread == threading.get_ident()

    def _back_off(self) -> None:
        """Wait before the next accept, waking early for shutdown()."""
        waker = self.__waker
        if waker is not None and threading.get_ident() == self.__serving_thread:
            waker.wait(BACKOFF_SECONDS)
        else:
            threading.Event().wait(BACKOFF_SECONDS)

    def get_request(self) -> tuple[Any, Any]:
        """Get the next request and the client's address. Must be overridden."""
        raise NotImplementedError

    def fileno(self) -> int:
        """The descriptor that becomes readable when a request is waiting."""
        raise NotImplementedError

    def handle_timeout(self) -> None:
        """Called when handle_request() times out. May be overridden."""

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Return True to process the request, False to drop it. May be overridden."""
        return True

    def process_request(self, request: Any, client_address: Any) -> None:
        """Call finish_request() and then shutdown_request(). Overridden by the mixins."""
        self.finish_request(request, client_address)
        self.shutdown_request(request)

    def server_close(self) -> None:
        """Clean up the server. May be overridden."""
        self._stop_watchdog()

    def _stop_watchdog(self) -> None:
        watchdog, self.__watchdog = self.__watchdog, None
        if watchdog is not None:
            watchdog.close()

    def finish_request(self, request: Any, client_address: Any) -> None:
        """Finish one request by instantiating RequestHandlerClass."""
        self.RequestHandlerClass(request, client_address, self)

    def shutdown_request(self, request: Any) -> None:
        """Called to shut down and close an individual request."""
        self.close_request(request)

    def close_request(self, request: Any) -> None:
        """Called to clean up an individual request."""
        self._release(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Report an exception raised while handling a request. May be overridden.

        Called inside the ``except`` block, so ``sys.exc_info()`` is the error.
        Logs it with its traceback on the ``sockserve`` logger; the server goes
        on. A limit that fired (``LimitExceeded``, or a read that outlived
        ``limits.idle_timeout``) is not a bug: it gets one line naming the limit
        and the client, without a traceback.
        """
        report_request_error(client_address, self.limits.idle_timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: types.TracebackType | None,
    ) -> None:
        self.server_close()
