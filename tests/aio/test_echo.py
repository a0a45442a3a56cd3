"""Every async server family echoes, on asyncio and on uvloop, with the
hooks of the synchronous servers; a handler's exception is logged and the
server goes on."""

from __future__ import annotations

import os
import socket
import threading
from typing import Any

import pytest

import sockserve
from sockserve import aio
from sockserve.testing import running_server

from ..conftest import requires_ipv6
from ..helpers import connect, recv_all, recv_line, round_trip
from .conftest import LogWatcher, closed_by_server


class LineEcho(aio.AsyncStreamRequestHandler):
    async def handle(self) -> None:
        async for line in self.reader:
            await self.writer.write(line)


class CallbackEcho(aio.AsyncProtocolHandler):
    def data_received(self, data: bytes) -> None:
        self.write(data)


class DatagramEcho(aio.AsyncDatagramRequestHandler):
    async def handle(self) -> None:
        await self.reply(self.packet)


STREAM = {"ipv4": aio.AsyncTCPServer, "ipv6": aio.AsyncTCPServer, "unix": aio.AsyncUnixStreamServer}
DGRAM = {"ipv4": aio.AsyncUDPServer, "ipv6": aio.AsyncUDPServer, "unix": aio.AsyncUnixDatagramServer}


def make(server_class: type[aio.AsyncBaseServer], address: Any, handler: type, loop_kind: str) -> Any:
    server = server_class(address, handler)
    server.event_loop = loop_kind  # type: ignore[assignment]
    return server


@pytest.mark.parametrize("handler", [LineEcho, CallbackEcho], ids=["stream", "callback"])
def test_stream_echo_on_every_family(family: str, address_for: Any, loop_kind: str, handler: type) -> None:
    with running_server(make(STREAM[family], address_for(family), handler, loop_kind)) as server:
        assert server.server_address == server.socket.getsockname()
        if family != "unix":
            assert server.server_address[1] != 0, "port 0 must be replaced by the real port"
        for n in range(3):
            assert round_trip(server.server_address, b"line %d\n" % n) == b"line %d\n" % n
        with connect(server.server_address) as sock:  # several lines on one connection
            for n in range(3):
                sock.sendall(b"again %d\n" % n)
                assert recv_line(sock) == b"again %d\n" % n
    assert server.socket.fileno() == -1
    if family == "unix":
        assert not os.path.exists(address_for(family)), "the socket file must be removed on close"


def test_datagram_echo_on_every_family(family: str, address_for: Any, short_tmp: str, loop_kind: str) -> None:
    with running_server(make(DGRAM[family], address_for(family), DatagramEcho, loop_kind)) as server:
        sock_family = {"ipv4": socket.AF_INET, "ipv6": socket.AF_INET6, "unix": socket.AF_UNIX}[family]
        with socket.socket(sock_family, socket.SOCK_DGRAM) as client:
            client.settimeout(10)
            if family == "unix":
                client.bind(os.path.join(short_tmp, "client.sock"))  # so the reply has somewhere to go
            for n in range(3):
                client.sendto(b"ping %d" % n, server.server_address)
                data, source = client.recvfrom(1024)
                assert data == b"ping %d" % n
                assert source == server.server_address


@requires_ipv6
def test_ipv6_wildcard_is_dual_stack(loop_kind: str) -> None:
    with running_server(make(aio.AsyncTCPServer, ("::", 0), LineEcho, loop_kind)) as server:
        assert server.socket.family == socket.AF_INET6
        port = server.server_address[1]
        assert round_trip(("127.0.0.1", port), b"v4\n") == b"v4\n"
        assert round_trip(("::1", port), b"v6\n") == b"v6\n"


def test_unix_path_of_a_live_server_is_refused(unix_path: str) -> None:
    with aio.AsyncUnixStreamServer(unix_path, LineEcho), pytest.raises(sockserve.SocketPathInUse):
        aio.AsyncUnixStreamServer(unix_path, LineEcho)


def test_stale_unix_socket_file_is_replaced(unix_path: str) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(unix_path)  # bound, never listening: the file of a server that died
    with running_server(aio.AsyncUnixStreamServer(unix_path, LineEcho)) as server:
        assert round_trip(server.server_address) == b"hello\n"


def test_a_non_socket_path_is_never_touched(unix_path: str) -> None:
    with open(unix_path, "w") as f:
        f.write("precious")
    with pytest.raises(sockserve.SocketPathNotASocket):
        aio.AsyncUnixStreamServer(unix_path, LineEcho)
    with open(unix_path) as f:
        assert f.read() == "precious"


def test_wrong_handler_class_is_refused() -> None:
    with pytest.raises(TypeError, match="AsyncDatagramRequestHandler"):
        aio.AsyncUDPServer(("127.0.0.1", 0), LineEcho)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="AsyncStreamRequestHandler"):
        aio.AsyncTCPServer(("127.0.0.1", 0), sockserve.StreamRequestHandler)  # type: ignore[arg-type]


def test_hooks_are_called_in_order(loop_kind: str) -> None:
    calls: list[str] = []
    actions = threading.Event()

    class Handler(aio.AsyncStreamRequestHandler):
        async def setup(self) -> None:
            calls.append("setup")

        async def handle(self) -> None:
            calls.append("handle")
            await self.writer.write(await self.reader.readline())

        async def finish(self) -> None:
            calls.append("finish")

    class Server(aio.AsyncTCPServer):
        def server_activate(self) -> None:
            calls.append("server_activate")
            super().server_activate()

        def verify_request(self, request: Any, client_address: Any) -> bool:
            calls.append("verify_request")
            assert isinstance(request, socket.socket)
            return client_address[0] == "127.0.0.1"

        def service_actions(self) -> None:
            actions.set()

    with running_server(make(Server, ("127.0.0.1", 0), Handler, loop_kind), poll_interval=0.01) as server:
        assert round_trip(server.server_address) == b"hello\n"
        assert actions.wait(10), "service_actions() was never called"
    assert calls == ["server_activate", "verify_request", "setup", "handle", "finish"]


def test_verify_request_false_closes_without_handling(loop_kind: str) -> None:
    handled = threading.Event()

    class Handler(aio.AsyncStreamRequestHandler):
        async def handle(self) -> None:
            handled.set()

    class Server(aio.AsyncTCPServer):
        def verify_request(self, request: Any, client_address: Any) -> bool:
            return False

    with (
        running_server(make(Server, ("127.0.0.1", 0), Handler, loop_kind)) as server,
        connect(server.server_address) as sock,
    ):
        assert recv_all(sock) == b""
    assert not handled.is_set()


@pytest.mark.parametrize("where", ["handle", "verify_request", "finish"])
def test_an_exception_is_logged_and_the_server_goes_on(loop_kind: str, logs: LogWatcher, where: str) -> None:
    class Handler(aio.AsyncStreamRequestHandler):
        async def handle(self) -> None:
            line = await self.reader.readline()
            if where == "handle" and line == b"boom\n":
                raise RuntimeError("boom in handle")
            await self.writer.write(line)

        async def finish(self) -> None:
            if where == "finish":
                raise RuntimeError("boom in finish")

    class Server(aio.AsyncTCPServer):
        def verify_request(self, request: Any, client_address: Any) -> bool:
            if where == "verify_request":
                raise RuntimeError("boom in verify_request")
            return True

    with running_server(make(Server, ("127.0.0.1", 0), Handler, loop_kind)) as server:
        with connect(server.server_address) as sock:
            client = sock.getsockname()
            sock.sendall(b"boom\n")
            closed_by_server(sock)
        record = logs.wait_for(rf"exception while handling a request from 127\.0\.0\.1:{client[1]}")
        assert record.exc_info is not None
        assert "boom in" in str(record.exc_info[1])
        if where != "verify_request":
            assert round_trip(server.server_address, b"fine\n") == b"fine\n"


@pytest.mark.parametrize("error", [ValueError, FileNotFoundError], ids=["ValueError", "OSError"])
def test_callback_handler_exception_is_logged_and_the_server_goes_on(
    loop_kind: str, logs: LogWatcher, error: type[Exception]
) -> None:
    class Handler(aio.AsyncProtocolHandler):
        def data_received(self, data: bytes) -> None:
            if data.startswith(b"boom"):
                raise error("boom in data_received")
            self.write(data)

    with running_server(make(aio.AsyncTCPServer, ("127.0.0.1", 0), Handler, loop_kind)) as server:
        with connect(server.server_address) as sock:
            sock.sendall(b"boom\n")
            assert closed_by_server(sock) == b""
        record = logs.wait_for("exception while handling a request from 127.0.0.1")
        assert record.exc_info is not None
        assert isinstance(record.exc_info[1], error)
        assert len([m for m in logs.messages() if m.startswith("exception while")]) == 1
        assert round_trip(server.server_address, b"fine\n") == b"fine\n"


def test_callback_handler_sees_every_callback(loop_kind: str) -> None:
    events: list[str] = []
    lost = threading.Event()

    class Handler(aio.AsyncProtocolHandler):
        def connection_made(self) -> None:
            events.append("made")

        def data_received(self, data: bytes) -> None:
            events.append("data")
            self.write(data.upper())

        def eof_received(self) -> bool | None:
            events.append("eof")
            self.write(b"bye\n")
            return None  # close once the reply is sent

        def connection_lost(self, exc: Exception | None) -> None:
            events.append("lost")
            lost.set()

    with (
        running_server(make(aio.AsyncTCPServer, ("127.0.0.1", 0), Handler, loop_kind)) as server,
        connect(server.server_address) as sock,
    ):
        sock.sendall(b"hi\n")
        assert recv_line(sock) == b"HI\n"
        sock.shutdown(socket.SHUT_WR)
        assert recv_all(sock) == b"bye\n"
        assert lost.wait(10)
    assert events == ["made", "data", "eof", "lost"]


def test_datagram_handler_exception_is_logged(loop_kind: str, logs: LogWatcher) -> None:
    class Handler(aio.AsyncDatagramRequestHandler):
        async def handle(self) -> None:
            if self.packet == b"boom":
                raise RuntimeError("boom")
            await self.reply(self.packet)

    with (
        running_server(make(aio.AsyncUDPServer, ("127.0.0.1", 0), Handler, loop_kind)) as server,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client,
    ):
        client.settimeout(10)
        client.sendto(b"boom", server.server_address)
        logs.wait_for("exception while handling a datagram from 127.0.0.1")
        client.sendto(b"fine", server.server_address)
        assert client.recvfrom(100)[0] == b"fine"


def test_handle_error_can_be_overridden(loop_kind: str) -> None:
    seen: list[Any] = []
    reported = threading.Event()

    class Handler(aio.AsyncStreamRequestHandler):
        async def handle(self) -> None:
            raise KeyError("mine")

    class Server(aio.AsyncTCPServer):
        def handle_error(self, request: Any, client_address: Any) -> None:
            import sys

            seen.append((client_address, sys.exc_info()[0]))
            reported.set()

    with running_server(make(Server, ("127.0.0.1", 0), Handler, loop_kind)) as server:
        with connect(server.server_address) as sock:
            recv_all(sock)
            client = sock.getsockname()
        assert reported.wait(10)
    assert seen == [(client, KeyError)]
