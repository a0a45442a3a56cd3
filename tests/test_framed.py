"""The pool's framed mode: a thread per request, not per connection.

Behaviour every model shares (limits, drain, errors, leaks, stages) is in the
matrix (tests/matrix, kinds "framed" and "prefork_framed"); here is what is
the framed mode's own: order, framers, backpressure, and clients that trickle
bytes without taking a thread."""

from __future__ import annotations

import socket
import struct
import threading
from typing import Any

import pytest

import sockserve
from sockserve.protocol import Framer, LengthPrefixFramer
from sockserve.testing import running_server

from .conftest import requires_ipv6
from .helpers import connect, recv_all, recv_line, wait_until

TIMEOUT = 10.0


class Pool(sockserve.ThreadPoolTCPServer):
    pool_min_workers = 0
    pool_max_workers = 4


def test_a_connections_requests_run_in_order_one_at_a_time() -> None:
    active: dict[Any, int] = {}
    overlap = threading.Event()
    lock = threading.Lock()

    class Ordered(sockserve.FramedRequestHandler):
        def handle_request(self, request: bytes) -> None:
            with lock:
                active[self] = active.get(self, 0) + 1
                if active[self] > 1:
                    overlap.set()
            threading.Event().wait(0.001)  # long enough for a second worker to step in, if one could
            self.send(request)
            with lock:
                active[self] -= 1

    with running_server(Pool(("127.0.0.1", 0), Ordered)) as server, connect(server.server_address) as client:
        lines = [b"%d\n" % i for i in range(200)]
        client.sendall(b"".join(lines))  # pipelined: all at once
        received = b""
        while received.count(b"\n") < 200:
            received += client.recv(65536)
        assert received == b"".join(lines)
    assert not overlap.is_set(), "two requests of one connection ran at once"


def test_setup_before_the_first_request_finish_after_the_last() -> None:
    events: list[str] = []
    finished = threading.Event()

    class Hooks(sockserve.FramedRequestHandler):
        def setup(self) -> None:
            events.append("setup")

        def handle_request(self, request: bytes) -> None:
            events.append(request.decode().strip())
            self.send(request)

        def finish(self) -> None:
            events.append("finish")
            finished.set()

    with running_server(Pool(("127.0.0.1", 0), Hooks)) as server:
        with connect(server.server_address) as client:
            client.sendall(b"a\nb\n")
            client.shutdown(socket.SHUT_WR)
            assert recv_all(client) == b"a\nb\n"
        assert finished.wait(TIMEOUT)
    assert events == ["setup", "a", "b", "finish"]


def test_a_length_prefixed_protocol() -> None:
    class Sizes(sockserve.FramedRequestHandler):
        def make_framer(self) -> Framer:
            return LengthPrefixFramer(max_request=1000, client_address=self.client_address)

        def handle_request(self, request: bytes) -> None:
            self.send(struct.pack(">I", len(request)))

    with running_server(Pool(("127.0.0.1", 0), Sizes)) as server, connect(server.server_address) as client:
        for payload in (b"", b"x", b"y" * 999):
            client.sendall(struct.pack(">I", len(payload)) + payload)
            assert client.recv(4) == struct.pack(">I", len(payload))
        client.sendall(struct.pack(">I", 1001))  # over the cap: closed with one line
        assert recv_all(client) == b""


def test_a_client_that_does_not_read_stops_being_read() -> None:
    handled = []
    reply = b"z" * (256 * 1024 - 1) + b"\n"  # a large reply per request

    class Big(sockserve.FramedRequestHandler):
        def handle_request(self, request: bytes) -> None:
            handled.append(request)
            self.send(reply)

    requests = 200  # 50 MiB of replies in all: far more than the kernel's socket buffers hold
    with running_server(Pool(("127.0.0.1", 0), Big)) as server, connect(server.server_address, rcvbuf=65536) as client:
        client.sendall(b"r\n" * requests)  # and reads nothing for now
        assert wait_until(lambda: len(handled) > 0)
        assert not wait_until(lambda: len(handled) == requests, timeout=0.5), "the server went on as if it were read"
        stalled = len(handled)
        assert stalled < requests // 2, f"{stalled} replies of 256 KiB queued for a client that reads nothing"
        received = 0
        while received < requests * len(reply):  # now it reads: every reply comes, in full
            chunk = client.recv(1 << 20)
            assert chunk
            received += len(chunk)
        assert received == requests * len(reply)
    assert len(handled) == requests


def test_clients_that_trickle_bytes_hold_no_thread() -> None:
    class Echo(sockserve.FramedRequestHandler):
        def handle_request(self, request: bytes) -> None:
            self.send(request)

    baseline = threading.active_count()
    with running_server(Pool(("127.0.0.1", 0), Echo)) as server:
        slow = [connect(server.server_address) for _ in range(100)]  # 25 times the pool
        try:
            for _ in range(3):  # each sends a byte of a line it never ends
                for s in slow:
                    s.sendall(b"x")
            for i in range(20):
                with connect(server.server_address) as client:
                    client.sendall(b"normal %d\n" % i)
                    assert recv_line(client) == b"normal %d\n" % i
            # the serve loop, the reactor and at most the pool's workers
            assert threading.active_count() - baseline <= Pool.pool_max_workers + 2
        finally:
            for s in slow:
                s.close()


@requires_ipv6
def test_ipv6() -> None:
    class Echo(sockserve.FramedRequestHandler):
        def handle_request(self, request: bytes) -> None:
            self.send(request)

    with running_server(Pool(("::1", 0), Echo)) as server, connect(server.server_address) as client:
        client.sendall(b"six\n")
        assert recv_line(client) == b"six\n"


@pytest.mark.parametrize(
    "server_class", [sockserve.TCPServer, sockserve.ThreadingTCPServer, sockserve.ThreadPoolUDPServer]
)
def test_a_framed_handler_needs_a_pool_stream_server(server_class: type[sockserve.TCPServer]) -> None:
    class Echo(sockserve.FramedRequestHandler):
        def handle_request(self, request: bytes) -> None:
            self.send(request)

    with pytest.raises(TypeError, match="serve it with a ThreadPool"):
        server_class(("127.0.0.1", 0), Echo)


def test_a_drain_closes_a_connection_idle_between_requests_and_finishes_one_mid_request() -> None:
    """Framed connections between requests are like idle keep-alive
    connections: a drain closes them at once. One whose request has begun
    to arrive may complete it (within the grace period), and is answered."""
    handled: list[bytes] = []

    class Echo(sockserve.FramedRequestHandler):
        def handle_request(self, request: bytes) -> None:
            handled.append(request)
            self.send(request)

    server = Pool(("127.0.0.1", 0), Echo)
    with running_server(server), connect(server.server_address) as idle, connect(server.server_address) as midway:
        idle.sendall(b"first\n")
        assert recv_line(idle) == b"first\n"
        midway.sendall(b"half of ")
        # Until the server has read the first half: the connection is then in
        # the middle of a request, not between requests.
        assert wait_until(lambda: _buffered_by_the_server(server) == len(b"half of "))
        reports: list[sockserve.DrainReport] = []
        stopper = threading.Thread(target=lambda: reports.append(server.stop(10)))
        stopper.start()
        try:
            assert recv_all(idle) == b"", "the idle connection is closed by the drain"
            midway.sendall(b"a request\n")
            assert recv_all(midway) == b"half of a request\n", "answered, then closed"
        finally:
            stopper.join(TIMEOUT)
        assert not stopper.is_alive()
    assert reports[0].in_flight == 2
    assert reports[0].forced == 0, "neither waited for the grace period to end"
    assert handled == [b"first\n", b"half of a request\n"]


def _buffered_by_the_server(server: Any) -> int:
    """Bytes the server's framers hold, over all its connections (test-only peek)."""
    model = server._concurrency_model()
    try:
        connections = list(model._connections)  # the reactor's set: it may change meanwhile
    except RuntimeError:
        return -1
    return sum(c._framer.buffered for c in connections if c._framer is not None)


def test_connections_whose_first_requests_are_there_at_accept_are_served_and_stay_usable() -> None:
    # Sent before the loop runs, the requests are in the sockets when it
    # accepts: a worker takes each connection's first turn, and the reactor
    # its next requests; each connection ends and is counted out.
    class Echo(sockserve.FramedRequestHandler):
        def handle_request(self, request: bytes) -> None:
            self.send(request)

    server = Pool(("127.0.0.1", 0), Echo)
    clients = [connect(server.server_address) for _ in range(8)]
    try:
        for n, client in enumerate(clients):
            client.sendall(b"first %d\n" % n)
        with running_server(server):
            for n, client in enumerate(clients):
                assert recv_line(client) == b"first %d\n" % n
            for n, client in enumerate(clients):
                client.sendall(b"second %d\n" % n)
                assert recv_line(client) == b"second %d\n" % n
            for client in clients:
                client.shutdown(socket.SHUT_WR)
                assert recv_all(client) == b""  # the server ends the connection too
            assert wait_until(lambda: server._in_flight_count() == 0), "a connection was never counted out"
    finally:
        for client in clients:
            client.close()


class _Echo(sockserve.FramedRequestHandler):
    def handle_request(self, request: bytes) -> None:
        self.send(request)


def _connections_of(server: Any) -> list[Any]:
    """The server's framed connections (test-only peek; the set may change meanwhile)."""
    while True:
        try:
            return list(server._concurrency_model()._connections)
        except RuntimeError:
            continue


def test_a_connection_per_request_there_at_accept_is_served_without_the_reactor() -> None:
    # Sent and ended before the loop runs: a worker takes the connection's
    # first turn at accept, serves it, sees its end and closes it; the
    # reactor's thread is never even started.
    events: list[str] = []
    finished = threading.Event()

    class Hooks(sockserve.FramedRequestHandler):
        def setup(self) -> None:
            events.append("setup")

        def handle_request(self, request: bytes) -> None:
            events.append(request.decode().strip())
            self.send(request)

        def finish(self) -> None:
            events.append("finish")
            finished.set()

    server = Pool(("127.0.0.1", 0), Hooks)
    with connect(server.server_address) as client:
        client.sendall(b"one\ntwo\n")
        client.shutdown(socket.SHUT_WR)
        with running_server(server):
            assert recv_all(client) == b"one\ntwo\n"
            assert finished.wait(TIMEOUT)
            assert wait_until(lambda: server._in_flight_count() == 0), "the connection was never counted out"
            assert server._pool_model().reactor._thread is None, "the connection went through the reactor"  # type: ignore[union-attr]
    assert events == ["setup", "one", "two", "finish"]


def test_a_connection_served_at_accept_then_idle_meets_its_idle_timeout() -> None:
    class Idle(Pool):
        limits = sockserve.Limits(idle_timeout=0.2)

    server = Idle(("127.0.0.1", 0), _Echo)
    with connect(server.server_address) as client:
        client.sendall(b"first\n")  # in the socket at accept; then nothing more
        with running_server(server):
            assert recv_line(client) == b"first\n"
            assert recv_all(client) == b"", "closed by the idle timeout, which started once it went idle"


def test_a_connection_served_at_accept_meets_its_deadline() -> None:
    class Timed(Pool):
        limits = sockserve.Limits(connection_timeout=0.3)

    server = Timed(("127.0.0.1", 0), _Echo)
    with connect(server.server_address) as client:
        client.sendall(b"first\n")  # in the socket at accept; then it just stays
        with running_server(server):
            assert recv_line(client) == b"first\n"
            assert recv_all(client) == b"", "cut at the deadline, which ran from its admission"
            assert wait_until(lambda: server._in_flight_count() == 0)


def test_a_drain_reaches_a_connection_in_its_first_turn_at_accept() -> None:
    # The first request, there at accept, is being handled on a worker (the
    # reactor has not seen the connection) when the drain begins: it is
    # answered, and the connection then ends without waiting for the grace
    # period, as one in the reactor would.
    entered, release = threading.Event(), threading.Event()

    class Slow(sockserve.FramedRequestHandler):
        def handle_request(self, request: bytes) -> None:
            entered.set()
            assert release.wait(TIMEOUT)
            self.send(request)

    server = Pool(("127.0.0.1", 0), Slow)
    reports: list[sockserve.DrainReport] = []
    with connect(server.server_address) as client:
        client.sendall(b"first\n")
        with running_server(server):
            assert entered.wait(TIMEOUT)
            stopper = threading.Thread(target=lambda: reports.append(server.stop(10)))
            stopper.start()
            try:
                # Until the drain has reached the connection, still in its first turn.
                assert wait_until(lambda: any(c._ending for c in _connections_of(server)))
                release.set()
                assert recv_all(client) == b"first\n", "answered, then closed"
            finally:
                release.set()
                stopper.join(TIMEOUT)
            assert not stopper.is_alive()
    assert reports[0].in_flight == 1
    assert reports[0].forced == 0, "it waited for the grace period to end"


def test_a_trickler_whose_first_bytes_are_there_at_accept_holds_no_worker() -> None:
    class One(Pool):
        pool_max_workers = 1

    server = One(("127.0.0.1", 0), _Echo)
    with connect(server.server_address) as trickler, connect(server.server_address) as normal:
        trickler.sendall(b"x")  # part of a request, in the socket at accept
        normal.sendall(b"normal\n")
        with running_server(server):
            # The only worker takes the trickler's first turn, and must let it go.
            assert recv_line(normal) == b"normal\n"
            trickler.sendall(b"y\n")
            assert recv_line(trickler) == b"xy\n"
            normal.sendall(b"again\n")
            assert recv_line(normal) == b"again\n"
