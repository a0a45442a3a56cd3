"""TLS under the prefork supervisor: its workers serve TLS, and its SIGHUP
(a new generation of workers) puts a renewed certificate in service while a
connection of the old generation goes on with the old one; a worker's own
SIGHUP reloads in that worker."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers import TIMEOUT
from .tls_certs import Pki, client_context, der, install

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")

SUPERVISOR = textwrap.dedent(
    """
    import json, os, sys
    import sockserve
    from sockserve.prefork import Prefork

    certfile, keyfile = sys.argv[1], sys.argv[2]

    class Echo(sockserve.StreamRequestHandler):
        def handle(self):
            for line in self.rfile:
                self.wfile.write(b"%d " % os.getpid() + line)

    class TLSServer(sockserve.ThreadPoolTCPServer):
        # watch=False: only the signals may bring the new certificate in
        tls = sockserve.TLSConfig(certfile=certfile, keyfile=keyfile, watch=False)

    supervisor = Prefork(TLSServer, ("127.0.0.1", 0), Echo, workers=1, grace=5.0)
    supervisor.bind()
    os.write(1, (json.dumps(supervisor.server_address) + "\\n").encode())
    sys.exit(supervisor.run())
    """
)


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


def presented(address: tuple[str, int], pki: Pki) -> tuple[bytes, int]:
    """The certificate a new connection is shown, and the pid of the worker that answered."""
    context = client_context(pki)
    with (
        socket.create_connection(address, timeout=TIMEOUT) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as client,
    ):
        client.sendall(b"hi\n")
        pid = int(client.recv(100).split()[0])
        certificate = client.getpeercert(binary_form=True)
        assert certificate is not None
        return certificate, pid


def wait_for_certificate(address: tuple[str, int], pki: Pki, wanted: bytes) -> int:
    """Connect until a worker presents ``wanted`` (bounded); that worker's pid."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        certificate, pid = presented(address, pki)
        if certificate == wanted:
            return pid
        assert time.monotonic() < deadline, "the renewed certificate never came into service"


@pytest.fixture
def supervisor(tmp_path: Path, pki: Pki) -> Iterator[tuple[subprocess.Popen[bytes], tuple[str, int]]]:
    """A prefork supervisor serving TLS from ``tmp_path``'s ``live`` files
    (``pki.server`` installed), and its address; stopped with SIGTERM after."""
    certfile, keyfile = install(pki.server, tmp_path, "live")
    proc = subprocess.Popen(
        [sys.executable, "-c", SUPERVISOR, certfile, keyfile], stdout=subprocess.PIPE, start_new_session=True
    )
    try:
        assert proc.stdout is not None
        yield proc, tuple(json.loads(proc.stdout.readline()))
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(TIMEOUT * 2) == 0
        assert proc.stdout is not None
        proc.stdout.close()


def test_sighup_to_the_supervisor_brings_the_renewed_certificate_in_with_new_workers(
    tmp_path: Path, pki: Pki, supervisor: tuple[subprocess.Popen[bytes], tuple[str, int]]
) -> None:
    proc, address = supervisor
    first, old_worker = presented(address, pki)
    assert first == der(pki.server)
    context = client_context(pki)
    with (
        socket.create_connection(address, timeout=TIMEOUT) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as held,
    ):
        held.sendall(b"before\n")
        assert held.recv(100) == b"%d before\n" % old_worker
        install(pki.server2, tmp_path, "live")  # the renewed certificate, as a deploy writes it
        proc.send_signal(signal.SIGHUP)
        new_worker = wait_for_certificate(address, pki, der(pki.server2))
        assert new_worker != old_worker
        held.sendall(b"after\n")  # the old generation's connection keeps its session
        assert held.recv(100) == b"%d after\n" % old_worker
        assert held.getpeercert(binary_form=True) == der(pki.server)


def test_sighup_to_a_worker_reloads_in_that_worker(
    tmp_path: Path, pki: Pki, supervisor: tuple[subprocess.Popen[bytes], tuple[str, int]]
) -> None:
    _, address = supervisor
    first, worker = presented(address, pki)
    assert first == der(pki.server)
    install(pki.server2, tmp_path, "live")
    os.kill(worker, signal.SIGHUP)
    # The reload happens at the next connection the worker wraps: the same worker, the new certificate.
    assert wait_for_certificate(address, pki, der(pki.server2)) == worker
