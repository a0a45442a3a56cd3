"""The async TCP, UDP and Unix servers: binding (as the synchronous servers
bind, IPv6 and the Unix socket file included), accepting connections and
receiving datagrams on the event loop."""

from __future__ import annotations

import asyncio
import functools
import socket
import time
import types
from asyncio.constants import ACCEPT_RETRY_DELAY
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from .._accept import ACCEPT_CAPACITY_ERRNOS, accept_batch
from .._admission import Refusal, Ticket
from .._inet_servers import bind_socket, open_listener, receive_datagram
from .._log import format_address, log_refused, logger
from .._unix_servers import _SocketFileOwner
from ._callback import (
    CallbackConnection,
    IdleCallbackConnection,
    connect_callback,
    loop_connections,
    route_loop_exceptions,
)
from ._connection import StreamConnection, loop_streams, run_stream
from ._datagram import LOOP_RECV_BUFFER, DatagramEndpoint, DatagramReceiver, DatagramTarget
from ._datagram_handler import AsyncDatagramProtocolHandler
from ._datagram_tasks import NO_TARGET, TaskStarter, run_datagram_handler
from ._handlers import AsyncDatagramRequestHandler, AsyncProtocolHandler, AsyncStreamRequestHandler
from ._inflight import InFlight
from ._loop import accept_with_loop, loop_accepts, loop_kind
from ._server import AsyncBaseServer

if TYPE_CHECKING:
    from .._proxy_datagrams import ProxyRoutes
    from ..protocol.proxy import ProxyHeader


class _BoundServer(AsyncBaseServer):
    """Makes the socket and binds it, as the synchronous TCPServer does."""

    address_family: int = socket.AF_INET
    socket_type: int = socket.SOCK_STREAM
    allow_reuse_address: bool = False
    allow_reuse_port: bool = False
    handler_bases: tuple[type[Any], ...] = ()

    def __init__(
        self,
        server_address: Any,
        RequestHandlerClass: type[Any],  # noqa: N803 - stdlib name
        bind_and_activate: bool = True,
    ) -> None:
        super().__init__(server_address, RequestHandlerClass)
        if not (isinstance(RequestHandlerClass, type) and issubclass(RequestHandlerClass, self.handler_bases)):
            names = " or ".join(base.__name__ for base in self.handler_bases)
            raise TypeError(f"{type(self).__name__} needs a subclass of {names}, got {RequestHandlerClass!r}")
        # IPPROTO_TCP, not 0: accepted sockets inherit it, and asyncio turns
        # Nagle off only on sockets that say they are TCP (uvloop always does).
        open_listener(self, server_address, bind_and_activate, tcp_proto=True)

    def server_bind(self) -> None:
        """Bind the socket; afterwards ``server_address`` is the real address."""
        inet = self.address_family in (socket.AF_INET, socket.AF_INET6)
        self.server_address = bind_socket(
            self.socket,
            self.server_address,
            reuse_address=self.allow_reuse_address and inet,
            reuse_port=self.allow_reuse_port,
        )


# Descriptors kept in hand under uvloop: from the soft RLIMIT_NOFILE less
# this many (at least; an eighth of the limit on a large one), sockserve
# accepts instead of the loop (see AsyncTCPServer._descriptors_low).
FD_HEADROOM = 32
# Connections the loop accepts between two looks (a getrlimit() and the
# descriptor's number): well under FD_HEADROOM.
FD_CHECK_EVERY = 16


def descriptor_ceiling() -> int | None:
    """The descriptor number from which uvloop's accept hands over, or None
    (no limit, or no way to read it)."""
    global _getrlimit, _unlimited
    getrlimit = _getrlimit
    if getrlimit is None:
        # Imported once: an import statement run at every look costs ~8 k
        # instructions even when the module is loaded.
        try:
            import resource
        except ImportError:
            return None
        _unlimited = resource.RLIM_INFINITY
        getrlimit = _getrlimit = functools.partial(resource.getrlimit, resource.RLIMIT_NOFILE)
    soft = getrlimit()[0]
    if soft == _unlimited or soft <= 0:
        return None
    return max(0, soft - max(FD_HEADROOM, soft // 8))


_getrlimit: Callable[[], tuple[int, int]] | None = None
_unlimited = -1  # resource.RLIM_INFINITY, once it is imported


class AsyncTCPServer(_BoundServer):
    """A TCP server on an event loop.

    ``RequestHandlerClass`` is an ``AsyncStreamRequestHandler`` subclass (a
    task per connection, ``async def handle()``) or an ``AsyncProtocolHandler``
    subclass (callbacks, no task). The socket is bound and listening when the
    constructor returns, before any event loop exists, so the server can be
    made before a fork and served in each child.

    Class variables that may be overridden by subclasses or instances:
    ``address_family`` (AF_INET; an IPv6 address switches the instance to
    AF_INET6, and ``"::"`` is dual-stack), ``socket_type``,
    ``request_queue_size`` (4096, capped by the kernel's somaxconn: an event
    loop serves thousands of connections), ``allow_reuse_address`` (True, as
    asyncio's servers do), ``allow_reuse_port``.
    """

    request_queue_size: int = 4096
    allow_reuse_address: bool = True
    handler_bases = (AsyncStreamRequestHandler, AsyncProtocolHandler)
    # While serving: what makes each connection's protocol when the loop
    # accepts (see _loop_accepts), and the loop's server while it does.
    _loop_connections: Callable[[], asyncio.BaseProtocol] | None = None
    _loop_server: asyncio.Server | None = None
    # _loop_connections while sockserve accepts in the loop's stead (see _descriptors_low).
    _parked_loop_connections: Callable[[], asyncio.BaseProtocol] | None = None

    def server_activate(self) -> None:
        self.socket.listen(self.request_queue_size)
        self.socket.setblocking(False)

    def _on_readable(self) -> None:
        """Accept what is waiting, up to ACCEPT_BATCH per wake-up."""
        accept_batch(
            self.socket.accept,
            self._start_connection,
            self._still_accepting,
            self._accept_backoff,
            self.server_address,
            self._back_off,
        )

    def _still_accepting(self) -> bool:
        return self._listener_watched  # False at capacity, or once stopped

    def _start_connection(self, sock: socket.socket, client_address: Any) -> None:
        handler_class = self.RequestHandlerClass
        stages = self._stage_factories()
        conn: StreamConnection | CallbackConnection
        if issubclass(handler_class, AsyncStreamRequestHandler):
            conn = StreamConnection(self, sock, client_address, self._release_ticket)
        else:
            idle = self._admission().limits.idle_timeout
            if idle is None:
                conn = CallbackConnection(self, sock, client_address, self._release_ticket)
            else:
                conn = IdleCallbackConnection(self, sock, client_address, self._release_ticket, idle)
            if not stages:
                try:
                    conn.attach(handler_class)
                except Exception:
                    self._handler_error(sock, client_address)  # the handler's constructor raised
                    sock.close()
                    if isinstance(conn, IdleCallbackConnection):
                        conn.cancel_idle_timer()
                    return
        if not self._admit_item(conn, sock):
            sock.close()
            if isinstance(conn, IdleCallbackConnection):
                conn.cancel_idle_timer()
            return
        if stages:  # again, now that the ticket is known: the PROXY stage vets the real client with it
            stages = self._stage_factories(conn.ticket)
        if isinstance(conn, StreamConnection):
            conn.task = self._spawn_task(run_stream(conn, handler_class, self._admission().limits, stages))
        else:
            conn.task = self._spawn_task(connect_callback(conn, handler_class, stages))

    def _on_serve(self, loop: asyncio.AbstractEventLoop) -> Callable[[], None] | None:
        handler_class = self.RequestHandlerClass
        self._loop_connections = None
        self._parked_loop_connections = None
        self._resume_loop_accept_at = None
        self._fd_countdown = None
        if self._loop_accepts(loop):
            if issubclass(handler_class, AsyncStreamRequestHandler):
                self._loop_connections = loop_streams(self, handler_class, loop)
            else:
                self._loop_connections = loop_connections(self, handler_class, self._admission().limits.idle_timeout)
            if loop_kind(loop) == "uvloop":
                self._fd_countdown = 0  # the first connection looks
        if self._loop_connections is not None:
            return route_loop_exceptions(loop, self._loop_accept_error)
        if issubclass(handler_class, AsyncProtocolHandler):
            return route_loop_exceptions(loop)
        return None

    def _loop_accept_error(self, context: dict[str, Any]) -> bool:
        """A loop exception handler's hook: asyncio's loop could not accept
        on this server's socket for want of descriptors (it then stops
        watching the socket and tries again ``ACCEPT_RETRY_DELAY`` later, by
        itself; pending connections wait in the backlog). One line per
        episode, as sockserve's own accept says it, instead of asyncio's
        traceback at every try. (libuv gives no such news: out of
        descriptors, it closes the connections waiting in the backlog.)"""
        exc = context.get("exception")
        if isinstance(exc, ValueError) and self._loop_accept_failures and _is_stale_accept_retry(context):
            # A retry asyncio armed during the episode fired after accepting
            # paused and closed the loop's duplicate of the socket: nothing
            # to watch any more, and nothing lost (the listening socket and
            # its backlog stay).
            logger.debug("a stale accept retry on %s was ignored: %s", format_address(self.server_address), exc)
            return True
        sock = context.get("socket")
        server = self._loop_server
        if (
            not isinstance(exc, OSError)
            or exc.errno not in ACCEPT_CAPACITY_ERRNOS
            or sock is None
            or server is None
            or sock.fileno() not in [s.fileno() for s in server.sockets]
        ):
            return False
        address = format_address(self.server_address)
        if not self._loop_accept_failures:
            self._loop_accept_failing_since = time.monotonic()
            logger.error(
                "cannot accept on %s: %s; the loop tries again every %.2fs, pending connections wait in the backlog",
                address,
                exc,
                ACCEPT_RETRY_DELAY,
            )
        else:
            logger.debug("accept on %s still failing: %s", address, exc)
        self._loop_accept_failures += 1
        self._count_refused("emfile")
        return True

    def _check_descriptors(self, request: Any) -> None:
        """Under uvloop, every ``FD_CHECK_EVERY`` connections the loop
        accepted: one whose descriptor's number (the kernel allocates the
        lowest free, so it says how many are open) is within
        ``FD_HEADROOM`` of the soft RLIMIT_NOFILE, read again each time (a
        ``prlimit`` on the running process counts), hands accepting over to
        sockserve (``_descriptors_low``)."""
        self._fd_countdown = FD_CHECK_EVERY
        ceiling = descriptor_ceiling()
        if ceiling is not None and request.fileno() >= ceiling:
            self._descriptors_low()

    def _descriptors_low(self) -> None:
        """uvloop's accept is about to run out of descriptors: sockserve
        accepts in its stead until enough connections have closed.

        Out of descriptors, libuv accepts the connections waiting in the
        backlog and closes them at once (its "EMFILE trick"), and uvloop
        says nothing: they were neither counted nor logged. sockserve's own
        accept (``accept_batch``) leaves them in the backlog, counts each
        failed try (``refused["emfile"]``) and logs one line per episode, as
        the pool does. Looked at every few connections (``_check_descriptors``),
        so a burst larger than the headroom that libuv takes in one go may
        still meet the trick."""
        if self._parked_loop_connections is not None or self._loop_connections is None:
            return
        self._parked_loop_connections = self._loop_connections
        self._resume_loop_accept_at = max(0, len(self._admission()) - FD_HEADROOM // 2)
        self._pause_accepting()  # the loop's server: its duplicate of the socket only
        self._loop_connections = None
        logger.debug(
            "%s is near the descriptor limit: accepting without the loop's help", format_address(self.server_address)
        )
        self._start_accepting()

    def _descriptors_recovered(self) -> None:
        factory = self._parked_loop_connections
        self._resume_loop_accept_at = None
        self._parked_loop_connections = None
        if factory is None or not self._serve_running:
            return
        self._pause_accepting()  # sockserve's watch of the socket
        if self._backoff_timer is not None:
            self._backoff_timer.cancel()
            self._backoff_timer = None
        self._loop_connections = factory
        logger.debug("%s: the loop accepts again", format_address(self.server_address))
        self._start_accepting()

    def _loop_accepts(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Whether the event loop accepts the connections, in its own code
        (uvloop's in C: a fifth of the instructions per connection), with
        admission in each connection's ``connection_made``; else sockserve
        accepts them (``_on_readable``).

        sockserve accepts when a connection needs what only its own accept
        gives: stages take the raw socket before a transport exists;
        ``max_connections`` must stop accepting right after the connection
        that takes the last slot, and a loop takes every waiting connection
        in one go (libuv's without bound) before any ``connection_made``;
        ``verify_request()`` is promised the accepted socket itself, where
        the loop has only its transport's stand-in; and a loop other than
        asyncio's and uvloop's may not start serving when asked
        (``_loop.accept_with_loop``). Running out of descriptors is then
        the loop's business: asyncio's retries every second (and the server
        says so once, ``_loop_accept_error``), while libuv closes the
        connections waiting in the backlog, without a word.
        """
        return (
            loop_accepts(loop)
            and not self._stage_factories()
            and self._admission().limits.max_connections is None
            and type(self).verify_request is AsyncBaseServer.verify_request
            and "verify_request" not in vars(self)
        )

    def _start_accepting(self) -> None:
        factory = self._loop_connections
        if factory is None:
            super()._start_accepting()
            return
        loop = self._serving_loop
        if self._listener_watched or not self._serve_running or self._listener_closed or loop is None:
            return
        self._loop_server = accept_with_loop(loop, factory, self.socket, self.request_queue_size)
        self._listener_watched = True

    def _pause_accepting(self) -> None:
        server = self._loop_server
        if server is None:
            super()._pause_accepting()
            return
        self._loop_server = None
        self._listener_watched = False
        server.close()  # closes its duplicate of the listening socket only


class AsyncUDPServer(_BoundServer):
    """A UDP server on an event loop.

    ``RequestHandlerClass`` is an ``AsyncDatagramRequestHandler`` subclass (a
    task per datagram, ``async def handle()``) or an
    ``AsyncDatagramProtocolHandler`` subclass (one instance whose
    ``datagram_received()`` the loop calls, no task). The loop's own datagram
    endpoint reads the socket (uvloop receives in C); with a
    ``max_packet_size`` of ``LOOP_RECV_BUFFER`` (256,000) or more, which the
    loops cannot tell from a cut datagram, the server reads it itself.

    ``verify_request(request, client_address)`` gets ``request = (packet,
    socket)``, as the synchronous server's does. The limits count handlers in
    flight (for the callback handler, its ``start_task()`` tasks): at
    ``max_connections`` the socket is not read (datagrams wait in the
    kernel's buffer); beyond ``max_connections_per_ip`` a datagram is dropped
    with a log line; ``connection_timeout`` bounds one handler's run.

    With ``proxy_protocol``, each datagram's PROXY header is read before the
    admit step (``_proxy_datagrams``): the handler's ``client_address`` is
    the real client, and ``reply()``, the callback handler's ``sendto()``
    and the task handler's ``socket.sendto()`` send to it through the proxy.
    """

    socket_type: int = socket.SOCK_DGRAM
    max_packet_size: int = 8192
    handler_bases = (AsyncDatagramRequestHandler, AsyncDatagramProtocolHandler)
    _counts_datagrams = True
    _counts_datagrams_on_receipt = True  # by the receivers (_datagram.py), which every datagram passes
    _own_receiver: DatagramReceiver  # without the loop's endpoint: what the server's own read loop calls

    def __init__(
        self,
        server_address: Any,
        RequestHandlerClass: type[Any],  # noqa: N803 - stdlib name
        bind_and_activate: bool = True,
    ) -> None:
        self._endpoint: DatagramEndpoint | None = None
        self._target: DatagramTarget = _Calls(self._start_datagram)
        self._callback_handler: AsyncDatagramProtocolHandler | None = None
        # The task handler's datagrams when no limit applies to them: no
        # admission, the starter counts them for the drain.
        self._starter: TaskStarter | None = None
        # How the task handler's reply() sends: the transport's sendto where
        # it is C code (uvloop's, which also caches the parsed address), else
        # the socket's (asyncio's transport would add Python frames).
        self._reply_sendto: Callable[[Any, Any], object] = self._send_on_socket
        # With proxy_protocol, while serving: where replies to real clients go.
        self._proxy_routes: ProxyRoutes | None = None
        super().__init__(server_address, RequestHandlerClass, bind_and_activate)

    def server_activate(self) -> None:
        """Datagram sockets do not listen."""
        self.socket.setblocking(False)

    # -- reading ------------------------------------------------------------------------

    def _on_serve(self, loop: asyncio.AbstractEventLoop) -> Callable[[], None] | None:
        handler_class = self.RequestHandlerClass
        callback = issubclass(handler_class, AsyncDatagramProtocolHandler)
        checked = self._checks_each_datagram(callback)
        proxy = self.proxy_protocol
        proxied = proxy is not None
        if proxy is None:
            self._proxy_routes = None
        else:
            from .._proxy_datagrams import ProxyRoutes  # here: a server without PROXY does not load the parser

            self._proxy_routes = ProxyRoutes(self, proxy)
        if callback:
            handler = self._callback_handler
            if handler is None:
                handler = self._callback_handler = handler_class(self)
            if proxied:
                self._target = _Calls(self._deliver_proxied)
            else:
                self._target = _Calls(self._deliver_checked) if checked else handler
        elif proxied:
            self._target = _Calls(self._start_proxied)
        elif checked:
            self._target = _Calls(self._start_datagram)
        else:
            starter = self._starter
            if starter is None or starter.loop is not loop:
                starter = self._starter = TaskStarter(self, loop)
                starter.on_idle = self._wake_if_idle
            self._target = NO_TARGET
        self._reply_sendto = self._routed(self.socket.sendto)
        if self._endpoint is not None:
            self._endpoint.close()
            self._endpoint = None
        if self.max_packet_size < LOOP_RECV_BUFFER:
            self._endpoint = DatagramEndpoint(
                self, self.socket, loop, self._make_receiver, self._on_transport, self._on_send_error
            )
        else:
            self._own_receiver = self._make_receiver(None)
        return None

    def _checks_each_datagram(self, callback: bool) -> bool:
        """Whether a datagram needs the admit step: a hook or a limit that
        applies to it (otherwise the admission is skipped, for speed). A
        callback handler's datagram is over when its callback returns:
        ``connection_timeout`` applies to its ``start_task()`` tasks only."""
        limits = self._admission().limits
        return (
            self.max_requests is not None
            or self.access_list is not None
            or self.proxy_protocol is not None
            or limits.max_connections is not None
            or limits.max_connections_per_ip is not None
            or (limits.connection_timeout is not None and not callback)
            or type(self).verify_request is not AsyncBaseServer.verify_request
            or "verify_request" in vars(self)
        )

    def _start_accepting(self) -> None:
        endpoint = self._endpoint
        if endpoint is None:
            super()._start_accepting()
            return
        if (
            self._listener_watched
            or not self._serve_running
            or self._listener_closed
            or self._serving_loop is None
            or self._admission().at_capacity()
        ):
            return
        endpoint.resume()
        self._listener_watched = True

    def _pause_accepting(self) -> None:
        endpoint = self._endpoint
        if endpoint is None:
            super()._pause_accepting()
            return
        if self._listener_watched:
            endpoint.pause()
        self._listener_watched = False

    def _close_listener_here(self, *, keep_datagram_socket: bool = False) -> None:
        if not keep_datagram_socket and self._endpoint is not None:
            self._endpoint.close()
        super()._close_listener_here(keep_datagram_socket=keep_datagram_socket)

    def _on_readable(self) -> None:
        """Without the loop's endpoint: receive what is waiting, up to
        ACCEPT_BATCH datagrams per wake-up."""
        sock = self.socket
        accept_batch(
            lambda: receive_datagram(sock, self.max_packet_size),
            self._own_receiver.datagram_received,
            self._still_receiving,
            self._accept_backoff,
            self.server_address,
            self._back_off,
        )

    def _still_receiving(self) -> bool:
        return self._listener_watched  # False at capacity, or once stopped

    def _make_receiver(self, endpoint: DatagramEndpoint | None) -> DatagramReceiver:
        if self._target is NO_TARGET:
            assert self._starter is not None
            return self._starter.receiver(endpoint)
        return DatagramReceiver(self, self._target, endpoint)

    # -- sending (the callback handler's) -----------------------------------------------

    def _on_transport(self, transport: asyncio.DatagramTransport | None) -> None:
        """The endpoint's transport changed: the callback handler's sendto()
        is the transport's own while there is one (no frame of ours between)."""
        if transport is not None and not isinstance(getattr(transport.sendto, "__func__", None), types.FunctionType):
            self._reply_sendto = self._routed(transport.sendto)
        else:
            self._reply_sendto = self._routed(self._send_on_socket)
        handler = self._callback_handler
        if handler is None or type(handler).sendto is not AsyncDatagramProtocolHandler.sendto:
            return
        if transport is None:
            handler.__dict__.pop("sendto", None)
        else:
            handler.sendto = self._routed(transport.sendto)  # type: ignore[method-assign,assignment]

    def _routed(self, send: Callable[[Any, Any], object]) -> Callable[[Any, Any], object]:
        """``send`` itself without PROXY; else ``send`` with replies to a real
        client turned to its proxy."""
        routes = self._proxy_routes
        return send if routes is None else routes.sender(send)

    def _send_now(self, data: bytes | bytearray | memoryview, client_address: Any) -> None:
        routes = self._proxy_routes
        if routes is not None:
            client_address = routes.address_for(client_address)
        endpoint = self._endpoint
        transport = None if endpoint is None else endpoint.transport
        if transport is not None:
            transport.sendto(data, client_address)
            return
        try:
            self.socket.sendto(data, client_address)
        except (BlockingIOError, InterruptedError):
            logger.debug("reply to %s dropped: the socket's buffer is full", format_address(client_address))
        except OSError as exc:
            self._on_send_error(exc)

    def _on_send_error(self, exc: Exception) -> None:
        handler = self._callback_handler
        if handler is not None and type(handler).error_received is not AsyncDatagramProtocolHandler.error_received:
            try:
                handler.error_received(exc)
            except Exception:
                self._handler_error(None, None)
            return
        self._log_send_error(exc)

    def _send_on_socket(self, data: bytes | bytearray | memoryview, client_address: Any) -> None:
        self.socket.sendto(data, client_address)

    def _log_send_error(self, exc: Exception) -> None:
        logger.debug("datagram socket of %s: %s", format_address(self.server_address), exc)

    # -- handlers -----------------------------------------------------------------------

    def _start_datagram(self, packet: bytes, client_address: Any) -> None:
        datagram = Datagram(self, packet, client_address, self._release_ticket)
        if self._admit_item(datagram, (packet, self.socket)):
            datagram.task = self._spawn_task(datagram.run())

    def _deliver_checked(self, packet: bytes, client_address: Any) -> None:
        """The callback handler under a limit or hook: the admit step for each datagram."""
        ticket = self._admit((packet, self.socket), client_address)
        if ticket is None:
            return
        # Over before the callback runs: the limits count what outlives it,
        # the start_task() tasks, which may take this slot.
        self._release_ticket(ticket)
        self._callback_handler.datagram_received(packet, client_address)  # type: ignore[union-attr]

    def _start_proxied(self, packet: bytes, peer: Any) -> None:
        """The task handler with ``proxy_protocol``: the header first, then the admit step."""
        routes = self._proxy_routes
        assert routes is not None
        read = routes.read(packet, peer)
        if read is None:
            return
        payload, client_address, header = read
        if header is None:
            self._start_datagram(payload, client_address)
            return
        datagram = ProxiedDatagram(self, payload, client_address, self._release_ticket, peer, header)
        if self._admit_item(datagram, (payload, datagram.socket)):
            datagram.task = self._spawn_task(datagram.run())

    def _deliver_proxied(self, packet: bytes, peer: Any) -> None:
        """The callback handler with ``proxy_protocol``: the header first, then
        the admit step; the callback (and the tasks it starts) run bound to
        the datagram's route, so their replies go through its proxy."""
        routes = self._proxy_routes
        assert routes is not None
        read = routes.read(packet, peer)
        if read is None:
            return
        payload, client_address, header = read
        if header is None:
            self._deliver_checked(payload, client_address)
            return
        token = routes.enter(client_address, peer, header)
        try:
            self._deliver_checked(payload, client_address)
        finally:
            routes.leave(token)

    def _start_handler_task(self, coro: Coroutine[Any, Any, None], client_address: Any) -> asyncio.Task[None] | None:
        """The callback handler's start_task(): a task admitted by the limits
        (not by verify_request(), which its datagram passed)."""
        item = HandlerTask(self, coro, client_address, self._release_ticket)
        admission = self._admission()
        verdict = admission.admit(client_address)
        if isinstance(verdict, Refusal):
            log_refused(verdict.error)
            coro.close()
            return None
        item.admitted(verdict)
        if admission.at_capacity():
            self._pause_accepting()
            logger.debug("%s at capacity: not accepting", format_address(self.server_address))
        limit = admission.limits.connection_timeout
        if limit is not None and self._serving_loop is not None:
            item.timer = self._serving_loop.call_later(limit, self._deadline_passed, verdict, limit)
        task = item.task = self._spawn_task(item.run())
        return task

    # -- in flight ----------------------------------------------------------------------

    def _in_flight_count(self) -> int:
        starter = self._starter
        return super()._in_flight_count() + (0 if starter is None else len(starter.tasks))

    def _abort_all(self, exc: BaseException) -> int:
        starter = self._starter
        return super()._abort_all(exc) + (0 if starter is None else starter.abort(exc))

    def _release_ticket(self, ticket: Ticket) -> None:
        self._admission().release(ticket)
        self._wake_if_idle()

    def _wake_if_idle(self) -> None:
        waiter = self._idle_waiter
        if waiter is not None and not self._in_flight_count() and not waiter.done():
            waiter.set_result(True)


class _Calls:
    """A datagram target that is a function."""

    def __init__(self, function: Callable[[bytes, Any], None]) -> None:
        self.datagram_received = function


class _TaskInFlight(InFlight):
    """Something in flight that is one task of its own: aborting it cancels the task."""

    __slots__ = ()

    def abort(self, exc: BaseException) -> None:
        if self.aborted is None:
            self.aborted = exc
            if self.task is not None:
                self.task.cancel()


class Datagram(_TaskInFlight):
    """One datagram in flight under the admission: its handler's task."""

    __slots__ = ("packet", "server")

    def __init__(self, server: AsyncUDPServer, packet: bytes, client_address: Any, release: Any) -> None:
        super().__init__(client_address, release)
        self.server = server
        self.packet = packet

    async def run(self) -> None:
        server = self.server
        handler_class: type[AsyncDatagramRequestHandler] = server.RequestHandlerClass
        try:
            handler = handler_class(self.packet, self.client_address, server, server.socket)
            await run_datagram_handler(handler)
        except asyncio.CancelledError:
            if self.aborted is None:
                raise
        except Exception:
            server._handler_error((self.packet, server.socket), self.client_address, self.ticket)
        finally:
            self.finish()


class ProxiedDatagram(Datagram):
    """A datagram that came through a proxy: its handler's socket is a
    stand-in that sends to the real client through the proxy, and its task
    runs bound to the datagram's route, for ``reply()``."""

    __slots__ = ("header", "peer", "socket")

    def __init__(
        self, server: AsyncUDPServer, packet: bytes, client_address: Any, release: Any, peer: Any, header: ProxyHeader
    ) -> None:
        super().__init__(server, packet, client_address, release)
        self.peer = peer
        self.header = header
        from .._proxy_datagrams import ProxiedSocket  # loaded with the routes, by now

        self.socket: Any = (
            server.socket if client_address == peer else ProxiedSocket(server.socket, client_address, peer)
        )

    async def run(self) -> None:
        server = self.server
        routes = server._proxy_routes
        if routes is not None:
            routes.enter(self.client_address, self.peer, self.header)  # in this task's own context, which ends with it
        handler_class: type[AsyncDatagramRequestHandler] = server.RequestHandlerClass
        try:
            handler = handler_class(self.packet, self.client_address, server, self.socket)
            # What the handler's connection_info would read (see _handlers._connection_info).
            handler._stage_info = {"proxy": self.header, "peer_address": self.peer}
            await run_datagram_handler(handler)
        except asyncio.CancelledError:
            if self.aborted is None:
                raise
        except Exception:
            server._handler_error((self.packet, self.socket), self.client_address, self.ticket)
        finally:
            self.finish()


class HandlerTask(_TaskInFlight):
    """A callback datagram handler's start_task(): counted as a datagram in flight."""

    __slots__ = ("coro", "server")

    def __init__(
        self, server: AsyncUDPServer, coro: Coroutine[Any, Any, None], client_address: Any, release: Any
    ) -> None:
        super().__init__(client_address, release)
        self.server = server
        self.coro = coro

    async def run(self) -> None:
        try:
            await self.coro
        except asyncio.CancelledError:
            if self.aborted is None:
                raise
        except Exception:
            self.server._handler_error(None, self.client_address, self.ticket)
        finally:
            self.finish()


class AsyncUnixStreamServer(_SocketFileOwner, AsyncTCPServer):
    """Stream server on a Unix-domain socket (a path, or an abstract name).

    The socket file is handled as the synchronous ``UnixStreamServer`` does
    (same code): a live server's path is refused, a stale file replaced, a
    non-socket never touched, and the file removed by ``server_close()``.
    """

    address_family = socket.AF_UNIX

    def server_bind(self) -> None:
        path = self.server_address
        self._claim_socket_path()
        AsyncTCPServer.server_bind(self)
        self._own_socket_file(path)

    def server_close(self) -> None:
        AsyncTCPServer.server_close(self)
        self._remove_socket_file()


class AsyncUnixDatagramServer(_SocketFileOwner, AsyncUDPServer):
    """Datagram server on a Unix-domain socket (a path, or an abstract name).

    A client that wants replies binds its socket to an address of its own.
    """

    address_family = socket.AF_UNIX

    def server_bind(self) -> None:
        path = self.server_address
        self._claim_socket_path()
        AsyncUDPServer.server_bind(self)
        self._own_socket_file(path)

    def server_close(self) -> None:
        AsyncUDPServer.server_close(self)
        self._remove_socket_file()


def _is_stale_accept_retry(context: dict[str, Any]) -> bool:
    """Whether a loop exception comes from asyncio's accept retry timer
    (``_start_serving``) on a socket that is closed: its handle is the only
    way to tell, so this reads the handle's callback defensively."""
    callback = getattr(context.get("handle"), "_callback", None)
    if getattr(callback, "__name__", None) != "_start_serving":
        return False
    args = getattr(context.get("handle"), "_args", ())
    return any(isinstance(arg, socket.socket) and arg.fileno() == -1 for arg in args)
