"""The datagram pool: its idle workers receive, each handles what it received,
and a handler that blocks holds only its own worker."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import sockserve
from sockserve.testing import running_server

TIMEOUT = 10.0


@pytest.fixture
def client() -> Iterator[socket.socket]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(TIMEOUT)
        yield sock


class Holding(sockserve.BaseRequestHandler):
    """Echoes a datagram, except b"hold", which waits for ``release`` first."""

    entered: threading.Semaphore
    release: threading.Event
    handled: list[bytes]
    started_after_release: list[bytes]

    def handle(self) -> None:
        data, sock = self.request
        if self.release.is_set():
            self.started_after_release.append(data)
        if data == b"hold":
            sock.sendto(b"entered", self.client_address)
            self.entered.release()
            self.release.wait(TIMEOUT)
        self.handled.append(data)
        sock.sendto(data, self.client_address)


def holding_handler() -> type[Holding]:
    attributes = {
        "entered": threading.Semaphore(0),
        "release": threading.Event(),
        "handled": [],
        "started_after_release": [],
    }
    return type("Holding", (Holding,), attributes)


def pool_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if "-worker-" in t.name and t.name.startswith("Pool")]


def test_a_blocked_handler_does_not_stop_other_datagrams(client: socket.socket) -> None:
    handler = holding_handler()

    class Pool(sockserve.ThreadPoolUDPServer):
        pool_min_workers = 1  # the second receiver is called in when the first one blocks
        pool_max_workers = 4

    try:
        with running_server(Pool(("127.0.0.1", 0), handler)) as server:
            client.sendto(b"hold", server.server_address)
            assert client.recvfrom(100)[0] == b"entered"
            for packet in (b"one", b"two", b"three"):
                client.sendto(packet, server.server_address)
                assert client.recvfrom(100)[0] == packet  # while the first handler still blocks
            handler.release.set()
            assert client.recvfrom(100)[0] == b"hold"
    finally:
        handler.release.set()
    assert handler.handled == [b"one", b"two", b"three", b"hold"]


def test_with_every_worker_blocked_datagrams_wait_in_the_socket_and_are_served_after(client: socket.socket) -> None:
    handler = holding_handler()

    class Pool(sockserve.ThreadPoolUDPServer):
        pool_min_workers = 1
        pool_max_workers = 2

    try:
        with running_server(Pool(("127.0.0.1", 0), handler)) as server:
            for _ in range(2):
                client.sendto(b"hold", server.server_address)
                assert client.recvfrom(100)[0] == b"entered"
            client.sendto(b"waits", server.server_address)
            assert server._worker_pool().size == 2  # no third worker for it
            handler.release.set()
            replies = sorted(client.recvfrom(100)[0] for _ in range(3))
            assert replies == [b"hold", b"hold", b"waits"]
    finally:
        handler.release.set()
    assert handler.started_after_release == [b"waits"], "the third datagram was received before a worker was free"


def test_stop_wakes_every_receiver_and_serving_again_receives_again(client: socket.socket) -> None:
    class Echo(sockserve.BaseRequestHandler):
        def handle(self) -> None:
            data, sock = self.request
            sock.sendto(data, self.client_address)

    class Pool(sockserve.ThreadPoolUDPServer):
        pool_min_workers = 3

    server = Pool(("127.0.0.1", 0), Echo)
    try:
        for session in range(2):
            loop = threading.Thread(target=server.serve_forever)
            loop.start()
            try:
                for n in range(5):
                    client.sendto(b"%d-%d" % (session, n), server.server_address)
                    assert client.recvfrom(100)[0] == b"%d-%d" % (session, n)
            finally:
                server.shutdown()
                loop.join(TIMEOUT)
            assert not loop.is_alive()
    finally:
        server.server_close()
    assert not pool_threads(), "server_close() left pool workers running"


def test_max_requests_leaves_later_datagrams_unreceived(client: socket.socket) -> None:
    seen: list[bytes] = []

    class Record(sockserve.BaseRequestHandler):
        def handle(self) -> None:
            seen.append(self.request[0])

    class Pool(sockserve.ThreadPoolUDPServer):
        max_requests = 3

    server = Pool(("127.0.0.1", 0), Record)
    try:
        for n in range(5):  # all of them queued before the loop starts
            client.sendto(b"%d" % n, server.server_address)
        loop = threading.Thread(target=server.serve_forever)
        loop.start()
        loop.join(TIMEOUT)  # the third admission ends the loop
        assert not loop.is_alive(), "serve_forever() went on after max_requests"
        assert server.max_requests_reached
        server.socket.settimeout(TIMEOUT)
        assert server.socket.recv(100) == b"3", "a datagram after max_requests was taken from the socket"
    finally:
        server.server_close()
    assert sorted(seen) == [b"0", b"1", b"2"]


def test_at_max_connections_nothing_is_received_until_a_datagram_is_done(client: socket.socket) -> None:
    handler = holding_handler()

    class Pool(sockserve.ThreadPoolUDPServer):
        limits = sockserve.Limits(max_connections=1)

    try:
        with running_server(Pool(("127.0.0.1", 0), handler)) as server:
            client.sendto(b"hold", server.server_address)
            assert client.recvfrom(100)[0] == b"entered"
            client.sendto(b"next", server.server_address)
            handler.release.set()
            assert sorted(client.recvfrom(100)[0] for _ in range(2)) == [b"hold", b"next"]
            client.sendto(b"again", server.server_address)  # receiving resumed for good
            assert client.recvfrom(100)[0] == b"again"
    finally:
        handler.release.set()
    assert handler.handled == [b"hold", b"next", b"again"]


def test_the_stdlib_hooks_run_on_the_worker_that_handles_the_datagram(client: socket.socket) -> None:
    calls: list[tuple[str, str]] = []

    class Echo(sockserve.BaseRequestHandler):
        def handle(self) -> None:
            data, sock = self.request
            sock.sendto(data, self.client_address)

    class Pool(sockserve.ThreadPoolUDPServer):
        def get_request(self) -> Any:
            calls.append(("get_request", threading.current_thread().name))
            return super().get_request()

        def verify_request(self, request: Any, client_address: Any) -> bool:
            calls.append(("verify_request", threading.current_thread().name))
            return bool(request[0] != b"refused")

        def process_request(self, request: Any, client_address: Any) -> None:
            calls.append(("process_request", threading.current_thread().name))
            super().process_request(request, client_address)

        def finish_request(self, request: Any, client_address: Any) -> None:
            calls.append(("finish_request", threading.current_thread().name))
            super().finish_request(request, client_address)

        def shutdown_request(self, request: Any) -> None:
            calls.append(("shutdown_request", threading.current_thread().name))
            super().shutdown_request(request)

    with running_server(Pool(("127.0.0.1", 0), Echo)) as server:
        client.sendto(b"refused", server.server_address)
        client.sendto(b"served", server.server_address)
        assert client.recvfrom(100)[0] == b"served"
    names = [name for _, name in calls]
    assert [hook for hook, _ in calls] == [
        "get_request",
        "verify_request",
        "shutdown_request",  # the refused one, as the stdlib closes it
        "get_request",
        "verify_request",
        "process_request",
        "finish_request",
        "shutdown_request",
    ]
    assert len(set(names[3:])) == 1, "the served datagram moved between threads"
    assert "-worker-" in names[3]
