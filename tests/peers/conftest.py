"""Fixtures for the tests against real peers: certificates from a test CA
(trustme), and a line-echo sockserve server for a proxy to forward to."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from typing import Any

import pytest

import sockserve
from sockserve.testing import running_server


@dataclasses.dataclass(frozen=True)
class Certs:
    """PEM files of a test CA, a server certificate for localhost and
    127.0.0.1, and a client certificate whose subject CN is ``client_cn``."""

    ca: Any  # trustme.CA
    ca_file: str
    server_cert: str  # the chain
    server_key: str
    server_pem: str  # chain and key in one file, as HAProxy's "crt" wants
    client_cert: str
    client_key: str
    client_cn: str = "sockserve-test-client"


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    trustme = pytest.importorskip("trustme")
    directory = tmp_path_factory.mktemp("certs")
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1", "::1")
    client = ca.issue_cert("client.example", common_name=Certs.client_cn)

    def path(name: str) -> str:
        return os.path.join(directory, name)

    ca.cert_pem.write_to_path(path("ca.pem"))
    server.cert_chain_pems[0].write_to_path(path("server.crt"))
    for blob in server.cert_chain_pems[1:]:
        blob.write_to_path(path("server.crt"), append=True)
    server.private_key_pem.write_to_path(path("server.key"))
    server.private_key_and_cert_chain_pem.write_to_path(path("server.pem"))
    client.cert_chain_pems[0].write_to_path(path("client.crt"))
    client.private_key_pem.write_to_path(path("client.key"))
    return Certs(
        ca=ca,
        ca_file=path("ca.pem"),
        server_cert=path("server.crt"),
        server_key=path("server.key"),
        server_pem=path("server.pem"),
        client_cert=path("client.crt"),
        client_key=path("client.key"),
    )


class LineEcho(sockserve.StreamRequestHandler):
    """Echoes each line; ``whoami`` is answered with the client's address as the handler sees it."""

    def handle(self) -> None:
        for line in self.rfile:
            if line == b"whoami\n":
                line = f"{self.client_address[0]} {self.client_address[1]}\n".encode()
            self.wfile.write(line)


@pytest.fixture
def echo_server() -> Iterator[tuple[str, int]]:
    """A sockserve.ThreadingTCPServer serving ``LineEcho`` on 127.0.0.1, port 0; its address."""
    server = sockserve.ThreadingTCPServer(("127.0.0.1", 0), LineEcho)
    server.daemon_threads = True
    with running_server(server, poll_interval=0.05):
        yield server.server_address
