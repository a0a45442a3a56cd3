"""An async server out of descriptors behaves as the pool does, on both
loops: each failed accept counted (``refused["emfile"]``), one log line per
episode, and the connections waiting in the backlog are served once
descriptors free up, none closed unanswered (uvloop's accept, left to
itself, accepts and closes them: libuv's "EMFILE trick")."""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

import pytest

from sockserve import aio
from sockserve.testing import running_server

from ..helpers import wait_until

resource = pytest.importorskip("resource")

CLIENTS = 40


class Echo(aio.AsyncStreamRequestHandler):
    async def handle(self) -> None:
        async for line in self.reader:
            await self.writer.write(line)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_out_of_descriptors_the_backlog_waits_and_is_counted(loop: str, caplog: pytest.LogCaptureFixture) -> None:
    if loop == "uvloop" and not aio.uvloop_available():
        pytest.skip("uvloop is not installed")
    caplog.set_level(logging.INFO, logger="sockserve")
    cls: Any = type("Server", (aio.AsyncTCPServer,), {"event_loop": loop})
    server = cls(("127.0.0.1", 0), Echo)
    # The clients' sockets are made first, below the limit set next: only
    # the server's accepted sockets meet it.
    clients = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(CLIENTS)]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 24, hard))
        with running_server(server, poll_interval=0.05):
            for client in clients:
                client.settimeout(10)
                client.connect(server.server_address)
                client.sendall(b"x\n")
            assert wait_until(lambda: server.refused.get("emfile", 0) > 0), server.refused
            assert wait_until(lambda: any("cannot accept on" in r.getMessage() for r in caplog.records))
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))  # descriptors free up
            answers = [client.recv(16) for client in clients]
            assert answers == [b"x\n"] * CLIENTS  # every one served, none closed unanswered
            assert server.metrics.snapshot().counters["connections_accepted"] == CLIENTS
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        for client in clients:
            client.close()
    episodes = [r for r in caplog.records if "cannot accept on" in r.getMessage()]
    assert len(episodes) == 1, [r.getMessage() for r in episodes]  # one line per episode
