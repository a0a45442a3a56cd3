"""Graceful stop: in-flight requests finish, new connections are refused,
stragglers are closed when the grace period ends, nothing is left behind."""

from __future__ import annotations

import logging
import os
import select
import socket
import threading
from typing import Any

import pytest

import sockserve
from sockserve.testing import running_server

from .helpers import connect, recv_all, recv_line

TIMEOUT = 10.0


class Gate:
    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()


def slow_handler(gate: Gate) -> type[sockserve.StreamRequestHandler]:
    class Slow(sockserve.StreamRequestHandler):
        def handle(self) -> None:
            line = self.rfile.readline()
            gate.entered.set()
            gate.release.wait(TIMEOUT)
            self.wfile.write(b"full reply to " + line)

    return Slow


class _DrainStarted(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.event = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("draining "):
            self.event.set()


def stop_in_thread(server: sockserve.BaseServer, grace: float | None) -> tuple[threading.Thread, list[Any]]:
    """Start server.stop(grace) in a thread; return once the drain has begun
    (accepting has stopped and the requests in flight are counted)."""
    result: list[Any] = []
    log = logging.getLogger("sockserve")
    watcher, level = _DrainStarted(), log.level
    log.addHandler(watcher)
    log.setLevel(logging.INFO)
    try:
        thread = threading.Thread(target=lambda: result.append(server.stop(grace)))
        thread.start()
        assert watcher.event.wait(TIMEOUT), "the drain did not start"
    finally:
        log.removeHandler(watcher)
        log.setLevel(level)
    return thread, result


def assert_refused(address: Any) -> None:
    with pytest.raises((ConnectionRefusedError, FileNotFoundError)):
        connect(address).close()


STREAM_MODELS = {
    "sync": sockserve.TCPServer,
    "threading": sockserve.ThreadingTCPServer,
    "pool": sockserve.ThreadPoolTCPServer,
}


@pytest.mark.parametrize("model", sorted(STREAM_MODELS))
def test_in_flight_request_gets_its_full_reply(model: str) -> None:
    gate = Gate()
    server = STREAM_MODELS[model](("127.0.0.1", 0), slow_handler(gate))
    loop = threading.Thread(target=server.serve_forever)
    loop.start()
    address = server.server_address
    with connect(address) as client:
        client.sendall(b"slow request\n")
        assert gate.entered.wait(TIMEOUT)
        if model == "sync":  # its loop is busy in the handler: stop() waits for the loop first
            stopper = threading.Thread(target=lambda: report.append(server.stop(TIMEOUT)))
            report: list[Any] = []
            stopper.start()
        else:
            stopper, report = stop_in_thread(server, grace=TIMEOUT)
            assert_refused(address)  # the stop is under way: new connections are refused ...
        gate.release.set()  # ... while the request in flight finishes
        assert recv_line(client) == b"full reply to slow request\n"
        stopper.join(TIMEOUT)
        loop.join(TIMEOUT)
    assert not stopper.is_alive()
    assert not loop.is_alive()
    assert_refused(address)
    assert report[0].forced == 0
    assert server.socket.fileno() == -1


class WaitsForMore(sockserve.StreamRequestHandler):
    """A client that never sends its second line keeps this handler reading."""

    entered = threading.Event()

    def handle(self) -> None:
        self.rfile.readline()
        WaitsForMore.entered.set()
        self.rfile.readline()  # returns b"" once the server shuts the connection down


def test_grace_period_over_closes_the_stragglers() -> None:
    WaitsForMore.entered.clear()
    server = sockserve.ThreadPoolTCPServer(("127.0.0.1", 0), WaitsForMore)
    with running_server(server), connect(server.server_address) as stuck:
        stuck.sendall(b"first line only\n")
        assert WaitsForMore.entered.wait(TIMEOUT)
        report = server.stop(grace=0.1)
        assert report.in_flight == 1
        assert report.forced == 1
        assert recv_all(stuck) == b""


def test_force_stop_ends_an_unbounded_grace_period() -> None:
    WaitsForMore.entered.clear()
    server = sockserve.ThreadingTCPServer(("127.0.0.1", 0), WaitsForMore)
    with running_server(server), connect(server.server_address) as client:
        client.sendall(b"first line only\n")
        assert WaitsForMore.entered.wait(TIMEOUT)
        stopper, report = stop_in_thread(server, grace=None)
        assert_refused(server.server_address)
        server.force_stop()
        stopper.join(TIMEOUT)
        assert not stopper.is_alive()
        assert report[0].forced == 1
        assert recv_all(client) == b""


def test_datagram_server_drains_its_handlers() -> None:
    gate = Gate()

    class SlowDatagram(sockserve.DatagramRequestHandler):
        def handle(self) -> None:
            gate.entered.set()
            gate.release.wait(TIMEOUT)
            self.wfile.write(b"late " + self.rfile.read())

    server = sockserve.ThreadingUDPServer(("127.0.0.1", 0), SlowDatagram)
    with running_server(server), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(TIMEOUT)
        client.sendto(b"ping", server.server_address)
        assert gate.entered.wait(TIMEOUT)
        stopper, report = stop_in_thread(server, grace=TIMEOUT)
        gate.release.set()
        assert client.recvfrom(64)[0] == b"late ping"
        stopper.join(TIMEOUT)
    assert report[0].in_flight == 1
    assert report[0].forced == 0


def test_unix_server_drains_and_removes_its_file(unix_path: str) -> None:
    gate = Gate()
    server = sockserve.ThreadPoolUnixStreamServer(unix_path, slow_handler(gate))
    with running_server(server), connect(unix_path) as client:
        client.sendall(b"unix\n")
        assert gate.entered.wait(TIMEOUT)
        stopper, _ = stop_in_thread(server, grace=TIMEOUT)
        gate.release.set()
        assert recv_line(client) == b"full reply to unix\n"
        stopper.join(TIMEOUT)
    assert not os.path.exists(unix_path)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
class TestForkingDrain:
    def test_children_finish_their_requests(self) -> None:
        read_end, write_end = os.pipe()
        entered_read, entered_write = os.pipe()

        class Slow(sockserve.StreamRequestHandler):
            def handle(self) -> None:
                line = self.rfile.readline()
                os.write(entered_write, b"e")  # the child runs (and has closed its copy of the listener)
                os.read(read_end, 1)  # the test says when to answer
                self.wfile.write(b"child reply to " + line)

        server = sockserve.ForkingTCPServer(("127.0.0.1", 0), Slow)
        try:
            with running_server(server), connect(server.server_address) as client:
                client.sendall(b"fork\n")
                assert select.select([entered_read], [], [], TIMEOUT)[0], "the child never started"
                stopper, report = stop_in_thread(server, grace=TIMEOUT)
                assert_refused(server.server_address)
                os.write(write_end, b"x")
                assert recv_line(client) == b"child reply to fork\n"
                stopper.join(TIMEOUT)
        finally:
            for fd in (read_end, write_end, entered_read, entered_write):
                os.close(fd)
        assert report[0].in_flight == 1
        assert report[0].forced == 0
        assert not server.active_children

    def test_children_past_the_grace_period_are_killed_and_reaped(self) -> None:
        class Stuck(sockserve.StreamRequestHandler):
            def handle(self) -> None:
                self.rfile.readline()
                threading.Event().wait(60)

        server = sockserve.ForkingTCPServer(("127.0.0.1", 0), Stuck)
        with running_server(server), connect(server.server_address) as client:
            client.sendall(b"stuck\n")
            assert _wait_children(server)
            report = server.stop(grace=0.1)
            assert recv_all(client) == b""
        assert report.forced == 1
        assert not server.active_children


def _wait_children(server: Any) -> bool:
    from .helpers import wait_until

    return wait_until(lambda: bool(server.active_children))


@pytest.mark.parametrize("model", ["threading", "pool"])
def test_stop_from_a_handler_drains_the_others_and_spares_its_own_client(model: str) -> None:
    reports: list[Any] = []
    other_entered = threading.Event()

    class Stopper(sockserve.StreamRequestHandler):
        def handle(self) -> None:
            line = self.rfile.readline()
            if line == b"stop\n":
                report = self.server.stop(grace=30)  # the other request finishes; this one is not waited for
                reports.append(report)
                self.wfile.write(b"stopped: %d in flight, %d forced\n" % (report.in_flight, report.forced))
            else:
                other_entered.set()
                self.wfile.write(b"other: " + line + self.rfile.readline())

    server = STREAM_MODELS[model](("127.0.0.1", 0), Stopper)
    loop = threading.Thread(target=server.serve_forever)
    loop.start()
    log = logging.getLogger("sockserve")
    watcher, level = _DrainStarted(), log.level
    log.addHandler(watcher)
    log.setLevel(logging.INFO)
    try:
        with connect(server.server_address) as other, connect(server.server_address) as stopper:
            other.sendall(b"first\n")
            assert other_entered.wait(TIMEOUT)
            stopper.sendall(b"stop\n")
            assert watcher.event.wait(TIMEOUT), "the drain did not start"
            other.sendall(b"second\n")  # lets the other request finish within the grace period
            assert recv_all(other) == b"other: first\nsecond\n"
            assert recv_line(stopper) == b"stopped: 1 in flight, 0 forced\n"
    finally:
        log.removeHandler(watcher)
        log.setLevel(level)
        loop.join(TIMEOUT)
        server.server_close()
    assert not loop.is_alive()
    assert reports[0].clean


class _Echo(sockserve.StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(b"served " + self.rfile.readline())


@pytest.mark.parametrize(
    "server_class",
    [sockserve.ThreadingTCPServer, sockserve.ThreadPoolTCPServer, sockserve.ForkingTCPServer],
    ids=["threads", "pool", "fork"],
)
def test_connections_queued_at_the_stop_are_served_not_reset(server_class: type[sockserve.TCPServer]) -> None:
    """A connection the kernel completed but the server had not accepted yet
    (here: no serve loop ran at all) is served by the stop, not reset by the
    listening socket's close: its client, a load balancer, saw it connect and
    would not retry it."""
    server = server_class(("127.0.0.1", 0), _Echo)
    clients = [connect(server.server_address) for _ in range(3)]
    try:
        for number, client in enumerate(clients):
            client.sendall(b"line %d\n" % number)
        report = server.stop(TIMEOUT)
        for number, client in enumerate(clients):
            assert recv_line(client) == b"served line %d\n" % number
        assert report.forced == 0
    finally:
        for client in clients:
            client.close()
