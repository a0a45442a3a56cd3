"""The server's edge options (``proxy_protocol``, ``access_list``) under every
model and socket family: a PROXY header from a trusted peer makes the real
client the connection's address for the handler, the per-IP limit and the
access list; anything else is closed with one line, and the server goes on."""

from __future__ import annotations

import ipaddress
import struct

import sockserve

from .client import closed_by_server, connect, recv_line, talk
from .kinds import Kind, Options

TRUST_LOOPBACK = ("127.0.0.0/8", "::1/128")


def v1(host: str, port: int) -> bytes:
    family = "TCP6" if ":" in host else "TCP4"
    destination = "::1" if family == "TCP6" else "127.0.0.1"
    return f"PROXY {family} {host} {destination} {port} 443\r\n".encode()


def v2(host: str, port: int) -> bytes:
    """A PROXY v2 header (TCP over IPv4 or IPv6), built by hand from the spec's layout."""
    address = ipaddress.ip_address(host)
    if address.version == 4:
        family, block = 0x11, address.packed + bytes(4) + struct.pack("!HH", port, 443)
    else:
        family, block = 0x21, address.packed + bytes(16) + struct.pack("!HH", port, 443)
    return b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, family]) + struct.pack("!H", len(block)) + block


def test_a_trusted_proxys_header_names_the_client_and_the_request_behind_it_is_served(
    server_kind: Kind, short_tmp: str
) -> None:
    options = Options(proxy_trusted=TRUST_LOOPBACK)
    with server_kind.start(short_tmp, options) as server:
        with connect(server.address) as client:
            client.sendall(v1("203.0.113.7", 40001) + b"whoami\n")  # the request glued behind the header
            assert recv_line(client) == b"203.0.113.7:40001\n"
            assert talk(client, b"later\n") == b"later\n"
        with connect(server.address) as client:
            client.sendall(v2("2001:db8::5", 40002))
            assert talk(client, b"whoami\n") == b"[2001:db8::5]:40002\n"


def test_a_trusted_peer_without_a_header_is_closed_with_one_line(server_kind: Kind, short_tmp: str) -> None:
    with server_kind.start(short_tmp, Options(proxy_trusted=TRUST_LOOPBACK)) as server:
        with connect(server.address) as client:
            client.sendall(b"whoami\n")
            assert closed_by_server(client) == b""
        server.logs.wait_for(r"WARNING closing the connection from .*: expected a PROXY header from a trusted proxy")
        with connect(server.address) as client:
            assert talk(client, v1("198.51.100.1", 1) + b"whoami\n") == b"198.51.100.1:1\n"
        assert not server.logs.lines("ERROR|Traceback")


def test_a_malformed_header_is_closed_with_one_line(server_kind: Kind, short_tmp: str) -> None:
    with server_kind.start(short_tmp, Options(proxy_trusted=TRUST_LOOPBACK)) as server:
        with connect(server.address) as client:
            client.sendall(b"PROXY TCP4 300.1.2.3 10.0.0.1 1 2\r\nwhoami\n")
            assert closed_by_server(client) == b""
        server.logs.wait_for(r"WARNING closing the connection from .*: bad PROXY header")
        assert not server.logs.lines("ERROR|Traceback")


def test_without_required_a_trusted_peer_may_speak_for_itself(server_kind: Kind, short_tmp: str) -> None:
    with server_kind.start(short_tmp, Options(proxy_trusted=TRUST_LOOPBACK, proxy_required=False)) as server:
        with connect(server.address) as client:
            reply = talk(client, b"whoami\n")
        assert reply.endswith(b"\n")
        assert not reply.startswith(b"203.0.113.9")  # the peer itself
        with connect(server.address) as client:
            assert talk(client, v1("203.0.113.9", 9) + b"whoami\n") == b"203.0.113.9:9\n"


def test_a_header_from_a_peer_that_is_not_trusted_is_refused(server_kind: Kind, short_tmp: str) -> None:
    options = Options(proxy_trusted=("192.0.2.0/24",), proxy_trust_unix=False)
    with server_kind.start(short_tmp, options) as server:
        with connect(server.address) as client:
            client.sendall(v1("203.0.113.7", 1) + b"whoami\n")
            assert closed_by_server(client) == b""
        server.logs.wait_for(r"WARNING closing the connection from .*: a PROXY header from a peer that is not trusted")
        with connect(server.address) as client:  # served as itself, without a header
            assert talk(client, b"hello\n") == b"hello\n"


def test_a_stalled_header_is_cut_at_its_deadline(server_kind: Kind, short_tmp: str) -> None:
    with server_kind.start(short_tmp, Options(proxy_trusted=TRUST_LOOPBACK, proxy_timeout=0.3)) as server:
        with connect(server.address) as staller:
            staller.sendall(b"PROXY TCP4 203.0.113.7 ")  # ... and never the rest
            assert closed_by_server(staller) == b""
        server.logs.wait_for(r"stages did not finish in time")
        with connect(server.address) as client:
            assert talk(client, v1("203.0.113.8", 8) + b"whoami\n") == b"203.0.113.8:8\n"


def test_the_per_ip_limit_counts_the_real_client_not_the_proxy(server_kind: Kind, short_tmp: str) -> None:
    options = Options(proxy_trusted=TRUST_LOOPBACK, limits=sockserve.Limits(max_connections_per_ip=1))
    with server_kind.start(short_tmp, options) as server:
        if not server_kind.concurrent:
            # One connection at a time: the next waits in the backlog, and no
            # client can hold two. What is left to see: the proxy's address is
            # not the one counted, or its second connection would be refused.
            for port in (1, 2):
                with connect(server.address) as client:
                    assert talk(client, v1("203.0.113.1", port) + b"whoami\n") == b"203.0.113.1:%d\n" % port
            return
        first, second = connect(server.address), connect(server.address)
        with first, second:
            # Two clients through the same proxy: one connection each is allowed.
            assert talk(first, v1("203.0.113.1", 1) + b"whoami\n") == b"203.0.113.1:1\n"
            assert talk(second, v1("203.0.113.2", 2) + b"whoami\n") == b"203.0.113.2:2\n"
            if server_kind.framed:
                return  # between requests a framed connection holds no slot (see test_limits)
            with connect(server.address) as third:  # the first client again, while its connection is open
                third.sendall(v1("203.0.113.1", 3) + b"whoami\n")
                assert closed_by_server(third) == b""
            server.logs.wait_for(r"connection refused from 203\.0\.113\.1:3: max_connections_per_ip=1 reached")


def test_the_access_list_refuses_a_denied_peer_at_once(server_kind: Kind, short_tmp: str) -> None:
    with server_kind.start(short_tmp, Options(access_deny=("127.0.0.0/8",))) as server:
        with connect(server.address) as client:
            if server_kind.family == "unix":
                # A Unix socket's peer has no address the list can name: it is served.
                assert talk(client, b"hello\n") == b"hello\n"
                return
            client.sendall(b"hello\n")
            assert closed_by_server(client) == b""
        server.logs.wait_for(r"WARNING connection from 127\.0\.0\.1:\d+ denied by the access list")
        if server_kind.in_process:
            assert server.server.refused["access_list"] == 1  # type: ignore[attr-defined]


def test_the_access_list_judges_the_real_client_behind_a_trusted_proxy(server_kind: Kind, short_tmp: str) -> None:
    options = Options(proxy_trusted=TRUST_LOOPBACK, access_allow=("203.0.113.0/24",), access_deny=("203.0.113.66",))
    with server_kind.start(short_tmp, options) as server:
        with connect(server.address) as client:  # the proxy itself is not on the allow list: its clients are judged
            assert talk(client, v1("203.0.113.5", 5) + b"whoami\n") == b"203.0.113.5:5\n"
        for denied in ("203.0.113.66", "198.51.100.1", "::ffff:203.0.113.66"):
            with connect(server.address) as client:
                client.sendall(v1(denied, 6) + b"whoami\n")
                assert closed_by_server(client) == b""
        server.logs.wait_for(r"PROXY header names 198\.51\.100\.1:6, denied by the access list")
        assert not server.logs.lines("ERROR|Traceback")


def test_an_ipv4_mapped_client_is_judged_as_ipv4(server_kind: Kind, short_tmp: str) -> None:
    options = Options(proxy_trusted=TRUST_LOOPBACK, access_allow=("203.0.113.0/24",))
    with server_kind.start(short_tmp, options) as server, connect(server.address) as client:
        reply = talk(client, v1("::ffff:203.0.113.5", 5) + b"whoami\n")
        host = reply.decode().rsplit(":", 1)[0].strip("[]")  # IPv6 text, whichever form this Python prints
        assert ipaddress.IPv6Address(host).ipv4_mapped == ipaddress.IPv4Address("203.0.113.5")
