"""One accepted stream connection served by an ``AsyncProtocolHandler``: no
task, only the transport's callbacks.

The transport calls the handler's own ``data_received`` (a bound method
kept in the connection's slot of that name), with no frame of sockserve's in
between: that is what makes the callback handler as fast as a bare
``asyncio.Protocol``. ``eof_received``, ``pause_writing`` and
``resume_writing`` come once per connection or per stall: they go through a
method of the connection, which costs a frame but not, as a bound method kept
for each would, 64 bytes per held connection. An exception a callback raises
reaches asyncio (or uvloop), which closes the transport and calls the loop's
exception handler; ``route_loop_exceptions`` puts a handler there that gives
such errors to the server's ``handle_error()``.

The connections have ``__slots__`` and keep no bound method of their own:
what one costs while it is held is what a raw ``asyncio.Protocol``'s
connection costs, plus the handler, its ticket and these few slots.
"""

from __future__ import annotations

import asyncio
import functools
import socket
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .._access_log import tcp_bytes
from .._errors import IdleTimeoutExpired
from .._log import log_limit, log_stage_failed
from .._stages import SocketStage, StageFactory, StageFailed
from ._connection import stage_delay
from ._handlers import AsyncProtocolHandler
from ._inflight import InFlight

if TYPE_CHECKING:
    from .._admission import Ticket
    from ._server import AsyncBaseServer


def _not_attached(data: bytes) -> None:
    """``data_received`` of a connection whose handler is not made yet (no
    bytes come before ``connection_made``, which attaches it): a function,
    not a method, so that a connection does not pay for a bound method."""


class CallbackConnection(InFlight, asyncio.Protocol):
    """The transport's protocol for one connection: bookkeeping around the handler.

    The handler is made by ``attach()``: at once, or, when the connection has
    stages, once they are over (so it sees the client's real address).
    """

    __slots__ = ("_connected", "_reported", "data_received", "handler", "server", "sock", "transport")

    # The transport calls it for each chunk: the handler's own (see attach()).
    data_received: Callable[[bytes], None]  # type: ignore[assignment]
    handler: AsyncProtocolHandler

    def __init__(
        self,
        server: AsyncBaseServer,
        sock: socket.socket,
        client_address: Any,
        release: Callable[[Ticket], None],
    ) -> None:
        super().__init__(client_address, release)
        self.server = server
        self.sock = sock
        self.transport: asyncio.Transport | None = None
        self._reported: BaseException | None = None
        # False while a connection the loop accepted waits for its admission
        # (and for ever if refused): the transport's callbacks then reach no handler.
        self._connected = True
        self.data_received = _not_attached

    def attach(self, handler_class: type[AsyncProtocolHandler]) -> None:
        """Make the handler, and let the transport call its ``data_received`` directly."""
        handler = self.handler = handler_class(self.client_address, self.server)
        self.data_received = handler.data_received

    def eof_received(self) -> bool | None:
        ticket = self.ticket
        if ticket is not None and ticket.closed_by is None:
            ticket.closed_by = "client"
        return self.handler.eof_received()

    def pause_writing(self) -> None:
        self.handler.pause_writing()

    def resume_writing(self) -> None:
        self.handler.resume_writing()

    def connection_made(self, base_transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports quack like asyncio.Transport; no cast(): it is
        # a Python call, and this runs once per connection)
        transport: asyncio.Transport = base_transport  # type: ignore[assignment]
        self.transport = transport
        handler = self.handler
        handler.transport = transport
        handler.write = transport.write  # type: ignore[method-assign]  # one call per write
        try:
            handler.connection_made()
        except Exception as exc:
            self.report(exc)
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        ticket = self.ticket
        if ticket is not None:
            if exc is not None and ticket.closed_by is None:
                ticket.closed_by = "client"  # reset (or an error the router reported first)
            transport = self.transport
            if self.server._tcp_bytes and transport is not None:
                # The loops call this before they close the socket.
                tcp_bytes(transport.get_extra_info("socket"), ticket)
        self.finish()
        if not self._connected:
            return  # refused: no handler was made
        if (
            isinstance(exc, OSError)
            and not isinstance(exc, (ConnectionError, TimeoutError))
            and exc is not self._reported
            and exc is not self.aborted
        ):
            # asyncio and uvloop close the transport without a word when a
            # callback raises an OSError: report it here, where it arrives.
            self.report(exc)
        try:
            self.handler.connection_lost(exc)
        except Exception as error:
            self.report(error)

    def abort(self, exc: BaseException) -> None:
        if self.aborted is not None:
            return
        self.aborted = exc
        if self.transport is not None:
            self.transport.abort()
        elif self.task is not None:
            self.task.cancel()

    def _refused(self) -> None:
        """It was not admitted (the transport is aborted): undo what its constructor armed."""

    def report(self, exc: BaseException) -> None:
        """Give ``exc`` to the server's ``handle_error()``, once."""
        if exc is self._reported:
            return
        self._reported = exc
        try:
            raise exc
        except Exception:
            self.server._handler_error(self.sock, self.client_address, self.ticket)


class IdleCallbackConnection(CallbackConnection):
    """A callback connection under ``idle_timeout``: closed when the client
    has sent nothing for that long."""

    __slots__ = ("_idle_timeout", "_idle_timer", "_last", "_loop")

    def __init__(
        self,
        server: AsyncBaseServer,
        sock: socket.socket,
        client_address: Any,
        release: Callable[[Ticket], None],
        idle_timeout: float,
    ) -> None:
        super().__init__(server, sock, client_address, release)
        self._idle_timeout = idle_timeout
        self._loop = asyncio.get_running_loop()
        self._last = self._loop.time()
        self._idle_timer: asyncio.TimerHandle | None = self._loop.call_later(idle_timeout, self._check_idle)

    def attach(self, handler_class: type[AsyncProtocolHandler]) -> None:
        super().attach(handler_class)
        self.data_received = self._timed_data_received  # it needs to see every chunk

    def _timed_data_received(self, data: bytes) -> None:
        # A timestamp, not a timer per chunk: the timer re-arms itself lazily.
        self._last = self._loop.time()
        self.handler.data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.cancel_idle_timer()
        super().connection_lost(exc)

    def _refused(self) -> None:
        self.cancel_idle_timer()

    def cancel_idle_timer(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def _check_idle(self) -> None:
        self._idle_timer = None
        if self.aborted is not None:
            return
        left = self._last + self._idle_timeout - self._loop.time()
        if left > 0:
            self._idle_timer = self._loop.call_later(left, self._check_idle)
            return
        exc = IdleTimeoutExpired(self._idle_timeout, self.client_address)
        log_limit(exc)
        # abort() directly, not through the ticket: its closed_by says why.
        if self.ticket is not None and self.ticket.closed_by is None:
            self.ticket.closed_by = "idle_timeout"
        self.abort(exc)


class LoopCallbackConnection(CallbackConnection):
    """A callback connection that the event loop accepted (see
    ``AsyncTCPServer._loop_accepts``): it is admitted, and its handler
    made, when the transport calls ``connection_made``."""

    __slots__ = ("handler_class",)

    def __init__(
        self, server: AsyncBaseServer, release: Callable[[Ticket], None], handler_class: type[AsyncProtocolHandler]
    ) -> None:
        # What InFlight's and CallbackConnection's constructors set, in one
        # frame instead of three: this runs once per connection, where a raw
        # asyncio.Protocol runs none. The address and socket come with the transport.
        self.client_address = None
        self._release = release
        self.ticket = None
        self.task = None
        self.timer = None
        self.aborted = None
        self.server = server
        self.sock = None  # type: ignore[assignment]
        self.transport = None
        self._reported = None
        self._connected = False
        # uvloop's transport looks it up as soon as the loop made the connection
        self.data_received = _not_attached
        self.handler_class = handler_class

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        admit_on_connect(self, transport)


class LoopIdleCallbackConnection(IdleCallbackConnection):
    """``LoopCallbackConnection`` under ``idle_timeout``."""

    __slots__ = ("handler_class",)

    def __init__(
        self,
        server: AsyncBaseServer,
        release: Callable[[Ticket], None],
        handler_class: type[AsyncProtocolHandler],
        idle_timeout: float,
    ) -> None:
        super().__init__(server, None, None, release, idle_timeout)  # type: ignore[arg-type]
        self._connected = False
        self.handler_class = handler_class

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        admit_on_connect(self, transport)

    def _refused(self) -> None:
        self.cancel_idle_timer()


def loop_connections(
    server: AsyncBaseServer, handler_class: type[AsyncProtocolHandler], idle_timeout: float | None
) -> Callable[[], CallbackConnection]:
    """The protocol factory of a server whose loop accepts connections for ``handler_class``."""
    release = server._release_ticket
    if idle_timeout is None:
        return functools.partial(LoopCallbackConnection, server, release, handler_class)
    return functools.partial(LoopIdleCallbackConnection, server, release, handler_class, idle_timeout)


def admit_on_connect(
    conn: LoopCallbackConnection | LoopIdleCallbackConnection, base_transport: asyncio.BaseTransport
) -> None:
    """``connection_made`` of a connection the loop accepted: the admit step,
    then its handler; if it is refused, its transport is aborted."""
    transport: asyncio.Transport = base_transport  # type: ignore[assignment]  # uvloop's quack like it
    server = conn.server
    sock = conn.sock = transport.get_extra_info("socket")
    conn.client_address = transport.get_extra_info("peername")
    if not server._admit_accepted(conn, sock, transport):
        conn._refused()
        return
    try:
        conn.attach(conn.handler_class)
    except Exception:
        server._handler_error(sock, conn.client_address, conn.ticket)  # the handler's constructor raised
        transport.abort()
        conn.finish()
        conn._refused()
        return
    conn._connected = True
    # uvloop's transport looked data_received up once, when the loop made
    # it: let it see the handler's own now (attach() put it on conn).
    transport.set_protocol(conn)
    CallbackConnection.connection_made(conn, transport)


async def connect_callback(
    conn: CallbackConnection, handler_class: type[AsyncProtocolHandler], stages: Sequence[StageFactory]
) -> None:
    """Hand the accepted socket to a transport with ``conn`` as its protocol,
    after the connection's stages if the server has any."""
    loop = asyncio.get_running_loop()
    tls: SocketStage | None = None
    deadline = 0.0
    if stages:
        from ._stages import run_stages  # here: a server without stages never loads the driver

        delay = stage_delay(conn.ticket, stages)
        deadline = loop.time() + delay
        try:
            prepared, tls = await run_stages(loop, conn.sock, stages, conn.client_address, delay)
            conn.client_address = prepared.client_address
            conn.attach(handler_class)
            if prepared.info:
                conn.handler._stage_info = prepared.info
        except asyncio.CancelledError:
            _never_connected(conn)
            if conn.aborted is None:
                raise
            return
        except (StageFailed, OSError) as exc:
            log_stage_failed(exc, conn.client_address)
            _never_connected(conn)
            return
        except Exception:
            conn.server._handler_error(conn.sock, conn.client_address, conn.ticket)  # the constructor raised
            _never_connected(conn)
            return
    try:
        if tls is None:
            await loop.connect_accepted_socket(lambda: conn, conn.sock)
        else:
            from ._tls import connect_tls

            probe = conn.ticket if conn.server._tcp_bytes else None  # see connect_tls()
            if await connect_tls(loop, conn.sock, lambda: conn, tls, deadline, conn.client_address, probe) is None:
                _never_connected(conn)  # the handshake failed, and said so
    except asyncio.CancelledError:
        _never_connected(conn)
        if conn.aborted is None:
            raise
    except Exception as exc:
        conn.report(exc)
        _never_connected(conn)


def _never_connected(conn: CallbackConnection) -> None:
    """The handler's protocol never got the connection: close it, count it out."""
    ticket = conn.ticket
    if ticket is not None and ticket.closed_by is None:
        ticket.closed_by = "refused"  # its stages failed (or did not finish in time)
    conn.finish()
    conn.sock.close()  # no transport took the socket (a no-op if one did and closed it)
    if isinstance(conn, IdleCallbackConnection):
        conn.cancel_idle_timer()


class _ExceptionRouter:
    """A loop exception handler: errors of callback connections go to their
    server's ``handle_error()``; a context that a server's hook takes is
    that server's (see ``AsyncTCPServer._loop_accept_error``); everything
    else goes where it went before."""

    def __init__(self, previous: Any) -> None:
        self.previous = previous
        self.hooks: list[Callable[[dict[str, Any]], bool]] = []

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        protocol = context.get("protocol")
        exc = context.get("exception")
        if isinstance(protocol, CallbackConnection) and isinstance(exc, Exception):
            protocol.report(exc)
        elif any(hook(context) for hook in self.hooks):
            pass
        elif self.previous is not None:
            self.previous(loop, context)
        else:
            loop.default_exception_handler(context)


def route_loop_exceptions(
    loop: asyncio.AbstractEventLoop, hook: Callable[[dict[str, Any]], bool] | None = None
) -> Callable[[], None]:
    """Install the router on ``loop`` (once per loop), with ``hook`` if
    given; returns what takes the hook out and puts the loop's handler back."""
    current = loop.get_exception_handler()
    installed = not isinstance(current, _ExceptionRouter)
    if isinstance(current, _ExceptionRouter):
        router = current
    else:
        router = _ExceptionRouter(current)
        loop.set_exception_handler(router)
    if hook is not None:
        router.hooks.append(hook)

    def restore() -> None:
        if hook is not None and hook in router.hooks:
            router.hooks.remove(hook)
        # Another server on this loop installed it: that one puts it back.
        if installed and loop.get_exception_handler() is router and not loop.is_closed():
            loop.set_exception_handler(current)

    return restore
