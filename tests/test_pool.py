"""The bounded thread pool: reused workers, a hard cap, backpressure to the backlog."""

from __future__ import annotations

import socket
import threading
from typing import Any

import pytest

import sockserve
from sockserve.testing import running_server

from .helpers import connect, recv_line, round_trip, wait_until


class NamesThread(sockserve.StreamRequestHandler):
    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(threading.current_thread().name.encode() + b" " + line)


def test_requests_run_on_reused_pool_workers() -> None:
    class Pool(sockserve.ThreadPoolTCPServer):
        pool_min_workers = 1
        pool_max_workers = 1

    with running_server(Pool(("127.0.0.1", 0), NamesThread)) as server:
        names = {round_trip(server.server_address).split(b" ")[0] for _ in range(5)}
    assert len(names) == 1, "one worker must have served all five, one after another"
    assert b"Pool-worker" in names.pop()


class Gate:
    """Lets the test hold handlers inside handle() and release them."""

    def __init__(self) -> None:
        self.entered = threading.Semaphore(0)
        self.release = threading.Event()


def test_once_as_many_connections_wait_as_there_are_workers_the_server_stops_accepting() -> None:
    # Two workers busy, two more connections ready and waiting for them: a
    # new connection is left in the kernel's backlog until a worker frees.
    gate = Gate()
    accepted: list[Any] = []
    turns = threading.Semaphore(0)

    class Held(sockserve.StreamRequestHandler):
        def handle(self) -> None:
            gate.entered.release()
            gate.release.wait(10)
            self.wfile.write(self.rfile.readline())

    class Pool(sockserve.ThreadPoolTCPServer):
        pool_min_workers = 0
        pool_max_workers = 2

        def get_request(self) -> tuple[Any, Any]:
            request = super().get_request()
            accepted.append(request[1])
            return request

        def service_actions(self) -> None:
            turns.release()

    with running_server(Pool(("127.0.0.1", 0), Held), poll_interval=0.01) as server:
        clients = [connect(server.server_address) for _ in range(4)]
        try:
            for c in clients:
                c.sendall(b"x\n")
            assert gate.entered.acquire(timeout=10)
            assert gate.entered.acquire(timeout=10)
            assert wait_until(lambda: server._worker_pool().waiting() >= 2)  # at capacity from now on
            before = len(accepted)
            late = connect(server.server_address)
            clients.append(late)
            late.sendall(b"x\n")
            for _ in range(20):  # twenty loop turns in which the late connection stays in the backlog
                assert turns.acquire(timeout=10)
            assert len(accepted) == before
            assert server._worker_pool().size == 2
            gate.release.set()
            for c in clients:
                assert recv_line(c) == b"x\n"
            assert len(accepted) == before + 1
        finally:
            for c in clients:
                c.close()


def test_a_connection_that_sends_nothing_takes_no_worker() -> None:
    entered = threading.Semaphore(0)

    class Echo(sockserve.StreamRequestHandler):
        def handle(self) -> None:
            entered.release()
            self.wfile.write(self.rfile.readline())

    class Pool(sockserve.ThreadPoolTCPServer):
        pool_min_workers = 0
        pool_max_workers = 2

    with running_server(Pool(("127.0.0.1", 0), Echo)) as server:
        silent = [connect(server.server_address) for _ in range(10)]  # five times the pool, saying nothing
        try:
            with connect(server.server_address) as talker:
                talker.sendall(b"served\n")
                assert recv_line(talker) == b"served\n"  # a worker was free: the silent ones hold none
            assert entered.acquire(timeout=10)
            assert not entered.acquire(timeout=0.1), "a silent connection reached its handler"
        finally:
            for c in silent:
                c.close()


def test_idle_workers_above_the_minimum_retire() -> None:
    gate = Gate()

    class Held(sockserve.StreamRequestHandler):
        def handle(self) -> None:
            gate.entered.release()
            gate.release.wait(10)
            self.wfile.write(b"done\n")

    class Pool(sockserve.ThreadPoolTCPServer):
        pool_min_workers = 1
        pool_max_workers = 4
        pool_idle_timeout = 0.05

    with running_server(Pool(("127.0.0.1", 0), Held)) as server:
        clients = [connect(server.server_address) for _ in range(4)]
        try:
            for c in clients:
                c.sendall(b"go\n")  # a connection takes a worker once it has sent something
            for _ in clients:
                assert gate.entered.acquire(timeout=10)
            pool = server._worker_pool()
            assert pool is not None
            assert pool.size == 4
            gate.release.set()
            for c in clients:
                assert recv_line(c) == b"done\n"
        finally:
            for c in clients:
                c.close()
        assert wait_until(lambda: pool.size == 1), f"pool did not shrink to its minimum: {pool.size}"


def test_pool_handler_exception_is_logged_and_the_worker_lives_on(caplog: Any) -> None:
    class Fails(sockserve.StreamRequestHandler):
        def handle(self) -> None:
            if self.rfile.readline() == b"boom\n":
                raise ValueError("broken")
            self.wfile.write(b"ok\n")

    class Pool(sockserve.ThreadPoolTCPServer):
        pool_min_workers = 1
        pool_max_workers = 1

    with running_server(Pool(("127.0.0.1", 0), Fails)) as server:
        with connect(server.server_address) as c:
            c.sendall(b"boom\n")
            assert recv_line(c) == b""
        assert round_trip(server.server_address, b"fine\n") == b"ok\n"
    assert any(r.exc_info and r.exc_info[0] is ValueError for r in caplog.records)


def test_pool_serves_datagrams_and_unix_streams(unix_path: str) -> None:
    class Echo(sockserve.DatagramRequestHandler):
        def handle(self) -> None:
            self.wfile.write(self.rfile.read())

    with (
        running_server(sockserve.ThreadPoolUDPServer(("127.0.0.1", 0), Echo)) as udp,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client,
    ):
        client.settimeout(10)
        client.sendto(b"dgram", udp.server_address)
        assert client.recvfrom(64)[0] == b"dgram"
    with running_server(sockserve.ThreadPoolUnixStreamServer(unix_path, NamesThread)) as unix:
        assert round_trip(unix.server_address).endswith(b" hello\n")


def test_handle_request_waits_for_a_free_worker() -> None:
    """Without serve_forever's capacity check, process_request waits instead of queueing."""

    class Pool(sockserve.ThreadPoolTCPServer):
        pool_min_workers = 1
        pool_max_workers = 1

    with Pool(("127.0.0.1", 0), NamesThread) as server:
        first, second = connect(server.server_address), connect(server.server_address)
        try:
            first.sendall(b"1\n")
            second.sendall(b"2\n")
            server.handle_request()
            assert recv_line(first).endswith(b" 1\n")
            first.close()  # frees the only worker
            server.handle_request()
            assert recv_line(second).endswith(b" 2\n")
        finally:
            first.close()
            second.close()


def test_connections_whose_bytes_are_there_at_accept_go_straight_to_the_workers() -> None:
    entered = threading.Semaphore(0)

    class Echo(sockserve.StreamRequestHandler):
        def handle(self) -> None:
            entered.release()
            for line in self.rfile:
                self.wfile.write(line)

    class Pool(sockserve.ThreadPoolTCPServer):
        pool_min_workers = 0
        pool_max_workers = 4

    server = Pool(("127.0.0.1", 0), Echo)
    clients = [connect(server.server_address) for _ in range(6)]
    try:
        for n, client in enumerate(clients):
            client.sendall(b"first %d\n" % n)  # in the socket before the loop accepts it
        with running_server(server):
            for n, client in enumerate(clients[:4]):
                assert recv_line(client) == b"first %d\n" % n
            for n, client in enumerate(clients):
                if n < 4:
                    client.shutdown(socket.SHUT_WR)
            for n, client in enumerate(clients[4:], start=4):  # waited for a worker, then were served
                assert recv_line(client) == b"first %d\n" % n
                client.shutdown(socket.SHUT_WR)
            for _ in clients:
                assert entered.acquire(timeout=10)
            assert server._pool_model().reactor._thread is None, "a connection went through the reactor"  # type: ignore[union-attr]
    finally:
        for client in clients:
            client.close()


class Greeter(sockserve.StreamRequestHandler):
    """A protocol in which the server speaks first (an SMTP-like banner)."""

    speaks_first = True

    def handle(self) -> None:
        self.wfile.write(b"220 ready\n")
        self.wfile.write(b"250 " + self.rfile.readline())


@pytest.mark.parametrize("family", ["tcp", "unix"])
def test_a_handler_that_speaks_first_greets_a_client_that_waits_for_it(family: str, unix_path: str) -> None:
    if family == "tcp":
        server: Any = sockserve.ThreadPoolTCPServer(("127.0.0.1", 0), Greeter)
    else:
        server = sockserve.ThreadPoolUnixStreamServer(unix_path, Greeter)
    with running_server(server), connect(server.server_address) as client:
        assert recv_line(client) == b"220 ready\n"  # before the client said anything
        client.sendall(b"hello\n")
        assert recv_line(client) == b"250 hello\n"


def test_a_default_handler_still_waits_for_the_client_s_first_byte() -> None:
    entered = threading.Event()

    class Quiet(Greeter):
        speaks_first = False

        def handle(self) -> None:
            entered.set()
            super().handle()

    with running_server(sockserve.ThreadPoolTCPServer(("127.0.0.1", 0), Quiet)) as server:
        with connect(server.server_address) as client:
            # The serve loop's model (made when it starts: not made here, which would race it).
            assert wait_until(lambda: server._concurrency is not None)
            model = server._concurrency
            # Waiting in the reactor, where its handler has not been queued.
            assert wait_until(lambda: len(model._waiting) == 1)
            assert not entered.is_set()
            client.sendall(b"hello\n")
            with client.makefile("rb") as replies:
                assert replies.readline() == b"220 ready\n"
                assert replies.readline() == b"250 hello\n"
        assert entered.is_set()
