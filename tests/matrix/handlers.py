"""The handlers and the toy stage that the matrix runs under every model.

One line protocol, spoken by every kind of handler (sync stream, async
stream, callback, and the datagram ones): each line is echoed, except
``boom`` (the handler raises), ``whoami`` (the reply is the client's address
as the handler sees it) and ``pid`` (the reply is the handling process's id).
An open connection in mid-conversation is a request in flight, which needs no
event shared across processes: the forked and prefork kinds behave alike.
"""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any

import sockserve
from sockserve import aio
from sockserve._address import format_address
from sockserve._limits import limits_of
from sockserve._stages import Done, NeedMore, Outcome, Reject
from sockserve.protocol import DEFAULT_MAX_LINE, LineSplitter


def reply_to(line: bytes, client_address: Any) -> bytes:
    """What the protocol answers to ``line``."""
    if line == b"boom\n":
        raise RuntimeError("boom")
    if line == b"whoami\n":
        return format_address(client_address).encode() + b"\n"
    if line == b"pid\n":
        return b"%d\n" % os.getpid()
    return line


class SyncEcho(sockserve.StreamRequestHandler):
    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(reply_to(line, self.client_address))


class FramedEcho(sockserve.FramedRequestHandler):
    """The protocol on the pool's framed mode, plus ``sleep <s>``: "entered",
    then the reply "done" after that long: a request in flight (between
    requests a framed connection holds nothing)."""

    def handle_request(self, request: bytes) -> None:
        if request.startswith(b"sleep "):
            self.send(b"entered\n")
            threading.Event().wait(float(request[6:]))
            self.send(b"done\n")
            return
        self.send(reply_to(request, self.client_address))


class AsyncEcho(aio.AsyncStreamRequestHandler):
    async def handle(self) -> None:
        async for line in self.reader:
            await self.writer.write(reply_to(line, self.client_address))


class CallbackEcho(aio.AsyncProtocolHandler):
    """The callback handler frames lines itself, with the server's line cap."""

    def connection_made(self) -> None:
        self.lines = LineSplitter(limits_of(self.server).max_line or DEFAULT_MAX_LINE)

    def data_received(self, data: bytes) -> None:
        self.lines.feed(data)
        while line := self.lines.next_line():
            self.write(reply_to(line, self.client_address))

    def eof_received(self) -> bool | None:
        self.lines.feed(b"")
        while line := self.lines.next_line():  # an unterminated last line
            self.write(reply_to(line, self.client_address))
        return None


def hold(packet: bytes, sock: Any, client_address: Any) -> None:
    """``hold <fifo>``: say "entered", then wait until the test writes to the
    named pipe: a datagram in flight, in any process."""
    sock.sendto(b"entered", client_address)
    with open(packet[5:], "rb") as gate:
        gate.read(1)


class SyncDatagramEcho(sockserve.DatagramRequestHandler):
    def handle(self) -> None:
        if self.packet.startswith(b"hold "):
            hold(self.packet, self.socket, self.client_address)
        self.wfile.write(reply_to(self.packet + b"\n", self.client_address).rstrip(b"\n"))


class AsyncDatagramEcho(aio.AsyncDatagramRequestHandler):
    async def handle(self) -> None:
        if self.packet.startswith(b"hold "):
            # In a thread: the fifo blocks, and the loop must go on.
            await asyncio.to_thread(hold, self.packet, self.socket, self.client_address)
        await self.reply(reply_to(self.packet + b"\n", self.client_address).rstrip(b"\n"))


class CallbackDatagramEcho(aio.AsyncDatagramProtocolHandler):
    """The datagram protocol on callbacks; ``hold`` runs in start_task(), a
    datagram in flight that the drain waits for."""

    def datagram_received(self, data: bytes, client_address: Any) -> None:
        if data.startswith(b"hold "):
            self.start_task(self.hold(data, client_address), client_address)
            return
        self.sendto(reply_to(data + b"\n", client_address).rstrip(b"\n"), client_address)

    async def hold(self, data: bytes, client_address: Any) -> None:
        await asyncio.to_thread(hold, data, self.server.socket, client_address)
        self.sendto(reply_to(data + b"\n", client_address).rstrip(b"\n"), client_address)


class HelloStage:
    """A toy stage in the shape of a PROXY header: the client's first line must
    be ``HELLO <name>``, and ``<name>`` becomes the client's address."""

    MAX = 64

    def __init__(self, client_address: Any) -> None:
        self.buffer = b""

    def feed(self, data: bytes) -> Outcome:
        if not data:
            return Reject("the client finished before its HELLO line")
        start = len(self.buffer)
        self.buffer += data
        end = self.buffer.find(b"\n")
        if end < 0:
            if len(self.buffer) > self.MAX:
                return Reject(f"no HELLO line within {self.MAX} bytes")
            return NeedMore()
        line, rest = self.buffer[:end], self.buffer[end + 1 :]
        if not line.startswith(b"HELLO ") or len(line) > self.MAX:
            return Reject(f"bad HELLO line {line[:20]!r}")
        # The rest is a suffix of this feed's data, as the stage contract asks.
        assert len(rest) <= len(self.buffer) - start
        return Done(rest=rest, client_address=(line[6:].decode("ascii", "replace"), 1))
