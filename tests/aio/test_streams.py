"""The stream handler's reader and writer, over real connections: every read
method, the line cap, and a writer that waits while the client does not read."""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any

import pytest

import sockserve
from sockserve import aio
from sockserve.testing import running_server

from ..helpers import TIMEOUT, connect, recv_all, recv_line
from .conftest import LogWatcher, closed_by_server


def serve_with(handler: type, loop_kind: str, **attrs: Any) -> Any:
    server = aio.AsyncTCPServer(("127.0.0.1", 0), handler)
    server.event_loop = loop_kind  # type: ignore[assignment]
    for name, value in attrs.items():
        setattr(server, name, value)
    return running_server(server)


def test_every_read_method(loop_kind: str) -> None:
    results: list[object] = []
    done = threading.Event()

    class Reads(aio.AsyncStreamRequestHandler):
        async def handle(self) -> None:
            r = self.reader
            try:
                results.append(await r.readexactly(3))
                results.append(await r.readuntil(b"|"))
                results.append(await r.readline())
                results.append(await r.read(2))
                results.append(await r.read(100))
                try:
                    await r.readexactly(100)
                except asyncio.IncompleteReadError as exc:
                    results.append(("incomplete", exc.partial))
                results.append(await r.readline())
                results.append(r.at_eof())
                await self.writer.write(b"done\n")
            finally:
                done.set()

    with serve_with(Reads, loop_kind) as server, connect(server.server_address) as sock:
        for piece in (b"ab", b"cde|f", b"g\nhi", b"jk"):  # pieces that cut across every boundary
            sock.sendall(piece)
        sock.shutdown(socket.SHUT_WR)
        assert recv_all(sock) == b"done\n"
        assert done.wait(TIMEOUT)
    assert results == [b"abc", b"de|", b"fg\n", b"hi", b"jk", ("incomplete", b""), b"", True]


def test_async_iteration_yields_lines_then_the_unterminated_rest(loop_kind: str) -> None:
    lines: list[bytes] = []

    class Collect(aio.AsyncStreamRequestHandler):
        async def handle(self) -> None:
            async for line in self.reader:
                lines.append(line)
            await self.writer.write(b"%d\n" % len(lines))

    with serve_with(Collect, loop_kind) as server, connect(server.server_address) as sock:
        sock.sendall(b"one\ntwo\n")
        sock.sendall(b"thr")
        sock.sendall(b"ee\nrest")
        sock.shutdown(socket.SHUT_WR)
        assert recv_all(sock) == b"4\n"
    assert lines == [b"one\n", b"two\n", b"three\n", b"rest"]


def test_readuntil_at_eof_raises_incomplete_read(loop_kind: str) -> None:
    seen: list[bytes] = []

    class Until(aio.AsyncStreamRequestHandler):
        async def handle(self) -> None:
            try:
                await self.reader.readuntil(b"\r\n")
            except asyncio.IncompleteReadError as exc:
                seen.append(exc.partial)
            await self.writer.write(b"ok\n")

    with serve_with(Until, loop_kind) as server, connect(server.server_address) as sock:
        sock.sendall(b"no end\r")
        sock.shutdown(socket.SHUT_WR)
        assert recv_all(sock) == b"ok\n"
    assert seen == [b"no end\r"]


@pytest.mark.parametrize("method", ["readline", "readuntil"])
def test_a_line_longer_than_max_line_is_refused(loop_kind: str, logs: LogWatcher, method: str) -> None:
    class Capped(aio.AsyncStreamRequestHandler):
        max_line = 16

        async def handle(self) -> None:
            line = await (self.reader.readline() if method == "readline" else self.reader.readuntil(b"\n"))
            await self.writer.write(line)

    with serve_with(Capped, loop_kind) as server:
        with connect(server.server_address) as sock:
            sock.sendall(b"x" * 15 + b"\n")  # 16 bytes with the newline: allowed
            assert recv_all(sock) == b"x" * 15 + b"\n"
        with connect(server.server_address) as sock:
            client = sock.getsockname()
            sock.sendall(b"y" * 100)  # no newline within 16 bytes: refused without waiting for more
            assert closed_by_server(sock) == b""
        logs.wait_for(rf"line longer than 16 bytes from 127\.0\.0\.1:{client[1]}: closing the connection")


@pytest.mark.parametrize(("sent", "answer"), [(b"x" * 16, b"x" * 16), (b"x" * 17, b"too long")])
def test_a_last_line_of_exactly_max_line_bytes_is_within_the_cap(loop_kind: str, sent: bytes, answer: bytes) -> None:
    """The rule of every line reader: with no newline in the first max_line
    bytes, the reader waits for one byte more or the end; the end came, so a
    last line of exactly max_line bytes is returned."""

    class Capped(aio.AsyncStreamRequestHandler):
        max_line = 16

        async def handle(self) -> None:
            try:
                await self.writer.write(await self.reader.readline())
            except sockserve.LineTooLong:
                await self.writer.write(b"too long")

    with serve_with(Capped, loop_kind) as server, connect(server.server_address) as sock:
        sock.sendall(sent)
        sock.shutdown(socket.SHUT_WR)
        assert recv_all(sock) == answer


def test_readuntil_at_the_end_of_a_line_of_exactly_max_line_bytes(loop_kind: str) -> None:
    partials: list[bytes] = []

    class Until(aio.AsyncStreamRequestHandler):
        max_line = 8

        async def handle(self) -> None:
            try:
                await self.reader.readuntil(b"|")
            except asyncio.IncompleteReadError as exc:
                partials.append(exc.partial)
            await self.writer.write(b"ok")

    with serve_with(Until, loop_kind) as server, connect(server.server_address) as sock:
        sock.sendall(b"12345678")
        sock.shutdown(socket.SHUT_WR)
        assert recv_all(sock) == b"ok"
    assert partials == [b"12345678"]


def test_a_line_longer_than_read_limit_still_comes_in(loop_kind: str) -> None:
    """read_limit pauses reading only while no read waits: a readline()
    waiting for a line longer than read_limit gets it (this used to hang:
    reading was paused under the waiting read). The fuzz tests check it for
    every cut; here, over a real connection."""

    class Small(aio.AsyncStreamRequestHandler):
        read_limit = 64
        max_line = 4096

        async def handle(self) -> None:
            await self.writer.write(await self.reader.readline())  # b"go\n": the next readline waits
            async for line in self.reader:
                await self.writer.write(b"%d\n" % len(line))

    with serve_with(Small, loop_kind) as server, connect(server.server_address) as sock:
        sock.sendall(b"go\n")
        assert recv_line(sock) == b"go\n"
        sock.sendall(b"y" * 3000)
        sock.sendall(b"\n")
        sock.shutdown(socket.SHUT_WR)
        assert recv_all(sock) == b"3001\n"


def test_writer_waits_while_the_client_does_not_read(loop_kind: str) -> None:
    chunk = b"z" * 65536
    count = 64  # 4 MiB: far more than the socket buffers hold
    blocked = threading.Event()
    buffered: list[int] = []

    class Flood(aio.AsyncStreamRequestHandler):
        write_limit = 64 * 1024

        async def handle(self) -> None:
            # A small fixed send buffer: the kernel's own autotuning (up to
            # net.ipv4.tcp_wmem's maximum, 4 MiB and more on some machines)
            # could otherwise absorb the whole flood.
            self.writer.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32768)
            for _ in range(count):
                pending = self.writer.write(chunk)
                assert asyncio.isfuture(pending)
                if not pending.done():
                    blocked.set()
                await pending
                buffered.append(self.writer.transport.get_write_buffer_size())

    with serve_with(Flood, loop_kind) as server, connect(server.server_address, rcvbuf=32768) as sock:
        assert blocked.wait(TIMEOUT), "write() never made the handler wait"
        received = len(recv_all(sock))
    assert received == len(chunk) * count
    # After each awaited write, no more than the limit is left waiting in memory.
    assert max(buffered) <= Flood.write_limit


def test_write_after_the_client_is_gone_raises(loop_kind: str) -> None:
    errors: list[BaseException] = []
    done = threading.Event()

    class Late(aio.AsyncStreamRequestHandler):
        async def handle(self) -> None:
            await self.reader.read()  # until the client has gone
            try:
                for _ in range(1000):  # the reset arrives after the first writes
                    await self.writer.write(b"x" * 65536)
            except ConnectionError as exc:
                errors.append(exc)
            finally:
                done.set()

    with serve_with(Late, loop_kind) as server:
        sock = connect(server.server_address)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()  # a reset
        assert done.wait(TIMEOUT)
    assert errors, "writing to a reset connection must raise"
