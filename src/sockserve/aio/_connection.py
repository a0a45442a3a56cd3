"""One accepted stream connection, from its socket to its close: with an
``AsyncStreamRequestHandler`` in a task of its own, or with an
``AsyncProtocolHandler`` as transport callbacks. Each is what the server's
tracker counts, and knows how to abort itself when a limit or a drain says so.
"""

from __future__ import annotations

import asyncio
import socket
from typing import TYPE_CHECKING, Any, cast

from .._errors import IdleTimeoutExpired
from .._log import logger
from ._handlers import AsyncProtocolHandler, AsyncStreamRequestHandler
from ._streams import AsyncStreamReader, AsyncStreamWriter

if TYPE_CHECKING:
    from ._server import AsyncBaseServer


class StreamConnection:
    """A connection served by an ``AsyncStreamRequestHandler`` in its own task."""

    __slots__ = ("aborted", "client_address", "reader", "server", "sock", "task", "timer")

    def __init__(self, server: AsyncBaseServer, sock: socket.socket, client_address: Any) -> None:
        self.server = server
        self.sock = sock
        self.client_address = client_address
        self.reader: AsyncStreamReader | None = None
        self.task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.aborted: BaseException | None = None

    def abort(self, exc: BaseException) -> None:
        if self.aborted is not None:
            return
        self.aborted = exc
        reader = self.reader
        waiting = reader is not None and reader.abort(exc)
        # Not in a read or a drain (connecting, or awaiting something else):
        # only cancelling reaches the handler.
        if not waiting and self.task is not None and not self.task.done():
            self.task.cancel()


async def run_stream(conn: StreamConnection, handler_class: type[AsyncStreamRequestHandler]) -> None:
    """Set the connection up, run the handler's hooks, close, count it out."""
    server = conn.server
    loop = asyncio.get_running_loop()
    limits = server._get_tracker().limits
    reader = AsyncStreamReader(
        loop,
        conn.client_address,
        max_line=handler_class.max_line or limits.max_line,
        idle_timeout=limits.idle_timeout,
        read_limit=handler_class.read_limit,
    )
    conn.reader = reader
    transport: asyncio.Transport | None = None
    try:
        try:
            transport, _ = await loop.connect_accepted_socket(lambda: reader, conn.sock)
            transport.set_write_buffer_limits(high=handler_class.write_limit)
            handler = handler_class(reader, AsyncStreamWriter(transport, reader), conn.client_address, server)
            try:
                await handler.setup()
                await handler.handle()
            finally:
                await handler.finish()
        except asyncio.CancelledError:
            if conn.aborted is None:
                raise  # not ours (the loop is being torn down): pass it on
        except Exception as exc:
            if exc is not conn.aborted:  # a limit that fired was logged where it fired
                server.handle_error(conn.sock, conn.client_address)
        if transport is not None:
            _close(transport, reader)
            try:
                await reader.closed
            except asyncio.CancelledError:
                transport.abort()
                if conn.aborted is None:
                    raise
    finally:
        if transport is None:
            conn.sock.close()  # never handed to a transport (a no-op if one closed it)
        elif not transport.is_closing():
            transport.abort()
        if conn.timer is not None:
            conn.timer.cancel()
        server._release(conn)


def _close(transport: asyncio.Transport, reader: AsyncStreamReader) -> None:
    AsyncStreamWriter(transport, reader).close()


class CallbackConnection(asyncio.Protocol):
    """A connection served by an ``AsyncProtocolHandler``: the transport's
    protocol, which hands each callback to the handler and reports its errors."""

    def __init__(
        self,
        server: AsyncBaseServer,
        sock: socket.socket,
        client_address: Any,
        handler_class: type[AsyncProtocolHandler],
    ) -> None:
        self.server = server
        self.sock = sock
        self.client_address = client_address
        self.handler_class = handler_class
        self.handler: AsyncProtocolHandler | None = None
        self.transport: asyncio.Transport | None = None
        self.task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.aborted: BaseException | None = None
        self._data_received: Any = _ignore

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's quack like it
        self.transport = transport
        try:
            handler = self.handler = self.handler_class(transport, self.client_address, self.server)
            self._data_received = handler.data_received
            handler.connection_made()
        except Exception:
            self._failed()

    def data_received(self, data: bytes) -> None:
        try:
            self._data_received(data)
        except Exception:
            self._failed()

    def eof_received(self) -> bool | None:
        if self.handler is None:
            return None
        try:
            return self.handler.eof_received()
        except Exception:
            self._failed()
            return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.server._release(self)
        if self.handler is not None:
            try:
                self.handler.connection_lost(exc)
            except Exception:
                self.server.handle_error(self.sock, self.client_address)

    def pause_writing(self) -> None:
        if self.handler is not None:
            self.handler.pause_writing()

    def resume_writing(self) -> None:
        if self.handler is not None:
            self.handler.resume_writing()

    def abort(self, exc: BaseException) -> None:
        if self.aborted is not None:
            return
        self.aborted = exc
        if self.transport is not None:
            self.transport.abort()
        elif self.task is not None:
            self.task.cancel()

    def _failed(self) -> None:
        """A callback raised: report it, and close (what was written is still sent)."""
        self.server.handle_error(self.sock, self.client_address)
        self._data_received = _ignore
        if self.transport is not None:
            self.transport.close()


class IdleCallbackConnection(CallbackConnection):
    """A callback connection under ``idle_timeout``: closed when the client
    has sent nothing for that long."""

    def __init__(
        self,
        server: AsyncBaseServer,
        sock: socket.socket,
        client_address: Any,
        handler_class: type[AsyncProtocolHandler],
        idle_timeout: float,
    ) -> None:
        super().__init__(server, sock, client_address, handler_class)
        self._idle_timeout = idle_timeout
        self._loop = asyncio.get_running_loop()
        self._last = self._loop.time()
        self._idle_timer: asyncio.TimerHandle | None = self._loop.call_later(idle_timeout, self._check_idle)

    def data_received(self, data: bytes) -> None:
        # A timestamp, not a timer per chunk: the timer re-arms itself lazily.
        self._last = self._loop.time()
        super().data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.cancel_idle_timer()
        super().connection_lost(exc)

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
        logger.warning("%s: closing the connection", exc)
        self.abort(exc)


async def connect_callback(conn: CallbackConnection) -> None:
    """Hand the accepted socket to a transport with ``conn`` as its protocol."""
    loop = asyncio.get_running_loop()
    try:
        await loop.connect_accepted_socket(lambda: conn, conn.sock)
    except asyncio.CancelledError:
        conn.server._release(conn)
        conn.sock.close()
        if conn.aborted is None:
            raise
    except Exception:
        conn.server.handle_error(conn.sock, conn.client_address)
        conn.server._release(conn)
        conn.sock.close()


def _ignore(data: bytes) -> None:
    """What a failed handler's data goes to until the connection is closed."""
