"""The async request handlers: one instance per connection (or datagram),
which does the protocol. The server makes them and drives their hooks."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, ClassVar, cast

from ._reader import DEFAULT_READ_LIMIT, AsyncStreamReader
from ._writer import DEFAULT_WRITE_LIMIT, AsyncStreamWriter

if TYPE_CHECKING:
    from .._connection_info import ConnectionInfo
    from ._datagram import DatagramServer
    from ._server import AsyncBaseServer


class AsyncStreamRequestHandler:
    """Handler for stream connections, with ``async def`` hooks.

    The server sets ``reader``, ``writer``, ``client_address`` and ``server``,
    then awaits ``setup()``, ``handle()`` and, even if they raised,
    ``finish()``; then it closes the connection (after sending what was
    written). An exception is reported by ``server.handle_error()`` and ends
    only this connection.

    Class variables that may be overridden:

    - max_line: the longest line, delimiter included, that
      ``reader.readline()``/``readuntil()`` return; a longer one raises
      ``LineTooLong``. None (the default): the server's ``limits.max_line``,
      else ``DEFAULT_MAX_LINE`` (64 KiB). The rule is
      ``sockserve.protocol.LineSplitter``'s, as for the synchronous
      ``rfile``: the reader holds at most ``max_line + 1`` bytes of an
      unfinished line before deciding, so a line is refused as soon as that
      many bytes of it have come, and a last, unterminated line within the
      cap (one of exactly ``max_line`` bytes included) is returned.
    - read_limit: bytes buffered from the client before reading pauses
      (while no read waits for more).
    - write_limit: bytes waiting to be sent before ``await writer.write()`` waits.
    """

    max_line: ClassVar[int | None] = None
    _stage_info: dict[str, Any]  # what the connection's stages learnt, if anything (see connection_info)
    read_limit: ClassVar[int] = DEFAULT_READ_LIMIT
    write_limit: ClassVar[int] = DEFAULT_WRITE_LIMIT

    def __init__(
        self, reader: AsyncStreamReader, writer: AsyncStreamWriter, client_address: Any, server: AsyncBaseServer
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.client_address = client_address
        self.server = server

    async def setup(self) -> None:
        """Prepare for handle(). May be overridden."""

    async def handle(self) -> None:
        """Do the work of the connection. Override this."""

    async def finish(self) -> None:
        """Clean up what setup() made. May be overridden."""

    @property
    def connection_info(self) -> ConnectionInfo:
        """What is known of this connection beyond ``client_address``: the
        socket's peer (a proxy), the PROXY header, the TLS session."""
        return _connection_info(self, self.writer.transport)


class AsyncDatagramRequestHandler:
    """Handler for one datagram, with ``async def`` hooks.

    ``packet`` is the datagram, ``client_address`` its sender, ``socket`` the
    server's socket; ``await self.reply(data)`` sends a datagram back (as
    many as the protocol needs; unlike the synchronous handler, nothing is
    sent when the handler does not reply).

    The server awaits ``setup()``, ``handle()`` and, even if they raised,
    ``finish()``, in a task of its own per datagram. For the last microsecond
    there is ``AsyncDatagramProtocolHandler`` (callbacks, no task).
    """

    _stage_info: dict[str, Any]  # the PROXY header and its peer, when the datagram carried one

    def __init__(self, packet: bytes, client_address: Any, server: DatagramServer, sock: socket.socket) -> None:
        self.packet = packet
        self.client_address = client_address
        self.server = server
        self.socket = sock

    def reply(self, data: bytes | bytearray | memoryview) -> Awaitable[None]:
        """Send ``data`` to the client as one datagram; await the result (it
        waits while the socket's buffer is full).

        Sent at once when the socket takes it, and what it returns then is
        already done: no coroutine is made for the common case."""
        try:
            self.server._reply_sendto(data, self.client_address)
        except (BlockingIOError, InterruptedError):
            return sendto(self.socket, data, self.client_address)
        return SENT

    @property
    def connection_info(self) -> ConnectionInfo:
        """What is known of this datagram beyond ``client_address``: the
        socket's peer (a proxy) and the PROXY header it carried."""
        from .._connection_info import ConnectionInfo

        info = self.__dict__.get("_stage_info") or {}
        return ConnectionInfo(self.client_address, info.get("peer_address"), info.get("proxy"))

    async def setup(self) -> None:
        """Prepare for handle(). May be overridden."""

    async def handle(self) -> None:
        """Do the work of the datagram. Override this."""

    async def finish(self) -> None:
        """Clean up what setup() made. May be overridden."""


class AsyncProtocolHandler:
    """A callback handler, in the style of ``asyncio.Protocol``, for the last microsecond.

    No task runs per connection, and the transport calls the handler's
    methods directly. The server makes the handler when it accepts the
    connection, sets ``transport`` and calls ``connection_made()`` once the
    connection is set up, ``data_received(data)`` for each chunk,
    ``eof_received()`` when the client has finished sending (return True to
    keep the connection open for replies; otherwise it is closed once what
    was written is sent), and ``connection_lost(exc)`` at the end.
    ``write(data)`` sends, ``close()`` closes after sending; the flow-control
    hooks ``pause_writing()``/``resume_writing()`` say when the client is not
    keeping up. An exception in a callback is reported by
    ``server.handle_error()`` (through the loop's exception handler, which
    ``serve()`` sets up) and closes the connection at once.
    """

    transport: asyncio.Transport  # set by the server before connection_made()
    _stage_info: dict[str, Any]  # what the connection's stages learnt, if anything (see connection_info)

    def __init__(self, client_address: Any, server: AsyncBaseServer) -> None:
        self.client_address = client_address
        self.server = server

    @property
    def connection_info(self) -> ConnectionInfo:
        """What is known of this connection beyond ``client_address``: the
        socket's peer (a proxy), the PROXY header, the TLS session."""
        return _connection_info(self, self.transport)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Send ``data`` (buffered by the transport if the socket is full).
        Replaced by the transport's own ``write`` once connected."""
        self.transport.write(data)

    def close(self) -> None:
        """Close the connection once what was written is sent."""
        self.transport.close()

    def connection_made(self) -> None:
        """The connection is ready. May be overridden."""

    def data_received(self, data: bytes) -> None:
        """Bytes from the client. Override this."""

    def eof_received(self) -> bool | None:
        """The client finished sending. Return True to keep the connection open."""
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        """The connection is closed (``exc`` is the error, if one closed it). May be overridden."""

    def pause_writing(self) -> None:
        """The transport's buffer is over its limit: stop writing. May be overridden."""

    def resume_writing(self) -> None:
        """The transport's buffer has drained: writing may go on. May be overridden."""


async def sendto(sock: socket.socket, data: bytes | bytearray | memoryview, address: Any) -> None:
    """Send one datagram on a non-blocking socket, waiting while its buffer is full."""
    while True:
        try:
            sock.sendto(data, address)
            return
        except (BlockingIOError, InterruptedError):
            pass
        loop = asyncio.get_running_loop()
        writable: asyncio.Future[None] = loop.create_future()
        fd = sock.fileno()
        loop.add_writer(fd, _set_done, writable)
        try:
            await writable
        finally:
            loop.remove_writer(fd)


class _Done(tuple[()]):
    """An awaitable that is already done, without a Python frame: awaiting it
    iterates an empty tuple."""

    __slots__ = ()
    __await__ = tuple.__iter__


SENT = cast(Awaitable[None], _Done())


def _set_done(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _connection_info(handler: Any, transport: asyncio.BaseTransport) -> ConnectionInfo:
    """A handler's ``connection_info``: what its stages learnt (kept on it
    as ``_stage_info`` when they learnt anything), and its transport's TLS."""
    from .._connection_info import ConnectionInfo, tls_info_of

    info = handler.__dict__.get("_stage_info") or {}
    tls = tls_info_of(transport.get_extra_info("ssl_object"))
    return ConnectionInfo(handler.client_address, info.get("peer_address"), info.get("proxy"), tls)
