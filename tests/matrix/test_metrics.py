"""The metrics and the access log under every model, on TCP, Unix sockets and
UDP: what a client does shows in ``server.metrics.snapshot()`` and in one
``sockserve.access`` line per connection.

The servers run in this process, the forking ones too, so that the test
reads their metrics object: a forked child then holds a copy of the test's
client sockets, so clients end their side with ``shutdown(SHUT_WR)``, which
reaches the server whoever else holds the descriptor. The prefork kinds are
the supervisor's to add up (``tests/test_prefork_metrics.py``); their
workers run the pool and framed servers tested here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import sockserve
from sockserve import MetricsSnapshot
from sockserve.testing import running_server

from ..helpers import wait_until
from .client import TIMEOUT, closed_by_server, connect, talk
from .kinds import Kind, Options, server_class

LINES = (b"hello\n", b"metrics\n")
DEFAULTS = Options()
SENT = sum(map(len, LINES))


@contextlib.contextmanager
def serving(kind: Kind, tmp: str, options: Options = DEFAULTS) -> Iterator[tuple[Any, str]]:
    """An in-process server of ``kind`` with its access log on, and the file
    its access lines go to (every process of it appends there)."""
    if kind.name.startswith("prefork"):
        pytest.skip("the prefork supervisor adds its workers' metrics up: tests/test_prefork_metrics.py")
    cls, handler = server_class(kind.name, kind.family, options)
    cls = type(cls.__name__, (cls,), {"access_log": True})
    path = os.path.join(tmp, "access.log")
    log_handler = logging.FileHandler(path)
    log_handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    access = logging.getLogger("sockserve.access")
    level = access.level
    access.addHandler(log_handler)
    access.setLevel(logging.INFO)
    try:
        server = cls(kind.address(tmp), handler)
        with running_server(server, poll_interval=0.05):
            yield server, path
    finally:
        access.removeHandler(log_handler)
        access.setLevel(level)
        log_handler.close()


def snapshot(server: Any) -> MetricsSnapshot:
    result: MetricsSnapshot = server.metrics.snapshot()
    return result


def settled(server: Any, **expected: int) -> MetricsSnapshot:
    """The snapshot once nothing is active and the counters say ``expected``
    (a connection is counted out a moment after its client saw the close;
    ask for ``connections_accepted`` too: while one is being released it is
    neither active nor accepted yet, for a moment)."""

    def done() -> bool:
        snap = snapshot(server)
        return snap.gauges["connections_active"] == 0 and all(
            snap.counters.get(name, snap.refused.get(name)) == value for name, value in expected.items()
        )

    wait_until(done)
    return snapshot(server)


def converse(address: Any) -> None:
    """Talk LINES, then end the conversation from the client's side."""
    with connect(address) as client:
        for line in LINES:
            assert talk(client, line) == line
        client.shutdown(socket.SHUT_WR)
        assert closed_by_server(client) == b""


def access_lines(path: str, count: int) -> list[str]:
    lines: list[str] = []

    def enough() -> bool:
        nonlocal lines
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
        return len(lines) >= count

    wait_until(enough)
    return lines


def requests_per_connection(kind: Kind) -> int:
    return len(LINES) if kind.framed else 1  # a framed handler's request is a line; another's, its connection


def test_connections_are_counted_in_and_out(server_kind: Kind, short_tmp: str) -> None:
    with serving(server_kind, short_tmp) as (server, log_path):
        with connect(server.server_address) as held:
            assert talk(held, b"held\n") == b"held\n"
            assert wait_until(lambda: snapshot(server).gauges["connections_active"] == 1)
            held.shutdown(socket.SHUT_WR)
            assert closed_by_server(held) == b""
        for _ in range(3):
            converse(server.server_address)
        per = requests_per_connection(server_kind)
        snap = settled(server, connections_accepted=4, requests=1 + 3 * per)
        assert snap.counters["connections_accepted"] == 4
        assert snap.gauges["connections_active"] == 0
        assert snap.counters["requests"] == 1 + 3 * per
        assert snap.counters["handler_errors"] == 0
        assert not any(snap.refused.values()), snap.refused
        if server_kind.family == "tcp":  # from TCP_INFO, exact for a clean close
            assert snap.counters["bytes_received"] == 5 + 3 * SENT
            assert snap.counters["bytes_sent"] == 5 + 3 * SENT
        else:  # a Unix socket has no TCP_INFO, and nobody counts its bytes
            assert snap.counters["bytes_received"] == snap.counters["bytes_sent"] == 0
        lines = access_lines(log_path, 4)
        assert len(lines) == 4, lines
        # In the order the connections were released, which threads may swap.
        conversations = [line for line in lines if f"requests={per} " in line]
        if server_kind.family == "tcp":
            conversations = [line for line in lines if f" bytes_received={SENT} bytes_sent={SENT} " in line]
        assert len(conversations) >= 3, lines
        for line in lines:
            assert line.startswith("INFO "), line
            assert "closed_by=client" in line, line
            if server_kind.family == "tcp":
                assert re.match(r"INFO 127\.0\.0\.1:\d+ ", line), line
            else:
                assert " bytes_received=- bytes_sent=- " in line, line


def test_a_handler_error_is_counted(server_kind: Kind, short_tmp: str) -> None:
    with serving(server_kind, short_tmp) as (server, log_path):
        with connect(server.server_address) as client:
            assert talk(client, b"fine\n") == b"fine\n"
            client.sendall(b"boom\n")
            client.shutdown(socket.SHUT_WR)
            assert closed_by_server(client) == b""
        snap = settled(server, handler_errors=1, connections_accepted=1)
        assert snap.counters["handler_errors"] == 1
        assert snap.counters["connections_accepted"] == 1
        (line,) = access_lines(log_path, 1)
        assert "closed_by=error" in line, line


def test_refusals_are_counted_by_reason(server_kind: Kind, short_tmp: str) -> None:
    if not server_kind.concurrent:
        pytest.skip("one connection at a time: the next one waits its turn instead of being refused")
    options = Options(limits=sockserve.Limits(max_connections_per_ip=1))
    with serving(server_kind, short_tmp, options) as (server, log_path):
        with connect(server.server_address) as first:
            assert talk(first, b"one\n") == b"one\n"
            with connect(server.server_address) as extra:
                assert closed_by_server(extra) == b""
            first.shutdown(socket.SHUT_WR)
            assert closed_by_server(first) == b""
        snap = settled(server, max_connections_per_ip=1, connections_accepted=1)
        assert dict(snap.refused) == {**dict.fromkeys(snap.refused, 0), "max_connections_per_ip": 1}
        assert server.refused == {"max_connections_per_ip": 1}  # the same count, issue 9's view
        assert snap.counters["connections_accepted"] == 1
        # One line per connection, the refused one too (never served: no requests, no bytes).
        lines = access_lines(log_path, 2)
        assert len(lines) == 2, lines
        (refused,) = [line for line in lines if "closed_by=refused" in line]
        assert " requests=0 bytes_received=- bytes_sent=- " in refused, refused


def test_a_connection_the_access_list_denies_has_its_access_line(server_kind: Kind, short_tmp: str) -> None:
    if server_kind.family != "tcp":
        pytest.skip("the access list judges IP addresses")
    with serving(server_kind, short_tmp, Options(access_deny=("127.0.0.0/8",))) as (server, log_path):
        with connect(server.server_address) as denied:
            assert closed_by_server(denied) == b""
        snap = settled(server, access_list=1)
        assert snap.counters["connections_accepted"] == 0
        (line,) = access_lines(log_path, 1)
        assert re.match(
            r"INFO 127\.0\.0\.1:\d+ requests=0 bytes_received=- bytes_sent=- .* closed_by=refused$", line
        ), line


def test_a_bad_proxy_header_is_counted_and_its_slot_freed(server_kind: Kind, short_tmp: str) -> None:
    options = Options(proxy_trusted=("127.0.0.0/8",), proxy_timeout=2.0)
    with serving(server_kind, short_tmp, options) as (server, log_path):
        with connect(server.server_address) as client:
            client.sendall(b"not a proxy header\r\n")
            assert closed_by_server(client) == b""
        snap = settled(server, proxy_header=1, connections_accepted=1)
        assert snap.refused["proxy_header"] == 1
        assert snap.counters["connections_accepted"] == 1  # admitted, then refused by its header
        assert snap.counters["requests"] == 0
        assert snap.gauges["connections_active"] == 0  # its slot is free again
        (line,) = access_lines(log_path, 1)
        assert "closed_by=refused" in line, line


def test_an_idle_timeout_is_counted_and_said(server_kind: Kind, short_tmp: str) -> None:
    options = Options(limits=sockserve.Limits(idle_timeout=0.3))
    with serving(server_kind, short_tmp, options) as (server, log_path):
        with connect(server.server_address) as silent:
            assert talk(silent, b"then nothing\n") == b"then nothing\n"
            assert closed_by_server(silent) == b""
        snap = settled(server, timeout=1, connections_accepted=1)
        assert snap.refused["timeout"] == 1
        assert snap.counters["handler_errors"] == 0  # a limit is not a handler's error
        (line,) = access_lines(log_path, 1)
        assert "closed_by=idle_timeout" in line, line


def test_a_connection_timeout_is_counted_and_said(server_kind: Kind, short_tmp: str) -> None:
    options = Options(limits=sockserve.Limits(connection_timeout=0.5, idle_timeout=5.0))
    with serving(server_kind, short_tmp, options) as (server, log_path):
        with connect(server.server_address) as busy:
            for _ in range(200):  # a line every 25 ms, each answered: never idle; bounded at ~5 s
                try:
                    if talk(busy, b"more\n") != b"more\n":
                        break
                except OSError:
                    break
                threading.Event().wait(0.025)
            else:
                raise AssertionError("the connection outlived connection_timeout=0.5")
        snap = settled(server, timeout=1, connections_accepted=1)
        assert snap.refused["timeout"] == 1
        (line,) = access_lines(log_path, 1)
        assert "closed_by=connection_timeout" in line, line


def test_a_drain_is_counted(server_kind: Kind, short_tmp: str) -> None:
    with serving(server_kind, short_tmp) as (server, _):
        converse(server.server_address)
        settled(server, connections_accepted=1)
        report = server.stop(TIMEOUT)
        snap = snapshot(server)
        assert snap.counters["drains"] == 1
        assert snap.gauges["last_drain_seconds"] == pytest.approx(report.seconds, abs=1e-6)
        assert snap.counters["connections_accepted"] == 1  # the values outlive the server


def test_datagrams_are_counted(datagram_kind: Kind, short_tmp: str) -> None:
    with serving(datagram_kind, short_tmp) as (server, log_path):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(TIMEOUT)
            for payload in (b"one", b"two", b"three"):
                client.sendto(payload, server.server_address)
                assert client.recv(100) == payload
        snap = settled(server, connections_accepted=3, requests=3)
        assert snap.counters["connections_accepted"] == 3  # a datagram is accepted...
        assert snap.counters["requests"] == 3  # ... and is a request
        assert snap.counters["bytes_received"] == 3 + 3 + 5
        assert snap.gauges["connections_active"] == 0
        if not datagram_kind.is_async:  # the async servers count datagrams as they come: no ticket, no line
            assert len(access_lines(log_path, 3)) == 3


def test_a_long_framed_connection_s_requests_show_while_it_lasts(server_kind: Kind, short_tmp: str) -> None:
    if not server_kind.framed:
        pytest.skip("a classic handler's connection is one request, counted when it ends")
    with serving(server_kind, short_tmp) as (server, _):
        with connect(server.server_address) as client:
            for i in range(70):
                assert talk(client, b"%d\n" % i) == b"%d\n" % i
            # In batches of 64 while it lasts (not a lock per request).
            assert wait_until(lambda: snapshot(server).counters["requests"] >= 64)
            client.shutdown(socket.SHUT_WR)
            assert closed_by_server(client) == b""
        snap = settled(server, requests=70, connections_accepted=1)
        assert snap.counters["requests"] == 70
