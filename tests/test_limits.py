"""Each limit, against a client that misbehaves in the way it guards against."""

from __future__ import annotations

import copy
import logging
import pickle
import threading
from typing import Any

import pytest

import sockserve
from sockserve.testing import running_server

from .helpers import connect, recv_all, recv_line, round_trip


class LineEcho(sockserve.StreamRequestHandler):
    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(line)


def limited(base: type[sockserve.TCPServer], **limits: Any) -> type[sockserve.TCPServer]:
    return type("Limited", (base,), {"limits": sockserve.Limits(**limits)})


@pytest.fixture
def warnings_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.WARNING, logger="sockserve")
    return caplog


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("sockserve")]


@pytest.mark.parametrize("base", [sockserve.ThreadingTCPServer, sockserve.ThreadPoolTCPServer])
def test_max_connections_leaves_the_next_one_in_the_backlog(base: type[sockserve.TCPServer]) -> None:
    accepted: list[Any] = []
    turns = threading.Semaphore(0)

    class Server(limited(base, max_connections=2)):  # type: ignore[misc]
        def get_request(self) -> tuple[Any, Any]:
            request = super().get_request()
            accepted.append(request[1])
            return request

        def service_actions(self) -> None:
            turns.release()

    with running_server(Server(("127.0.0.1", 0), LineEcho), poll_interval=0.01) as server:
        first, second = connect(server.server_address), connect(server.server_address)
        try:
            for c in (first, second):  # two idle-ish clients hold both slots
                c.sendall(b"hold\n")
                assert recv_line(c) == b"hold\n"
            with connect(server.server_address) as third:
                third.sendall(b"third\n")
                for _ in range(20):
                    assert turns.acquire(timeout=10)
                assert len(accepted) == 2, "a third connection was accepted over max_connections=2"
                first.close()  # frees a slot: the waiting connection is served, nothing was lost
                assert recv_line(third) == b"third\n"
        finally:
            first.close()
            second.close()


def test_max_connections_per_ip_refuses_the_extra_connection(warnings_log: pytest.LogCaptureFixture) -> None:
    server_class = limited(sockserve.ThreadingTCPServer, max_connections_per_ip=1)
    with running_server(server_class(("127.0.0.1", 0), LineEcho)) as server, connect(server.server_address) as first:
        first.sendall(b"one\n")
        assert recv_line(first) == b"one\n"
        with connect(server.server_address) as extra:
            extra.sendall(b"two\n")
            assert recv_all(extra) == b"", "the connection over the per-IP limit must be closed"
        first.sendall(b"still here\n")
        assert recv_line(first) == b"still here\n"
    assert any("max_connections_per_ip=1 reached" in m and "127.0.0.1:" in m for m in messages(warnings_log))


def test_idle_timeout_closes_a_silent_client(warnings_log: pytest.LogCaptureFixture) -> None:
    server_class = limited(sockserve.ThreadPoolTCPServer, idle_timeout=0.2)
    with running_server(server_class(("127.0.0.1", 0), LineEcho)) as server:
        with connect(server.server_address) as slowloris:
            slowloris.sendall(b"GET / HTTP/1.1\r\n")  # ... and then nothing more
            port = slowloris.getsockname()[1]
            assert recv_all(slowloris) == b"GET / HTTP/1.1\r\n"  # echoed, then closed after the idle timeout
        assert round_trip(server.server_address) == b"hello\n"
    logged = messages(warnings_log)
    assert any(f"idle timeout (0.2s) expired from 127.0.0.1:{port}" in m for m in logged), logged
    assert not any(r.exc_info for r in warnings_log.records), "a limit is not a crash: no traceback"


def test_connection_timeout_closes_a_client_that_drips(warnings_log: pytest.LogCaptureFixture) -> None:
    server_class = limited(sockserve.ThreadPoolTCPServer, idle_timeout=5.0, connection_timeout=0.3)
    closed = threading.Event()
    with running_server(server_class(("127.0.0.1", 0), LineEcho)) as server:
        with connect(server.server_address) as dripper:
            port = dripper.getsockname()[1]
            for _ in range(500):  # one byte every 20 ms: never idle for long, never done
                try:
                    dripper.sendall(b"x")
                except OSError:
                    break
                if closed.wait(0.02):
                    break
                dripper.settimeout(0)
                try:
                    if dripper.recv(1) == b"":
                        break
                except BlockingIOError:
                    pass
                except OSError:
                    break
                finally:
                    dripper.settimeout(10)
            else:
                pytest.fail("the connection outlived connection_timeout")
        assert round_trip(server.server_address) == b"hello\n"
    assert any(f"connection deadline (0.3s) exceeded from 127.0.0.1:{port}" in m for m in messages(warnings_log))


def test_max_line_stops_an_endless_line(warnings_log: pytest.LogCaptureFixture) -> None:
    caught: list[BaseException] = []

    class Capped(sockserve.StreamRequestHandler):
        max_line = 16

        def handle(self) -> None:
            try:
                self.wfile.write(self.rfile.readline())
            except sockserve.LineTooLong as exc:
                caught.append(exc)
                self.wfile.write(b"line too long\n")
                raise

    with running_server(sockserve.ThreadingTCPServer(("127.0.0.1", 0), Capped)) as server:
        assert round_trip(server.server_address, b"short line\n") == b"short line\n"
        with connect(server.server_address) as flood:
            try:
                flood.sendall(b"A" * (1 << 20))  # a megabyte and no newline
            except OSError:
                pass  # the server may close before it has all: that is the point
            assert recv_line(flood) == b"line too long\n"
    assert len(caught) == 1
    exc = caught[0]
    assert isinstance(exc, ValueError)
    assert exc.limit == 16
    assert any("line longer than 16 bytes from 127.0.0.1:" in m for m in messages(warnings_log))


def test_iterating_rfile_is_capped_too() -> None:
    class Capped(sockserve.StreamRequestHandler):
        max_line = 8

        def handle(self) -> None:
            try:
                for line in self.rfile:
                    self.wfile.write(line)
            except sockserve.LineTooLong:
                self.wfile.write(b"too long\n")

    server = sockserve.TCPServer(("127.0.0.1", 0), Capped)
    with running_server(server), connect(server.server_address) as c:
        c.sendall(b"ok\nthis one is far too long\n")
        assert recv_all(c) == b"ok\ntoo long\n"


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="max_connections"):
        sockserve.Limits(max_connections=0)
    with pytest.raises(ValueError, match="idle_timeout"):
        sockserve.Limits(idle_timeout=-1)
    with pytest.raises(ValueError, match="max_line"):
        sockserve.Limits().replace(max_line=0)


@pytest.mark.parametrize("name", ["idle_timeout", "connection_timeout"])
@pytest.mark.parametrize("value", [2_592_000, 1e300, float("inf"), float("nan")])
def test_a_timeout_longer_than_a_wait_can_be_is_refused(name: str, value: float) -> None:
    # 30 days passed and broke every connection later ("timestamp out of range
    # for platform time_t"); the bound is the one every duration shares.
    arguments: dict[str, Any] = {name: value}
    with pytest.raises(ValueError, match=name):
        sockserve.Limits(**arguments)


def test_check_seconds_is_the_one_bound_for_every_duration() -> None:
    from sockserve._limits import MAX_SECONDS, check_seconds

    # epoll.poll() takes at most 2**31-1 ms; two durations may share one wait
    # (the PROXY header's timeout and the TLS handshake's), so twice the bound fits.
    assert 2 * MAX_SECONDS * 1000 <= 2**31 - 1
    assert check_seconds("grace", MAX_SECONDS) == MAX_SECONDS
    assert check_seconds("grace", 0, zero=True) == 0.0
    assert isinstance(check_seconds("grace", 3), float)
    with pytest.raises(ValueError, match=r"^grace must be at most 1000000 seconds \(about 11.6 days\), got 1000001$"):
        check_seconds("grace", 1_000_001)
    with pytest.raises(ValueError, match=r"^grace must be more than 0 seconds, got 0$"):
        check_seconds("grace", 0)
    with pytest.raises(ValueError, match=r"^drain_delay must be 0 or more seconds, got -1$"):
        check_seconds("drain_delay", -1, zero=True)
    with pytest.raises(ValueError, match="more than 0"):
        check_seconds("grace", float("nan"))
    with pytest.raises(TypeError, match="grace must be a number of seconds, got bool"):
        check_seconds("grace", True)
    with pytest.raises(TypeError, match="got str"):
        check_seconds("grace", "5")


def test_a_proxy_timeout_longer_than_a_wait_can_be_is_refused() -> None:
    # 30 days passed, then killed the pool's reactor thread at its first PROXY
    # connection (epoll.poll: "OverflowError: timeout is too large").
    with pytest.raises(ValueError, match="timeout must be at most 1000000 seconds"):
        sockserve.ProxyProtocol(["10.0.0.0/8"], timeout=2_592_000)
    with pytest.raises(ValueError, match="timeout must be more than 0 seconds"):
        sockserve.ProxyProtocol(["10.0.0.0/8"], timeout=0)
    assert sockserve.ProxyProtocol(["10.0.0.0/8"], timeout=1_000_000).timeout == 1_000_000.0


def test_limits_are_a_frozen_value() -> None:
    limits = sockserve.Limits(max_connections=8, idle_timeout=2.5)
    assert limits == sockserve.Limits(8, None, 2.5)
    assert limits != sockserve.Limits(max_connections=8)
    assert hash(limits) == hash(sockserve.Limits(max_connections=8, idle_timeout=2.5))
    assert repr(limits) == (
        "Limits(max_connections=8, max_connections_per_ip=None, idle_timeout=2.5,"
        " connection_timeout=None, max_line=None)"
    )
    with pytest.raises(AttributeError):
        limits.idle_timeout = 1.0  # type: ignore[misc]
    with pytest.raises(AttributeError):
        limits.extra = 1  # type: ignore[attr-defined]
    changed = limits.replace(idle_timeout=1.0)
    assert (changed.max_connections, changed.idle_timeout, limits.idle_timeout) == (8, 1.0, 2.5)
    assert pickle.loads(pickle.dumps(limits)) == limits
    assert copy.deepcopy(limits) == limits
