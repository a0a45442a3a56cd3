"""Handlers that the ``sockserve serve`` tests run in a subprocess, one per kind
(tests/test_cli_serve.py): each echoes what it receives, so a test can see
which one answered."""

from __future__ import annotations

import sockserve
from sockserve import aio


class Echo(sockserve.StreamRequestHandler):
    """A blocking stream handler: echoes each line."""

    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(line)


class DatagramEcho(sockserve.DatagramRequestHandler):
    """A blocking datagram handler: echoes each datagram."""

    def handle(self) -> None:
        self.wfile.write(self.rfile.read())


class FramedEcho(sockserve.FramedRequestHandler):
    """A framed handler (the pool's framed mode): echoes each line."""

    def handle_request(self, request: bytes) -> None:
        self.send(request)


class AsyncEcho(aio.AsyncStreamRequestHandler):
    """An async stream handler: echoes each line."""

    async def handle(self) -> None:
        async for line in self.reader:
            await self.writer.write(line)


class AsyncDatagramEcho(aio.AsyncDatagramRequestHandler):
    """An async datagram handler: echoes each datagram."""

    async def handle(self) -> None:
        await self.reply(self.packet)


NOT_A_HANDLER = 42
