"""One accepted stream connection served by an ``AsyncStreamRequestHandler``,
in a task of its own, from its socket to its close: its stages (if the server
has any), its handler's hooks, and its release. It knows how to abort itself
when a limit or a drain says so. (``_callback`` does the same for
``AsyncProtocolHandler``.)
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .._limits import Limits
from .._log import log_stage_failed
from .._stages import StageFactory, StageFailed, stages_timeout
from ..protocol.lines import DEFAULT_MAX_LINE
from ._handlers import AsyncStreamRequestHandler
from ._inflight import InFlight
from ._reader import AsyncStreamReader, new_reader, reader_factory
from ._writer import AsyncStreamWriter

if TYPE_CHECKING:
    from .._admission import Ticket
    from .._stages import Prepared
    from ._server import AsyncBaseServer


class StreamConnection(InFlight, asyncio.Protocol):
    """A connection served by an ``AsyncStreamRequestHandler`` in its own task.

    When the event loop accepted it (see ``AsyncTCPServer._loop_accepts``),
    it is also the transport's first protocol: ``connection_made`` admits
    it, hands the transport to its reader and starts its task.
    """

    __slots__ = ("handler_class", "make_reader", "reader", "server", "sock")

    handler_class: type[AsyncStreamRequestHandler]  # set by loop_streams()
    make_reader: Callable[..., AsyncStreamReader]  # set by loop_streams()

    def __init__(
        self, server: AsyncBaseServer, sock: socket.socket, client_address: Any, release: Callable[[Ticket], None]
    ) -> None:
        super().__init__(client_address, release)
        self.server = server
        self.sock = sock
        self.reader: AsyncStreamReader | None = None

    def connection_made(self, base_transport: asyncio.BaseTransport) -> None:
        transport: asyncio.Transport = base_transport  # type: ignore[assignment]  # uvloop's quack like it
        server = self.server
        sock = self.sock = transport.get_extra_info("socket")
        peer = self.client_address = transport.get_extra_info("peername")
        if not server._admit_accepted(self, sock, transport):
            return
        handler_class: type[AsyncStreamRequestHandler] = self.handler_class
        limits = server._admission().limits
        reader = self.reader = self.make_reader(
            peer,
            max_line=handler_class.max_line or limits.max_line or DEFAULT_MAX_LINE,
            idle_timeout=limits.idle_timeout,
            read_limit=handler_class.read_limit,
        )
        transport.set_protocol(reader)
        reader.connection_made(transport)
        self.task = server._spawn_task(serve_stream(self, transport, reader, handler_class))

    def abort(self, exc: BaseException) -> None:
        if self.aborted is not None:
            return
        self.aborted = exc
        reader = self.reader
        waiting = reader is not None and reader.abort(exc)
        # Not in a read or a drain (connecting, in its stages, or awaiting
        # something else): only cancelling reaches the handler.
        if not waiting and self.task is not None and not self.task.done():
            self.task.cancel()


def stage_delay(ticket: Ticket | None, stages: Sequence[StageFactory]) -> float:
    """How long a connection's stages may take: the stages' own bound, or
    what is left of its connection_timeout if that ends first."""
    delay = stages_timeout(stages)
    if ticket is not None and ticket.deadline is not None:
        delay = min(delay, ticket.deadline - time.monotonic())
    return max(0.0, delay)


_NOOP_SETUP = AsyncStreamRequestHandler.setup
_NOOP_FINISH = AsyncStreamRequestHandler.finish


def loop_streams(
    server: AsyncBaseServer, handler_class: type[AsyncStreamRequestHandler], loop: asyncio.AbstractEventLoop
) -> Callable[[], StreamConnection]:
    """The protocol factory of a server whose ``loop`` accepts connections for ``handler_class``."""
    release = server._release_ticket
    make_reader = reader_factory(loop)

    def connection() -> StreamConnection:
        conn = StreamConnection(server, None, None, release)  # type: ignore[arg-type]  # set on connect
        conn.handler_class = handler_class
        conn.make_reader = make_reader
        return conn

    return connection


async def run_stream(
    conn: StreamConnection,
    handler_class: type[AsyncStreamRequestHandler],
    limits: Limits,
    stages: Sequence[StageFactory],
) -> None:
    """For a connection sockserve accepted: run its stages, hand its socket
    to a transport, then serve it (``serve_stream``)."""
    server = conn.server
    loop = asyncio.get_running_loop()
    transport: asyncio.Transport | None = None
    reader: AsyncStreamReader | None = None
    prepared: Prepared | None = None
    connected = False
    try:
        tls = None
        if stages:
            # Here: a server without stages (most) never loads the driver.
            from ._stages import run_stages

            delay = stage_delay(conn.ticket, stages)
            deadline = loop.time() + delay
            try:
                prepared, tls = await run_stages(loop, conn.sock, stages, conn.client_address, delay)
            except (StageFailed, OSError) as exc:
                log_stage_failed(exc, conn.client_address)
                if conn.ticket is not None and conn.ticket.closed_by is None:
                    conn.ticket.closed_by = "client" if isinstance(exc, ConnectionError) else "refused"
                return
            conn.client_address = prepared.client_address
        reader = conn.reader = new_reader(
            loop,
            conn.client_address,
            max_line=handler_class.max_line or limits.max_line or DEFAULT_MAX_LINE,
            idle_timeout=limits.idle_timeout,
            read_limit=handler_class.read_limit,
        )
        if tls is None:
            transport, _ = await loop.connect_accepted_socket(lambda: reader, conn.sock)
        else:
            from ._tls import connect_tls

            reader.half_close = False
            transport = await connect_tls(
                loop,
                conn.sock,
                lambda: reader,
                tls,
                deadline,
                conn.client_address,
                conn.ticket if server._tcp_bytes else None,
            )
            if transport is None:
                if conn.ticket is not None and conn.ticket.closed_by is None:
                    conn.ticket.closed_by = "refused"
                return  # the handshake failed, and said so
        connected = True
    except asyncio.CancelledError:
        if conn.aborted is None:
            raise  # not ours (the loop is being torn down): pass it on
    except Exception as exc:
        if exc is not conn.aborted:  # a limit that fired was logged where it fired
            server._handler_error(conn.sock, conn.client_address, conn.ticket)
    finally:
        if not connected:
            if transport is None:
                conn.sock.close()  # never handed to a transport (a no-op if one closed it)
            elif not transport.is_closing():
                transport.abort()
            conn.finish()
    if connected:
        assert transport is not None
        assert reader is not None
        await serve_stream(conn, transport, reader, handler_class, prepared)


async def serve_stream(
    conn: StreamConnection,
    transport: asyncio.Transport,
    reader: AsyncStreamReader,
    handler_class: type[AsyncStreamRequestHandler],
    prepared: Prepared | None = None,
) -> None:
    """Set the handler up, run its hooks, close, count the connection out."""
    server = conn.server
    writer = AsyncStreamWriter(transport, reader)
    ticket = conn.ticket
    if ticket is not None and server._tcp_bytes:
        reader._ticket = ticket  # its bytes are read when the connection is lost, before its socket closes
    try:
        try:
            transport.set_write_buffer_limits(high=handler_class.write_limit)
            handler = handler_class(reader, writer, conn.client_address, server)
            if prepared is not None and prepared.info:
                handler._stage_info = prepared.info
            # setup() and handle(), then finish() whatever happened in them.
            # Awaited from here, not from a helper coroutine: every time the
            # handler's task resumes (once per request), each coroutine in the
            # chain of awaits is resumed too. A setup() or finish() the class
            # does not override does nothing, and is not called (each call
            # makes a coroutine and steps it).
            try:
                if handler_class.setup is not _NOOP_SETUP:
                    await handler.setup()
                await handler.handle()
            finally:
                if handler_class.finish is not _NOOP_FINISH:
                    await handler.finish()
        except asyncio.CancelledError:
            if conn.aborted is None:
                raise  # not ours (the loop is being torn down): pass it on
        except Exception as exc:
            if exc is not conn.aborted:  # a limit that fired was logged where it fired
                server._handler_error(conn.sock, conn.client_address, ticket)
        if reader._eof and ticket is not None and ticket.closed_by is None:
            ticket.closed_by = "client"  # it had finished sending when the handler returned
        writer.close()
        try:
            await reader.closed
        except asyncio.CancelledError:
            transport.abort()
            if conn.aborted is None:
                raise
    finally:
        if not transport.is_closing():
            transport.abort()
        conn.finish()
