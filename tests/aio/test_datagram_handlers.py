"""Both async datagram handlers on the loop's own datagram endpoint and on the
server's own read loop: the callback handler (``AsyncDatagramProtocolHandler``)
and the task handler (``AsyncDatagramRequestHandler``), on every family and
both loops, with the limits, hooks and stops that apply to datagrams."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import sockserve
from sockserve import aio
from sockserve.aio._datagram import LOOP_RECV_BUFFER
from sockserve.testing import running_server

from ..helpers import TIMEOUT, wait_until
from .conftest import LogWatcher

pytestmark = pytest.mark.timeout(60)

FAMILIES = {"ipv4": socket.AF_INET, "ipv6": socket.AF_INET6, "unix": socket.AF_UNIX}
SERVERS = {"ipv4": aio.AsyncUDPServer, "ipv6": aio.AsyncUDPServer, "unix": aio.AsyncUnixDatagramServer}
# The loop's endpoint below LOOP_RECV_BUFFER; the server's own read loop at it.
READERS = {"endpoint": 8192, "own": LOOP_RECV_BUFFER}


class CallbackEcho(aio.AsyncDatagramProtocolHandler):
    def datagram_received(self, data: bytes, client_address: Any) -> None:
        if data == b"boom":
            raise RuntimeError("boom")
        self.sendto(data, client_address)


class TaskEcho(aio.AsyncDatagramRequestHandler):
    async def handle(self) -> None:
        if self.packet == b"boom":
            raise RuntimeError("boom")
        await self.reply(self.packet)


HANDLERS = {"callback": CallbackEcho, "task": TaskEcho}


def make(server_class: type[Any], address: Any, handler: type, loop_kind: str, reader: str = "endpoint") -> Any:
    server = server_class(address, handler)
    server.event_loop = loop_kind
    server.max_packet_size = READERS[reader]
    return server


@pytest.fixture
def client(family: str, short_tmp: str) -> Iterator[socket.socket]:
    with socket.socket(FAMILIES[family], socket.SOCK_DGRAM) as sock:
        sock.settimeout(TIMEOUT)
        if family == "unix":
            sock.bind(os.path.join(short_tmp, "client.sock"))  # so the reply has somewhere to go
        yield sock


@pytest.fixture
def udp_client() -> Iterator[socket.socket]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(TIMEOUT)
        yield sock


@pytest.mark.parametrize("reader", list(READERS))
@pytest.mark.parametrize("kind", list(HANDLERS))
def test_echo_on_every_family(
    family: str, address_for: Any, loop_kind: str, kind: str, reader: str, client: socket.socket
) -> None:
    server = make(SERVERS[family], address_for(family), HANDLERS[kind], loop_kind, reader)
    with running_server(server):
        for n in range(5):
            client.sendto(b"ping %d" % n, server.server_address)
            data, source = client.recvfrom(1024)
            assert (data, source) == (b"ping %d" % n, server.server_address)
    assert server.socket.fileno() == -1


@pytest.mark.parametrize("limit", [8192, 60000])
@pytest.mark.parametrize("kind", list(HANDLERS))
def test_an_oversized_datagram_is_dropped_with_a_line(
    loop_kind: str, kind: str, limit: int, logs: LogWatcher, udp_client: socket.socket
) -> None:
    server = make(aio.AsyncUDPServer, ("127.0.0.1", 0), HANDLERS[kind], loop_kind)
    server.max_packet_size = limit
    udp_client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    with running_server(server):
        udp_client.sendto(b"x" * (limit + 1), server.server_address)
        logs.wait_for(rf"datagram from 127\.0\.0\.1:\d+ dropped: longer than max_packet_size={limit}")
        udp_client.sendto(b"y" * limit, server.server_address)  # exactly the limit: served whole
        assert udp_client.recvfrom(limit + 1)[0] == b"y" * limit


def test_at_or_above_the_loops_buffer_the_server_reads_itself(loop_kind: str, udp_client: socket.socket) -> None:
    """The loops read into LOOP_RECV_BUFFER bytes and cannot tell a cut datagram."""
    for size, own in ((LOOP_RECV_BUFFER - 1, False), (LOOP_RECV_BUFFER, True)):
        server = make(aio.AsyncUDPServer, ("127.0.0.1", 0), CallbackEcho, loop_kind)
        server.max_packet_size = size
        with running_server(server):
            udp_client.sendto(b"ping", server.server_address)
            assert udp_client.recvfrom(100)[0] == b"ping"
            assert (server._endpoint is None) == own


@pytest.mark.parametrize("kind", list(HANDLERS))
def test_a_handler_error_is_one_line_and_the_server_goes_on(
    loop_kind: str, kind: str, logs: LogWatcher, udp_client: socket.socket
) -> None:
    server = make(aio.AsyncUDPServer, ("127.0.0.1", 0), HANDLERS[kind], loop_kind)
    with running_server(server):
        for _ in range(3):  # uvloop would close its transport after an error in the callback
            udp_client.sendto(b"boom", server.server_address)
            udp_client.sendto(b"fine", server.server_address)
            assert udp_client.recvfrom(100)[0] == b"fine"
        record = logs.wait_for(r"exception while handling a datagram from 127\.0\.0\.1:")
        assert record.exc_info is not None
        assert "boom" in str(record.exc_info[1])
    errors = [m for m in logs.messages() if "exception while handling" in m]
    assert len(errors) == 3


@pytest.mark.parametrize("kind", list(HANDLERS))
def test_verify_request_and_max_requests_apply_to_each_datagram(
    loop_kind: str, kind: str, logs: LogWatcher, udp_client: socket.socket
) -> None:
    seen: list[tuple[bytes, Any]] = []

    class Server(aio.AsyncUDPServer):
        max_requests = 3  # the refused datagram counts: the admission admitted it first

        def verify_request(self, request: Any, client_address: Any) -> bool:
            seen.append((request[0], request[1]))
            return bool(request[0] != b"refused")

    server = make(Server, ("127.0.0.1", 0), HANDLERS[kind], loop_kind)
    with running_server(server):
        udp_client.sendto(b"refused", server.server_address)
        udp_client.sendto(b"one", server.server_address)
        assert udp_client.recvfrom(100)[0] == b"one"
        udp_client.sendto(b"two", server.server_address)
        assert udp_client.recvfrom(100)[0] == b"two"
        logs.wait_for(r"3 requests admitted \(max_requests\)")
        assert server.max_requests_reached
    assert [packet for packet, _ in seen] == [b"refused", b"one", b"two"]
    assert all(sock is server.socket for _, sock in seen)


class Holder(aio.AsyncDatagramProtocolHandler):
    """``hold``: a start_task() task that waits for the test's event."""

    release: threading.Event
    started: threading.Event

    def datagram_received(self, data: bytes, client_address: Any) -> None:
        if data == b"hold":
            self.start_task(self.hold(client_address), client_address)
        else:
            self.sendto(data, client_address)

    async def hold(self, client_address: Any) -> None:
        self.started.set()
        await asyncio.to_thread(self.release.wait, TIMEOUT)
        self.sendto(b"held", client_address)


class TaskHolder(aio.AsyncDatagramRequestHandler):
    release: threading.Event
    started: threading.Event

    async def handle(self) -> None:
        if self.packet == b"hold":
            self.started.set()
            await asyncio.to_thread(self.release.wait, TIMEOUT)
            await self.reply(b"held")
        else:
            await self.reply(self.packet)


def holder(kind: str) -> type[Any]:
    base = Holder if kind == "callback" else TaskHolder
    return type("H", (base,), {"release": threading.Event(), "started": threading.Event()})


@pytest.mark.parametrize("kind", list(HANDLERS))
def test_at_max_connections_a_datagram_waits_in_the_socket(
    loop_kind: str, kind: str, logs: LogWatcher, udp_client: socket.socket
) -> None:
    handler = holder(kind)
    server = make(aio.AsyncUDPServer, ("127.0.0.1", 0), handler, loop_kind)
    server.limits = sockserve.Limits(max_connections=1)
    with running_server(server):
        udp_client.sendto(b"hold", server.server_address)
        assert handler.started.wait(TIMEOUT)
        udp_client.sendto(b"waits", server.server_address)
        logs.wait_for(r"at capacity: not accepting")
        handler.release.set()
        replies = {udp_client.recvfrom(100)[0], udp_client.recvfrom(100)[0]}
        assert replies == {b"held", b"waits"}  # not dropped: read once the first was over
    assert not [m for m in logs.messages() if "max_connections=1 reached" in m]


def test_connection_timeout_cuts_a_start_task_task(loop_kind: str, logs: LogWatcher, udp_client: socket.socket) -> None:
    handler = holder("callback")
    server = make(aio.AsyncUDPServer, ("127.0.0.1", 0), handler, loop_kind)
    server.limits = sockserve.Limits(connection_timeout=0.2)
    try:
        with running_server(server):
            udp_client.sendto(b"hold", server.server_address)
            logs.wait_for(r"connection deadline \(0\.2s\) exceeded from 127\.0\.0\.1")
            udp_client.sendto(b"after", server.server_address)
            assert udp_client.recvfrom(100)[0] == b"after"
            assert wait_until(lambda: server._in_flight_count() == 0)
    finally:
        handler.release.set()  # the cancelled task's thread


@pytest.mark.parametrize("kind", list(HANDLERS))
def test_a_stop_waits_for_a_datagram_in_flight_then_closes(
    loop_kind: str, kind: str, logs: LogWatcher, udp_client: socket.socket
) -> None:
    handler = holder(kind)
    server = make(aio.AsyncUDPServer, ("127.0.0.1", 0), handler, loop_kind)
    with running_server(server):
        udp_client.sendto(b"hold", server.server_address)
        assert handler.started.wait(TIMEOUT)
        threading.Timer(0.05, handler.release.set).start()
        report = server.stop(grace=TIMEOUT)
        assert (report.in_flight, report.forced) == (1, 0)
        assert udp_client.recvfrom(100)[0] == b"held"  # replied through the server's socket during the drain


@pytest.mark.parametrize("kind", list(HANDLERS))
def test_a_stop_past_its_grace_cancels_the_handler(
    loop_kind: str, kind: str, logs: LogWatcher, udp_client: socket.socket
) -> None:
    cancelled = threading.Event()

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()

    class Forever(aio.AsyncDatagramRequestHandler):
        async def handle(self) -> None:
            await forever()

    class ForeverCallback(aio.AsyncDatagramProtocolHandler):
        def datagram_received(self, data: bytes, client_address: Any) -> None:
            self.start_task(forever(), client_address)

    server = make(aio.AsyncUDPServer, ("127.0.0.1", 0), Forever if kind == "task" else ForeverCallback, loop_kind)
    with running_server(server):
        udp_client.sendto(b"x", server.server_address)
        assert wait_until(lambda: server._in_flight_count() == 1)
        report = server.stop(grace=0.1)
        assert (report.in_flight, report.forced) == (1, 1)
        assert cancelled.wait(TIMEOUT)
    assert not [m for m in logs.messages() if "exception while handling" in m]


def test_the_task_handler_runs_in_a_task_of_its_own(loop_kind: str, udp_client: socket.socket) -> None:
    """The fast path keeps the task semantics: current_task(), timeouts."""
    tasks: list[asyncio.Task[Any] | None] = []

    class Timed(aio.AsyncDatagramRequestHandler):
        async def setup(self) -> None:
            tasks.append(asyncio.current_task())

        async def handle(self) -> None:
            tasks.append(asyncio.current_task())
            if sys.version_info >= (3, 11):
                async with asyncio.timeout(TIMEOUT):
                    await asyncio.sleep(0)
            await self.reply(self.packet)

        async def finish(self) -> None:
            tasks.append(asyncio.current_task())

    class Plain(aio.AsyncDatagramRequestHandler):
        async def handle(self) -> None:
            tasks.append(asyncio.current_task())
            await self.reply(self.packet)

    for handler in (Timed, Plain):
        tasks.clear()
        server = make(aio.AsyncUDPServer, ("127.0.0.1", 0), handler, loop_kind)
        with running_server(server):
            for packet in (b"a", b"b"):
                udp_client.sendto(packet, server.server_address)
                assert udp_client.recvfrom(100)[0] == packet
        per_datagram = 3 if handler is Timed else 1
        assert len(tasks) == 2 * per_datagram
        assert None not in tasks
        assert len(set(tasks[:per_datagram])) == 1, "setup, handle and finish run in one task"
        assert tasks[0] is not tasks[per_datagram], "a task per datagram"


def test_the_callback_handler_is_made_once_and_sends_without_a_frame_of_ours(
    loop_kind: str, udp_client: socket.socket
) -> None:
    made: list[CallbackEcho] = []

    class Counted(CallbackEcho):
        def __init__(self, server: aio.AsyncUDPServer) -> None:
            super().__init__(server)
            made.append(self)

    server = make(aio.AsyncUDPServer, ("127.0.0.1", 0), Counted, loop_kind)
    with running_server(server):
        for packet in (b"a", b"b", b"c"):
            udp_client.sendto(packet, server.server_address)
            assert udp_client.recvfrom(100)[0] == packet
        assert len(made) == 1
        assert made[0].server is server
        # While the server reads, sendto is the transport's own.
        assert getattr(made[0].sendto, "__self__", None) is not made[0]


@pytest.mark.parametrize("kind", list(HANDLERS))
def test_serving_again_after_shutdown_reads_again(loop_kind: str, kind: str, udp_client: socket.socket) -> None:
    """shutdown() pauses the endpoint (on uvloop: closes its transport); the next serve_forever() reads again."""
    server = make(aio.AsyncUDPServer, ("127.0.0.1", 0), HANDLERS[kind], loop_kind)
    try:
        for round_ in range(2):
            # Sent while nothing serves: it waits in the server's socket.
            udp_client.sendto(b"round %d" % round_, server.server_address)
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
            thread.start()
            try:
                assert udp_client.recvfrom(100)[0] == b"round %d" % round_
                udp_client.sendto(b"more", server.server_address)
                assert udp_client.recvfrom(100)[0] == b"more"
            finally:
                server.shutdown()
                thread.join(TIMEOUT)
            assert not thread.is_alive()
    finally:
        server.server_close()
