"""One accepted stream connection served by an ``AsyncStreamRequestHandler``,
in a task of its own, from its socket to its close. It is what the server's
tracker counts, and knows how to abort itself when a limit or a drain says so.
(``_callback`` does the same for ``AsyncProtocolHandler``.)
"""

from __future__ import annotations

import asyncio
import socket
from typing import TYPE_CHECKING, Any

from ..protocol.lines import DEFAULT_MAX_LINE
from ._handlers import AsyncStreamRequestHandler, run_handler
from ._reader import AsyncStreamReader, new_reader
from ._writer import AsyncStreamWriter

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
    reader = new_reader(
        loop,
        conn.client_address,
        max_line=handler_class.max_line or limits.max_line or DEFAULT_MAX_LINE,
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
            await run_handler(handler)
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
