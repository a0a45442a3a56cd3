"""TLS end to end on the real servers, under every model: the sequential
``TCPServer``, ``ThreadingTCPServer``, ``ThreadPoolTCPServer`` (classic
handler), ``ForkingTCPServer``, and ``sockserve.aio.AsyncTCPServer`` with a
stream handler and with a callback handler, on asyncio and on uvloop. (The
pool's framed handler has TLS tests of its own.)

Clients are Python's ssl and ``openssl s_client``. Each server serves in a
thread of this process; its ``sockserve`` log goes to a file, which the
forked children of ``ForkingTCPServer`` append to as well.

The handler speaks one line protocol: each line is answered with a JSON line
saying what the handler knows of its connection (``connection_info``: the
client's address, the socket's peer, the TLS version, the server name the
client asked for, the subject of its certificate); ``bye`` is answered
``bye`` and ends the connection. Clients always say ``bye``: under the
forking model a child inherits this process's client sockets, so a handler
that waited for the end of its client's input could wait for ever.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

import sockserve
from sockserve import _log, aio
from sockserve.protocol import DEFAULT_MAX_LINE, LineSplitter
from sockserve.testing import running_server

from .helpers import wait_until
from .peers.peers import host_port, require_program
from .tls_certs import Pki, client_context, der, install

TIMEOUT = 10.0
REPO = Path(__file__).resolve().parent.parent

# --- the handlers ----------------------------------------------------------------


def _address(address: Any) -> Any:
    return list(address[:2]) if isinstance(address, tuple) else address


def _subject(certificate: dict[str, Any] | None) -> dict[str, str] | None:
    if certificate is None:
        return None
    return {key: value for rdn in certificate["subject"] for key, value in rdn}


def report(line: bytes, info: sockserve.ConnectionInfo) -> bytes:
    """The answer to ``line``: what the handler knows of its connection."""
    text = line.decode(errors="replace").strip()
    if text == "bye":
        return b"bye\n"
    tls = info.tls
    body = {
        "line": text,
        "pid": os.getpid(),
        "client": _address(info.client_address),
        "peer": _address(info.peer_address),
        "proxy": info.proxy is not None,
        "tls": None
        if tls is None
        else {
            "version": tls.version,
            "cipher": tls.cipher,
            "server_name": tls.server_name,
            "subject": _subject(tls.peer_certificate),
        },
    }
    return json.dumps(body).encode() + b"\n"


class SyncReporter(sockserve.StreamRequestHandler):
    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(report(line, self.connection_info))
            if line.strip() == b"bye":
                return


class AsyncReporter(aio.AsyncStreamRequestHandler):
    async def handle(self) -> None:
        async for line in self.reader:
            await self.writer.write(report(line, self.connection_info))
            if line.strip() == b"bye":
                return


class CallbackReporter(aio.AsyncProtocolHandler):
    def connection_made(self) -> None:
        self.lines = LineSplitter(DEFAULT_MAX_LINE)

    def data_received(self, data: bytes) -> None:
        self.lines.feed(data)
        while line := self.lines.next_line():
            self.write(report(line, self.connection_info))
            if line.strip() == b"bye":
                self.close()
                return


# --- the models --------------------------------------------------------------------

SYNC = {
    "sequential": (sockserve.TCPServer, sockserve.UnixStreamServer),
    "threads": (sockserve.ThreadingTCPServer, sockserve.ThreadingUnixStreamServer),
    "pool": (sockserve.ThreadPoolTCPServer, sockserve.ThreadPoolUnixStreamServer),
    "fork": (sockserve.ForkingTCPServer, sockserve.ForkingUnixStreamServer),
}
ASYNC = ("async_stream", "async_callback", "async_stream_uvloop", "async_callback_uvloop")
MODELS = (*SYNC, *ASYNC)
CONCURRENT = tuple(model for model in MODELS if model != "sequential")


def server_for(model: str, address: Any) -> Any:
    """A server of ``model`` bound to ``address`` (a Unix path, or a TCP address)."""
    unix = isinstance(address, str)
    if model in SYNC:
        cls: Any = SYNC[model][unix]
        return cls(address, SyncReporter)
    base = aio.AsyncUnixStreamServer if unix else aio.AsyncTCPServer
    loop = "uvloop" if model.endswith("_uvloop") else "asyncio"
    cls = type(f"{model}Server", (base,), {"event_loop": loop})
    return cls(address, CallbackReporter if "callback" in model else AsyncReporter)


@pytest.fixture(params=MODELS)
def model(request: pytest.FixtureRequest) -> str:
    name = str(request.param)
    if name.endswith("_uvloop") and not aio.uvloop_available():
        pytest.skip("uvloop is not installed (pip install 'sockserve[uvloop]')")
    return name


@pytest.fixture(params=CONCURRENT)
def concurrent_model(request: pytest.FixtureRequest) -> str:
    name = str(request.param)
    if name.endswith("_uvloop") and not aio.uvloop_available():
        pytest.skip("uvloop is not installed (pip install 'sockserve[uvloop]')")
    return name


# --- certificates and the log -------------------------------------------------------


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


@pytest.fixture
def files(pki: Pki, tmp_path: Path) -> dict[str, tuple[str, str]]:
    return pki.install_all(tmp_path)


class LogFile:
    """The ``sockserve`` log, written to a file by this process and by forked children."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def text(self) -> str:
        return self.path.read_text(errors="replace")

    def lines(self, pattern: str = "") -> list[str]:
        regex = re.compile(pattern)
        return [line for line in self.text().splitlines() if regex.search(line)]

    def wait_for(self, pattern: str, timeout: float = TIMEOUT) -> str:
        found: list[str] = []

        def seen() -> bool:
            found[:] = self.lines(pattern)
            return bool(found)

        assert wait_until(seen, timeout), f"no log line matching {pattern!r} in:\n{self.text()}"
        return found[0]

    def warnings(self) -> list[str]:
        return self.lines(r"^WARNING ")

    def assert_no_errors(self) -> None:
        """Bad input gets a line, never an ERROR or a traceback."""
        text = self.text()
        assert not self.lines(r"^(ERROR|CRITICAL) "), text
        assert "Traceback" not in text, text


@pytest.fixture
def log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LogFile]:
    # A fresh budget: the rate limit of earlier tests' lines must not hold back this one's.
    monkeypatch.setattr(_log, "budget", _log.LogBudget())
    path = tmp_path / "sockserve.log"
    path.touch()
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("sockserve")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield LogFile(path)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        handler.close()


@contextlib.contextmanager
def serving(
    model: str,
    tls: sockserve.TLSConfig | ssl.SSLContext,
    *,
    address: Any = ("127.0.0.1", 0),
    proxy: sockserve.ProxyProtocol | None = None,
) -> Iterator[Any]:
    """A server of ``model`` with ``tls``, serving in a thread for the block."""
    server = server_for(model, address)
    server.tls = tls
    if proxy is not None:
        server.proxy_protocol = proxy
    with running_server(server, poll_interval=0.05):
        try:
            yield server
        finally:
            if isinstance(server, sockserve.ForkingMixIn):
                # A child forked while this process's own client was inside
                # OpenSSL may hold one of its locks for ever (seen once in
                # its handshake under heavy load): a stop with a grace period
                # kills it, where server_close() alone would wait for it.
                server.stop(10.0)


# --- clients ---------------------------------------------------------------------


class Client:
    """A TLS connection to a server speaking the handler's protocol, made
    with Python's ssl; ``prefix`` is sent in the clear before the handshake
    (a PROXY header)."""

    def __init__(
        self,
        address: Any,
        context: ssl.SSLContext,
        server_hostname: str | None = "localhost",
        prefix: bytes = b"",
    ) -> None:
        family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
        raw = socket.socket(family, socket.SOCK_STREAM)
        try:
            raw.settimeout(TIMEOUT)
            raw.connect(address)
            if prefix:
                raw.sendall(prefix)
            self.tls = context.wrap_socket(raw, server_hostname=server_hostname)
        except BaseException:
            raw.close()  # a no-op once wrap_socket took it (it closes its own on failure)
            raise
        self.file = self.tls.makefile("rb")

    def ask(self, line: str = "hello") -> dict[str, Any]:
        self.tls.sendall(line.encode() + b"\n")
        answer = self.file.readline()
        assert answer.endswith(b"\n"), f"the server closed the connection: {answer!r}"
        body: dict[str, Any] = json.loads(answer)
        assert body["line"] == line
        return body

    def certificate(self) -> bytes:
        """The server's certificate (DER)."""
        peer = self.tls.getpeercert(binary_form=True)
        assert peer is not None
        return peer

    def bye(self) -> None:
        self.tls.sendall(b"bye\n")
        assert self.file.readline() == b"bye\n"

    def close(self) -> None:
        self.file.close()
        self.tls.close()

    def __enter__(self) -> Client:  # noqa: PYI034 (Self is 3.11+)
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        try:
            if exc_type is None:
                self.bye()
        finally:
            self.close()


def served(address: Any, context: ssl.SSLContext, server_hostname: str | None = "localhost") -> dict[str, Any]:
    """One round trip on a new connection: what the handler reported."""
    with Client(address, context, server_hostname) as client:
        return client.ask()


def expect_refused_at_first_read(client: Client) -> None:
    """A TLS 1.3 client finishes its side of the handshake before the server
    has checked its certificate: the refusal comes at its first read, as an
    alert or as the connection's end."""
    try:
        client.tls.sendall(b"hello\n")
        answer = client.file.readline()
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        return
    assert answer == b"", f"a refused client got an answer: {answer!r}"


def s_client(
    address: Any,
    data: bytes = b"hello\nbye\n",
    *,
    cafile: str | None = None,
    servername: str | None = None,
    cert: str | None = None,
    key: str | None = None,
    extra: Sequence[str] = (),
) -> tuple[int, str, str]:
    """Run ``openssl s_client`` against ``address`` as ``peers.openssl_s_client``
    does (send ``data``, read until the server closes, fail on a failed
    verification); returns (returncode, stdout, stderr).

    It connects only once ``Popen()`` has returned: a shell waits for a line
    on its stdin before it becomes s_client. Otherwise a forking server could
    fork between s_client's start and ``Popen()`` closing its copies of the
    child's pipes: the server's child would hold the write end of the pipe
    that tells ``Popen()`` the exec succeeded, and ``Popen()`` would wait for
    it to close while that child waited for s_client, which waits for the
    data ``Popen()`` has not sent yet (seen: 1 run in 20)."""
    command = [require_program("openssl"), "s_client", "-connect", host_port(address), "-ign_eof"]
    command += ["-verify_return_error", *(["-servername", servername] if servername else ["-noservername"])]
    for option, value in (("-CAfile", cafile), ("-cert", cert), ("-key", key)):
        if value is not None:
            command += [option, value]
    command += list(extra)
    wrapper = ["/bin/sh", "-c", 'read -r go && exec "$@"', "s_client", *command]
    with subprocess.Popen(wrapper, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as process:
        try:
            out, err = process.communicate(b"go\n" + data, timeout=TIMEOUT)
        except BaseException:
            process.kill()
            raise
    return process.returncode, out.decode(errors="replace"), err.decode(errors="replace")


def answers(stdout: str) -> list[dict[str, Any]]:
    """The handler's JSON answers in what ``s_client`` printed. They are
    not always lines of their own: s_client prints what the server sends as
    it comes, and a TLS 1.3 session ticket's dump may be printed around it."""
    decoder = json.JSONDecoder()
    found = []
    for start in (match.start() for match in re.finditer(r'\{"line": ', stdout)):
        body, _ = decoder.raw_decode(stdout, start)
        found.append(body)
    return found


def verified(stdout: str) -> bool:
    """``s_client`` completed a handshake and verified the server."""
    return (
        "Verification: OK" in stdout and re.search(r"^New, TLSv1\.[23], Cipher is ", stdout, re.MULTILINE) is not None
    )


_PEM = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


def presented_to_s_client(stdout: str) -> bytes:
    """The server certificate ``s_client`` printed (its first), in DER."""
    found = _PEM.search(stdout)
    assert found is not None, stdout
    return ssl.PEM_cert_to_DER_cert(found.group())


def refused_handshakes(server: Any, expected: int) -> int:
    """``server.refused["tls_handshake"]`` once it reaches ``expected`` (or
    after the wait, what it is): a forked child's refusal is counted when the
    parent reaps the child, a moment after the child has logged it."""
    wait_until(lambda: server.refused.get("tls_handshake", 0) >= expected)
    count: int = server.refused.get("tls_handshake", 0)
    return count


# --- versions ---------------------------------------------------------------------


@pytest.mark.timeout(10)
@pytest.mark.parametrize(("version", "name"), [("TLSv1_3", "TLSv1.3"), ("TLSv1_2", "TLSv1.2")])
def test_tls_1_3_and_1_2_are_served(
    model: str, pki: Pki, files: dict[str, tuple[str, str]], log: LogFile, version: str, name: str
) -> None:
    context = client_context(pki)
    context.minimum_version = context.maximum_version = ssl.TLSVersion[version]
    with (
        serving(model, sockserve.TLSConfig(*files["server"])) as server,
        Client(server.server_address, context) as client,
    ):
        body = client.ask()
        assert client.certificate() == der(pki.server)
        assert client.ask("again")["line"] == "again"
        cipher = client.tls.cipher()
    assert body["tls"]["version"] == name
    assert cipher is not None
    assert body["tls"]["cipher"] == cipher[0]
    assert body["tls"]["server_name"] == "localhost"
    assert body["tls"]["subject"] is None
    assert body["client"][0] == "127.0.0.1"
    log.assert_no_errors()
    assert not log.warnings()


def old_version_client(pki: Pki) -> ssl.SSLContext:
    """A Python client that speaks TLS 1.1 only (its ciphers allowed at security level 0)."""
    context = client_context(pki)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # setting TLSv1_1 is deprecated
        context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    return context


@pytest.mark.timeout(10)
@pytest.mark.parametrize("client", ["python", "openssl"])
def test_tls_1_1_is_refused_and_the_server_goes_on(
    model: str, pki: Pki, files: dict[str, tuple[str, str]], log: LogFile, client: str
) -> None:
    """The old client gets as far as the server (it is allowed to speak
    TLS 1.1 at security level 0), which refuses it with one warning."""
    with serving(model, sockserve.TLSConfig(*files["server"])) as server:
        if client == "python":
            with pytest.raises(ssl.SSLError):
                Client(server.server_address, old_version_client(pki))
        else:
            code, out, err = s_client(
                server.server_address,
                cafile=files["ca"][0],
                servername="localhost",
                extra=["-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0"],
            )
            assert code != 0, out + err
            assert not answers(out)
        log.wait_for(
            r"^WARNING closing the connection from 127\.0\.0\.1:\d+: TLS handshake failed: UNSUPPORTED_PROTOCOL"
        )
        assert served(server.server_address, client_context(pki))["tls"]["version"] == "TLSv1.3"
        refused = refused_handshakes(server, 1)
    assert len(log.warnings()) == 1, log.text()
    log.assert_no_errors()
    assert refused == 1


# --- SNI ------------------------------------------------------------------------------


@pytest.mark.timeout(10)
def test_sni_chooses_the_certificate_and_the_handler_sees_the_name(
    model: str, pki: Pki, files: dict[str, tuple[str, str]], log: LogFile
) -> None:
    config = sockserve.TLSConfig(*files["server"], sni={"other.test": files["other"]})
    with serving(model, config) as server:
        code, out, err = s_client(server.server_address, cafile=files["ca"][0], servername="other.test")
        assert code == 0, out + err  # ended with a close_notify
        assert verified(out), out + err
        assert presented_to_s_client(out) == der(pki.other)
        [hello] = answers(out)
        assert hello["tls"]["server_name"] == "other.test"

        code, out, err = s_client(server.server_address, cafile=files["ca"][0], servername="localhost")
        assert code == 0, out + err  # ended with a close_notify
        assert verified(out), out + err
        assert presented_to_s_client(out) == der(pki.server)
        assert answers(out)[0]["tls"]["server_name"] == "localhost"

        code, out, err = s_client(server.server_address, cafile=files["ca"][0])  # no SNI: the default
        assert code == 0, out + err  # ended with a close_notify
        assert verified(out), out + err
        assert presented_to_s_client(out) == der(pki.server)
        assert answers(out)[0]["tls"]["server_name"] is None

        # Python's client verifies the name against the certificate it chose.
        with Client(server.server_address, client_context(pki), "OTHER.test") as client:
            assert client.certificate() == der(pki.other)
            assert client.ask()["tls"]["server_name"] == "other.test"
    log.assert_no_errors()
    assert not log.warnings()


# --- mutual TLS -------------------------------------------------------------------------


@pytest.mark.timeout(10)
def test_mutual_tls(model: str, pki: Pki, files: dict[str, tuple[str, str]], log: LogFile) -> None:
    """With ``client_cert="required"``: no certificate, or one from another
    CA, is refused (one warning each); a trusted one gets through and the
    handler sees its subject."""
    config = sockserve.TLSConfig(*files["server"], client_ca=files["ca"][0], client_cert="required")
    with serving(model, config) as server:
        address = server.server_address
        client = Client(address, client_context(pki))  # no certificate
        try:
            expect_refused_at_first_read(client)
        finally:
            client.close()
        log.wait_for(r"^WARNING .*TLS handshake failed: PEER_DID_NOT_RETURN_A_CERTIFICATE")

        with pytest.raises((ssl.SSLError, ConnectionResetError)):  # noqa: PT012 (either step may see it)
            stranger = Client(address, client_context(pki, cert=pki.stranger))
            try:
                expect_refused_at_first_read(stranger)
                raise ssl.SSLError("refused")  # refused after the handshake: the same outcome
            finally:
                stranger.close()
        log.wait_for(r"^WARNING .*TLS handshake failed: CERTIFICATE_VERIFY_FAILED")

        body = served(address, client_context(pki, cert=pki.client))
        assert body["tls"]["subject"]["commonName"] == "alice"

        code, out, err = s_client(
            address, cafile=files["ca"][0], servername="localhost", cert=files["client"][0], key=files["client"][1]
        )
        assert code == 0, out + err  # ended with a close_notify
        assert verified(out), out + err
        assert answers(out)[0]["tls"]["subject"]["commonName"] == "alice"

        _, out, err = s_client(address, cafile=files["ca"][0], servername="localhost")  # no certificate
        assert not answers(out), out + err
        # s_client may be gone before the server has logged (and counted) its refusal.
        assert wait_until(lambda: len(log.warnings()) == 3), log.text()
        refused = refused_handshakes(server, 3)
    assert len(log.warnings()) == 3, log.text()
    log.assert_no_errors()
    assert refused == 3


# --- a misconfigured server, as a real client sees it ----------------------------------


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    ("certificate", "python_error", "openssl_error", "alert"),
    [
        ("expired", "certificate has expired", "certificate has expired", "SSLV3_ALERT_CERTIFICATE_EXPIRED"),
        ("other", "Hostname mismatch", "hostname mismatch", "SSLV3_ALERT_BAD_CERTIFICATE"),
    ],
)
def test_a_client_refuses_an_expired_or_wrong_host_certificate(
    model: str,
    pki: Pki,
    files: dict[str, tuple[str, str]],
    log: LogFile,
    certificate: str,
    python_error: str,
    openssl_error: str,
    alert: str,
) -> None:
    """The client refuses the server's certificate; the server logs the
    client's alert, which names the cause (what its operator needs to know),
    and goes on serving."""
    with serving(model, sockserve.TLSConfig(*files[certificate])) as server:
        with pytest.raises(ssl.SSLCertVerificationError, match=python_error):
            Client(server.server_address, client_context(pki))
        code, out, err = s_client(
            server.server_address,
            cafile=files["ca"][0],
            servername="localhost",
            extra=["-verify_hostname", "localhost"],
        )
        assert code != 0
        assert openssl_error in out + err, out + err
        assert not answers(out)
        # The server goes on serving (a client that does not verify).
        unverified = client_context(pki, check_hostname=False)
        unverified.verify_mode = ssl.CERT_NONE
        assert served(server.server_address, unverified)["tls"]["version"] == "TLSv1.3"
        assert wait_until(lambda: len(log.warnings()) == 2), log.text()
    assert log.warnings() == log.lines(
        rf"^WARNING closing the connection from 127\.0\.0\.1:\d+: TLS handshake failed: {alert}$"
    )
    log.assert_no_errors()


# --- a client that stalls the handshake ------------------------------------------------


def client_hello() -> bytes:
    """The first flight of a real TLS client: its ClientHello record."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = ssl.create_default_context().wrap_bio(incoming, outgoing, server_hostname="localhost")
    with contextlib.suppress(ssl.SSLWantReadError):
        client.do_handshake()
    hello = outgoing.read()
    assert hello[:1] == b"\x16"  # a handshake record
    return hello


def closed_by_server(sock: socket.socket) -> bytes:
    """Read until the server closes (a reset counts)."""
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


@pytest.mark.timeout(10)
@pytest.mark.parametrize("stall", ["silent", "half_hello"])
def test_a_stalled_handshake_is_cut_at_its_deadline(
    model: str, pki: Pki, files: dict[str, tuple[str, str]], log: LogFile, stall: str
) -> None:
    """A client that connects and says nothing, or sends half a ClientHello,
    is cut at ``handshake_timeout`` with one warning, and a client that came
    after it is served.

    Under the sequential model the stalled handshake holds the serve loop
    until its deadline: the second client is served right after it (its
    answer comes once the warning is written). The concurrent models serve
    it meanwhile (``test_a_stalled_handshake_does_not_hold_up_others``)."""
    config = sockserve.TLSConfig(*files["server"], handshake_timeout=0.5)
    with serving(model, config) as server:
        with socket.create_connection(server.server_address, timeout=TIMEOUT) as staller:
            if stall == "half_hello":
                hello = client_hello()
                staller.sendall(hello[: len(hello) // 2])
            body = served(server.server_address, client_context(pki))
            if model == "sequential":
                assert log.lines("did not finish within"), "served before the stalled handshake ended"
            assert body["tls"]["version"] == "TLSv1.3"
            assert closed_by_server(staller) == b""
        log.wait_for(
            r"^WARNING closing the connection from 127\.0\.0\.1:\d+: the TLS handshake did not finish within 0.5s$"
        )
        refused = refused_handshakes(server, 1)
    assert len(log.warnings()) == 1, log.text()
    log.assert_no_errors()
    assert refused == 1


@pytest.mark.timeout(10)
@pytest.mark.parametrize("stall", ["silent", "half_hello"])
def test_a_stalled_handshake_does_not_hold_up_others(
    concurrent_model: str, pki: Pki, files: dict[str, tuple[str, str]], log: LogFile, stall: str
) -> None:
    """While a client stalls its handshake, others are served: proven with a
    deadline long enough (5 s) that the staller is certainly still waiting
    when they are, so that this holds on a loaded machine too. (The
    sequential model does hold up others: see the test above.)"""
    config = sockserve.TLSConfig(*files["server"], handshake_timeout=5.0)
    with serving(concurrent_model, config) as server:
        with socket.create_connection(server.server_address, timeout=TIMEOUT) as staller:
            if stall == "half_hello":
                hello = client_hello()
                staller.sendall(hello[: len(hello) // 2])
            for _ in range(3):
                assert served(server.server_address, client_context(pki))["tls"]["version"] == "TLSv1.3"
            staller.setblocking(False)
            with pytest.raises(BlockingIOError):  # still open, nothing sent: still waiting for us
                staller.recv(1)
            # A shutdown reaches the server even where a forked child holds a copy of this socket.
            staller.shutdown(socket.SHUT_RDWR)
        # It went away: an INFO line, not a warning.
        log.wait_for(r"^INFO client 127\.0\.0\.1:\d+ went away during the TLS handshake")
    assert not log.warnings(), log.text()
    log.assert_no_errors()


# --- a plain-text client -------------------------------------------------------------------


@pytest.mark.timeout(10)
def test_a_plain_text_client_gets_one_warning_and_no_traceback(
    model: str, pki: Pki, files: dict[str, tuple[str, str]], log: LogFile
) -> None:
    with serving(model, sockserve.TLSConfig(*files["server"])) as server:
        with socket.create_connection(server.server_address, timeout=TIMEOUT) as plain:
            plain.sendall(b"GET / HTTP/1.0\r\n\r\n")
            assert b"HTTP" not in closed_by_server(plain)  # at most a TLS alert
        log.wait_for(r"^WARNING closing the connection from 127\.0\.0\.1:\d+: TLS handshake failed: ")
        assert served(server.server_address, client_context(pki))["tls"]["version"] == "TLSv1.3"
        refused = refused_handshakes(server, 1)
    assert len(log.warnings()) == 1, log.text()
    log.assert_no_errors()
    assert refused == 1


# --- reload -----------------------------------------------------------------------------------


class Load:
    """Client threads, each connecting again and again (bounded) while the
    test changes the certificates, recording what each connection saw."""

    def __init__(self, address: Any, context: ssl.SSLContext, threads: int = 3, rounds: int = 400) -> None:
        self.address = address
        self.context = context
        self.rounds = rounds
        self.reloaded = threading.Event()  # set once the reload has returned
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self.seen: list[tuple[bool, bytes]] = []  # (begun after the reload, the certificate presented)
        self.errors: list[BaseException] = []
        self._threads = [threading.Thread(target=self._run, name=f"tls-load-{n}") for n in range(threads)]

    def _run(self) -> None:
        for _ in range(self.rounds):
            if self.stop.is_set():
                return
            after = self.reloaded.is_set()
            try:
                with Client(self.address, self.context) as client:
                    client.ask()
                    certificate = client.certificate()
            except BaseException as error:  # reported by the test
                with self._lock:
                    self.errors.append(error)
                return
            with self._lock:
                self.seen.append((after, certificate))

    def count(self, after: bool) -> int:
        with self._lock:
            return sum(1 for begun_after, _ in self.seen if begun_after == after)

    def __enter__(self) -> Load:  # noqa: PYI034 (Self is 3.11+)
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(TIMEOUT)
        assert not any(thread.is_alive() for thread in self._threads)

    def wait_for(self, after: bool, count: int) -> None:
        assert wait_until(lambda: self.count(after) >= count or bool(self.errors)), (self.seen, self.errors)
        assert not self.errors, self.errors


@pytest.mark.timeout(20)
def test_reload_under_load(model: str, pki: Pki, tmp_path: Path, log: LogFile) -> None:
    """Clients keep connecting while the files are replaced and
    ``reload_tls()`` is called: none fails, every connection begun after
    the reload presents the new certificate, and a connection opened before
    keeps working (except under the sequential model, where a connection
    held open would hold the serve loop)."""
    certfile, keyfile = install(pki.server, tmp_path, "live")
    old, new = der(pki.server), der(pki.server2)
    config = sockserve.TLSConfig(certfile, keyfile, watch=False)  # the reload is reload_tls()'s
    with serving(model, config) as server:
        address = server.server_address
        before = None if model == "sequential" else Client(address, client_context(pki))
        try:
            if before is not None:
                before.ask()
            with Load(address, client_context(pki)) as load:
                load.wait_for(after=False, count=6)
                install(pki.server2, tmp_path, "live")
                assert server.reload_tls()
                load.reloaded.set()
                load.wait_for(after=True, count=6)
            assert not load.errors, load.errors
            assert {certificate for after, certificate in load.seen if after} == {new}
            assert old in {certificate for after, certificate in load.seen if not after}
            if before is not None:
                assert before.ask("still there")["tls"]["version"] == "TLSv1.3"
                assert before.certificate() == old
                before.bye()
        finally:
            if before is not None:
                before.close()
    log.wait_for(r"^INFO reloaded the TLS certificates from ")
    assert not log.warnings(), log.text()
    log.assert_no_errors()


SIGHUP_SERVER = """
import json, logging, signal, sys
import sockserve
from sockserve import aio
from tests.test_tls_servers import server_for

model, certfile, keyfile, log_path = sys.argv[1:5]
handler = logging.FileHandler(log_path)
handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
logging.getLogger("sockserve").addHandler(handler)
logging.getLogger("sockserve").setLevel(logging.INFO)
# SIGHUP waits, blocked, until serve() has its handler in place.
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGHUP])
server = server_for(model, ("127.0.0.1", 0))
server.tls = sockserve.TLSConfig(certfile, keyfile, watch=False)
print(json.dumps(server.server_address[:2]), flush=True)
sockserve.serve(server, grace=5.0, unblock=[signal.SIGHUP])
"""


@pytest.mark.timeout(30)
@pytest.mark.parametrize("server_model", ["threads", "async_stream"])
def test_sighup_under_serve_reloads_under_load(pki: Pki, tmp_path: Path, server_model: str) -> None:
    """``sockserve.serve()`` in a process of its own: SIGHUP after the files
    were replaced; clients connecting meanwhile never fail, and the new
    certificate is presented from then on."""
    certfile, keyfile = install(pki.server, tmp_path, "live")
    log_path = tmp_path / "serve.log"
    proc = subprocess.Popen(
        [sys.executable, "-c", SIGHUP_SERVER, server_model, certfile, keyfile, str(log_path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        address = tuple(json.loads(proc.stdout.readline()))
        with Load(address, client_context(pki), threads=2) as load:
            load.wait_for(after=False, count=4)
            install(pki.server2, tmp_path, "live")
            proc.send_signal(signal.SIGHUP)
            # The reload happens at the first connection after the signal was handled: wait for the new certificate.
            assert wait_until(lambda: any(c == der(pki.server2) for _, c in load.seen) or bool(load.errors))
            load.reloaded.set()  # from here on, only the new one
            load.wait_for(after=True, count=4)
        assert not load.errors, load.errors
        assert {certificate for after, certificate in load.seen if after} == {der(pki.server2)}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(TIMEOUT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(TIMEOUT)
        assert proc.stdout is not None
        proc.stdout.close()
    text = log_path.read_text()
    assert len(re.findall(r"^INFO reloaded the TLS certificates from ", text, re.MULTILINE)) == 1, text
    for unwanted in ("WARNING", "ERROR", "Traceback"):
        assert unwanted not in text, text


# --- PROXY, then TLS ----------------------------------------------------------------------


@pytest.mark.timeout(10)
def test_proxy_header_then_tls(model: str, pki: Pki, files: dict[str, tuple[str, str]], log: LogFile) -> None:
    """A trusted proxy sends a v1 header in the clear, then the client's TLS
    handshake follows: the handler sees the header's client and the TLS session."""
    proxy = sockserve.ProxyProtocol(trusted=["127.0.0.1/32"])
    header = b"PROXY TCP4 203.0.113.7 127.0.0.1 56324 443\r\n"
    with (
        serving(model, sockserve.TLSConfig(*files["server"]), proxy=proxy) as server,
        Client(server.server_address, client_context(pki, cert=pki.client), prefix=header) as client,
    ):
        body = client.ask()
        assert client.certificate() == der(pki.server)
    assert body["client"] == ["203.0.113.7", 56324]
    assert body["peer"][0] == "127.0.0.1"
    assert body["proxy"] is True
    assert body["tls"]["version"] == "TLSv1.3"
    assert body["tls"]["server_name"] == "localhost"
    log.assert_no_errors()
    assert not log.warnings()


# --- Unix sockets --------------------------------------------------------------------------


@pytest.mark.timeout(10)
def test_tls_on_a_unix_socket(
    model: str, pki: Pki, files: dict[str, tuple[str, str]], short_tmp: str, log: LogFile
) -> None:
    """The Unix-socket servers speak TLS the same way (mutual TLS here)."""
    config = sockserve.TLSConfig(*files["server"], client_ca=files["ca"][0], client_cert="required")
    path = os.path.join(short_tmp, "tls.sock")
    with serving(model, config, address=path) as server:
        with Client(server.server_address, client_context(pki, cert=pki.client)) as client:
            body = client.ask()
            assert client.certificate() == der(pki.server)
        client = Client(server.server_address, client_context(pki))  # no certificate
        try:
            expect_refused_at_first_read(client)
        finally:
            client.close()
        log.wait_for(r"^WARNING .*TLS handshake failed: PEER_DID_NOT_RETURN_A_CERTIFICATE")
        refused = refused_handshakes(server, 1)
    assert body["tls"]["version"] == "TLSv1.3"
    assert body["tls"]["server_name"] == "localhost"
    assert body["tls"]["subject"]["commonName"] == "alice"
    assert len(log.warnings()) == 1, log.text()
    log.assert_no_errors()
    assert refused == 1


# --- the end of a session -------------------------------------------------------------------


@pytest.mark.timeout(10)
def test_the_server_ends_a_session_with_close_notify(
    model: str, pki: Pki, files: dict[str, tuple[str, str]], log: LogFile
) -> None:
    """When the handler returns, the server ends the TLS session properly:
    a close_notify alert before the TCP close, so that a client can tell the
    end of the data from a truncation by an attacker (RFC 8446, 6.1)."""
    with serving(model, sockserve.TLSConfig(*files["server"])) as server:
        code, out, err = s_client(server.server_address, cafile=files["ca"][0], servername="localhost")
        assert verified(out), out + err
        assert [answer["line"] for answer in answers(out)] == ["hello"]
        with socket.create_connection(server.server_address, timeout=TIMEOUT) as raw:
            context = client_context(pki)
            with context.wrap_socket(raw, server_hostname="localhost", suppress_ragged_eofs=False) as tls:
                tls.sendall(b"bye\n")
                received = b""
                while not received.endswith(b"\n"):
                    chunk = tls.recv(64)
                    assert chunk
                    received += chunk
                assert received == b"bye\n"
                try:
                    end = tls.recv(64)
                except ssl.SSLEOFError as error:
                    end = repr(error).encode()
        assert end == b"", "the server closed without a close_notify"
    assert "unexpected eof" not in err, err
    assert code == 0, out + err
    log.assert_no_errors()


@pytest.mark.timeout(10)
def test_refused_counts_failed_handshakes(
    model: str, pki: Pki, files: dict[str, tuple[str, str]], log: LogFile
) -> None:
    """``server.refused["tls_handshake"]`` counts each failed handshake,
    whichever process or thread ran it."""
    with serving(model, sockserve.TLSConfig(*files["server"])) as server:
        for _ in range(2):
            with socket.create_connection(server.server_address, timeout=TIMEOUT) as plain:
                plain.sendall(b"GET / HTTP/1.0\r\n\r\n")
                closed_by_server(plain)
        assert wait_until(lambda: len(log.warnings()) == 2), log.text()
        # The server is still serving: the count is read while it is.
        assert served(server.server_address, client_context(pki))["tls"]["version"] == "TLSv1.3"
        refused = refused_handshakes(server, 2)
    assert refused == 2


@pytest.mark.timeout(10)
def test_a_client_that_ends_its_session_first_is_not_logged(
    model: str, pki: Pki, files: dict[str, tuple[str, str]], log: LogFile, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that sends its close_notify first (it is done, and says so
    properly) ends the handler's input: an ordinary end, which no logger
    (the event loop's included) warns about."""
    caplog.set_level(logging.WARNING)
    with serving(model, sockserve.TLSConfig(*files["server"])) as server:
        for _ in range(2):
            client = Client(server.server_address, client_context(pki))
            try:
                client.ask()
                # The close_notify; unwrap() then waits for the server's end of the session,
                # which comes once the handler has seen the end of its input and returned.
                client.tls.unwrap()
            finally:
                client.close()
        assert served(server.server_address, client_context(pki))["tls"]["version"] == "TLSv1.3"
    assert [f"{record.name}: {record.getMessage()}" for record in caplog.records] == []
    assert not log.warnings(), log.text()
    log.assert_no_errors()
