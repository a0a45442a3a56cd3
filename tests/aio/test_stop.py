"""Stopping: a graceful stop lets a slow request finish and refuses new
connections; shutdown() works from another thread, from a signal handler and
before serving; the server serves inside a running loop; and a server made
before fork() serves in the child, as a prefork worker does."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from typing import Any

import pytest

import sockserve
from sockserve import aio

from ..helpers import TIMEOUT, connect, recv_all, recv_line, round_trip
from .conftest import LogWatcher, closed_by_server


class LineEcho(aio.AsyncStreamRequestHandler):
    async def handle(self) -> None:
        async for line in self.reader:
            await self.writer.write(line)


class Gate:
    """Lets a test hold a handler in the middle of its request, then release it."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._future: asyncio.Future[None] | None = None

    async def wait(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._future = self._loop.create_future()
        self.entered.set()
        await self._future

    def release(self) -> None:
        assert self._loop is not None
        assert self._future is not None
        self._loop.call_soon_threadsafe(self._future.set_result, None)


def serving(server: Any, loop_kind: str) -> threading.Thread:
    server.event_loop = loop_kind
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return thread


def test_stop_lets_a_slow_request_finish_and_refuses_new_connections(loop_kind: str, logs: LogWatcher) -> None:
    gate = Gate()

    class Slow(aio.AsyncStreamRequestHandler):
        async def handle(self) -> None:
            request = await self.reader.readline()
            await gate.wait()
            await self.writer.write(b"reply to " + request)

    server = aio.AsyncTCPServer(("127.0.0.1", 0), Slow)
    thread = serving(server, loop_kind)
    reports: list[sockserve.DrainReport] = []
    with connect(server.server_address) as client:
        client.sendall(b"slow request\n")
        assert gate.entered.wait(TIMEOUT)
        stopper = threading.Thread(target=lambda: reports.append(server.stop(grace=30)))
        stopper.start()
        logs.wait_for(r"draining 127\.0\.0\.1:\d+: 1 connection\(s\) in flight")
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(server.server_address, timeout=TIMEOUT).close()
        gate.release()
        assert recv_all(client) == b"reply to slow request\n"
        stopper.join(TIMEOUT)
        thread.join(TIMEOUT)
    assert not stopper.is_alive()
    assert not thread.is_alive()
    assert reports[0].in_flight == 1
    assert reports[0].clean
    logs.wait_for("every connection finished")


def test_stop_closes_what_outlives_the_grace_period(loop_kind: str, logs: LogWatcher) -> None:
    reading = threading.Event()
    finished = threading.Event()

    class Stuck(aio.AsyncStreamRequestHandler):
        async def handle(self) -> None:
            await self.reader.readline()
            reading.set()
            await asyncio.sleep(3600)

        async def finish(self) -> None:
            finished.set()

    server = aio.AsyncTCPServer(("127.0.0.1", 0), Stuck)
    thread = serving(server, loop_kind)
    with connect(server.server_address) as client:
        client.sendall(b"x\n")
        assert reading.wait(TIMEOUT)
        report = server.stop(grace=0.2)
        assert closed_by_server(client) == b""
    thread.join(TIMEOUT)
    assert not thread.is_alive()
    assert report.in_flight == 1
    assert report.forced == 1
    assert finished.is_set(), "finish() runs for a connection closed at the end of the grace period"
    logs.wait_for(r"grace period \(0\.2s\) over, closed 1 connection\(s\) still in flight")


def test_shutdown_from_another_thread_returns_serve_forever(loop_kind: str) -> None:
    with aio.AsyncTCPServer(("127.0.0.1", 0), LineEcho) as server:
        thread = serving(server, loop_kind)
        assert round_trip(server.server_address) == b"hello\n"
        server.shutdown()
        thread.join(TIMEOUT)
        assert not thread.is_alive()
        # The socket is still open: a second serve_forever() serves again.
        thread = serving(server, loop_kind)
        assert round_trip(server.server_address, b"again\n") == b"again\n"
        server.shutdown()
        thread.join(TIMEOUT)
        assert not thread.is_alive()


def test_shutdown_before_serving_makes_serve_forever_return_at_once(loop_kind: str) -> None:
    with aio.AsyncTCPServer(("127.0.0.1", 0), LineEcho) as server:
        server.shutdown()  # nothing serves: returns at once
        server.serve_forever(loop=loop_kind)  # the pending stop ends it at once


def test_shutdown_from_a_signal_handler(loop_kind: str) -> None:
    with aio.AsyncTCPServer(("127.0.0.1", 0), LineEcho) as server:
        previous = signal.signal(signal.SIGUSR1, lambda signum, frame: server.shutdown())
        try:

            def poke() -> None:
                assert round_trip(server.server_address) == b"hello\n"  # it serves
                os.kill(os.getpid(), signal.SIGUSR1)

            client = threading.Thread(target=poke)
            client.start()
            server.serve_forever(loop=loop_kind)  # on the main thread, where the signal lands
            client.join(TIMEOUT)
        finally:
            signal.signal(signal.SIGUSR1, previous)


def test_serve_inside_a_running_loop_and_serve_forever_refuses_to_block_it(loop_kind: str) -> None:
    async def main() -> sockserve.DrainReport:
        server = aio.AsyncTCPServer(("127.0.0.1", 0), LineEcho)
        with pytest.raises(RuntimeError, match=r"use await server\.serve\(\)"):
            server.serve_forever()  # one return type: it always blocks, so inside a loop it must refuse
        serving = asyncio.create_task(server.serve())
        reader, writer = await asyncio.open_connection(*server.server_address)
        writer.write(b"inside\n")
        assert await reader.readline() == b"inside\n"
        writer.close()
        await writer.wait_closed()
        report = await server.aclose(grace=5)
        await asyncio.wait_for(serving, TIMEOUT)
        return report

    loop = aio.new_event_loop(loop_kind)  # type: ignore[arg-type]
    try:
        report = loop.run_until_complete(main())
    finally:
        loop.close()
    assert report.clean


def test_async_with_closes_everything(loop_kind: str) -> None:
    async def main() -> None:
        async with aio.AsyncTCPServer(("127.0.0.1", 0), LineEcho) as server:
            serving = asyncio.create_task(server.serve())
            reader, writer = await asyncio.open_connection(*server.server_address)
            writer.write(b"one\n")
            assert await reader.readline() == b"one\n"
            server.shutdown()  # on the loop's thread: returns at once
            await asyncio.wait_for(serving, TIMEOUT)
        assert await reader.read() == b""  # the open connection was closed with the server
        writer.close()

    loop = aio.new_event_loop(loop_kind)  # type: ignore[arg-type]
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()


PREFORK_WORKER = textwrap.dedent(
    """
    import os, signal, socket, sys
    from sockserve import aio

    class Echo(aio.AsyncStreamRequestHandler):
        async def handle(self):
            async for line in self.reader:
                await self.writer.write(line)

    server = aio.AsyncTCPServer(("127.0.0.1", 0), Echo)  # bound and listening before the fork
    server.event_loop = sys.argv[1]
    pid = os.fork()
    if pid == 0:  # the worker
        signal.signal(signal.SIGTERM, lambda signum, frame: server.shutdown())
        server.serve_forever()
        report = server.stop(grace=5)
        os._exit(0 if report.clean else 1)
    with socket.create_connection(server.server_address, timeout=10) as sock:
        sock.sendall(b"to the worker\\n")
        assert sock.recv(100) == b"to the worker\\n"
    os.kill(pid, signal.SIGTERM)
    _, status = os.waitpid(pid, 0)
    server.server_close()
    print("worker exit", os.waitstatus_to_exitcode(status))
    """
)


def test_a_server_made_before_fork_serves_in_the_child(loop_kind: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", PREFORK_WORKER, loop_kind], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "worker exit 0", proc.stderr


def test_unix_stream_stop_removes_the_socket_file(unix_path: str, loop_kind: str) -> None:
    server = aio.AsyncUnixStreamServer(unix_path, LineEcho)
    thread = serving(server, loop_kind)
    with connect(unix_path) as sock:
        sock.sendall(b"unix\n")
        assert recv_line(sock) == b"unix\n"
    assert server.stop(grace=5).clean
    thread.join(TIMEOUT)
    assert not os.path.exists(unix_path)


def test_sockserve_serve_runs_an_async_server_until_sigterm(loop_kind: str) -> None:
    """sockserve.serve() is what a prefork worker runs: SIGTERM drains, a second stops at once."""
    gate = Gate()

    class Slow(aio.AsyncStreamRequestHandler):
        async def handle(self) -> None:
            request = await self.reader.readline()
            await gate.wait()
            await self.writer.write(b"reply to " + request)

    server = aio.AsyncTCPServer(("127.0.0.1", 0), Slow)
    server.event_loop = loop_kind  # type: ignore[assignment]
    replies: list[bytes] = []

    def client() -> None:
        with connect(server.server_address) as sock:
            sock.sendall(b"in flight\n")
            assert gate.entered.wait(TIMEOUT)
            os.kill(os.getpid(), signal.SIGTERM)  # serve() is draining from here on
            gate.release()
            replies.append(recv_all(sock))

    thread = threading.Thread(target=client)
    thread.start()
    report = sockserve.serve(server, grace=30)
    thread.join(TIMEOUT)
    assert replies == [b"reply to in flight\n"]
    assert report.clean


def test_max_requests_ends_serve_after_that_many(loop_kind: str) -> None:
    server = aio.AsyncTCPServer(("127.0.0.1", 0), LineEcho)
    server.max_requests = 2
    thread = serving(server, loop_kind)
    try:
        assert round_trip(server.server_address, b"one\n") == b"one\n"
        with connect(server.server_address) as second:
            thread.join(TIMEOUT)  # the second admission ends serve_forever(), as shutdown() would
            assert not thread.is_alive(), "serve_forever() went on after max_requests"
            assert server.max_requests_reached
            # Sent only now, so that its handler is surely still waiting for it
            # (however fast the loop would have answered).
            second.sendall(b"two\n")
            second.shutdown(socket.SHUT_WR)  # its only request: the handler ends once it is answered
            report = server.stop(5)  # what a prefork worker does next: the request in flight is finished
            assert recv_all(second) == b"two\n"
        assert (report.in_flight, report.forced) == (1, 0)
    finally:
        server.shutdown()
        thread.join(TIMEOUT)
        server.server_close()


def test_the_loops_exception_handler_is_put_back_when_serve_ends(loop_kind: str) -> None:
    class Callback(aio.AsyncProtocolHandler):
        def data_received(self, data: bytes) -> None:
            self.write(data)

    def mine(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        pass

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(mine)
        server = aio.AsyncTCPServer(("127.0.0.1", 0), Callback)
        serving = asyncio.create_task(server.serve())
        reader, writer = await asyncio.open_connection(*server.server_address)
        writer.write(b"x")
        assert await reader.readexactly(1) == b"x"
        assert loop.get_exception_handler() is not mine  # the server routes callback errors while it serves
        writer.close()
        await writer.wait_closed()
        await server.aclose(grace=5)
        await asyncio.wait_for(serving, TIMEOUT)
        assert loop.get_exception_handler() is mine

    loop = aio.new_event_loop(loop_kind)  # type: ignore[arg-type]
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
