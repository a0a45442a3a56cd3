"""Each limit of ``sockserve.Limits`` against a client that misbehaves: the
limit fires, the connection is closed with a log line naming the limit and
the client, and the server goes on serving the others."""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any

import pytest

import sockserve
from sockserve import aio
from sockserve.testing import running_server

from ..helpers import TIMEOUT, connect, recv_line, round_trip
from .conftest import LogWatcher, closed_by_server


class LineEcho(aio.AsyncStreamRequestHandler):
    async def handle(self) -> None:
        async for line in self.reader:
            await self.writer.write(line)


class CallbackEcho(aio.AsyncProtocolHandler):
    def data_received(self, data: bytes) -> None:
        self.write(data)


HANDLERS = pytest.mark.parametrize("handler", [LineEcho, CallbackEcho], ids=["stream", "callback"])


def limited(handler: type, loop_kind: str, **limits: Any) -> Any:
    server = aio.AsyncTCPServer(("127.0.0.1", 0), handler)
    server.event_loop = loop_kind  # type: ignore[assignment]
    server.limits = sockserve.Limits(**limits)
    return running_server(server)


@HANDLERS
def test_idle_timeout_closes_a_slowloris(loop_kind: str, logs: LogWatcher, handler: type) -> None:
    with limited(handler, loop_kind, idle_timeout=0.2) as server:
        with connect(server.server_address) as slow:
            client = slow.getsockname()
            slow.sendall(b"GET / HTTP/1.1\r\nHost: exam")  # ... and nothing more
            closed_by_server(slow)
        logs.wait_for(rf"idle timeout \(0\.2s\) expired from 127\.0\.0\.1:{client[1]}: closing the connection")
        assert round_trip(server.server_address) == b"hello\n"


def test_an_endless_line_is_cut_at_max_line(loop_kind: str, logs: LogWatcher) -> None:
    with limited(LineEcho, loop_kind, max_line=1024) as server:
        with connect(server.server_address) as sock:
            client = sock.getsockname()
            try:
                for _ in range(1024):  # 64 MiB unless the server gives up, which it must
                    sock.sendall(b"a" * 65536)
            except (ConnectionResetError, BrokenPipeError):
                pass  # closed by the server in the middle of the flood
            closed_by_server(sock)
        logs.wait_for(rf"line longer than 1024 bytes from 127\.0\.0\.1:{client[1]}: closing the connection")
        assert round_trip(server.server_address) == b"hello\n"


@HANDLERS
def test_max_connections_leaves_the_next_one_in_the_backlog(loop_kind: str, handler: type) -> None:
    with limited(handler, loop_kind, max_connections=2) as server:
        first, second = connect(server.server_address), connect(server.server_address)
        try:
            for sock in (first, second):
                sock.sendall(b"in\n")
                assert recv_line(sock) == b"in\n"
            with connect(server.server_address, timeout=0.3) as third:  # the kernel completes the handshake
                third.sendall(b"waiting\n")
                with pytest.raises(socket.timeout):
                    third.recv(100)  # not served while two are open
                first.close()
                third.settimeout(TIMEOUT)
                assert recv_line(third) == b"waiting\n"  # served as soon as a slot is free
        finally:
            first.close()
            second.close()


@HANDLERS
def test_max_connections_per_ip_closes_the_extra_one_at_once(loop_kind: str, logs: LogWatcher, handler: type) -> None:
    with limited(handler, loop_kind, max_connections_per_ip=1) as server, connect(server.server_address) as first:
        first.sendall(b"one\n")
        assert recv_line(first) == b"one\n"
        with connect(server.server_address) as extra:
            assert closed_by_server(extra) == b""
        logs.wait_for(r"connection refused from 127\.0\.0\.1:\d+: max_connections_per_ip=1 reached")
        first.sendall(b"still\n")
        assert recv_line(first) == b"still\n"


@HANDLERS
def test_connection_timeout_closes_a_busy_connection(loop_kind: str, logs: LogWatcher, handler: type) -> None:
    with limited(handler, loop_kind, connection_timeout=0.3) as server:
        with connect(server.server_address) as sock:
            client = sock.getsockname()
            try:
                while True:  # busy all along: only the deadline can end it
                    sock.sendall(b"ping\n")
                    if not recv_line(sock):
                        break
            except ConnectionResetError:
                pass
        logs.wait_for(rf"connection deadline \(0\.3s\) exceeded from 127\.0\.0\.1:{client[1]}: closing the connection")
        assert round_trip(server.server_address) == b"hello\n"


def test_connection_timeout_cancels_a_handler_that_is_not_reading(loop_kind: str, logs: LogWatcher) -> None:
    finished = threading.Event()

    class Sleeper(aio.AsyncStreamRequestHandler):
        async def handle(self) -> None:
            await asyncio.sleep(3600)

        async def finish(self) -> None:
            finished.set()

    with limited(Sleeper, loop_kind, connection_timeout=0.2) as server, connect(server.server_address) as sock:
        assert closed_by_server(sock) == b""
        assert finished.wait(TIMEOUT), "finish() must run when the deadline cancels the handler"
        logs.wait_for(r"connection deadline \(0\.2s\) exceeded")


def test_datagram_limits_count_handlers_in_flight(loop_kind: str, logs: LogWatcher) -> None:
    release = threading.Event()
    started = threading.Event()

    class Slow(aio.AsyncDatagramRequestHandler):
        async def handle(self) -> None:
            if self.packet == b"hold":
                started.set()
                while not release.is_set():
                    await asyncio.sleep(0.01)
            await self.reply(self.packet)

    server = aio.AsyncUDPServer(("127.0.0.1", 0), Slow)
    server.event_loop = loop_kind  # type: ignore[assignment]
    server.limits = sockserve.Limits(max_connections_per_ip=1)
    with running_server(server), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(TIMEOUT)
        client.sendto(b"hold", server.server_address)
        assert started.wait(TIMEOUT)
        client.sendto(b"dropped", server.server_address)
        logs.wait_for(r"max_connections_per_ip=1 reached")
        release.set()
        assert client.recvfrom(100)[0] == b"hold"
        client.sendto(b"after", server.server_address)
        assert client.recvfrom(100)[0] == b"after"
