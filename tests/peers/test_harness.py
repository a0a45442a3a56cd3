"""The harness against the servers that exist today: real HAProxy, nginx and
openssl in front of (or against) plain sockserve servers and raw sockets.
These prove the path a user takes: a proxy's bytes reach our server and our
parser reads them."""

from __future__ import annotations

import contextlib
import signal
import socket
import ssl
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from sockserve.protocol import ProxyHeader, parse_proxy_header

from ..helpers import TIMEOUT, connect, recv_line
from .conftest import Certs
from .peers import HAProxy, Nginx, free_port, openssl_s_client, refusing_address, require_program


def test_require_program_finds_one_in_sbin() -> None:
    assert require_program("haproxy").endswith("/haproxy")


def test_require_program_skips_locally(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no-such-program is not installed"):
        require_program("no-such-program")


def test_require_program_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="no-such-program is not installed"):
        require_program("no-such-program")


def test_haproxy_forwards_to_a_sockserve_server(echo_server: Any) -> None:
    with HAProxy.tcp([echo_server]) as haproxy, connect(haproxy.address) as client:
        client.sendall(b"through haproxy\n")
        assert recv_line(client) == b"through haproxy\n"
        # Without the PROXY protocol the server sees the proxy, not the client.
        client.sendall(b"whoami\n")
        host, port = recv_line(client).split()
        assert host == b"127.0.0.1"
        assert int(port) != client.getsockname()[1]


def test_haproxy_refused_config_shows_its_output() -> None:
    with (
        pytest.raises(AssertionError, match=r"haproxy refused its config(.|\n)*no-such-keyword"),
        HAProxy("frontend fe\n    bind {listen}\n    no-such-keyword\n"),
    ):
        pass


def test_haproxy_retries_a_port_taken_meanwhile(monkeypatch: pytest.MonkeyPatch, echo_server: Any) -> None:
    """The first port offered is held by another socket: HAProxy cannot bind
    it, and the harness starts it again on another."""
    from . import peers

    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        ports = iter([squatter.getsockname()[1]])
        monkeypatch.setattr(peers, "free_port", lambda host="127.0.0.1": next(ports, None) or free_port(host))
        with HAProxy.tcp([echo_server]) as haproxy, connect(haproxy.address) as client:
            assert haproxy.port != squatter.getsockname()[1]
            client.sendall(b"retried\n")
            assert recv_line(client) == b"retried\n"


def test_haproxy_health_checks_mark_servers_up_and_down(echo_server: Any) -> None:
    down, down_address = refusing_address()
    with down, HAProxy.tcp([echo_server, down_address], "check inter 100ms fall 1 rise 1") as haproxy:
        haproxy.wait_for_status("s1", "DOWN")
        haproxy.wait_for_status("s0", "UP")
        # Traffic goes to the one that is up, every time.
        for _ in range(4):
            with connect(haproxy.address) as client:
                client.sendall(b"ping\n")
                assert recv_line(client) == b"ping\n"


def test_haproxy_stops_and_is_reaped(echo_server: Any) -> None:
    with HAProxy.tcp([echo_server]) as haproxy:
        proc = haproxy.proc
        assert proc is not None
        assert proc.poll() is None
    assert proc.returncode is not None
    with pytest.raises(ConnectionRefusedError):  # nothing listens there any more
        connect(haproxy.address, timeout=1).close()


def test_nginx_stream_forwards_to_a_sockserve_server(echo_server: Any) -> None:
    with Nginx.proxy(echo_server, proxy_protocol=False) as nginx, connect(nginx.address) as client:
        client.sendall(b"through nginx\n")
        assert recv_line(client) == b"through nginx\n"
    assert nginx.proc is None


@pytest.mark.parametrize("program", ["haproxy", "nginx"])
def test_a_connection_left_open_does_not_hold_the_stop(program: str, echo_server: Any) -> None:
    """The harness stops a program at once (SIGTERM, the fast stop): the
    client still connected sees its connection end, and nothing is left."""
    proxy = HAProxy.tcp([echo_server]) if program == "haproxy" else Nginx.proxy(echo_server, proxy_protocol=False)
    with proxy, connect(proxy.address) as client:
        client.sendall(b"open\n")
        assert recv_line(client) == b"open\n"
        proc = proxy.proc
        assert proc is not None
        proxy.__exit__(None, None, None)  # the stop, with the connection open (a second exit is a no-op)
        # nginx exits 0; HAProxy 2.6 dies of the SIGTERM itself. Either is
        # the stop asked for, where -9 would be the harness killing it.
        assert proc.returncode in (0, -signal.SIGTERM)
        assert client.recv(100) == b""


def test_nginx_refused_config_shows_its_output() -> None:
    with (
        pytest.raises(AssertionError, match=r"nginx refused its config(.|\n)*no_such_directive"),
        Nginx("server {{\n    listen {listen};\n    no_such_directive on;\n}}\n"),
    ):
        pass


# --- HAProxy's PROXY headers, read by our parser -------------------------------------------


@contextlib.contextmanager
def raw_listener() -> Iterator[socket.socket]:
    """A plain listening socket: the test reads what the proxy sends, byte for byte."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(TIMEOUT)
        yield listener


def read_header(listener: socket.socket, then: bytes) -> tuple[ProxyHeader, bytes]:
    """Accept the proxy's connection, read its PROXY header and ``then`` (the
    client's bytes behind it), fed to the parser as they come."""
    conn, _ = listener.accept()
    with conn:
        conn.settimeout(TIMEOUT)
        data = b""
        header = None
        while header is None or len(data) < header.size + len(then):
            chunk = conn.recv(4096)
            assert chunk, f"the proxy closed after {data!r}"
            data += chunk
            if header is None:
                header = parse_proxy_header(data)
        return header, data[header.size :]


@pytest.mark.parametrize(("option", "version"), [("send-proxy", 1), ("send-proxy-v2", 2)])
def test_haproxy_proxy_headers_parse(option: str, version: int) -> None:
    with (
        raw_listener() as listener,
        HAProxy.tcp([listener.getsockname()], option) as haproxy,
        connect(haproxy.address) as client,
    ):
        client.sendall(b"after the header\n")
        header, rest = read_header(listener, b"after the header\n")
        assert header.version == version
        assert header.command == "PROXY"
        assert header.family == socket.AF_INET
        assert header.protocol == socket.SOCK_STREAM
        assert header.source == client.getsockname()
        assert header.destination == haproxy.address
        assert rest == b"after the header\n"


def test_haproxy_send_proxy_v2_ssl_cn_parses(certs: Certs) -> None:
    """A TLS frontend asking for a client certificate, and the SSL TLV with
    the client's CN that HAProxy passes on."""
    bind = f"ssl crt {certs.server_pem} ca-file {certs.ca_file} verify optional"
    with (
        raw_listener() as listener,
        HAProxy.tcp([listener.getsockname()], "send-proxy-v2-ssl-cn", bind_options=bind) as haproxy,
    ):
        context = ssl.create_default_context(cafile=certs.ca_file)
        context.load_cert_chain(certs.client_cert, certs.client_key)
        with context.wrap_socket(connect(haproxy.address), server_hostname="localhost") as client:
            client.sendall(b"over tls\n")
            header, rest = read_header(listener, b"over tls\n")
            assert header.version == 2
            assert header.source == client.getsockname()
            assert rest == b"over tls\n"
            tls = header.ssl
            assert tls is not None
            assert tls.client & 0x01  # PP2_CLIENT_SSL
            assert tls.client & 0x02  # PP2_CLIENT_CERT_CONN
            assert tls.verify == 0
            assert tls.version == client.version()
            assert tls.cn == certs.client_cn


def test_nginx_proxy_protocol_header_parses() -> None:
    with raw_listener() as listener, Nginx.proxy(listener.getsockname()) as nginx, connect(nginx.address) as client:
        client.sendall(b"after the header\n")
        header, rest = read_header(listener, b"after the header\n")
        assert header.version == 1
        assert header.source == client.getsockname()
        assert header.destination == nginx.address
        assert rest == b"after the header\n"


# --- openssl s_client ---------------------------------------------------------------------------


@contextlib.contextmanager
def tls_echo_server(certs: Certs, require_client_cert: bool = False) -> Iterator[tuple[str, int]]:
    """Python's ssl on a thread: one connection, each line echoed, then the
    client's certificate CN (or "-") when it closes its side."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs.server_cert, certs.server_key)
    if require_client_cert:
        context.load_verify_locations(certs.ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    errors: list[BaseException] = []

    def serve(listener: socket.socket) -> None:
        try:
            conn, _ = listener.accept()
            conn.settimeout(TIMEOUT)
            with context.wrap_socket(conn, server_side=True) as tls:
                reader = tls.makefile("rb")
                for line in reader:
                    tls.sendall(line)
                    if line == b"bye\n":
                        break
                peer = tls.getpeercert()
                subject = dict(item[0] for item in peer["subject"]) if peer else {}
                tls.sendall(f"cn={subject.get('commonName', '-')}\n".encode())
                reader.close()
                # close_notify: OpenSSL 3 reports a close without it as an error.
                tls.unwrap().close()
        except (OSError, ssl.SSLError) as error:
            errors.append(error)

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(TIMEOUT)
        thread = threading.Thread(target=serve, args=(listener,))
        thread.start()
        try:
            yield listener.getsockname()
        finally:
            thread.join(TIMEOUT * 2)
            assert not thread.is_alive()


def test_openssl_s_client_talks_to_python_ssl(certs: Certs) -> None:
    with tls_echo_server(certs) as address:
        code, out, err = openssl_s_client(address, b"hello\nbye\n", cafile=certs.ca_file, servername="localhost")
    assert code == 0, err
    assert "Verify return code: 0 (ok)" in out
    assert "hello\nbye\ncn=-\n" in out


def test_openssl_s_client_with_a_client_certificate(certs: Certs) -> None:
    with tls_echo_server(certs, require_client_cert=True) as address:
        code, out, err = openssl_s_client(
            address, b"bye\n", cafile=certs.ca_file, cert=certs.client_cert, key=certs.client_key
        )
    assert code == 0, err
    assert f"bye\ncn={certs.client_cn}\n" in out


def test_openssl_s_client_refuses_an_unknown_ca(certs: Certs, tmp_path: Any) -> None:
    trustme = pytest.importorskip("trustme")
    other = str(tmp_path / "other-ca.pem")
    trustme.CA().cert_pem.write_to_path(other)
    with tls_echo_server(certs) as address:
        code, _, err = openssl_s_client(address, b"bye\n", cafile=other, servername="localhost")
    assert code != 0
    assert "verify error" in err or "certificate verify failed" in err
