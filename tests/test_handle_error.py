"""A handler's exception is logged with the client's address and traceback,
and the server goes on; SystemExit and KeyboardInterrupt keep the stdlib's
semantics."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest

import sockserve
from sockserve.testing import running_server

from .helpers import connect, recv_all, round_trip


class Fails(sockserve.StreamRequestHandler):
    def handle(self) -> None:
        line = self.rfile.readline()
        if line == b"boom\n":
            raise ValueError("the handler broke")
        self.wfile.write(line)


@pytest.mark.parametrize("server_class", [sockserve.TCPServer, sockserve.ThreadingTCPServer])
def test_handler_exception_is_logged_and_the_server_goes_on(
    server_class: type[sockserve.TCPServer], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="sockserve")
    with running_server(server_class(("127.0.0.1", 0), Fails)) as server:
        with connect(server.server_address) as client:
            client.sendall(b"boom\n")
            assert recv_all(client) == b""  # the connection is closed, not left hanging
            client_port = client.getsockname()[1]
        assert round_trip(server.server_address, b"next\n") == b"next\n"
    records = [r for r in caplog.records if r.name == "sockserve"]
    assert len(records) == 1
    assert f"127.0.0.1:{client_port}" in records[0].getMessage()
    assert records[0].exc_info is not None
    assert records[0].exc_info[0] is ValueError


def test_verify_request_exception_is_reported_and_the_connection_closed(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(sockserve.TCPServer):
        calls = 0

        def verify_request(self, request: Any, client_address: Any) -> bool:
            Broken.calls += 1
            if Broken.calls == 1:
                raise RuntimeError("verify broke")
            return True

    caplog.set_level(logging.ERROR, logger="sockserve")
    with running_server(Broken(("127.0.0.1", 0), Fails)) as server:
        with connect(server.server_address) as client:
            assert recv_all(client) == b""
        assert round_trip(server.server_address) == b"hello\n"
    assert [r.exc_info[0] for r in caplog.records if r.exc_info] == [RuntimeError]


def test_handle_error_can_be_overridden() -> None:
    seen = []

    class Custom(sockserve.TCPServer):
        def handle_error(self, request: Any, client_address: Any) -> None:
            seen.append(client_address[0])

    with running_server(Custom(("127.0.0.1", 0), Fails)) as server:
        with connect(server.server_address) as client:
            client.sendall(b"boom\n")
            recv_all(client)
        assert round_trip(server.server_address) == b"hello\n"
    assert seen == ["127.0.0.1"]


@pytest.mark.parametrize("exit_exception", [SystemExit, KeyboardInterrupt])
def test_exit_exceptions_escape_a_synchronous_server(exit_exception: type[BaseException]) -> None:
    class Exits(sockserve.BaseRequestHandler):
        def handle(self) -> None:
            raise exit_exception

    with sockserve.TCPServer(("127.0.0.1", 0), Exits) as server, connect(server.server_address) as client:
        with pytest.raises(exit_exception):
            server.handle_request()
        assert recv_all(client) == b"", "the request must be closed on the way out"


def test_system_exit_in_a_request_thread_ends_only_that_thread() -> None:
    class Exits(sockserve.BaseRequestHandler):
        def handle(self) -> None:
            if self.request.recv(16) == b"exit\n":
                raise SystemExit
            self.request.sendall(b"hello\n")

    hooked: list[type[BaseException]] = []
    previous = threading.excepthook
    threading.excepthook = lambda args: hooked.append(args.exc_type)
    try:
        with running_server(sockserve.ThreadingTCPServer(("127.0.0.1", 0), Exits)) as server:
            with connect(server.server_address) as client:
                client.sendall(b"exit\n")
                assert recv_all(client) == b""
            assert round_trip(server.server_address) == b"hello\n"
    finally:
        threading.excepthook = previous
    assert hooked == [SystemExit]


def test_a_client_that_vanishes_mid_request_is_one_info_line(caplog: pytest.LogCaptureFixture) -> None:
    import socket
    import struct

    entered, vanished = threading.Event(), threading.Event()

    class WritesAfterTheClientLeft(sockserve.StreamRequestHandler):
        def handle(self) -> None:
            line = self.rfile.readline()
            if line != b"start\n":
                self.wfile.write(line)
                return
            entered.set()
            vanished.wait(10)
            for _ in range(1000):  # the first writes may still be accepted; a later one fails
                self.wfile.write(b"x" * 65536)

    caplog.set_level(logging.INFO, logger="sockserve")
    server = sockserve.ThreadingTCPServer(("127.0.0.1", 0), WritesAfterTheClientLeft)
    with running_server(server):
        client = connect(server.server_address)
        client.sendall(b"start\n")
        assert entered.wait(10)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()  # a reset, not a polite close
        vanished.set()
        assert round_trip(server.server_address, b"next\n") == b"next\n"  # still serving the others
    records = [r for r in caplog.records if r.name == "sockserve" and "went away" in r.getMessage()]
    assert len(records) == 1
    assert records[0].levelname == "INFO"
    assert records[0].exc_info is None
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
