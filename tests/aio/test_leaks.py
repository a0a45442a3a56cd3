"""Thousands of connections opened and killed in every way a client can kill
one: afterwards no task, no connection object, no descriptor and no memory
is left behind by any of them."""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import struct
import sys
import threading
from typing import Any

import pytest

from sockserve import aio
from sockserve.testing import running_server

from ..helpers import TIMEOUT, connect, recv_line

ROUNDS = 2
PER_ROUND = 1500  # connections per round, opened in batches
BATCH = 100
RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a reset


class LineEcho(aio.AsyncStreamRequestHandler):
    loop: asyncio.AbstractEventLoop | None = None

    async def setup(self) -> None:
        LineEcho.loop = asyncio.get_running_loop()

    async def handle(self) -> None:
        async for line in self.reader:
            await self.writer.write(line)


class CallbackEcho(aio.AsyncProtocolHandler):
    def data_received(self, data: bytes) -> None:
        self.write(data)


class CountingServer(aio.AsyncTCPServer):
    """Counts handler errors instead of logging them: a logged record keeps
    its traceback, and with it the handler that raised, alive in the test's
    log capture, which would look like a leak. (A client that resets in the
    middle of a reply makes the handler's write raise.)"""

    errors = 0

    def handle_error(self, request: Any, client_address: Any) -> None:
        self.errors += 1


def _kill(sock: socket.socket, how: int) -> None:
    """End a connection in one of five ways."""
    if how == 0:  # plain close, without a word
        sock.close()
    elif how == 1:  # reset
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET)
        sock.close()
    elif how == 2:  # half a line, then a reset
        sock.sendall(b"half a li")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET)
        sock.close()
    elif how == 3:  # a full exchange, then close
        sock.sendall(b"ping\n")
        assert recv_line(sock) == b"ping\n"
        sock.close()
    else:  # half-close, then close without reading the reply
        sock.sendall(b"bye\n")
        sock.shutdown(socket.SHUT_WR)
        sock.close()


def _churn(address: Any, count: int) -> None:
    for start in range(0, count, BATCH):
        socks = [connect(address) for _ in range(BATCH)]
        for n, sock in enumerate(socks):
            _kill(sock, (start + n) % 5)


def _server_side(server: Any) -> tuple[int, int, int]:
    """(tasks on the server's loop, connections in flight, server-owned tasks), read on that loop."""
    loop = server._serving_loop
    assert loop is not None

    async def count() -> tuple[int, int, int]:
        me = asyncio.current_task()
        return (
            len([t for t in asyncio.all_tasks() if t is not me]),
            server._in_flight_count(),
            len(server._handler_tasks),
        )

    return asyncio.run_coroutine_threadsafe(count(), loop).result(TIMEOUT)


def _settled(server: Any, tasks_at_rest: int) -> tuple[int, int, int]:
    """Wait (bounded) until the server has finished with every connection."""
    pause = threading.Event()
    for _ in range(500):
        counts = _server_side(server)
        if counts == (tasks_at_rest, 0, 0):
            return counts
        pause.wait(0.02)
    return counts


def _connection_objects() -> int:
    gc.collect()
    kinds = (aio.AsyncStreamReader, aio.AsyncStreamRequestHandler, aio.AsyncProtocolHandler)
    return sum(1 for obj in gc.get_objects() if isinstance(obj, kinds))


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.slow
@pytest.mark.parametrize("handler", [LineEcho, CallbackEcho], ids=["stream", "callback"])
def test_killed_connections_leave_nothing_behind(loop_kind: str, handler: type) -> None:
    server = CountingServer(("127.0.0.1", 0), handler)
    server.event_loop = loop_kind  # type: ignore[assignment]
    with running_server(server):
        with connect(server.server_address) as sock:  # the loop is up
            sock.sendall(b"warm\n")
            assert recv_line(sock) == b"warm\n"
        tasks_at_rest = 1  # serve()
        assert _settled(server, tasks_at_rest) == (tasks_at_rest, 0, 0)
        fds_at_rest = _fds()
        blocks: list[int] = []
        for _ in range(ROUNDS):
            _churn(server.server_address, PER_ROUND)
            assert _settled(server, tasks_at_rest) == (tasks_at_rest, 0, 0), "a connection's task outlived it"
            assert _connection_objects() == 0, "a connection's objects outlived it"
            assert _fds() == fds_at_rest, "a connection's socket outlived it"
            blocks.append(sys.getallocatedblocks())
        # The first round warms caches and free lists; a leak would grow the
        # second by at least a block per connection.
        assert blocks[1] - blocks[0] < PER_ROUND // 2, f"memory grew by {blocks[1] - blocks[0]} blocks"
