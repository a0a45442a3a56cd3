"""sockserve's async side: the same design on an event loop (asyncio, or
uvloop when installed). A server class does the communication, a handler
class does the protocol, and the hooks, limits and graceful stop are those
of the synchronous servers::

    from sockserve import aio

    class Echo(aio.AsyncStreamRequestHandler):
        async def handle(self) -> None:
            async for line in self.reader:
                await self.writer.write(line)

    with aio.AsyncTCPServer(("127.0.0.1", 7007), Echo) as server:
        server.serve_forever()        # or, inside a running loop: await server.serve()

See docs/async.md.
"""

from __future__ import annotations

from ._datagram_handler import AsyncDatagramProtocolHandler as AsyncDatagramProtocolHandler
from ._handlers import AsyncDatagramRequestHandler as AsyncDatagramRequestHandler
from ._handlers import AsyncProtocolHandler as AsyncProtocolHandler
from ._handlers import AsyncStreamRequestHandler as AsyncStreamRequestHandler
from ._loop import LoopChoice as LoopChoice
from ._loop import new_event_loop as new_event_loop
from ._loop import uvloop_available as uvloop_available
from ._reader import AsyncStreamReader as AsyncStreamReader
from ._server import AsyncBaseServer as AsyncBaseServer
from ._servers import AsyncTCPServer as AsyncTCPServer
from ._servers import AsyncUDPServer as AsyncUDPServer
from ._servers import AsyncUnixDatagramServer as AsyncUnixDatagramServer
from ._servers import AsyncUnixStreamServer as AsyncUnixStreamServer
from ._writer import AsyncStreamWriter as AsyncStreamWriter

__all__ = [
    "AsyncBaseServer",
    "AsyncDatagramProtocolHandler",
    "AsyncDatagramRequestHandler",
    "AsyncProtocolHandler",
    "AsyncStreamReader",
    "AsyncStreamRequestHandler",
    "AsyncStreamWriter",
    "AsyncTCPServer",
    "AsyncUDPServer",
    "AsyncUnixDatagramServer",
    "AsyncUnixStreamServer",
    "LoopChoice",
    "new_event_loop",
    "uvloop_available",
]
