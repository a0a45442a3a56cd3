"""The framed pool over TLS (``FramedRequestHandler`` on ``ThreadPoolTCPServer``
with ``server.tls``), on real loopback TLS with certificates made by trustme.

The handshake runs in the reactor without blocking, under the stages'
deadline; then the connection reads and writes through the non-blocking
``ssl.SSLSocket``. Some clients here drive TLS by hand over memory buffers
(``BioClient``), so that a test chooses what goes in each TLS record and in
each TCP write: requests pipelined in one record, split across records, a
PROXY header glued to the ClientHello, a ClientHello cut in half."""

from __future__ import annotations

import logging
import queue
import re
import select
import shutil
import socket
import ssl
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
import trustme

import sockserve
from sockserve import _framed_connection
from sockserve.testing import running_server

from .helpers import connect, recv_line, wait_until

TIMEOUT = 10.0


# --- certificates, server, handler ---------------------------------------------------


class Pki:
    """One CA and the server's certificate, installed as files."""

    def __init__(self, directory: Path) -> None:
        self.ca = trustme.CA()
        cert = self.ca.issue_cert("localhost", "127.0.0.1")
        self.certfile, self.keyfile = str(directory / "server.crt"), str(directory / "server.key")
        cert.cert_chain_pems[0].write_to_path(self.certfile)
        for blob in cert.cert_chain_pems[1:]:
            blob.write_to_path(self.certfile, append=True)
        cert.private_key_pem.write_to_path(self.keyfile)

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context

    def config(self, handshake_timeout: float = TIMEOUT) -> sockserve.TLSConfig:
        return sockserve.TLSConfig(certfile=self.certfile, keyfile=self.keyfile, handshake_timeout=handshake_timeout)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


class Pool(sockserve.ThreadPoolTCPServer):
    pool_min_workers = 0
    pool_max_workers = 4


def pattern(size: int) -> bytes:
    """``size`` bytes that show where a reply was cut or reordered, ending in a newline."""
    line = b"0123456789abcdefghijklmnopqrstuvwxyz"
    return (line * (size // len(line) + 1))[: size - 1] + b"\n"


class Echo(sockserve.FramedRequestHandler):
    """Echoes each line; ``big <n>`` answers ``pattern(n)``; ``whoami`` what
    the handler knows of its connection; ``wait`` waits
    for ``server.go`` first; ``bye`` closes the connection."""

    server: Any

    def handle_request(self, request: bytes) -> None:
        command = request.rstrip(b"\n")
        if command.startswith(b"big "):
            self.send(pattern(int(command[4:])))
            self.server.sent_big.set()
        elif command == b"whoami":
            info = self.connection_info
            tls = f"{info.tls.version}/{info.tls.server_name}" if info.tls is not None else "plain"
            proxy = "proxy" if info.proxy is not None else "direct"
            host, port = info.client_address[:2]
            peer = info.peer_address[0]
            self.send(f"{host}:{port} via {peer} {tls} {proxy} {self.client_address[0]}\n".encode())
        elif command == b"bye":
            self.send(b"bye\n")
            self.close()
        elif command == b"wait":
            assert self.server.go.wait(TIMEOUT)
            self.send(request)
        else:
            if command == b"after":
                self.server.handled_after.set()
            self.send(request)


def tls_server(pki: Pki, handshake_timeout: float = TIMEOUT, server_class: type[Pool] = Pool, **attributes: Any) -> Any:
    server: Any = server_class(("127.0.0.1", 0), Echo)
    server.tls = pki.config(handshake_timeout)
    server.sent_big, server.handled_after, server.go = threading.Event(), threading.Event(), threading.Event()
    for name, value in attributes.items():
        setattr(server, name, value)
    return server


def tls_connect(server: Any, pki: Pki) -> ssl.SSLSocket:
    sock = connect(server.server_address)
    try:
        return pki.client_context().wrap_socket(sock, server_hostname="localhost")
    except BaseException:
        sock.close()
        raise


def in_flight(server: Any) -> int:
    """Connections admitted and not yet counted out (test-only peek)."""
    return len(server._admission())


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="sockserve")
    return caplog


def lines(caplog: pytest.LogCaptureFixture, pattern_: str, level: int = logging.WARNING) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == level and re.search(pattern_, r.getMessage())]


# --- a TLS client over memory buffers -------------------------------------------------


class BioClient:
    """A TLS client over ``sock`` driven by hand: each ``records()`` chunk
    is one TLS record, and the test decides how they go on the wire."""

    def __init__(self, sock: socket.socket, context: ssl.SSLContext, prefix: bytes = b"") -> None:
        self.sock = sock
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname="localhost")
        first = True
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                pass
            out = self.outgoing.read()
            if first:  # the ClientHello: behind the prefix, in one TCP write
                out, first = prefix + out, False
            if out:
                sock.sendall(out)
            self._receive()
        if out := self.outgoing.read():  # the client's Finished
            sock.sendall(out)

    def _receive(self) -> None:
        data = self.sock.recv(65536)
        if data:
            self.incoming.write(data)
        else:
            self.incoming.write_eof()

    def records(self, *chunks: bytes) -> bytes:
        """The wire bytes of ``chunks``, one TLS record each."""
        for chunk in chunks:
            self.tls.write(chunk)
        return self.outgoing.read()

    def send_records(self, *chunks: bytes) -> None:
        """``chunks`` as one record each, all in one TCP write."""
        self.sock.sendall(self.records(*chunks))

    def recv(self) -> bytes:
        """Decrypted bytes as they come; b"" at a close_notify (a close
        without one raises ``ssl.SSLEOFError``)."""
        while True:
            try:
                return self.tls.read(65536)
            except ssl.SSLWantReadError:
                self._receive()
            except ssl.SSLZeroReturnError:
                return b""

    def recv_lines(self, count: int) -> bytes:
        received = b""
        while received.count(b"\n") < count:
            chunk = self.recv()
            if not chunk:
                break
            received += chunk
        return received


def client_hello(pki: Pki) -> bytes:
    """The first flight of a TLS client: its ClientHello record."""
    tls = pki.client_context().wrap_bio(ssl.MemoryBIO(), outgoing := ssl.MemoryBIO(), server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def closed_by_server(sock: socket.socket) -> bytes:
    """Read a plain socket until the server closes it (a reset counts); what came."""
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


# --- tests ------------------------------------------------------------------------------


def test_many_requests_on_one_connection(pki: Pki) -> None:
    server = tls_server(pki)
    with running_server(server), tls_connect(server, pki) as client:
        for i in range(300):
            client.sendall(b"request %d\n" % i)
            assert recv_line(client) == b"request %d\n" % i
        client.sendall(b"whoami\n")
        host, port = client.getsockname()[:2]
        assert recv_line(client) == f"{host}:{port} via {host} {client.version()}/localhost direct {host}\n".encode()
    assert wait_until(lambda: in_flight(server) == 0)


class UnixPool(sockserve.ThreadPoolUnixStreamServer):
    pool_min_workers = 0
    pool_max_workers = 4


def test_a_unix_socket(pki: Pki, unix_path: str) -> None:
    server: Any = UnixPool(unix_path, Echo)
    server.tls = pki.config()
    with (
        running_server(server),
        connect(unix_path) as sock,
        pki.client_context().wrap_socket(sock, server_hostname="localhost") as client,
    ):
        for i in range(50):
            client.sendall(b"request %d\n" % i)
            assert recv_line(client) == b"request %d\n" % i


def test_requests_pipelined_in_one_record(pki: Pki) -> None:
    server = tls_server(pki)
    with running_server(server), connect(server.server_address) as sock:
        client = BioClient(sock, pki.client_context())
        requests = b"".join(b"line %d\n" % i for i in range(200))
        client.send_records(requests)  # one record, 200 requests
        assert client.recv_lines(200) == requests


def test_requests_split_across_records(pki: Pki) -> None:
    server = tls_server(pki)
    with running_server(server), connect(server.server_address) as sock:
        client = BioClient(sock, pki.client_context())
        # Requests cut at every place a record could end, several records
        # in one TCP write (read one record at a time by the server).
        client.send_records(b"fir", b"st\nsec", b"o", b"nd\n", b"third\nfourth", b"\n")
        assert client.recv_lines(4) == b"first\nsecond\nthird\nfourth\n"
        # And one record per TCP write, a byte at a time.
        for byte in b"fifth\n":
            client.send_records(bytes([byte]))
        assert client.recv_lines(1) == b"fifth\n"
        # A record cut in two TCP writes: the server's first read finds half
        # a record, nothing to decrypt yet, and waits for the rest.
        record = client.records(b"sixth\n")
        sock.sendall(record[:7])
        assert not select.select([sock], [], [], 0.05)[0], "nothing comes back, and the connection stays open"
        sock.sendall(record[7:])
        assert client.recv_lines(1) == b"sixth\n"


def test_the_server_ends_the_session_with_close_notify(pki: Pki) -> None:
    server = tls_server(pki)
    with running_server(server), connect(server.server_address) as sock:
        client = BioClient(sock, pki.client_context())
        client.send_records(b"bye\n")
        assert client.recv_lines(1) == b"bye\n"
        # A close without close_notify would raise SSLEOFError here.
        assert client.recv() == b""


OPENSSL = shutil.which("openssl")


@pytest.mark.skipif(OPENSSL is None, reason="needs openssl")
def test_a_key_update_mid_session_is_answered_and_the_session_goes_on(pki: Pki, tmp_path: Path) -> None:
    # openssl s_client's "K" sends a TLS 1.3 KeyUpdate asking the server to
    # update its keys too: the server's read answers with a write of its own.
    assert OPENSSL is not None
    cafile = tmp_path / "ca.pem"
    pki.ca.cert_pem.write_to_path(str(cafile))
    server = tls_server(pki)
    with running_server(server):
        host, port = server.server_address[:2]
        command = [
            OPENSSL,
            "s_client",
            "-connect",
            f"{host}:{port}",
            "-CAfile",
            str(cafile),
            "-servername",
            "localhost",
            "-tls1_3",
        ]
        client = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert client.stdin is not None
        assert client.stdout is not None
        output: queue.Queue[bytes] = queue.Queue()

        def read_lines(stream: Any) -> None:
            for line in stream:
                output.put(line)
            output.put(b"")  # the end

        reader = threading.Thread(target=read_lines, args=(client.stdout,))
        reader.start()

        def expect(line: bytes) -> None:
            while (got := output.get(timeout=TIMEOUT)).rstrip(b"\n") != line:
                assert got, "s_client ended"

        try:
            for line in (b"one", b"K", b"two"):  # s_client takes a command only as a line of its own
                client.stdin.write(line + b"\n")
                client.stdin.flush()
                expect(b"KEYUPDATE" if line == b"K" else line)
                if line == b"K":  # a moment for the server to read the key update alone
                    with pytest.raises(queue.Empty):
                        output.get(timeout=0.05)
        finally:
            client.stdin.close()  # s_client ends the session and exits
            try:
                client.wait(TIMEOUT)
            finally:
                client.kill()
                client.wait()
                client.stdout.close()
                reader.join(TIMEOUT)


def test_decrypted_bytes_held_in_the_ssl_object_are_read_without_waiting_for_the_socket(
    pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A read buffer smaller than a record: OpenSSL decrypts the whole record
    # and keeps the rest, where epoll does not see it. The server's threads
    # are new, so their buffers are made at this size.
    monkeypatch.setattr(_framed_connection, "READ_SIZE", 1000)
    server = tls_server(pki)
    with running_server(server), connect(server.server_address) as sock:
        client = BioClient(sock, pki.client_context())
        request = pattern(12_000)
        client.send_records(request)  # then nothing more: only the SSL object holds the rest
        assert client.recv_lines(1) == request
        client.send_records(b"a\nb\n", pattern(5000))
        assert client.recv_lines(3) == b"a\nb\n" + pattern(5000)


def test_a_large_reply_to_a_client_that_reads_slowly(pki: Pki) -> None:
    size = 8 * 1024 * 1024  # far beyond the socket buffers
    server = tls_server(pki)
    with (
        running_server(server),
        connect(server.server_address, rcvbuf=16 * 1024) as sock,
        pki.client_context().wrap_socket(sock, server_hostname="localhost") as client,
    ):
        client.sendall(b"big %d\nafter\n" % size)
        assert server.sent_big.wait(TIMEOUT), "send() queued the reply without blocking the worker"
        # The reply waits in the outbox for a client that reads nothing:
        # the next request is not handled on top of it (backpressure).
        assert not server.handled_after.wait(0.2)
        received = bytearray()
        while len(received) < size + len(b"after\n"):
            chunk = client.recv(16 * 1024)  # a slow reader: small reads
            assert chunk, "the server closed the connection"
            received += chunk
        assert bytes(received[:size]) == pattern(size)
        assert bytes(received[size:]) == b"after\n"
        # Large replies to requests pipelined while the last is still
        # being written: the reactor writes while a worker reads.
        client.sendall(b"".join(b"big %d\n" % (200_000 + i) for i in range(10)) + b"done\n")
        expected = b"".join(pattern(200_000 + i) for i in range(10)) + b"done\n"
        received = bytearray()
        while len(received) < len(expected):
            chunk = client.recv(65536)
            assert chunk, "the server closed the connection"
            received += chunk
        assert bytes(received) == expected
    assert wait_until(lambda: in_flight(server) == 0)


class OneWorker(Pool):
    pool_max_workers = 1


def test_a_stalled_handshake_holds_no_worker(pki: Pki) -> None:
    server = tls_server(pki, server_class=OneWorker)
    hello = client_hello(pki)
    with (
        running_server(server),
        connect(server.server_address) as silent,
        connect(server.server_address) as halfway,
    ):
        halfway.sendall(hello[: len(hello) // 2])  # ... and never the rest
        assert wait_until(lambda: in_flight(server) == 2)
        # Meanwhile, on the pool's only worker, another client is served.
        with tls_connect(server, pki) as client:
            client.sendall(b"hello\n")
            assert recv_line(client) == b"hello\n"
        # ... while the stalled handshakes still wait (their deadline is far).
        assert not select.select([silent, halfway], [], [], 0)[0]
    # Closing the server closed them (the leak check looks).


def test_a_stalled_handshake_is_cut_at_its_deadline(pki: Pki, logs: pytest.LogCaptureFixture) -> None:
    server = tls_server(pki, handshake_timeout=0.3, server_class=OneWorker)
    hello = client_hello(pki)
    with running_server(server):
        with connect(server.server_address) as silent, connect(server.server_address) as halfway:
            halfway.sendall(hello[: len(hello) // 2])  # ... and never the rest
            assert closed_by_server(halfway) == b""
            assert closed_by_server(silent) == b""
        assert wait_until(lambda: len(lines(logs, r"the TLS handshake did not finish within 0\.3s")) == 2)
        assert server.refused["tls_handshake"] == 2
        assert wait_until(lambda: in_flight(server) == 0)
        with tls_connect(server, pki) as client:
            client.sendall(b"still here\n")
            assert recv_line(client) == b"still here\n"
    assert not lines(logs, "", logging.ERROR)


def test_a_plain_text_client_fails_the_handshake_with_one_warning(pki: Pki, logs: pytest.LogCaptureFixture) -> None:
    server = tls_server(pki)
    with running_server(server):
        with connect(server.server_address) as plain:
            plain.sendall(b"hello\n")
            assert closed_by_server(plain) == b""
        assert wait_until(lambda: server.refused.get("tls_handshake") == 1)
        with tls_connect(server, pki) as client:
            client.sendall(b"next\n")
            assert recv_line(client) == b"next\n"
    warnings = [r.getMessage() for r in logs.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert re.fullmatch(r"closing the connection from 127\.0\.0\.1:\d+: TLS handshake failed: .*", warnings[0])
    assert not any(r.exc_info for r in logs.records), "no traceback"


def test_a_proxy_header_then_tls(pki: Pki) -> None:
    server = tls_server(pki, proxy_protocol=sockserve.ProxyProtocol(trusted=["127.0.0.1/32"]))
    header = b"PROXY TCP4 203.0.113.7 127.0.0.1 40001 443\r\n"
    with running_server(server):
        # The header and the ClientHello in one TCP write: the handshake gets
        # the bytes behind the header.
        with connect(server.server_address) as sock:
            client = BioClient(sock, pki.client_context(), prefix=header)
            client.send_records(b"whoami\n")
            assert client.recv_lines(1) == b"203.0.113.7:40001 via 127.0.0.1 TLSv1.3/localhost proxy 203.0.113.7\n"
        # The header alone first, then TLS.
        with connect(server.server_address) as sock:
            sock.sendall(header.replace(b"40001", b"40002"))
            with pki.client_context().wrap_socket(sock, server_hostname="localhost") as client_socket:
                client_socket.sendall(b"whoami\n")
                assert (
                    recv_line(client_socket) == b"203.0.113.7:40002 via 127.0.0.1 TLSv1.3/localhost proxy 203.0.113.7\n"
                )
        assert wait_until(lambda: in_flight(server) == 0)
        assert not server._proxied_connections()._by_request, "each PROXY entry went with its connection"


def test_a_stalled_proxy_header_is_cut_at_the_stages_deadline(pki: Pki, logs: pytest.LogCaptureFixture) -> None:
    # No connection_timeout: the stages' own deadline (the header's timeout
    # plus the handshake's) cuts it.
    server = tls_server(
        pki, handshake_timeout=0.2, proxy_protocol=sockserve.ProxyProtocol(["127.0.0.1/32"], timeout=0.2)
    )
    with running_server(server):
        with connect(server.server_address) as staller:
            staller.sendall(b"PROXY TCP4 203.0.113.7")  # ... and never the rest
            assert closed_by_server(staller) == b""
        assert wait_until(lambda: lines(logs, r"stages did not finish in time"))
        assert wait_until(lambda: in_flight(server) == 0)


def test_drain_with_tls_connections_open(pki: Pki) -> None:
    server = tls_server(pki)
    with running_server(server):
        idle = tls_connect(server, pki)
        busy = tls_connect(server, pki)
        unshaken = connect(server.server_address)  # accepted; its handshake comes after the drain begins
        with idle, busy, unshaken:
            idle.sendall(b"first\n")
            assert recv_line(idle) == b"first\n"
            busy.sendall(b"wait\n")  # in flight when the drain begins
            assert wait_until(lambda: in_flight(server) == 3)
            reports: list[sockserve.DrainReport] = []
            stopper = threading.Thread(target=lambda: reports.append(server.stop(TIMEOUT)))
            stopper.start()
            try:
                assert idle.recv(100) == b"", "the connection between requests is closed by the drain"
                with pki.client_context().wrap_socket(unshaken, server_hostname="localhost") as late:
                    late.sendall(b"promised\n")  # accepting it promised its client this request
                    assert recv_line(late) == b"promised\n"
                    assert late.recv(100) == b""
                server.go.set()
                assert recv_line(busy) == b"wait\n"
                assert busy.recv(100) == b""
            finally:
                server.go.set()
                stopper.join(TIMEOUT)
            assert not stopper.is_alive()
    assert reports[0].in_flight == 3
    assert reports[0].forced == 0
