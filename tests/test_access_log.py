"""The access log and what it reads: TCP_INFO's offsets against a known
transfer, why a connection closed, the line and its extras, and nothing at
all while it is off. (Every model writes it: tests/matrix/test_metrics.py.)"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Iterator

import pytest

import sockserve
from sockserve._access_log import (
    TCP_INFO_AVAILABLE,
    client_finished,
    closed_by,
    count_error,
    error_closed_by,
    hold,
    let_go,
    read_tcp_info,
    settle_here,
    tcp_bytes,
)
from sockserve._admission import Admission, Ticket
from sockserve._errors import ConnectionDeadlineExceeded, IdleTimeoutExpired, LineTooLong
from sockserve._metrics import Metrics
from sockserve.testing import running_server

from .helpers import wait_until

needs_tcp_info = pytest.mark.skipif(not TCP_INFO_AVAILABLE, reason="TCP_INFO is Linux's")


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A TCP connection on loopback: (server's end, client's end)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname(), timeout=10)
        server, _ = listener.accept()
    server.settimeout(10)
    try:
        yield server, client
    finally:
        server.close()
        client.close()


def ticket() -> Ticket:
    return Ticket(("127.0.0.1", 1), None, 0.0, None)


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk
        data += chunk
    return data


@needs_tcp_info
def test_tcp_info_counts_a_known_transfer(pair: tuple[socket.socket, socket.socket]) -> None:
    server, client = pair
    client.sendall(b"x" * 1000)
    assert recv_exactly(server, 1000)
    server.sendall(b"y" * 70_000)  # more than one segment
    assert recv_exactly(client, 70_000)
    t = ticket()
    tcp_bytes(server, t)
    read_tcp_info(t)
    assert (t.received, t.sent, t.closed_by) == (1000, 70_000, None)


@needs_tcp_info
def test_the_client_s_fin_is_not_a_byte_and_says_who_closed(pair: tuple[socket.socket, socket.socket]) -> None:
    server, client = pair
    client.sendall(b"abc")
    client.shutdown(socket.SHUT_WR)
    assert recv_exactly(server, 3) == b"abc"
    assert server.recv(10) == b""  # the FIN has come
    server.sendall(b"de")
    server.shutdown(socket.SHUT_WR)
    t = ticket()
    tcp_bytes(server, t)
    read_tcp_info(t)
    assert (t.received, t.sent, t.closed_by) == (3, 2, "client")


@needs_tcp_info
def test_a_server_that_closes_first_is_not_the_client(pair: tuple[socket.socket, socket.socket]) -> None:
    server, _ = pair
    server.sendall(b"bye")
    server.shutdown(socket.SHUT_WR)
    t = ticket()
    tcp_bytes(server, t)
    read_tcp_info(t)
    assert (t.received, t.sent, t.closed_by) == (0, 3, None)


@needs_tcp_info
def test_a_held_socket_is_read_after_its_close_and_closed_then(pair: tuple[socket.socket, socket.socket]) -> None:
    server, client = pair
    client.sendall(b"hello")
    assert recv_exactly(server, 5)
    held = hold(server)
    server.close()  # as the handler's shutdown_request() does
    assert server.fileno() != -1  # still open: held
    t = ticket()
    let_go(held, t, tcp=True)
    read_tcp_info(t)
    assert t.received == 5
    assert server.fileno() == -1  # closed for real by let_go()


def test_a_socket_that_cannot_say_leaves_the_ticket_alone() -> None:
    a, b = socket.socketpair()
    with a, b:
        t = ticket()
        tcp_bytes(a, t)  # a Unix socket: no TCP_INFO
        tcp_bytes(None, t)  # uvloop's TLS transports have no socket
        assert (t.received, t.sent, t.closed_by) == (None, None, None)
        assert not client_finished(a)
        b.shutdown(socket.SHUT_WR)
        assert client_finished(a)


def test_closed_by_puts_a_cut_by_the_server_first() -> None:
    t = ticket()
    assert closed_by(t) == "server"
    t.closed_by = "client"
    assert closed_by(t) == "client"
    t.aborted = ConnectionDeadlineExceeded(1.0, None)
    assert closed_by(t) == "connection_timeout"
    t.aborted = ConnectionAbortedError("the server's grace period (1s) is over")
    assert closed_by(t) == "drain"
    t.aborted = IdleTimeoutExpired(1.0, None)
    assert closed_by(t) == "idle_timeout"


def test_errors_are_sorted_as_their_log_lines_are() -> None:
    assert error_closed_by(RuntimeError("bug"), None, None, False) == "error"
    assert error_closed_by(TimeoutError(), 1.0, None, False) == "idle_timeout"
    assert error_closed_by(TimeoutError(), None, None, False) == "error"  # no idle_timeout: the handler's own
    assert error_closed_by(LineTooLong(10, None), None, None, False) == "limit"
    assert error_closed_by(ConnectionResetError(), None, None, False) == "client"
    cut = ConnectionDeadlineExceeded(1.0, None)
    assert error_closed_by(BrokenPipeError(), None, cut, False) == "connection_timeout"
    metrics, t = Metrics(), ticket()
    count_error(metrics, t, RuntimeError("bug"), None, False)
    count_error(metrics, t, ConnectionResetError(), None, False)  # the first reason stays
    assert metrics.snapshot().counters["handler_errors"] == 1
    assert t.closed_by == "error"


def test_settle_counts_once_and_a_forked_child_s_parent_only_counts_out() -> None:
    metrics = Metrics()
    admission = Admission(metrics=metrics)
    t = admission.admit(("127.0.0.1", 1))
    assert isinstance(t, Ticket)
    t.requests, t.received, t.sent, t.closed_by = 1, 10, 20, "idle_timeout"
    admission.release(t)
    admission.release(t)  # counted once
    snap = metrics.snapshot()
    assert (snap.counters["requests"], snap.counters["bytes_received"], snap.counters["bytes_sent"]) == (1, 10, 20)
    assert snap.refused["timeout"] == 1
    assert snap.gauges["connections_active"] == 0
    admission.request_unit = 0  # a forking server's: each child counts its request
    child = admission.admit(("127.0.0.1", 1))
    assert isinstance(child, Ticket)
    child.report = False  # a forked child settles it in its own row
    child.requests = 1
    admission.release(child)
    assert metrics.snapshot().counters["requests"] == 1
    row = Metrics()
    child.report = True
    settle_here(child, row, access_log=False)  # in the child: its own row
    assert row.snapshot().counters["requests"] == 1
    assert row.snapshot().gauges["connections_active"] == 0


class Echo(sockserve.StreamRequestHandler):
    def handle(self) -> None:
        for line in self.rfile:
            if line == b"boom\n":
                raise RuntimeError("boom")
            self.wfile.write(line)


class Quiet(sockserve.ThreadingTCPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # an override without super(): its errors are counted all the same


def exchange(address: tuple[str, int], line: bytes) -> None:
    with socket.create_connection(address, timeout=10) as client:
        client.sendall(line)
        client.shutdown(socket.SHUT_WR)
        while client.recv(100):
            pass


def test_one_line_per_connection_with_its_fields(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="sockserve.access")
    server = Quiet(("127.0.0.1", 0), Echo)
    server.access_log = True
    with running_server(server, poll_interval=0.05):
        exchange(server.server_address, b"hello\n")
        exchange(server.server_address, b"boom\n")
        assert wait_until(lambda: len([r for r in caplog.records if r.name == "sockserve.access"]) == 2)
    # By why they closed ("client" < "error"): two request threads may log in either order.
    ok, failed = sorted((r for r in caplog.records if r.name == "sockserve.access"), key=lambda r: r.closed_by)
    assert ok.levelno == logging.INFO
    assert ok.getMessage().startswith("127.0.0.1:")
    assert "requests=1 " in ok.getMessage()
    assert ok.client.startswith("127.0.0.1:")  # type: ignore[attr-defined]
    assert ok.duration >= 0  # type: ignore[attr-defined]
    assert ok.closed_by == "client"  # type: ignore[attr-defined]
    if TCP_INFO_AVAILABLE:
        assert (ok.bytes_received, ok.bytes_sent) == (6, 6)  # type: ignore[attr-defined]
    assert failed.closed_by == "error"  # type: ignore[attr-defined]
    assert server.metrics.snapshot().counters["handler_errors"] == 1


def test_the_extras_make_a_json_line(caplog: pytest.LogCaptureFixture) -> None:
    log_format = pytest.importorskip("sockserve._log_format")
    caplog.set_level(logging.INFO, logger="sockserve.access")
    server = sockserve.ThreadingTCPServer(("127.0.0.1", 0), Echo)
    server.daemon_threads = True
    server.access_log = True
    with running_server(server, poll_interval=0.05):
        exchange(server.server_address, b"json\n")
        assert wait_until(lambda: any(r.name == "sockserve.access" for r in caplog.records))
    (record,) = [r for r in caplog.records if r.name == "sockserve.access"]
    fields = json.loads(log_format.JsonFormatter().format(record))
    assert fields["logger"] == "sockserve.access"
    assert fields["closed_by"] == "client"
    assert fields["client"].startswith("127.0.0.1:")
    assert isinstance(fields["duration"], float)


def test_off_by_default_and_then_silent(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    server = sockserve.ThreadingTCPServer(("127.0.0.1", 0), Echo)
    server.daemon_threads = True
    assert server.access_log is False
    with running_server(server, poll_interval=0.05):
        exchange(server.server_address, b"quiet\n")
        assert wait_until(lambda: server.metrics.snapshot().counters["requests"] == 1)
    assert not [r for r in caplog.records if r.name == "sockserve.access"]


def test_set_before_serving_it_is_read_when_serving_starts(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="sockserve.access")
    server = sockserve.ThreadingTCPServer(("127.0.0.1", 0), Echo)
    server.daemon_threads = True
    server._admission()  # the admission's book exists before serving
    server.access_log = True
    with running_server(server, poll_interval=0.05):
        exchange(server.server_address, b"late\n")
        assert wait_until(lambda: any(r.name == "sockserve.access" for r in caplog.records))


@needs_tcp_info
@pytest.mark.parametrize("count_bytes", [False, True])
def test_bytes_are_counted_when_asked_for(count_bytes: bool) -> None:
    server = sockserve.ThreadingTCPServer(("127.0.0.1", 0), Echo)
    server.daemon_threads = True
    server.count_bytes = count_bytes  # without the access log
    with running_server(server, poll_interval=0.05):
        exchange(server.server_address, b"counted\n")
        assert wait_until(lambda: server.metrics.snapshot().counters["requests"] == 1)
    counters = server.metrics.snapshot().counters
    expected = 8 if count_bytes else 0  # off by default: reading them costs a share of each connection
    assert (counters["bytes_received"], counters["bytes_sent"]) == (expected, expected)
