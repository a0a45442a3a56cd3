"""Real proxies in front of sockserve servers speaking the PROXY protocol,
under every model (the matrix's kinds): HAProxy (``send-proxy``,
``send-proxy-v2``, and its health checks) and nginx's stream module
(``proxy_protocol on``). Behind a trusted proxy, the handler and the per-IP
limits see the real client, not the proxy.

The clients connect from 127.0.0.2 and 127.0.0.3 while the proxies reach the
server from 127.0.0.1: an address the handler reports can only have come from
the header.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from typing import Any

import pytest

import sockserve
from sockserve._address import format_address

from ..helpers import wait_until
from ..matrix import kinds
from ..matrix.client import closed_by_server, send_if_open, talk
from ..matrix.kinds import STREAM_KINDS, Kind, Options, Running
from .peers import TIMEOUT, HAProxy, Nginx, haproxy_server_address

# The proxies run on this host: over TCP they come from 127.0.0.1, over a
# Unix socket from behind the socket file's permissions (trust_unix).
TRUSTED = ("127.0.0.1/32",)
PEERS = {
    "haproxy-v1": lambda backend: HAProxy.tcp([backend], "send-proxy"),
    "haproxy-v2": lambda backend: HAProxy.tcp([backend], "send-proxy-v2"),
    "nginx": lambda backend: Nginx.proxy(backend, proxy_protocol=True),
}
CONCURRENT_KINDS = [kind for kind in STREAM_KINDS if kind.concurrent]


def connect_from(source: str, address: Any) -> socket.socket:
    """A client on loopback address ``source`` (any of 127.0.0.0/8 is ours on Linux)."""
    return socket.create_connection(address, timeout=TIMEOUT, source_address=(source, 0))


@contextlib.contextmanager
def proxied_server(kind: Kind, tmp: str, limits: sockserve.Limits = kinds.NO_LIMITS) -> Iterator[Running]:
    """A server of ``kind`` that honours PROXY headers from the local proxies."""
    options = Options(limits=limits, proxy_trusted=TRUSTED, proxy_trust_unix=True)
    with kind.start(tmp, options) as server:
        yield server


def real_address(client: socket.socket) -> bytes:
    """What ``whoami`` answers for this client: its own address, as the handler would write it."""
    return format_address(client.getsockname()).encode() + b"\n"


@pytest.mark.parametrize("peer", PEERS)
@pytest.mark.parametrize("server_kind", STREAM_KINDS, ids=lambda kind: kind.id)
def test_the_handler_sees_the_real_client(server_kind: Kind, short_tmp: str, peer: str) -> None:
    with proxied_server(server_kind, short_tmp) as server, PEERS[peer](server.address) as proxy:
        # One after the other: a sequential server serves one connection at a time.
        for source in ("127.0.0.2", "127.0.0.3"):
            with connect_from(source, proxy.address) as client:
                assert talk(client, b"hello\n") == b"hello\n"
                assert talk(client, b"whoami\n") == real_address(client)


@pytest.mark.parametrize("peer", ["haproxy-v2", "nginx"])
@pytest.mark.parametrize("server_kind", CONCURRENT_KINDS, ids=lambda kind: kind.id)
def test_per_ip_limit_counts_the_real_client(server_kind: Kind, short_tmp: str, peer: str) -> None:
    """Every connection comes from the proxy; the limit counts the clients behind it."""
    limits = sockserve.Limits(max_connections_per_ip=1)
    with (
        proxied_server(server_kind, short_tmp, limits) as server,
        PEERS[peer](server.address) as proxy,
        connect_from("127.0.0.2", proxy.address) as first,
    ):
        assert talk(first, b"one\n") == b"one\n"
        with connect_from("127.0.0.3", proxy.address) as other:  # another client: under its own limit
            assert talk(other, b"two\n") == b"two\n"
        with connect_from("127.0.0.2", proxy.address) as extra:  # the first client again: over its limit
            send_if_open(extra, b"three\n")
            try:
                served = closed_by_server(extra)
            except TimeoutError:
                served = None
            assert served == b"", (
                f"a second connection from 127.0.0.2 was not closed (it got {served!r})\n"
                f"the server's log:\n{server.logs.text()}\nthe proxy's:\n{proxy.output()}"
            )
        assert talk(first, b"still here\n") == b"still here\n"
        server.logs.wait_for(r"127\.0\.0\.2:\d+.*max_connections_per_ip=1")


@pytest.mark.parametrize("server_kind", STREAM_KINDS, ids=lambda kind: kind.id)
def test_haproxy_health_checks_pass_against_a_proxy_protocol_server(server_kind: Kind, short_tmp: str) -> None:
    """HAProxy's health checks send a header too (v1: the check connection's
    own addresses; v2: LOCAL, no address), then close: the server must take
    them without an error, and HAProxy must find it up. Both versions at
    once: HAProxy's s0 (v1) and s1 (v2) are the one sockserve server, and
    take the clients in turn (round robin)."""
    with proxied_server(server_kind, short_tmp) as server:
        target = haproxy_server_address(server.address)
        body = (
            "frontend fe\n"
            "    bind {listen}\n"
            "    default_backend be\n\n"
            "backend be\n"
            "    balance roundrobin\n"
            f"    server s0 {target} send-proxy check inter 100ms fall 1 rise 1\n"
            f"    server s1 {target} send-proxy-v2 check inter 100ms fall 1 rise 1\n"
        )
        with HAProxy(body) as haproxy:
            for name in ("s0", "s1"):
                assert wait_until(lambda name=name: haproxy.server_stats(name)["check_status"] == "L4OK"), (
                    haproxy.server_stats(name)
                )
            for source in ("127.0.0.2", "127.0.0.3"):  # one through each
                with connect_from(source, haproxy.address) as client:
                    assert talk(client, b"whoami\n") == real_address(client)
            for name in ("s0", "s1"):
                stats = haproxy.server_stats(name)
                assert stats["status"] == "UP", stats
                assert stats["chkfail"] == "0", stats
                assert stats["stot"] == "1", stats  # the clients' connections, one each
        # A graceful stop once HAProxy is gone: every check connection has
        # been handled, and logged if it was refused, before the log is read.
        server.stop()
        assert server.logs.lines(r"^(WARNING|ERROR)") == []
