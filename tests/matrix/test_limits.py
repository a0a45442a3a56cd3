"""Each limit, under every model and on TCP and Unix sockets, against the
client that misbehaves in the way it guards against."""

from __future__ import annotations

import threading

import sockserve

from .client import closed_by_server, connect, send_if_open, silent_for, talk
from .kinds import Kind, Options


def test_max_connections_per_ip_refuses_the_extra_connection(server_kind: Kind, short_tmp: str) -> None:
    options = Options(limits=sockserve.Limits(max_connections_per_ip=1))
    with server_kind.start(short_tmp, options) as server, connect(server.address) as first:
        assert talk(first, b"one\n") == b"one\n"
        with connect(server.address) as extra:
            send_if_open(extra, b"two\n")
            if server_kind.concurrent:
                assert closed_by_server(extra) == b"", "the connection over the per-IP limit must be closed"
                assert talk(first, b"still here\n") == b"still here\n"
                server.logs.wait_for(r"WARNING connection refused from .*: max_connections_per_ip=1 reached")
            else:  # one connection at a time: the next one waits its turn, and is served
                assert silent_for(extra, 0.2)
                first.close()
                assert extra.recv(100) == b"two\n"


def test_max_connections_keeps_the_next_one_waiting_then_serves_it(server_kind: Kind, short_tmp: str) -> None:
    options = Options(limits=sockserve.Limits(max_connections=1))
    with server_kind.start(short_tmp, options) as server, connect(server.address) as first:
        assert talk(first, b"one\n") == b"one\n"
        with connect(server.address) as second:
            second.sendall(b"two\n")
            assert silent_for(second, 0.3), "a connection over max_connections=1 was served"
            assert talk(first, b"still one\n") == b"still one\n"
            first.close()  # frees the slot: the waiting connection is served, nothing was lost
            assert second.recv(100) == b"two\n"


def test_connection_timeout_cuts_a_client_that_never_stops(server_kind: Kind, short_tmp: str) -> None:
    options = Options(limits=sockserve.Limits(connection_timeout=0.5, idle_timeout=5.0))
    with server_kind.start(short_tmp, options) as server, connect(server.address) as busy:
        cut = False
        for _ in range(200):  # a line every 25 ms, each answered: never idle; bounded at ~5 s
            try:
                if talk(busy, b"more\n") != b"more\n":
                    cut = True
                    break
            except OSError:
                cut = True
                break
            threading.Event().wait(0.025)
        assert cut, "the connection outlived connection_timeout=0.5"
        server.logs.wait_for(r"WARNING connection deadline \(0.5s\) exceeded from .*: closing the connection")
        with connect(server.address) as next_client:
            assert talk(next_client, b"next\n") == b"next\n"


def test_idle_timeout_cuts_a_silent_client(server_kind: Kind, short_tmp: str) -> None:
    options = Options(limits=sockserve.Limits(idle_timeout=0.3))
    with server_kind.start(short_tmp, options) as server:
        with connect(server.address) as silent:
            assert talk(silent, b"GET / HTTP/1.1\n") == b"GET / HTTP/1.1\n"  # ... and then nothing more
            assert closed_by_server(silent) == b""
        server.logs.wait_for(r"WARNING idle timeout \(0.3s\) expired from .*: closing the connection")
        assert not server.logs.lines("Traceback"), "a limit is not a crash: no traceback"
        with connect(server.address) as next_client:
            assert talk(next_client, b"next\n") == b"next\n"


def test_limits_max_line_caps_every_reader(server_kind: Kind, short_tmp: str) -> None:
    options = Options(limits=sockserve.Limits(max_line=16))
    with server_kind.start(short_tmp, options) as server:
        with connect(server.address) as client:
            assert talk(client, b"short line\n") == b"short line\n"
            client.sendall(b"A" * 100 + b"\n")
            assert closed_by_server(client) == b"", "a line over Limits.max_line came back"
        server.logs.wait_for(r"WARNING line longer than 16 bytes from .*: closing the connection")
        assert not server.logs.lines("Traceback")
