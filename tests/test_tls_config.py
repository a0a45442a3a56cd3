"""TLSConfig, build_context, TLSContextSource and tls_info, over real TLS on
loopback: a tiny blocking server in a thread wraps each connection with the
source's current context, and Python's ssl or ``openssl s_client`` connects.
Certificates are made at test time by trustme."""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import pickle
import queue
import re
import select
import shutil
import socket
import ssl
import subprocess
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from sockserve._tls import (
    CHECK_INTERVAL,
    SERVER_NAME_ATTRIBUTE,
    TLSConfig,
    TLSConfigError,
    TLSContextSource,
    TLSInfo,
    build_context,
    tls_info,
)

from .tls_certs import Pki, client_context, der, install

TIMEOUT = 10.0
OPENSSL = "/usr/bin/openssl"
KEEPING = "keeping the previous TLS certificates"


# --- certificates --------------------------------------------------------------


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


@pytest.fixture
def files(pki: Pki, tmp_path: Path) -> dict[str, Any]:
    """Every certificate of ``pki`` installed in this test's directory."""
    paths: dict[str, Any] = {
        name: install(getattr(pki, name), tmp_path, name)
        for name in ("server", "other", "wild", "client", "stranger", "expired")
    }
    pki.ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    paths["ca"] = str(tmp_path / "ca.pem")
    return paths


# --- a tiny TLS server ----------------------------------------------------------


class TLSServer:
    """Accepts on loopback; a thread per connection wraps it with
    ``source.context()``, puts the handshake's ``TLSInfo`` (or its exception)
    in ``results``, then echoes until the client closes."""

    def __init__(self, source: TLSContextSource) -> None:
        self.source = source
        self.results: queue.Queue[TLSInfo | BaseException] = queue.Queue()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = self.listener.getsockname()
        self._wake_r, self._wake_w = socket.socketpair()
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept_loop, name="tls-test-acceptor")

    def __enter__(self) -> TLSServer:  # noqa: PYI034 (Self is 3.11+, and this class is not subclassed)
        self._acceptor.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._wake_w.send(b"x")
        self._acceptor.join(TIMEOUT)
        for thread in self._threads:
            thread.join(TIMEOUT)
        for sock in (self.listener, self._wake_r, self._wake_w):
            sock.close()
        assert not self._acceptor.is_alive()
        assert not any(thread.is_alive() for thread in self._threads)

    def result(self) -> TLSInfo | BaseException:
        return self.results.get(timeout=TIMEOUT)

    def info(self) -> TLSInfo:
        result = self.result()
        assert isinstance(result, TLSInfo), f"the server's handshake failed: {result!r}"
        return result

    def failure(self) -> BaseException:
        result = self.result()
        assert isinstance(result, BaseException), f"the server's handshake succeeded: {result!r}"
        return result

    def _accept_loop(self) -> None:
        while True:
            ready, _, _ = select.select([self.listener, self._wake_r], [], [], TIMEOUT)
            if self._wake_r in ready or not ready:
                return
            conn, _ = self.listener.accept()
            thread = threading.Thread(target=self._serve, args=(conn,), name="tls-test-connection")
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(TIMEOUT)
            try:
                tls = self.source.context().wrap_socket(conn, server_side=True)
            except (OSError, ValueError) as error:
                self.results.put(error)
                return
            with tls:
                self.results.put(tls_info(tls))
                try:
                    while data := tls.recv(4096):
                        tls.sendall(data)
                except OSError:
                    pass  # the client went away without a close_notify: its test has looked already


@contextlib.contextmanager
def serving(tls: TLSConfig | ssl.SSLContext | TLSContextSource) -> Iterator[TLSServer]:
    source = tls if isinstance(tls, TLSContextSource) else TLSContextSource(tls)
    with TLSServer(source) as server:
        yield server


@contextlib.contextmanager
def connected(
    server: TLSServer, context: ssl.SSLContext, server_hostname: str | None = "localhost"
) -> Iterator[ssl.SSLSocket]:
    with (
        socket.create_connection(server.address, timeout=TIMEOUT) as raw,
        context.wrap_socket(raw, server_hostname=server_hostname) as tls,
    ):
        yield tls


def presented(
    server: TLSServer, context: ssl.SSLContext, server_hostname: str | None = "localhost"
) -> tuple[bytes, TLSInfo]:
    """The certificate the server presented (DER) and what its side recorded."""
    with connected(server, context, server_hostname) as tls:
        tls.sendall(b"ping")
        assert tls.recv(4) == b"ping"
        peer = tls.getpeercert(binary_form=True)
    assert peer is not None
    return peer, server.info()


def expect_refused(tls: ssl.SSLSocket) -> None:
    """A TLS 1.3 client finishes its handshake before the server has checked
    its certificate: the refusal comes as an alert (or the close) at its first read."""
    try:
        data = tls.recv(1)
    except (ssl.SSLError, ConnectionResetError):
        return
    assert data == b""


# --- TLSConfig: the value -------------------------------------------------------


def test_config_stores_paths_as_str_and_normalises_sni_names(tmp_path: Path) -> None:
    config = TLSConfig(tmp_path / "c.pem", sni={"Other.Test.": tmp_path / "o.pem", "*.Wild.test": ("w.crt", "w.key")})
    assert config.certfile == str(tmp_path / "c.pem")
    assert dict(config.sni) == {"other.test": (str(tmp_path / "o.pem"), None), "*.wild.test": ("w.crt", "w.key")}
    assert config.files() == (str(tmp_path / "c.pem"), str(tmp_path / "o.pem"), "w.crt", "w.key")


def test_config_is_a_frozen_value() -> None:
    config = TLSConfig("c.pem", "k.pem", sni={"a.test": "a.pem"}, alpn=["h2", "http/1.1"])
    assert config == TLSConfig("c.pem", "k.pem", sni={"a.test": ("a.pem", None)}, alpn=("h2", "http/1.1"))
    assert hash(config) == hash(TLSConfig("c.pem", "k.pem", sni={"a.test": "a.pem"}, alpn=("h2", "http/1.1")))
    assert pickle.loads(pickle.dumps(config)) == config
    assert copy.deepcopy(config) == config
    assert config.replace(watch=False).watch is False
    assert "sni={'a.test': ('a.pem', None)}" in repr(config)
    with pytest.raises(AttributeError, match="frozen"):
        config.certfile = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.sni["b.test"] = ("b.pem", None)  # type: ignore[index]


def test_a_client_ca_alone_means_client_certificates_are_required() -> None:
    assert TLSConfig("c.pem", client_ca="ca.pem").client_cert == "required"
    assert TLSConfig("c.pem", client_ca="ca.pem", client_cert="optional").client_cert == "optional"
    assert TLSConfig("c.pem").client_cert == "none"


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"certfile": ""}, ValueError, "certfile must not be empty"),
        ({"certfile": b"c.pem"}, TypeError, "certfile must be a path"),
        ({"keyfile": 3}, TypeError, "keyfile must be a path"),
        ({"password": b"pw"}, TypeError, "password must be a str"),
        ({"client_cert": "yes"}, ValueError, "client_cert must be 'none', 'optional' or 'required'"),
        ({"client_cert": "required"}, ValueError, "needs client_ca"),
        ({"client_cert": "optional"}, ValueError, "needs client_ca"),
        ({"handshake_timeout": 0}, ValueError, "handshake_timeout must be more than 0 seconds"),
        ({"handshake_timeout": float("inf")}, ValueError, "handshake_timeout must be at most 1000000 seconds"),
        ({"handshake_timeout": float("nan")}, ValueError, "handshake_timeout must be more than 0 seconds"),
        # Finite but longer than a wait can be (epoll's bound): every handshake timed out at once.
        ({"handshake_timeout": 2592000}, ValueError, "handshake_timeout must be at most 1000000 seconds"),
        ({"handshake_timeout": "5"}, TypeError, "handshake_timeout must be a number"),
        ({"alpn": "h2"}, TypeError, "alpn must be a sequence"),
        ({"alpn": ["h2", ""]}, ValueError, "an alpn protocol must be"),
        ({"alpn": ["x" * 256]}, ValueError, "an alpn protocol must be"),
        ({"alpn": ["hé"]}, ValueError, "an alpn protocol must be"),
        ({"watch": 1}, TypeError, "watch must be a bool"),
        ({"sni": [("a.test", "a.pem")]}, TypeError, "sni must be a mapping"),
        ({"sni": {"a b.test": "a.pem"}}, ValueError, "is not a DNS name"),
        ({"sni": {"a.*.test": "a.pem"}}, ValueError, "is not a DNS name"),
        ({"sni": {"*": "a.pem"}}, ValueError, "is not a DNS name"),
        ({"sni": {"bücher.test": "a.pem"}}, ValueError, "xn-- form"),
        (
            {"sni": {"A.test": "a.pem", "a.test.": "b.pem"}},
            ValueError,
            "sni names 'A.test' and 'a.test.' are the same name 'a.test'",
        ),
        ({"sni": {"a.test": ("a.pem",)}}, TypeError, r"must be a certfile or a \(certfile, keyfile\) pair"),
        ({"sni": {"a.test": ("a.pem", b"k")}}, TypeError, r"sni\['a.test'\] keyfile must be a path"),
    ],
)
def test_config_refuses_bad_values(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    kwargs = {"certfile": "c.pem", **kwargs}
    with pytest.raises(error, match=match):
        TLSConfig(**kwargs)


# --- build_context: what cannot be loaded ---------------------------------------


def encrypted_key(cert: trustme.LeafCert, path: Path, password: bytes) -> str:
    key = serialization.load_pem_private_key(cert.private_key_pem.bytes(), None)
    encryption = serialization.BestAvailableEncryption(password)
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption))
    return str(path)


def test_build_context_sets_a_sound_server_context(files: dict[str, Any]) -> None:
    context = build_context(TLSConfig(*files["server"], client_ca=files["ca"], alpn=["http/1.1"]))
    assert context.protocol == ssl.PROTOCOL_TLS_SERVER
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.sni_callback is not None


def test_a_missing_file_is_named(files: dict[str, Any], tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.crt")
    with pytest.raises(TLSConfigError, match=f"^{re.escape(missing)}: cannot read it: No such file or directory$"):
        build_context(TLSConfig(missing, files["server"][1]))
    assert issubclass(TLSConfigError, ValueError)


def test_a_key_that_does_not_match_is_named(files: dict[str, Any]) -> None:
    certfile, _ = files["server"]
    _, other_key = files["other"]
    with pytest.raises(
        TLSConfigError, match=f"^{re.escape(other_key)}: the private key does not match the certificate"
    ):
        build_context(TLSConfig(certfile, other_key))


def test_a_file_without_a_certificate_or_key_is_named(files: dict[str, Any]) -> None:
    certfile, keyfile = files["server"]
    with pytest.raises(TLSConfigError, match=f"^{re.escape(keyfile)}: no PEM certificate in it"):
        build_context(TLSConfig(keyfile, certfile))
    with pytest.raises(TLSConfigError, match=f"^{re.escape(certfile)}: no PEM private key in it .give keyfile="):
        build_context(TLSConfig(certfile))


def test_an_encrypted_key_needs_its_password(pki: Pki, files: dict[str, Any], tmp_path: Path) -> None:
    certfile, _ = files["server"]
    keyfile = encrypted_key(pki.server, tmp_path / "encrypted.key", b"sesame")
    build_context(TLSConfig(certfile, keyfile, password="sesame"))
    # Without a password OpenSSL would ask on the terminal; we say what is missing instead.
    with pytest.raises(TLSConfigError, match=f"^{re.escape(keyfile)}: the private key is encrypted and no password"):
        build_context(TLSConfig(certfile, keyfile))
    with pytest.raises(TLSConfigError, match=f"^{re.escape(keyfile)}: cannot decrypt the private key: wrong password"):
        build_context(TLSConfig(certfile, keyfile, password="wrong"))


def test_a_bad_client_ca_is_named(files: dict[str, Any]) -> None:
    with pytest.raises(TLSConfigError, match=f"^{re.escape(files['server'][1])}: no PEM CA certificate in it"):
        build_context(TLSConfig(*files["server"], client_ca=files["server"][1]))


def test_a_bad_sni_file_names_the_file_and_the_name(files: dict[str, Any], tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.crt")
    with pytest.raises(TLSConfigError, match=f"^{re.escape(missing)}: cannot read it: .*SNI name 'other.test'"):
        build_context(TLSConfig(*files["server"], sni={"other.test": missing}))


# --- versions -------------------------------------------------------------------


def old_version_client(pki: Pki, version: ssl.TLSVersion) -> ssl.SSLContext:
    """A client that speaks only ``version`` (its ciphers allowed at security level 0)."""
    context = client_context(pki)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # setting TLSv1 and TLSv1_1 is deprecated
        context.minimum_version = version
        context.maximum_version = version
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    return context


@pytest.mark.parametrize("version", ["TLSv1", "TLSv1_1"])
def test_tls_1_0_and_1_1_are_refused(pki: Pki, files: dict[str, Any], version: str) -> None:
    client = old_version_client(pki, ssl.TLSVersion[version])
    with serving(TLSConfig(*files["server"])) as server:
        with pytest.raises(ssl.SSLError), connected(server, client):
            pass
        failure = server.failure()
    assert isinstance(failure, ssl.SSLError)
    assert failure.reason == "UNSUPPORTED_PROTOCOL"


@pytest.mark.parametrize("version", ["TLSv1", "TLSv1_1"])
def test_the_old_version_clients_work_with_a_server_that_allows_them(
    pki: Pki, version: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The control for the test above: those clients can speak, so it is our
    server that refused them. A user's own context is used as given, with a warning."""
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        server_context.minimum_version = ssl.TLSVersion.TLSv1
    server_context.set_ciphers("DEFAULT:@SECLEVEL=0")
    pki.server.configure_cert(server_context)
    with caplog.at_level(logging.WARNING, logger="sockserve"):
        source = TLSContextSource(server_context)
    assert [record.getMessage() for record in caplog.records] == [
        "the ssl.SSLContext given allows TLS versions older than 1.2 (minimum_version=TLSv1); "
        "sockserve uses it as given"
    ]
    with serving(source) as server:
        _, info = presented(server, old_version_client(pki, ssl.TLSVersion[version]))
    assert info.version == {"TLSv1": "TLSv1", "TLSv1_1": "TLSv1.1"}[version]


@pytest.mark.parametrize(("version", "name"), [("TLSv1_2", "TLSv1.2"), ("TLSv1_3", "TLSv1.3")])
def test_tls_1_2_and_1_3_are_accepted(pki: Pki, files: dict[str, Any], version: str, name: str) -> None:
    client = client_context(pki)
    client.minimum_version = client.maximum_version = ssl.TLSVersion[version]
    with serving(TLSConfig(*files["server"])) as server:
        peer, info = presented(server, client)
    assert peer == der(pki.server)
    assert info.version == name
    assert info.cipher
    assert (info.server_name, info.peer_certificate, info.alpn_protocol) == ("localhost", None, None)


# --- SNI ------------------------------------------------------------------------


@pytest.fixture
def sni_config(files: dict[str, Any]) -> TLSConfig:
    return TLSConfig(*files["server"], sni={"other.test": files["other"], "*.wild.test": files["wild"]})


@pytest.mark.parametrize(
    ("asked", "expected", "recorded"),
    [
        ("other.test", "other", "other.test"),
        ("OTHER.Test", "other", "other.test"),
        ("a.wild.test", "wild", "a.wild.test"),
        ("a.b.wild.test", "server", "a.b.wild.test"),  # a wildcard covers one label
        ("wild.test", "server", "wild.test"),
        ("unknown.test", "server", "unknown.test"),  # an unknown name gets the default, not an abort
        ("localhost", "server", "localhost"),
        (None, "server", None),
    ],
)
def test_sni_picks_the_certificate_and_records_the_name(
    pki: Pki, sni_config: TLSConfig, asked: str | None, expected: str, recorded: str | None
) -> None:
    # No name check: the unknown names get a certificate not made for them on purpose.
    with serving(sni_config) as server:
        peer, info = presented(server, client_context(pki, check_hostname=False), asked)
    assert peer == der(getattr(pki, expected))
    assert info.server_name == recorded


def test_sni_contexts_have_the_same_settings(pki: Pki, files: dict[str, Any]) -> None:
    config = TLSConfig(*files["server"], sni={"other.test": files["other"]}, client_ca=files["ca"], alpn=["h2", "x/1"])
    client = client_context(pki, cert=pki.client)
    client.set_alpn_protocols(["x/1"])
    with serving(config) as server:
        peer, info = presented(server, client, "other.test")
    assert peer == der(pki.other)
    assert info.alpn_protocol == "x/1"
    assert info.peer_certificate is not None
    assert ("commonName", "alice") in [pair for rdn in info.peer_certificate["subject"] for pair in rdn]


def test_a_client_verifies_the_host_name(pki: Pki, files: dict[str, Any]) -> None:
    with serving(TLSConfig(*files["server"])) as server:
        with (
            pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"),
            connected(server, client_context(pki), "wrong.test"),
        ):
            pass
        server.failure()


def test_a_client_refuses_an_expired_certificate(pki: Pki, files: dict[str, Any]) -> None:
    with serving(TLSConfig(*files["expired"])) as server:
        with (
            pytest.raises(ssl.SSLCertVerificationError, match="certificate has expired"),
            connected(server, client_context(pki)),
        ):
            pass
        server.failure()


# --- client certificates ----------------------------------------------------------


def test_required_client_certificates(pki: Pki, files: dict[str, Any]) -> None:
    with serving(TLSConfig(*files["server"], client_ca=files["ca"])) as server:
        with connected(server, client_context(pki)) as tls:
            expect_refused(tls)
        assert "certificate" in str(server.failure())
        with connected(server, client_context(pki, cert=pki.stranger)) as tls:
            expect_refused(tls)
        assert "certificate verify failed" in str(server.failure())
        _, info = presented(server, client_context(pki, cert=pki.client))
    assert info.peer_certificate is not None
    assert info.peer_certificate["subjectAltName"] == (("email", "alice@example.test"),)


def test_required_client_certificates_under_tls_1_2(pki: Pki, files: dict[str, Any]) -> None:
    """Under TLS 1.2 the client learns of the refusal in its own handshake."""
    client = client_context(pki)
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    with serving(TLSConfig(*files["server"], client_ca=files["ca"])) as server:
        with pytest.raises(ssl.SSLError), connected(server, client):
            pass
        server.failure()


def test_optional_client_certificates(pki: Pki, files: dict[str, Any]) -> None:
    with serving(TLSConfig(*files["server"], client_ca=files["ca"], client_cert="optional")) as server:
        _, anonymous = presented(server, client_context(pki))
        _, alice = presented(server, client_context(pki, cert=pki.client))
        with connected(server, client_context(pki, cert=pki.stranger)) as tls:
            expect_refused(tls)  # a certificate that is sent is verified
        server.failure()
    assert anonymous.peer_certificate is None
    assert alice.peer_certificate is not None


# --- sans-IO: SSLObject -----------------------------------------------------------


def handshake_in_memory(client: ssl.SSLObject, server: ssl.SSLObject, bios: list[ssl.MemoryBIO]) -> None:
    """Runs both sides' handshakes, carrying the bytes between their BIOs
    (``bios``: client in, client out, server in, server out)."""
    client_in, client_out, server_in, server_out = bios
    for _ in range(10):
        done = 0
        for side in (client, server):
            try:
                side.do_handshake()
                done += 1
            except ssl.SSLWantReadError:
                pass
        server_in.write(client_out.read())
        client_in.write(server_out.read())
        if done == 2:
            return
    raise AssertionError("the in-memory handshake did not complete")


def test_tls_info_of_an_sslobject(pki: Pki, sni_config: TLSConfig) -> None:
    """The pipeline's sans-IO stage wraps with SSLObject: the SNI callback and tls_info work with it too."""
    bios = [ssl.MemoryBIO() for _ in range(4)]
    client = client_context(pki).wrap_bio(bios[0], bios[1], server_hostname="other.test")
    server = TLSContextSource(sni_config).context().wrap_bio(bios[2], bios[3], server_side=True)
    with pytest.raises(ValueError, match="the TLS handshake has not completed"):
        tls_info(server)
    handshake_in_memory(client, server, bios)
    assert getattr(server, SERVER_NAME_ATTRIBUTE) == "other.test"
    info = tls_info(server)
    assert (info.version, info.server_name, info.peer_certificate) == ("TLSv1.3", "other.test", None)
    assert client.getpeercert(binary_form=True) == der(pki.other)
    assert hash(info) == hash(copy.copy(info))


# --- a user's own context -----------------------------------------------------------


def test_a_users_context_is_used_as_given(pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    pki.server.configure_cert(context)
    with caplog.at_level(logging.INFO, logger="sockserve"):
        source = TLSContextSource(context)
        assert source.context() is context
        assert source.reload() is False
        assert source.context() is context
    assert [record.levelname for record in caplog.records] == ["INFO"]  # no warning: it is TLS 1.2+
    assert source.handshake_timeout == 10.0
    with serving(source) as server:
        _, info = presented(server, client_context(pki))
    assert info.server_name == "localhost"  # a recording SNI callback was added, as it had none


def test_a_client_context_is_refused(pki: Pki) -> None:
    with pytest.raises(TLSConfigError, match="is for clients"):
        TLSContextSource(ssl.create_default_context())
    with pytest.raises(TypeError, match=r"tls must be a sockserve\.TLSConfig or an ssl\.SSLContext"):
        TLSContextSource("cert.pem")  # type: ignore[arg-type]


def test_a_config_that_cannot_load_fails_at_start(tmp_path: Path) -> None:
    with pytest.raises(TLSConfigError, match="cannot read it"):
        TLSContextSource(TLSConfig(tmp_path / "missing.pem"))


# --- reload ---------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def info_lines(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [(record.levelname, record.getMessage()) for record in caplog.records if record.name == "sockserve"]


def test_reload_picks_new_files(
    pki: Pki, files: dict[str, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = TLSContextSource(TLSConfig(*files["server"], watch=False))
    with serving(source) as server:
        assert presented(server, client_context(pki))[0] == der(pki.server)
        install(pki.server2, tmp_path, "server")
        assert presented(server, client_context(pki))[0] == der(pki.server)  # not watching
        with caplog.at_level(logging.INFO, logger="sockserve"):
            assert source.reload() is True
        assert presented(server, client_context(pki))[0] == der(pki.server2)
    assert info_lines(caplog) == [("INFO", f"reloaded the TLS certificates from {files['server'][0]}")]


def test_a_bad_file_keeps_the_old_context(pki: Pki, files: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    certfile, keyfile = files["server"]
    source = TLSContextSource(TLSConfig(certfile, keyfile, watch=False))
    before = source.context()
    Path(certfile).write_bytes(b"half a certificate")
    with caplog.at_level(logging.INFO, logger="sockserve"):
        assert source.reload() is False
    assert info_lines(caplog) == [
        ("WARNING", f"{KEEPING}: {certfile}: no PEM certificate in it (-----BEGIN CERTIFICATE-----)")
    ]
    assert source.context() is before
    with serving(source) as server:
        assert presented(server, client_context(pki))[0] == der(pki.server)


def test_connections_in_flight_keep_their_context(pki: Pki, files: dict[str, Any], tmp_path: Path) -> None:
    source = TLSContextSource(TLSConfig(*files["server"], watch=False))
    with serving(source) as server, connected(server, client_context(pki)) as first:
        server.info()
        install(pki.server2, tmp_path, "server")
        assert source.reload()
        assert presented(server, client_context(pki))[0] == der(pki.server2)
        first.sendall(b"still here")  # the first connection goes on, with its certificate
        assert first.recv(10) == b"still here"
        assert first.getpeercert(binary_form=True) == der(pki.server)


def test_watch_reloads_after_a_file_is_replaced(
    pki: Pki, files: dict[str, Any], tmp_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    source = TLSContextSource(TLSConfig(*files["server"]), clock=clock)
    before = source.context()
    install(pki.server2, tmp_path, "server")
    clock.now += CHECK_INTERVAL / 2
    assert source.context() is before  # looked at most once a second
    clock.now += CHECK_INTERVAL / 2
    with caplog.at_level(logging.INFO, logger="sockserve"):
        after = source.context()
    assert after is not before
    assert info_lines(caplog) == [("INFO", f"reloaded the TLS certificates from {files['server'][0]}")]
    clock.now += CHECK_INTERVAL
    assert source.context() is after  # nothing changed since
    install(pki.server, tmp_path, "server")
    clock.now += CHECK_INTERVAL / 2
    assert source.context() is after  # the last look was half a second ago
    clock.now += CHECK_INTERVAL / 2
    assert source.context() is not after
    install(pki.server2, tmp_path, "server")
    clock.now += CHECK_INTERVAL
    with serving(source) as server:
        assert presented(server, client_context(pki))[0] == der(pki.server2)


def test_watch_sees_a_file_rewritten_in_place(pki: Pki, files: dict[str, Any], clock: FakeClock) -> None:
    certfile, keyfile = files["server"]
    source = TLSContextSource(TLSConfig(certfile, keyfile), clock=clock)
    before = source.context()
    inode = os.stat(certfile).st_ino
    for path, pem in (
        (certfile, pki.server2.cert_chain_pems[0].bytes()),
        (keyfile, pki.server2.private_key_pem.bytes()),
    ):
        mtime = os.stat(path).st_mtime_ns
        Path(path).write_bytes(pem)
        # Rewrites within one tick of the file system's clock keep the mtime;
        # a real deploy is seconds apart: say so.
        os.utime(path, ns=(mtime + 10**9, mtime + 10**9))
    assert os.stat(certfile).st_ino == inode
    clock.now += CHECK_INTERVAL
    assert source.context() is not before
    with serving(source) as server:
        assert presented(server, client_context(pki))[0] == der(pki.server2)


def test_watch_sees_a_new_mtime(files: dict[str, Any], clock: FakeClock) -> None:
    """Same inode, same size: the mtime alone tells a rewrite (here a touch)."""
    certfile, keyfile = files["server"]
    source = TLSContextSource(TLSConfig(certfile, keyfile), clock=clock)
    before = source.context()
    mtime = os.stat(keyfile).st_mtime_ns
    os.utime(keyfile, ns=(mtime + 10**9, mtime + 10**9))
    clock.now += CHECK_INTERVAL
    assert source.context() is not before


def test_watch_sees_a_new_inode(files: dict[str, Any], tmp_path: Path, clock: FakeClock) -> None:
    """Same size, same mtime (a copy that kept its times, as cp -p or a
    Kubernetes secret's swapped symlink can give): the inode tells."""
    certfile, keyfile = files["server"]
    source = TLSContextSource(TLSConfig(certfile, keyfile), clock=clock)
    before = source.context()
    shutil.copy2(certfile, tmp_path / "copy.tmp")  # copy2 keeps the mtime
    os.replace(tmp_path / "copy.tmp", certfile)
    clock.now += CHECK_INTERVAL
    assert source.context() is not before


def test_watch_reports_a_bad_file_once_then_takes_the_good_one(
    pki: Pki, files: dict[str, Any], tmp_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    certfile, keyfile = files["server"]
    source = TLSContextSource(TLSConfig(certfile, keyfile), clock=clock)
    before = source.context()
    _, other_key = install(pki.other, tmp_path, "other")
    shutil.copyfile(other_key, tmp_path / "key.tmp")
    os.replace(tmp_path / "key.tmp", keyfile)  # a key that does not match: half a deploy
    with caplog.at_level(logging.INFO, logger="sockserve"):
        for _ in range(3):
            clock.now += CHECK_INTERVAL
            assert source.context() is before
    assert info_lines(caplog) == [
        ("WARNING", f"{KEEPING}: {keyfile}: the private key does not match the certificate in {certfile}")
    ]
    install(pki.server2, tmp_path, "server")  # the deploy completes
    clock.now += CHECK_INTERVAL
    assert source.context() is not before


def test_watch_off_never_looks(pki: Pki, files: dict[str, Any], tmp_path: Path, clock: FakeClock) -> None:
    source = TLSContextSource(TLSConfig(*files["server"], watch=False), clock=clock)
    before = source.context()
    install(pki.server2, tmp_path, "server")
    clock.now += 10 * CHECK_INTERVAL
    assert source.context() is before


def test_reloads_during_handshakes(pki: Pki, files: dict[str, Any], tmp_path: Path) -> None:
    """Connections arriving on several threads while the certificates change
    under them: each gets one whole certificate, none fails."""
    source = TLSContextSource(TLSConfig(*files["server"], watch=False))
    certs = {der(pki.server), der(pki.server2)}
    errors: list[BaseException] = []

    def connect_some() -> None:
        try:
            for _ in range(5):
                peer, _ = presented_anyhow(server, client_context(pki))
                assert peer in certs
        except BaseException as error:
            errors.append(error)

    with serving(source) as server:
        clients = [threading.Thread(target=connect_some) for _ in range(3)]
        for thread in clients:
            thread.start()
        for cert in [pki.server2, pki.server] * 3:
            install(cert, tmp_path, "server")
            assert source.reload()
        for thread in clients:
            thread.join(TIMEOUT)
        assert not any(thread.is_alive() for thread in clients)
        results = [server.result() for _ in range(15)]
    assert not errors
    assert all(isinstance(result, TLSInfo) for result in results)


def presented_anyhow(server: TLSServer, context: ssl.SSLContext) -> tuple[bytes, None]:
    """``presented`` without taking the server's result (several clients share the queue)."""
    with connected(server, context) as tls:
        tls.sendall(b"ping")
        assert tls.recv(4) == b"ping"
        peer = tls.getpeercert(binary_form=True)
    assert peer is not None
    return peer, None


# --- openssl s_client ---------------------------------------------------------------


@pytest.fixture
def openssl() -> str:
    if not os.access(OPENSSL, os.X_OK):
        if os.environ.get("CI") == "true":
            pytest.fail(f"{OPENSSL} is missing, and CI must not skip: install the Debian package openssl")
        pytest.skip(f"{OPENSSL} is missing (Debian package openssl)")
    return OPENSSL


def s_client(openssl: str, server: TLSServer, *args: str) -> subprocess.CompletedProcess[str]:
    host, port = server.address
    command = [openssl, "s_client", "-connect", f"{host}:{port}", "-verify_return_error", *args]
    return subprocess.run(command, input="ping\n", capture_output=True, text=True, timeout=TIMEOUT, check=False)


def presented_pem(output: str) -> bytes:
    match = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", output, re.DOTALL)
    assert match, output
    return ssl.PEM_cert_to_DER_cert(match.group())


@pytest.mark.parametrize(
    ("asked", "expected"), [("other.test", "other"), ("x.wild.test", "wild"), ("unknown.test", "server")]
)
def test_openssl_sni(
    openssl: str, pki: Pki, files: dict[str, Any], sni_config: TLSConfig, asked: str, expected: str
) -> None:
    with serving(sni_config) as server:
        done = s_client(openssl, server, "-CAfile", files["ca"], "-servername", asked)
        assert done.returncode == 0, done.stdout + done.stderr
        assert server.info().server_name == asked
    assert presented_pem(done.stdout) == der(getattr(pki, expected))


def test_openssl_verifies_the_name_it_asked_for(openssl: str, files: dict[str, Any], sni_config: TLSConfig) -> None:
    with serving(sni_config) as server:
        done = s_client(
            openssl, server, "-CAfile", files["ca"], "-servername", "other.test", "-verify_hostname", "other.test"
        )
        assert done.returncode == 0, done.stdout + done.stderr
        server.info()
        done = s_client(
            openssl, server, "-CAfile", files["ca"], "-servername", "unknown.test", "-verify_hostname", "unknown.test"
        )
        assert done.returncode != 0
        assert "hostname mismatch" in done.stdout + done.stderr
        server.failure()


def test_openssl_refuses_an_expired_certificate(openssl: str, files: dict[str, Any]) -> None:
    with serving(TLSConfig(*files["expired"])) as server:
        done = s_client(openssl, server, "-CAfile", files["ca"])
        assert done.returncode != 0
        assert "certificate has expired" in done.stdout + done.stderr
        server.failure()


@pytest.mark.parametrize("flag", ["-tls1", "-tls1_1"])
def test_openssl_old_versions_refused(openssl: str, files: dict[str, Any], flag: str) -> None:
    with serving(TLSConfig(*files["server"])) as server:
        done = s_client(openssl, server, "-CAfile", files["ca"], flag, "-cipher", "DEFAULT:@SECLEVEL=0")
        assert done.returncode != 0
        failure = server.failure()
    assert isinstance(failure, ssl.SSLError)
    assert failure.reason == "UNSUPPORTED_PROTOCOL"


def test_openssl_client_certificates(openssl: str, files: dict[str, Any]) -> None:
    with serving(TLSConfig(*files["server"], client_ca=files["ca"])) as server:
        s_client(openssl, server, "-CAfile", files["ca"])
        assert "certificate" in str(server.failure())
        s_client(openssl, server, "-CAfile", files["ca"], "-cert", files["stranger"][0], "-key", files["stranger"][1])
        assert "certificate verify failed" in str(server.failure())
        certfile, keyfile = files["client"]
        done = s_client(openssl, server, "-CAfile", files["ca"], "-cert", certfile, "-key", keyfile)
        assert done.returncode == 0, done.stdout + done.stderr
        info = server.info()
    assert info.peer_certificate is not None
    assert info.peer_certificate["subjectAltName"] == (("email", "alice@example.test"),)
