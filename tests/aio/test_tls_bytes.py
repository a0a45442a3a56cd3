"""An async TLS connection's bytes, in the metrics and its access line, as
the synchronous servers give them (both loops' TLS close the socket before
they tell the handler the connection was lost)."""

from __future__ import annotations

import logging
import re
import socket
from pathlib import Path
from typing import Any

import pytest

import sockserve
from sockserve import aio
from sockserve._access_log import TCP_INFO_AVAILABLE
from sockserve.testing import running_server

from ..helpers import wait_until
from ..tls_certs import Pki, client_context

pytestmark = pytest.mark.skipif(not TCP_INFO_AVAILABLE, reason="TCP_INFO is Linux's")

LINE = b"hello over tls\n"


class StreamEcho(aio.AsyncStreamRequestHandler):
    async def handle(self) -> None:
        async for line in self.reader:
            await self.writer.write(line)


class CallbackEcho(aio.AsyncProtocolHandler):
    def data_received(self, data: bytes) -> None:
        self.write(data)


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@pytest.mark.parametrize("handler", [StreamEcho, CallbackEcho], ids=["stream", "callback"])
def test_a_tls_connection_s_bytes_are_counted_and_logged(
    loop: str, handler: type, pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    if loop == "uvloop" and not aio.uvloop_available():
        pytest.skip("uvloop is not installed")
    caplog.set_level(logging.INFO, logger="sockserve.access")
    files = pki.install_all(tmp_path)
    cls: Any = type("TLSServer", (aio.AsyncTCPServer,), {"event_loop": loop, "access_log": True})
    server = cls(("127.0.0.1", 0), handler)
    server.tls = sockserve.TLSConfig(*files["server"])
    with running_server(server, poll_interval=0.05):
        raw = socket.create_connection(server.server_address, timeout=10)
        with client_context(pki).wrap_socket(raw, server_hostname="localhost") as client:
            client.sendall(LINE)
            assert client.recv(64) == LINE
        assert wait_until(lambda: server.metrics.snapshot().counters["requests"] == 1)
        assert wait_until(lambda: any(r.name == "sockserve.access" for r in caplog.records))
    counters = server.metrics.snapshot().counters
    # TLS records on the wire: the handshake and the line, each way.
    assert counters["bytes_received"] > len(LINE), counters
    assert counters["bytes_sent"] > len(LINE), counters
    (line,) = [r.getMessage() for r in caplog.records if r.name == "sockserve.access"]
    match = re.search(r" bytes_received=(\d+) bytes_sent=(\d+) ", line)
    assert match is not None, line
    assert (int(match[1]), int(match[2])) == (counters["bytes_received"], counters["bytes_sent"])
