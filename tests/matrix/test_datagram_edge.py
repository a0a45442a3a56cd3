"""The PROXY protocol (v2, the only version defined over datagrams) on every
datagram server: each datagram from a trusted proxy carries a header naming
its client, whom the handler, the limits and the access list see; the reply
goes back to the proxy; anything else is dropped with one line, and the
server goes on. The Unix datagram servers, which the matrix's kinds do not
cover, run the core of it at the end."""

from __future__ import annotations

import asyncio
import contextvars
import ipaddress
import os
import socket
import struct
from collections.abc import Iterator
from typing import Any

import pytest

import sockserve
from sockserve import aio
from sockserve.testing import running_server

from ..helpers import wait_until
from .handlers import AsyncDatagramEcho, CallbackDatagramEcho, SyncDatagramEcho
from .kinds import Kind, LogFile, Options

TIMEOUT = 10.0
TRUST_LOOPBACK = ("127.0.0.0/8", "::1/128")
SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def v2(host: str, port: int, *, command: int = 0x21) -> bytes:
    """A PROXY v2 header for a datagram (transport DGRAM: UDP over IPv4 or
    IPv6), built by hand from the spec's layout. ``command`` 0x20 is LOCAL."""
    address = ipaddress.ip_address(host)
    if address.version == 4:
        family, block = 0x12, address.packed + bytes(4) + struct.pack("!HH", port, 53)
    else:
        family, block = 0x22, address.packed + bytes(16) + struct.pack("!HH", port, 53)
    return SIGNATURE + bytes([command, family]) + struct.pack("!H", len(block)) + block


@pytest.fixture
def proxy() -> Iterator[socket.socket]:
    """The socket the test sends from: a proxy, when the server trusts loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(TIMEOUT)
        yield sock


def ask(sock: socket.socket, server: Any, datagram: bytes) -> bytes:
    """Send one datagram, return the reply; the reply must come from the server."""
    sock.sendto(datagram, server.address)
    reply, sender = sock.recvfrom(1000)
    assert sender == server.address
    return reply


def refused(server: Any) -> dict[str, int]:
    return dict(server.server.refused) if hasattr(server, "server") else {}


def test_the_handler_sees_the_real_client_and_its_reply_goes_back_to_the_proxy(
    datagram_kind: Kind, short_tmp: str, proxy: socket.socket
) -> None:
    with datagram_kind.start(short_tmp, Options(proxy_trusted=TRUST_LOOPBACK)) as server:
        assert ask(proxy, server, v2("203.0.113.7", 40001) + b"whoami") == b"203.0.113.7:40001"
        assert ask(proxy, server, v2("203.0.113.7", 40001) + b"echo this") == b"echo this"
        assert ask(proxy, server, v2("2001:db8::5", 40002) + b"whoami") == b"[2001:db8::5]:40002"
        # LOCAL: the proxy's own datagram (a health check), served as the proxy's.
        local = ask(proxy, server, v2("192.0.2.1", 1, command=0x20) + b"whoami")
        assert local == b"127.0.0.1:%d" % proxy.getsockname()[1]
        assert not server.logs.lines("WARNING|ERROR")


def test_a_datagram_without_a_header_from_a_trusted_peer_is_dropped_with_one_line(
    datagram_kind: Kind, short_tmp: str, proxy: socket.socket
) -> None:
    with datagram_kind.start(short_tmp, Options(proxy_trusted=TRUST_LOOPBACK)) as server:
        proxy.sendto(b"whoami", server.address)
        line = server.logs.wait_for(r"^WARNING datagram from 127\.0\.0\.1:\d+ dropped")
        assert "expected a PROXY header from a trusted proxy" in line
        # Dropped before any handler: the next reply is the next datagram's.
        assert ask(proxy, server, v2("203.0.113.8", 8) + b"whoami") == b"203.0.113.8:8"
        assert len(server.logs.lines("dropped")) == 1
        if datagram_kind.in_process:
            assert refused(server) == {"proxy_header": 1}


def test_a_trusted_peer_may_speak_for_itself_when_the_header_is_not_required(
    datagram_kind: Kind, short_tmp: str, proxy: socket.socket
) -> None:
    with datagram_kind.start(short_tmp, Options(proxy_trusted=TRUST_LOOPBACK, proxy_required=False)) as server:
        assert ask(proxy, server, b"whoami") == b"127.0.0.1:%d" % proxy.getsockname()[1]
        assert ask(proxy, server, v2("203.0.113.9", 9) + b"whoami") == b"203.0.113.9:9"


@pytest.mark.parametrize(
    ("datagram", "why"),
    [
        (v2("203.0.113.7", 1)[:20], r"bad PROXY header: PROXY v2 header cut short"),
        (b"PROXY UDP4 203.0.113.7 127.0.0.1 1 53\r\nwhoami", r"bad PROXY header: PROXY v1 header in a datagram"),
        (SIGNATURE + b"\x31\x12\x00\x0c" + bytes(12) + b"whoami", r"bad PROXY header: "),  # version 3
    ],
    ids=["cut-short", "v1", "version-3"],
)
def test_a_bad_header_is_dropped_with_one_line(
    datagram_kind: Kind, short_tmp: str, proxy: socket.socket, datagram: bytes, why: str
) -> None:
    with datagram_kind.start(short_tmp, Options(proxy_trusted=TRUST_LOOPBACK)) as server:
        proxy.sendto(datagram, server.address)
        server.logs.wait_for(r"^WARNING datagram from 127\.0\.0\.1:\d+ dropped: " + why)
        assert ask(proxy, server, v2("203.0.113.8", 8) + b"whoami") == b"203.0.113.8:8"
        assert not server.logs.lines("ERROR|Traceback")
        if datagram_kind.in_process:
            assert refused(server) == {"proxy_header": 1}


def test_an_untrusted_peers_header_is_dropped_and_its_plain_datagrams_served(
    datagram_kind: Kind, short_tmp: str, proxy: socket.socket
) -> None:
    with datagram_kind.start(short_tmp, Options(proxy_trusted=("192.0.2.0/24",))) as server:
        proxy.sendto(v2("203.0.113.7", 1) + b"whoami", server.address)
        server.logs.wait_for(
            r"^WARNING datagram from 127\.0\.0\.1:\d+ dropped: a PROXY header from a peer that is not trusted"
        )
        # Served as itself; "PROXY" opens no header over datagrams: these are its bytes.
        assert ask(proxy, server, b"whoami") == b"127.0.0.1:%d" % proxy.getsockname()[1]
        assert ask(proxy, server, b"PROXY TCP4 x") == b"PROXY TCP4 x"
        if datagram_kind.in_process:
            assert refused(server) == {"proxy_header": 1}


def test_the_access_list_and_the_limits_judge_the_real_client(
    datagram_kind: Kind, short_tmp: str, proxy: socket.socket
) -> None:
    # The proxy (127.0.0.1) is not on the allow list: its clients are judged.
    options = Options(
        proxy_trusted=TRUST_LOOPBACK,
        access_allow=("203.0.113.0/24", "2001:db8::/32"),
        access_deny=("203.0.113.66", "127.0.0.9"),
    )
    with datagram_kind.start(short_tmp, options) as server:
        for denied in ("203.0.113.66", "198.51.100.1", "::ffff:203.0.113.66", "127.0.0.9"):
            proxy.sendto(v2(denied, 6) + b"whoami", server.address)
        for denied in (r"203\.0\.113\.66:6", r"198\.51\.100\.1:6", r"127\.0\.0\.9:6"):
            server.logs.wait_for(denied + r".* denied by the access list")
        assert ask(proxy, server, v2("203.0.113.5", 5) + b"whoami") == b"203.0.113.5:5"
        assert ask(proxy, server, v2("2001:db8::7", 7) + b"whoami") == b"[2001:db8::7]:7"
        if datagram_kind.in_process:
            assert refused(server) == {"access_list": 4}


def test_the_per_ip_limit_counts_the_real_client(datagram_kind: Kind, short_tmp: str, proxy: socket.socket) -> None:
    if not datagram_kind.concurrent:
        pytest.skip("one datagram at a time: none can wait while another from its client is in flight")
    if "callback" in datagram_kind.name:
        # Its "hold" answers on the server's own socket, not through the
        # handler's sendto(): nothing there knows of proxies.
        pytest.skip("the callback echo's hold replies on server.socket")
    gate = os.path.join(short_tmp, "gate")
    os.mkfifo(gate)
    options = Options(proxy_trusted=TRUST_LOOPBACK, limits=sockserve.Limits(max_connections_per_ip=1))
    with datagram_kind.start(short_tmp, options) as server:
        # A held datagram from 203.0.113.1, through the proxy: "entered" comes back to the proxy.
        assert ask(proxy, server, v2("203.0.113.1", 1) + b"hold " + gate.encode()) == b"entered"
        # Another client through the same proxy is served: the proxy is not what is counted...
        assert ask(proxy, server, v2("203.0.113.2", 2) + b"whoami") == b"203.0.113.2:2"
        # ... the real client is.
        proxy.sendto(v2("203.0.113.1", 3) + b"whoami", server.address)
        server.logs.wait_for(r"203\.0\.113\.1:3: max_connections_per_ip=1 reached")
        with open(gate, "wb"):
            pass
        assert proxy.recvfrom(1000)[0].startswith(b"hold ")


# -- Unix datagram servers -------------------------------------------------------------------

UNIX_SERVERS = {
    "sequential": (sockserve.UnixDatagramServer, SyncDatagramEcho),
    "threads": (sockserve.ThreadingUnixDatagramServer, SyncDatagramEcho),
    "pool": (sockserve.ThreadPoolUnixDatagramServer, SyncDatagramEcho),
    "async_datagram": (aio.AsyncUnixDatagramServer, AsyncDatagramEcho),
    "async_datagram_callback": (aio.AsyncUnixDatagramServer, CallbackDatagramEcho),
}
if hasattr(sockserve, "ForkingUnixDatagramServer"):
    UNIX_SERVERS["fork"] = (sockserve.ForkingUnixDatagramServer, SyncDatagramEcho)


@pytest.fixture(params=sorted(UNIX_SERVERS))
def unix_server_class(request: pytest.FixtureRequest) -> tuple[type[Any], type[Any]]:
    server_class, handler = UNIX_SERVERS[request.param]
    return server_class, handler


@pytest.mark.parametrize("trust_unix", [True, False], ids=["trusted", "untrusted"])
def test_unix_datagram_servers_read_the_header_from_a_trusted_peer(
    unix_server_class: tuple[type[Any], type[Any]], short_tmp: str, trust_unix: bool
) -> None:
    import logging

    server_class, handler = unix_server_class
    logs = LogFile(os.path.join(short_tmp, "server.log"))
    log_handler = logging.FileHandler(logs.path)
    log_handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    log = logging.getLogger("sockserve")
    level = log.level
    log.addHandler(log_handler)
    log.setLevel(logging.INFO)
    proxy_path = os.path.join(short_tmp, "proxy.sock")
    try:
        server = server_class(os.path.join(short_tmp, "server.sock"), handler)
        server.proxy_protocol = sockserve.ProxyProtocol(trust_unix=trust_unix)
        with running_server(server, poll_interval=0.05), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as peer:
            peer.bind(proxy_path)  # a Unix peer gets replies only at an address of its own
            peer.settimeout(TIMEOUT)
            if trust_unix:
                peer.sendto(v2("203.0.113.7", 40001) + b"whoami", server.server_address)
                assert peer.recvfrom(100) == (b"203.0.113.7:40001", server.server_address)
                peer.sendto(b"whoami", server.server_address)
                logs.wait_for(r"^WARNING datagram from .*proxy\.sock dropped: expected a PROXY header")
            else:
                peer.sendto(v2("203.0.113.7", 40001) + b"whoami", server.server_address)
                logs.wait_for(r"^WARNING datagram from .*proxy\.sock dropped: a PROXY header from a peer")
                peer.sendto(b"echo", server.server_address)
                assert peer.recvfrom(100) == (b"echo", server.server_address)
            assert server.refused == {"proxy_header": 1}
    finally:
        log.removeHandler(log_handler)
        log.setLevel(level)
        log_handler.close()


def test_async_replies_sent_outside_the_datagrams_context_still_go_through_the_proxy(
    short_tmp: str, proxy: socket.socket
) -> None:
    """A callback handler that answers later, from code that does not run in
    the datagram's context (a queue consumer, a callback scheduled with a
    context of its own): the server remembers which proxy each client came
    through."""

    class Later(aio.AsyncDatagramProtocolHandler):
        def datagram_received(self, data: bytes, client_address: Any) -> None:
            loop = asyncio.get_running_loop()
            loop.call_soon(self.answer, data, client_address, context=contextvars.Context())

        def answer(self, data: bytes, client_address: Any) -> None:
            self.sendto(data + b" from " + repr(client_address).encode(), client_address)

    server = aio.AsyncUDPServer(("127.0.0.1", 0), Later)
    server.proxy_protocol = sockserve.ProxyProtocol(trusted=TRUST_LOOPBACK)
    with running_server(server, poll_interval=0.05):
        proxy.sendto(v2("203.0.113.7", 40001) + b"hi", server.server_address)
        assert proxy.recvfrom(100) == (b"hi from ('203.0.113.7', 40001)", server.server_address)


def test_the_access_list_applies_to_datagrams_without_proxy(
    datagram_kind: Kind, short_tmp: str, proxy: socket.socket
) -> None:
    with datagram_kind.start(short_tmp, Options(access_deny=("127.0.0.0/8",))) as server:
        proxy.sendto(b"whoami", server.address)
        server.logs.wait_for(r"^WARNING .*127\.0\.0\.1:\d+ denied by the access list")
        if datagram_kind.in_process:
            assert refused(server) == {"access_list": 1}


class InfoHandler(sockserve.DatagramRequestHandler):
    """Answers with what its connection_info says."""

    def handle(self) -> None:
        info = self.connection_info
        source = None if info.proxy is None else info.proxy.source
        self.wfile.write(repr((info.client_address, info.peer_address, source)).encode())


SYNC_UDP = {
    "sequential": sockserve.UDPServer,
    "threads": sockserve.ThreadingUDPServer,
    "pool": sockserve.ThreadPoolUDPServer,
    "fork": sockserve.ForkingUDPServer,
}


@pytest.mark.parametrize("model", sorted(SYNC_UDP))
def test_a_sync_handler_finds_the_header_in_its_connection_info(model: str, proxy: socket.socket) -> None:
    server = SYNC_UDP[model](("127.0.0.1", 0), InfoHandler)
    server.proxy_protocol = sockserve.ProxyProtocol(trusted=TRUST_LOOPBACK)
    me = proxy.getsockname()
    with running_server(server, poll_interval=0.05):
        proxy.sendto(v2("203.0.113.7", 40001) + b"x", server.server_address)
        real = ("203.0.113.7", 40001)
        assert proxy.recvfrom(200) == (repr((real, me, real)).encode(), server.server_address)
        proxy.sendto(v2("192.0.2.1", 1, command=0x20) + b"x", server.server_address)  # LOCAL
        assert proxy.recvfrom(200) == (repr((me, me, None)).encode(), server.server_address)
        assert wait_until(lambda: not server._proxied_connections()._by_request)  # released with their datagrams


def test_tls_on_a_datagram_server_is_refused_when_serving_starts(tmp_path: Any) -> None:
    from tests.tls_certs import Pki, install

    certfile, keyfile = install(Pki().server, tmp_path, "server")
    with sockserve.UDPServer(("127.0.0.1", 0), SyncDatagramEcho) as server:
        server.tls = sockserve.TLSConfig(certfile=certfile, keyfile=keyfile)
        with pytest.raises(ValueError, match="tls needs a stream socket"):
            server.serve_forever()
