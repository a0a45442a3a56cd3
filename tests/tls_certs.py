"""Certificates for the TLS tests, made at test time by trustme: one CA, the
server's certificate (and a second one, what a reload installs), another
name's (SNI), a wildcard, a client's, a stranger's from another CA, and an
expired one; with helpers to install them as files and to build clients."""

from __future__ import annotations

import datetime
import os
import ssl
from pathlib import Path

import trustme


class Pki:
    """The certificates of a test module (make it once per module: RSA keys are slow)."""

    def __init__(self) -> None:
        self.ca = trustme.CA()
        self.server = self.ca.issue_cert("localhost", "127.0.0.1", "::1")
        self.server2 = self.ca.issue_cert("localhost", "127.0.0.1", "::1")  # what a reload installs
        self.other = self.ca.issue_cert("other.test")
        self.wild = self.ca.issue_cert("*.wild.test")
        self.client = self.ca.issue_cert("alice@example.test", common_name="alice")
        self.stranger = trustme.CA().issue_cert("mallory@example.test", common_name="mallory")  # another CA
        now = datetime.datetime.now(datetime.timezone.utc)
        self.expired = self.ca.issue_cert(
            "localhost",
            "127.0.0.1",
            not_before=now - datetime.timedelta(days=2),
            not_after=now - datetime.timedelta(days=1),
        )

    # Every certificate ``install_all`` writes, by attribute name.
    NAMES = ("server", "server2", "other", "wild", "client", "stranger", "expired")

    def install_all(self, directory: Path) -> dict[str, tuple[str, str]]:
        """Every certificate installed in ``directory`` (name -> (certfile,
        keyfile)), plus the CA as ``ca.pem`` (under the key "ca", certfile only)."""
        paths = {name: install(getattr(self, name), directory, name) for name in self.NAMES}
        self.ca.cert_pem.write_to_path(str(directory / "ca.pem"))
        paths["ca"] = (str(directory / "ca.pem"), str(directory / "ca.pem"))
        return paths


def install(cert: trustme.LeafCert, directory: Path, name: str) -> tuple[str, str]:
    """Writes ``cert``'s chain and key as ``name``.crt and ``name``.key, each by
    a rename (a new inode, as a deploy does); returns their paths."""
    certfile, keyfile = directory / f"{name}.crt", directory / f"{name}.key"
    for path, pem in (
        (certfile, b"".join(blob.bytes() for blob in cert.cert_chain_pems)),
        (keyfile, cert.private_key_pem.bytes()),
    ):
        temporary = path.with_suffix(".tmp")
        temporary.write_bytes(pem)
        os.replace(temporary, path)
    return str(certfile), str(keyfile)


def der(cert: trustme.LeafCert) -> bytes:
    """The leaf certificate of ``cert`` in DER, as ``getpeercert(binary_form=True)`` gives it."""
    return ssl.PEM_cert_to_DER_cert(cert.cert_chain_pems[0].bytes().decode())


def client_context(pki: Pki, *, check_hostname: bool = True, cert: trustme.LeafCert | None = None) -> ssl.SSLContext:
    """A client trusting ``pki``'s CA, presenting ``cert`` if given."""
    context = ssl.create_default_context()
    pki.ca.configure_trust(context)
    context.check_hostname = check_hostname
    if cert is not None:
        cert.configure_cert(context)
    return context
