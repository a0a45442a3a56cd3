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

import math
import select
import selectors
import socket
import threading
import time
import types
from collections.abc import Callable

from ._accept import ACCEPT_BATCH, BACKOFF_SECONDS, AcceptBackoff, accept_batch
from ._access_log import hold, let_go
from ._admission import FOLD_INTERVAL
from ._framed import FramedRequestHandler, is_framed_handler
from ._graceful import GracefulStop
from ._limits import limits_of
from ._log import format_address, logger, report_request_error
from ._model import ConcurrencyModel, InlineModel, TicketModel
from ._pipeline import Job, current_job
from ._server_core import ServerCore
from ._signal_wakeup import drain, signal_wakeup
from ._wakeup import Waker
from ._watchdog import DeadlineWatchdog

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see sockserve/__init__.py)
if TYPE_CHECKING:
    from typing import Any

    from typing_extensions import Self

    from ._admission import Admission, Ticket
    from .protocol.proxy import ProxyHeader

# poll() needs no descriptor of its own (epoll does), which matters when the
# process is out of them, and has no FD_SETSIZE limit (select does).
if hasattr(selectors, "PollSelector"):
    _ServerSelector: type[selectors.BaseSelector] = selectors.PollSelector
else:  # pragma: no cover - Windows
    _ServerSelector = selectors.SelectSelector


def _capacity_check(admission: Admission, model: ConcurrencyModel) -> Callable[[], bool] | None:
    """What says the server is full (at max_connections, or the model can take
    no more), or None when nothing can fill it: then the serve loop asks
    nothing per request. Decided once, when the model is made."""
    checks = []
    if admission.limits.max_connections is not None:
        checks.append(admission.at_capacity)
    if getattr(type(model), "at_capacity", None) is not TicketModel.at_capacity:  # that one is never full
        checks.append(model.at_capacity)
    if len(checks) == 2:
        at_max_connections, model_full = checks
        return lambda: at_max_connections() or model_full()
    return checks[0] if checks else None


class BaseServer(ServerCore, GracefulStop):
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
    socket: socket.socket
    _serves_framed_handlers = False  # the pool's stream servers do

    def __init__(
        self,
        server_address: Any,
        RequestHandlerClass: Callable[[Any, Any, Self], object] | type[FramedRequestHandler],  # noqa: N803 - stdlib name
    ) -> None:
        self.server_address = server_address
        # Typed as what it is called with, not as BaseRequestHandler: the
        # handlers' module knows the servers, and the servers need not know it.
        self.RequestHandlerClass: Callable[[Any, Any, Any], object] = RequestHandlerClass
        framed = is_framed_handler(RequestHandlerClass)
        streams = getattr(self, "socket_type", socket.SOCK_STREAM) == socket.SOCK_STREAM
        if framed and not (self._serves_framed_handlers and streams):
            raise TypeError(
                f"{RequestHandlerClass.__name__} is a FramedRequestHandler: serve it with a "
                f"ThreadPool* server (stream sockets), not {type(self).__name__}"
            )
        self._start_core()
        self._serve_waker: Waker | None = None  # serve_forever()'s, while it runs
        self._serve_poller: select.poll | None = None  # serve_forever()'s, while it runs
        self._is_full: Callable[[], bool] | None = None  # see _capacity_check; set with the model
        self._accept_backoff = AcceptBackoff(self._count_refused)
        self._accept_paused = False  # the loop stopped watching the socket: at capacity
        self._force_requested = False  # force_stop() was called
        self._concurrency: ConcurrencyModel | None = None
        self._dispatching: Job | None = None  # the job process_request() may take over
        # The job whose handler runs on the dispatching thread (the
        # sequential model), and that thread: see _current_job().
        self._job_on_loop: Job | None = None
        self._job_on_loop_thread = 0
        self._watchdog: DeadlineWatchdog | None = None
        self._start_graceful_stop()

    # Programs that stop a server from inside a handler with the stdlib's own
    # private flag, ``server._BaseServer__shutdown_request = True``, keep
    # working: the name is mangled to exactly that.
    def _get_shutdown_flag(self) -> bool:
        return self._handshake.requested

    def _set_shutdown_flag(self, value: bool) -> None:
        self._handshake.requested = value

    __shutdown_request = property(_get_shutdown_flag, _set_shutdown_flag)

    def server_activate(self) -> None:
        """Called by the constructor to activate the server. May be overridden."""

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Handle one request at a time until shutdown.

        ``poll_interval`` is how often ``service_actions()`` runs when idle;
        ``shutdown()`` does not wait for it.
        """
        self._know_edge()  # the edge options as they are now (and a tls on a datagram server fails here)
        if self.tls is not None:
            self._tls_source()  # a TLS configuration that cannot load fails here, not at the first client
        waker = Waker()
        try:
            self._handshake.begin(waker.wake)
        except RuntimeError:
            waker.close()
            raise RuntimeError("serve_forever() is already running on this server") from None
        self._serve_waker = waker
        handshake = self._handshake
        # A bare poll object, not a selector: a selector's bookkeeping costs
        # more Python calls per turn than the rest of the turn (the forking
        # model watches a pidfd per child through it, see _watch_fd).
        poller = select.poll()
        self._serve_poller = poller
        try:
            self._concurrency_model()  # made now: the loop reads _is_full
            listener = self.fileno()
            poller.register(listener, select.POLLIN)
            waker_fd = waker.fileno()
            poller.register(waker_fd, select.POLLIN)
            signals = signal_wakeup()  # a signal handler's shutdown() must not wait for poll_interval
            signals_fd = -1 if signals is None else signals.fileno()
            if signals is not None:
                poller.register(signals_fd, select.POLLIN)
            # Another one to ask "is another request waiting?" after each accept.
            pending = select.poll()
            pending.register(listener, select.POLLIN)
            # As selectors do: None blocks, anything else is rounded up to a millisecond.
            timeout_ms = None if poll_interval is None else max(0, math.ceil(poll_interval * 1000.0))
            # Metrics another process reads (a prefork worker's slot): the
            # counts are folded in at least every FOLD_INTERVAL, on an idle
            # turn or on a busy one, so the reader is never further behind
            # (a busy loop never has an idle turn). Nothing per turn otherwise.
            fold_at: float | None = None
            if self.metrics.read_elsewhere:
                fold_at = time.monotonic() + FOLD_INTERVAL
                fold_ms = math.ceil(FOLD_INTERVAL * 1000.0)
                timeout_ms = fold_ms if timeout_ms is None else min(timeout_ms, fold_ms)
            watching = True
            while not handshake.requested:
                # At capacity the listening socket is not watched, so new
                # connections wait in the kernel backlog; a slot freeing up
                # wakes the loop (see _capacity_freed). The flag is set
                # before capacity is checked again, so a slot freed in
                # between is never missed.
                if self._is_full is not None or not watching:
                    self._accept_paused = True
                    paused = self._accepting_paused()
                    self._accept_paused = paused
                    if paused == watching:
                        if paused:
                            poller.unregister(listener)
                            logger.debug("%s at capacity: not accepting", format_address(self.server_address))
                        else:
                            poller.register(listener, select.POLLIN)
                        watching = not paused
                ready = poller.poll(timeout_ms)
                if handshake.requested:
                    break
                if not ready:
                    self._idle_turn()
                elif fold_at is not None and time.monotonic() >= fold_at:
                    self._idle_turn()
                    fold_at = time.monotonic() + FOLD_INTERVAL
                for fd, _ in ready:
                    if fd == listener:
                        self._serve_pending(pending)
                    elif fd == waker_fd:
                        waker.drain()
                    elif fd == signals_fd:
                        assert signals is not None
                        drain(signals)
                    else:
                        self._unwatch_fd(fd)  # a watched descriptor: its event wakes the loop once
                self.service_actions()
        finally:
            self._serve_poller = None
            self._accept_paused = False
            self._serve_waker = None
            handshake.end()
            waker.close()

    def _idle_turn(self) -> None:
        """Nothing happened for ``poll_interval``: count the connections that
        ended meanwhile in the metrics, where another process (a prefork
        supervisor) reads them (``Admission.fold``)."""
        admission = self._admission_book
        if admission is not None:
            admission.fold()

    def shutdown(self) -> None:
        """Stop the serve_forever() loop and wait until it has stopped.

        Safe to call from any thread, any number of times, before or after
        ``serve_forever()`` runs. From the thread that runs ``serve_forever()``
        itself (a synchronous server's handler, a signal handler) it does not
        wait, since that would deadlock: the loop ends once control returns to it.
        """
        self._handshake.request_and_wait()

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

    # -- one connection's walk: accept, admit, dispatch (stages, handler), release ----

    def _serve_pending(self, pending: select.poll) -> None:
        """Take the requests that are waiting, up to ACCEPT_BATCH.

        ``accept_batch()``'s loop, written out: this runs at every wake-up,
        and under light load for every single request, so it calls no
        ``go_on()`` between requests and builds no closure.
        """
        is_full = self._is_full
        handshake = self._handshake
        backoff = self._accept_backoff
        for _ in range(ACCEPT_BATCH):
            if is_full is not None and is_full():
                # The model filled up since the loop last looked (the pool's
                # reactor hands it work on its own thread): accept no more;
                # the loop stops watching the socket at its next turn.
                return
            try:
                request, client_address = self.get_request()
            except (BlockingIOError, InterruptedError):
                return  # nothing (more) waiting, or another worker process took it
            except OSError as exc:
                if backoff.failed(exc, self.server_address):
                    self._back_off()
                return
            if backoff.failures:
                backoff.succeeded(self.server_address)
            self._admit_and_dispatch(request, client_address)
            # The listening socket is blocking, as the stdlib's is: only ask
            # for another request when one is known to be waiting.
            if handshake.requested or not pending.poll(0):
                return

    def _handle_request_noblock(self) -> None:
        """Handle one request, without blocking (the socket is known readable)."""
        accept_batch(
            self.get_request,
            self._admit_and_dispatch,
            lambda: False,
            self._accept_backoff,
            self.server_address,
            self._back_off,
            limit=1,
        )

    def _admit_and_dispatch(
        self, request: Any, client_address: Any, proxied: tuple[Any, ProxyHeader | None] | None = None
    ) -> None:
        """Walk one accepted request through admission, then hand it to the
        concurrency model, through ``process_request()``.

        A datagram server with ``proxy_protocol`` reads each datagram's
        header first (``_proxy_datagrams``), then comes back here with the
        payload and the real client, and ``proxied`` = (the socket's peer,
        the header or None): a datagram has no stages, and its header is
        kept for the handler's ``connection_info``.

        A model's ``process_request()`` takes the job over (``_take_job``) and
        releases it when its handler is done, wherever that runs. A job nobody
        took (the sequential model, which runs it right here, or a
        ``process_request()`` of the user's own) is released when
        ``process_request()`` returns. Where the handler runs on this thread
        anyway, the stages run here first.

        This runs once per connection and per datagram: it reads the
        admission and the model from their attributes rather than through
        their makers, and makes the job this thread's current one only where
        its handler runs here (elsewhere, ``Job.run`` does).
        """
        if not self._edge_known:
            self._know_edge()
        if self._datagram_proxy and proxied is None:
            self._admit_proxied_datagram(request, client_address)
            return
        try:
            ticket = self._admit(request, client_address)
        except BaseException:
            self.shutdown_request(request)
            raise
        if ticket is None:
            self.shutdown_request(request)
            return
        model = self._concurrency
        if model is None:
            model = self._concurrency_model()
        if ticket.deadline is not None and not model.cuts_own_deadlines:
            self._start_watchdog()
        if proxied is None:
            job = Job(self, self._admission_book, ticket, request, client_address, self._stage_factories(ticket))
        else:
            job = Job(self, self._admission_book, ticket, request, client_address)
            if proxied[1] is not None:  # discarded by the job's release
                self._proxied_connections().add(request, proxied[0], proxied[1])
        if self._datagram_bytes:
            self._admission_book.datagram_sizes.append(len(request[0]))  # type: ignore[union-attr]
        on_loop = model.runs_on_loop
        previous = self._job_on_loop
        held = None
        if on_loop:
            self._run_on_this_thread(job)
        try:
            if on_loop:
                if job.stages and not job.prepare():
                    job.release()  # nobody took it over: it ends here (its slot was leaked before)
                    return
                if self._stream_end and isinstance(job.request, socket.socket):
                    held = hold(job.request)  # how it ended is read after the handler closed it
            self._dispatching = job
            self.process_request(job.request, job.client_address)  # as the stages left them
        except Exception:
            if not on_loop:
                self._run_on_this_thread(job)  # handle_error() looks the job up
                on_loop = True
            self._handler_error(job.request, job.client_address, ticket)
            self.shutdown_request(job.request)
        except BaseException:
            self.shutdown_request(job.request)
            raise
        finally:
            if on_loop:
                self._job_on_loop = previous
            if held is not None:
                let_go(held, ticket, self._tcp_bytes)
            if self._dispatching is job:
                self._dispatching = None
                job.release()

    def _admit_proxied_datagram(self, request: Any, peer: Any) -> None:
        """A datagram that may carry a PROXY header: read it before the admit
        step, so that the limits, the access list, ``verify_request()`` and
        the handler see the client it names. The handler's socket is then a
        stand-in that sends its replies to the real client through the
        proxy. A datagram dropped for its header gets ``shutdown_request()``,
        as one refused by the admit step does."""
        from ._proxy_datagrams import ProxiedSocket, read_datagram_header

        proxy = self.proxy_protocol
        assert proxy is not None
        data, sock = request
        read = read_datagram_header(self, proxy, data, peer)
        if read is None:
            self.shutdown_request(request)
            return
        payload, client_address, header = read
        if client_address != peer:
            request = (payload, ProxiedSocket(sock, client_address, peer))
        elif header is not None:
            request = (payload, sock)  # the proxy's own (LOCAL): a request of its own, for connection_info
        self._admit_and_dispatch(request, client_address, (peer, header))

    def _run_on_this_thread(self, job: Job) -> None:
        self._job_on_loop = job
        self._job_on_loop_thread = threading.get_ident()

    def _current_ticket(self) -> Ticket | None:
        job = self._current_job()
        return None if job is None else job.ticket

    def _current_job(self) -> Job | None:
        """The job whose handler runs on this thread.

        The sequential model's job is kept on the server, not in the
        thread-local that ``Job.run`` sets on a request's own thread: two
        turns of a thread-local per request cost more than the rest of the
        dispatch. Only the errors and ``stop()`` ask.
        """
        job = self._job_on_loop
        if job is not None and self._job_on_loop_thread == threading.get_ident():
            return job
        return current_job()

    def _take_job(self, request: Any, client_address: Any) -> Job:
        """For a model's ``process_request()``: take over the job being
        dispatched, and with it its release. A request the core did not
        admit (a program calling ``process_request()`` itself) gets a job
        with nothing to release."""
        job = self._dispatching
        if job is not None and job.request is request:
            self._dispatching = None
            return job
        return Job(self, None, None, request, client_address, self._stage_factories())

    # -- the concurrency model -----------------------------------------------------

    def _concurrency_model(self) -> ConcurrencyModel:
        """This server's concurrency model; made on first use."""
        model = self._concurrency
        if model is None:
            admission = self._admission()
            model = self._make_model(admission)
            self._is_full = _capacity_check(admission, model)
            self._concurrency = model
        return model

    def _make_model(self, admission: Admission) -> ConcurrencyModel:
        """The sequential model: handlers run on the serve loop's thread.
        The mixins return their own."""
        return InlineModel(admission)

    def _accepting_paused(self) -> bool:
        """True while the server must not accept: at max_connections, or the
        model can take no more work."""
        self._concurrency_model()  # decides _is_full
        is_full = self._is_full
        return is_full is not None and is_full()

    def _capacity_freed(self) -> None:
        """Called from any thread when a slot frees up: wake a paused loop."""
        if self._accept_paused:
            waker = self._serve_waker
            if waker is not None:
                waker.wake()

    def _start_watchdog(self) -> None:
        watchdog = self._watchdog
        if watchdog is None:
            watchdog = self._watchdog = DeadlineWatchdog(self._admission())
        watchdog.ensure_running()

    def _watch_fd(self, fd: int) -> bool:
        """Wake the serve loop once when ``fd`` becomes readable (then it is
        unwatched). Only from the loop's own thread while it serves; False
        otherwise. The forking model watches its children's pidfds this way."""
        poller = self._serve_poller
        if poller is None or not self._handshake.serving_here():
            return False
        poller.register(fd, select.POLLIN)
        return True

    def _unwatch_fd(self, fd: Any) -> None:
        poller = self._serve_poller
        if poller is not None and self._handshake.serving_here():
            try:
                poller.unregister(fd)
            except KeyError:
                pass  # not watched (any more): nothing to undo

    def _back_off(self) -> None:
        """Wait before the next accept, waking early for shutdown()."""
        waker = self._serve_waker
        if waker is not None and self._handshake.serving_here():
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
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None:
            watchdog.close()
        if self._concurrency is not None:
            self._concurrency.close()  # joins pool workers, reaps children

    def finish_request(self, request: Any, client_address: Any) -> None:
        """Finish one request by instantiating RequestHandlerClass."""
        self.RequestHandlerClass(request, client_address, self)

    def shutdown_request(self, request: Any) -> None:
        """Called to shut down and close an individual request."""
        self.close_request(request)

    def close_request(self, request: Any) -> None:
        """Called to clean up an individual request."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Report an exception raised while handling a request. May be overridden.

        Called inside the ``except`` block, so ``sys.exc_info()`` is the error.
        Logs it with its traceback on the ``sockserve`` logger; the server goes
        on. A limit that fired (``LimitExceeded``, or a read that outlived
        ``limits.idle_timeout``) is not a bug: it gets one line naming the limit
        and the client, without a traceback.
        """
        job = self._current_job()
        report_request_error(
            client_address,
            limits_of(self).idle_timeout,
            cut_by_server=None if job is None or job.ticket is None else job.ticket.aborted,
            datagram=getattr(self, "socket_type", None) == socket.SOCK_DGRAM,
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: types.TracebackType | None,
    ) -> None:
        self.server_close()
