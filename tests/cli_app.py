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


class AnyEcho(sockserve.BaseRequestHandler):
    """A stdlib-style handler for streams and datagrams alike (one server per bind)."""

    def handle(self) -> None:
        if isinstance(self.request, tuple):  # a datagram server: (data, socket)
            data, sock = self.request
            sock.sendto(data, self.client_address)
            return
        while data := self.request.recv(65536):
            self.request.sendall(data)


class WhoAmI(sockserve.StreamRequestHandler):
    """Answers a first line with the process's uid, gid and umask: what a privilege drop changed."""

    def handle(self) -> None:
        import os

        self.rfile.readline()
        mask = os.umask(0)
        os.umask(mask)
        self.wfile.write(f"{os.getuid()} {os.getgid()} {mask:03o}\n".encode())


class Kind:
    """A class that is not a request handler: ``sockserve serve`` refuses it by name."""

    def __init__(self, *args: object) -> None:
        self.args = args
