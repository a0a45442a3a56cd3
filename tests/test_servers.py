"""The servers and handlers do what the stdlib's do, over real sockets."""

from __future__ import annotations

import os
import queue
import socket
import subprocess
import sys
import threading
from typing import Any

import pytest

import sockserve
from sockserve.testing import running_server

from .conftest import requires_ipv6
from .helpers import connect, recv_all, recv_line, round_trip


class LineEcho(sockserve.StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.readline())


class DatagramEcho(sockserve.DatagramRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.read())


STREAM = {"ipv4": sockserve.TCPServer, "ipv6": sockserve.TCPServer, "unix": sockserve.UnixStreamServer}
THREADED = {
    "ipv4": sockserve.ThreadingTCPServer,
    "ipv6": sockserve.ThreadingTCPServer,
    "unix": sockserve.ThreadingUnixStreamServer,
}
DGRAM = {"ipv4": sockserve.UDPServer, "ipv6": sockserve.UDPServer, "unix": sockserve.UnixDatagramServer}


@pytest.mark.parametrize("table", [STREAM, THREADED], ids=["sync", "threading"])
def test_stream_echo_on_every_family(family: str, address_for: Any, table: dict[str, type]) -> None:
    with running_server(table[family](address_for(family), LineEcho)) as server:
        assert server.server_address == server.socket.getsockname()
        if family != "unix":
            assert server.server_address[1] != 0, "port 0 must be replaced by the real port"
        for n in range(3):
            assert round_trip(server.server_address, b"line %d\n" % n) == b"line %d\n" % n
    assert server.socket.fileno() == -1


def test_datagram_echo_on_every_family(family: str, address_for: Any, short_tmp: str) -> None:
    with running_server(DGRAM[family](address_for(family), DatagramEcho)) as server:
        sock_family = {"ipv4": socket.AF_INET, "ipv6": socket.AF_INET6, "unix": socket.AF_UNIX}[family]
        with socket.socket(sock_family, socket.SOCK_DGRAM) as client:
            client.settimeout(10)
            if family == "unix":
                client.bind(os.path.join(short_tmp, "client.sock"))  # so the reply has somewhere to go
            client.sendto(b"ping", server.server_address)
            data, source = client.recvfrom(1024)
    assert data == b"ping"
    assert source == server.server_address


def test_datagram_handler_that_writes_nothing_sends_an_empty_datagram() -> None:
    """The stdlib always replies from finish(); programs may count on it."""

    class Silent(sockserve.DatagramRequestHandler):
        def handle(self) -> None:
            pass

    with (
        running_server(sockserve.UDPServer(("127.0.0.1", 0), Silent)) as server,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client,
    ):
        client.settimeout(10)
        client.sendto(b"anything", server.server_address)
        assert client.recvfrom(1024)[0] == b""


def test_bind_and_activate_false_lets_the_caller_configure_first() -> None:
    server = sockserve.TCPServer(("127.0.0.1", 0), LineEcho, bind_and_activate=False)
    try:
        assert server.server_address == ("127.0.0.1", 0)
        server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.server_bind()
        server.server_activate()
        assert server.socket.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
        with running_server(server):
            assert round_trip(server.server_address) == b"hello\n"
    finally:
        server.server_close()


def test_context_manager_closes_the_socket() -> None:
    with sockserve.TCPServer(("127.0.0.1", 0), LineEcho) as server:
        assert server.fileno() >= 0
    assert server.socket.fileno() == -1


def test_failed_bind_closes_the_socket() -> None:
    with pytest.raises(OverflowError):
        sockserve.TCPServer(("127.0.0.1", -1), LineEcho)


def test_allow_reuse_port_lets_two_servers_share_a_port() -> None:
    class Shared(sockserve.TCPServer):
        allow_reuse_port = True

    with Shared(("127.0.0.1", 0), LineEcho) as first, Shared(first.server_address, LineEcho) as second:
        assert first.server_address == second.server_address


def test_handle_request_serves_one_request() -> None:
    with sockserve.TCPServer(("127.0.0.1", 0), LineEcho) as server, connect(server.server_address) as client:
        client.sendall(b"one\n")
        server.handle_request()
        assert recv_line(client) == b"one\n"


def test_handle_request_times_out_into_handle_timeout() -> None:
    timeouts = []

    class Impatient(sockserve.TCPServer):
        timeout = 0.01

        def handle_timeout(self) -> None:
            timeouts.append(True)

    with Impatient(("127.0.0.1", 0), LineEcho) as server:
        server.handle_request()
    assert timeouts == [True]


def test_verify_request_false_closes_the_connection_unserved() -> None:
    calls = []

    class Picky(sockserve.TCPServer):
        def verify_request(self, request: Any, client_address: Any) -> bool:
            calls.append("verify")
            return False

        def shutdown_request(self, request: Any) -> None:
            calls.append("shutdown_request")
            super().shutdown_request(request)

    with running_server(Picky(("127.0.0.1", 0), LineEcho)) as server, connect(server.server_address) as client:
        client.sendall(b"ignored\n")
        assert recv_all(client) == b""
    assert calls == ["verify", "shutdown_request"]


def test_stream_handler_options_reach_the_connection() -> None:
    seen: queue.Queue[tuple[Any, ...]] = queue.Queue()

    class Tuned(sockserve.StreamRequestHandler):
        timeout = 7.5
        disable_nagle_algorithm = True
        wbufsize = -1  # buffered: finish() must flush it

        def handle(self) -> None:
            nodelay = self.connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            seen.put((self.connection.gettimeout(), bool(nodelay)))
            self.wfile.write(self.rfile.readline())

    with running_server(sockserve.TCPServer(("127.0.0.1", 0), Tuned)) as server:
        assert round_trip(server.server_address, b"buffered\n") == b"buffered\n"
    assert seen.get(timeout=10) == (7.5, True)


def test_wfile_is_a_buffered_io_on_the_request_socket() -> None:
    seen: queue.Queue[tuple[bool, bool]] = queue.Queue()

    class Probe(sockserve.StreamRequestHandler):
        def handle(self) -> None:
            import io

            seen.put((isinstance(self.wfile, io.BufferedIOBase), self.wfile.fileno() == self.request.fileno()))

    with running_server(sockserve.TCPServer(("127.0.0.1", 0), Probe)) as server:
        with connect(server.server_address) as client:
            assert recv_all(client) == b""
        assert seen.get(timeout=10) == (True, True)


@requires_ipv6
def test_ipv6_address_without_a_subclass() -> None:
    with running_server(sockserve.ThreadingTCPServer(("::1", 0), LineEcho)) as server:
        assert server.address_family == socket.AF_INET6
        assert server.server_address[0] == "::1"
        assert round_trip(server.server_address) == b"hello\n"
    assert sockserve.TCPServer.address_family == socket.AF_INET, "the class default must not change"


@requires_ipv6
def test_ipv6_wildcard_is_dual_stack() -> None:
    with running_server(sockserve.ThreadingTCPServer(("::", 0), LineEcho)) as server:
        port = server.server_address[1]
        assert round_trip(("::1", port), b"v6\n") == b"v6\n"
        assert round_trip(("127.0.0.1", port), b"v4\n") == b"v4\n"


@requires_ipv6
def test_udp_ipv6_wildcard_is_dual_stack() -> None:
    with running_server(sockserve.UDPServer(("::", 0), DatagramEcho)) as server:
        port = server.server_address[1]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(10)
            client.sendto(b"v4", ("127.0.0.1", port))
            assert client.recvfrom(64)[0] == b"v4"


def test_http_server_runs_on_sockserve() -> None:
    """A stdlib module built on socketserver works when sockserve stands in for it."""
    program = r"""
import sys, threading, http.client
import sockserve
sys.modules["socketserver"] = sockserve
import http.server
assert issubclass(http.server.HTTPServer, sockserve.TCPServer)

class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"served by sockserve" if isinstance(self.server, sockserve.TCPServer) else b"not sockserve"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass

server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
thread = threading.Thread(target=server.serve_forever)
thread.start()
conn = http.client.HTTPConnection(*server.server_address[:2], timeout=10)
conn.request("GET", "/")
response = conn.getresponse()
print(response.status, response.read().decode())
conn.close()
server.shutdown()
thread.join()
server.server_close()
"""
    proc = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "200 served by sockserve"


def test_many_clients_at_once_are_all_served() -> None:
    clients = 50
    with running_server(sockserve.ThreadingTCPServer(("127.0.0.1", 0), LineEcho)) as server:
        results: queue.Queue[bytes] = queue.Queue()

        def client(n: int) -> None:
            results.put(round_trip(server.server_address, b"client %d\n" % n))

        threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    got = sorted(results.get(timeout=1) for _ in range(clients))
    assert got == sorted(b"client %d\n" % n for n in range(clients))


@pytest.mark.parametrize(
    "server_class", [sockserve.TCPServer, sockserve.ThreadingTCPServer, sockserve.ThreadPoolTCPServer]
)
def test_max_requests_stops_accepting_after_that_many(server_class: type[sockserve.TCPServer]) -> None:
    class Echo(sockserve.StreamRequestHandler):
        def handle(self) -> None:
            self.wfile.write(self.rfile.readline())

    class Limited(server_class):  # type: ignore[valid-type,misc]
        max_requests = 3

    server = Limited(("127.0.0.1", 0), Echo)
    loop = threading.Thread(target=server.serve_forever)
    loop.start()
    try:
        for number in range(3):
            assert round_trip(server.server_address, b"%d\n" % number) == b"%d\n" % number
        loop.join(10)  # the third admission ends the loop, as shutdown() would
        assert not loop.is_alive(), "serve_forever() went on after max_requests"
        assert server.max_requests_reached
    finally:
        server.shutdown()
        loop.join(10)
        server.stop(5)


def test_the_production_servers_rebind_a_port_whose_connections_are_in_time_wait() -> None:
    class Closer(sockserve.StreamRequestHandler):
        def handle(self) -> None:
            self.rfile.readline()  # (unread input would make the close a reset, which leaves no TIME_WAIT)
            self.wfile.write(b"bye\n")  # and the server closes first: its side goes to TIME_WAIT

    first = sockserve.ThreadPoolTCPServer(("127.0.0.1", 0), Closer)
    address = first.server_address
    with running_server(first), connect(address) as client:
        client.sendall(b"hi\n")
        assert recv_all(client) == b"bye\n"  # the server's close reached us first
    assert sockserve.ThreadPoolTCPServer.allow_reuse_address
    with pytest.raises(OSError, match="in use"):  # the drop-in keeps the stdlib's default, False
        sockserve.TCPServer(address, Closer).server_close()
    sockserve.ThreadPoolTCPServer(address, Closer).server_close()  # binds again at once
    assert not sockserve.ThreadPoolUDPServer.allow_reuse_address  # never on UDP
