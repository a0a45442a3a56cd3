"""The event loop accepts the connections itself (uvloop in C) unless one
needs sockserve's own accept; either way the client sees the same server:
the stdlib's client address, the backlog kept while accepting is paused,
nothing left open."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
from typing import TYPE_CHECKING, Any

import pytest

import sockserve
from sockserve import aio
from sockserve._stages import Done, NeedMore, Outcome

from ..helpers import connect, recv_line, round_trip
from .conftest import LogWatcher, closed_by_server

if TYPE_CHECKING:
    from typing_extensions import Self

TIMEOUT = 10.0


class LineEcho(aio.AsyncStreamRequestHandler):
    async def handle(self) -> None:
        async for line in self.reader:
            await self.writer.write(line)


class CallbackEcho(aio.AsyncProtocolHandler):
    def data_received(self, data: bytes) -> None:
        self.write(data)


class PassStage:
    """A stage that is done at once, with what came behind it for the handler."""

    def __init__(self, client_address: object) -> None:
        pass

    def feed(self, data: bytes) -> Outcome:
        return Done(rest=data) if data else NeedMore()


HANDLERS = pytest.mark.parametrize("handler", [LineEcho, CallbackEcho], ids=["stream", "callback"])


class Served:
    """``serve_forever()`` in a thread, as often as ``again()`` asks."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.returned = threading.Semaphore(0)
        self.go = threading.Semaphore(0)
        self.rounds = 0
        self.thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        while True:
            self.server.serve_forever(poll_interval=3600)
            self.returned.release()
            if not self.go.acquire(timeout=TIMEOUT) or self.rounds < 0:
                return

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def pause(self) -> None:
        self.server.shutdown()  # returns once serve() has returned
        assert self.returned.acquire(timeout=TIMEOUT)

    def again(self) -> None:
        self.rounds += 1
        self.go.release()

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.rounds = -1
        self.go.release()
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive()
        self.server.server_close()


def make(server_class: type[Any], address: Any, handler: type, loop_kind: str, **attrs: Any) -> Any:
    server = server_class(address, handler)
    server.event_loop = loop_kind
    for name, value in attrs.items():
        setattr(server, name, value)
    return server


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@HANDLERS
@pytest.mark.parametrize("family", ["tcp", "unix"])
def test_a_paused_server_keeps_its_socket_and_backlog(
    loop_kind: str, handler: type, family: str, short_tmp: str
) -> None:
    if family == "tcp":
        server = make(aio.AsyncTCPServer, ("127.0.0.1", 0), handler, loop_kind)
    else:
        server = make(aio.AsyncUnixStreamServer, os.path.join(short_tmp, "s"), handler, loop_kind)
    address = server.server_address
    with Served(server) as served:
        assert round_trip(address, b"first\n") == b"first\n"
        fds = None
        for n in range(3):
            served.pause()  # serve() returned: nothing accepts now
            assert server._loop_server is None
            if family == "unix":
                assert os.path.exists(address), "pausing must not remove the socket file"
            if fds is None:
                fds = open_fds()
            with connect(address) as waiting:  # the kernel completes it: it waits in the backlog
                waiting.sendall(b"waited %d\n" % n)
                served.again()
                assert recv_line(waiting) == b"waited %d\n" % n
            assert server._loop_server is not None, "the loop accepts again"
        served.pause()
        assert open_fds() == fds, "each pause closes the loop's duplicate of the listening socket"


@HANDLERS
def test_the_loop_accepts_unless_a_connection_needs_sockserves_own_accept(loop_kind: str, handler: type) -> None:
    class Verifying(aio.AsyncTCPServer):
        def verify_request(self, request: Any, client_address: Any) -> bool:
            return isinstance(request, socket.socket)  # the accepted socket itself, as documented

    class Staged(aio.AsyncTCPServer):
        def _stage_factories(self, ticket: Any = None) -> tuple[Any, ...]:
            return (PassStage,)

    cases = {
        "plain": (make(aio.AsyncTCPServer, ("127.0.0.1", 0), handler, loop_kind), True),
        "per-ip limit": (
            make(
                aio.AsyncTCPServer,
                ("127.0.0.1", 0),
                handler,
                loop_kind,
                limits=sockserve.Limits(max_connections_per_ip=5, idle_timeout=5, connection_timeout=5),
            ),
            True,
        ),
        "max_connections": (
            make(aio.AsyncTCPServer, ("127.0.0.1", 0), handler, loop_kind, limits=sockserve.Limits(max_connections=5)),
            False,
        ),
        "verify_request": (make(Verifying, ("127.0.0.1", 0), handler, loop_kind), False),
        "stages": (make(Staged, ("127.0.0.1", 0), handler, loop_kind), False),
    }
    for name, (server, loop_accepts) in cases.items():
        with Served(server):
            assert round_trip(server.server_address, b"hello\n") == b"hello\n", name
            assert (server._loop_server is not None) == loop_accepts, name


@HANDLERS
@pytest.mark.parametrize("family", ["ipv4", "ipv6", "unix"])
def test_the_client_address_is_what_the_stdlib_gives(
    loop_kind: str, handler: type, family: str, address_for: Any
) -> None:
    seen: list[Any] = []

    class StreamRecorder(aio.AsyncStreamRequestHandler):
        async def handle(self) -> None:
            seen.append(self.client_address)
            await self.writer.write(b"ok\n")

    class CallbackRecorder(aio.AsyncProtocolHandler):
        def connection_made(self) -> None:
            seen.append(self.client_address)
            self.write(b"ok\n")

    recorder = StreamRecorder if handler is LineEcho else CallbackRecorder
    server_class = aio.AsyncUnixStreamServer if family == "unix" else aio.AsyncTCPServer
    server = make(server_class, address_for(family), recorder, loop_kind)
    with Served(server), connect(server.server_address) as client:
        assert recv_line(client) == b"ok\n"
        assert server._loop_server is not None
        # What socketserver's accept() gives: the peer's address; a Unix client without a name is "".
        assert seen == ["" if family == "unix" else client.getsockname()]


def test_a_callback_handler_whose_constructor_raises_is_one_error_and_the_server_goes_on(
    loop_kind: str, logs: LogWatcher
) -> None:
    class Fragile(aio.AsyncProtocolHandler):
        def __init__(self, client_address: Any, server: Any) -> None:
            super().__init__(client_address, server)
            if fragile.is_set():
                raise RuntimeError("boom in __init__")

        def data_received(self, data: bytes) -> None:
            self.write(data)

    fragile = threading.Event()
    fragile.set()
    server = make(aio.AsyncTCPServer, ("127.0.0.1", 0), Fragile, loop_kind)
    with Served(server):
        with connect(server.server_address) as client:
            client.sendall(b"lost\n")
            assert closed_by_server(client) == b""
        record = logs.wait_for("exception while handling a request from 127.0.0.1")
        assert record.exc_info is not None
        assert str(record.exc_info[1]) == "boom in __init__"
        fragile.clear()
        assert round_trip(server.server_address, b"fine\n") == b"fine\n"
        assert len([m for m in logs.messages() if m.startswith("exception while")]) == 1


@HANDLERS
def test_a_connection_accepted_just_before_the_server_closed_is_closed(
    loop_kind: str, handler: type, logs: LogWatcher
) -> None:
    """The loop accepted it, and server_close() came before its
    connection_made: it is closed with the server (as the backlog is),
    not admitted into a server that is gone."""
    served: list[bytes] = []

    class ClosedMeanwhile(aio.AsyncTCPServer):
        closing = threading.Event()

        def _admit_accepted(self, item: Any, request: Any, transport: Any) -> bool:
            if self.closing.is_set():
                self._close_listener_here()  # what server_close() does first, on the loop's thread
            admitted: bool = super()._admit_accepted(item, request, transport)
            served.append(b"admitted" if admitted else b"refused")
            return admitted

    server = make(ClosedMeanwhile, ("127.0.0.1", 0), handler, loop_kind)
    with Served(server):
        assert round_trip(server.server_address, b"one\n") == b"one\n"
        server.closing.set()
        with connect(server.server_address) as late:
            late.sendall(b"two\n")
            assert closed_by_server(late) == b""
        assert served == [b"admitted", b"refused"]
    # Its transport's last callbacks have run by now (server_close() ran the loop until they did):
    # a refused connection has no handler to tell.
    assert not [m for m in logs.messages() if "exception" in m.lower()], logs.messages()


EMFILE_CHILD = textwrap.dedent(
    """
    import asyncio, json, logging, os, resource, sys, threading, time
    from sockserve import aio

    class Echo(aio.AsyncProtocolHandler):
        def data_received(self, data):
            self.write(data)

        def connection_lost(self, exc):
            # The transport closes its socket right after this returns: say so then.
            asyncio.get_running_loop().call_soon(lambda: print(json.dumps({"closed": True}), flush=True))

    class Report(logging.Handler):
        def emit(self, record):
            print(json.dumps({"level": record.levelname, "msg": record.getMessage(), "name": record.name}), flush=True)

    for name in ("sockserve", "asyncio"):
        logging.getLogger(name).addHandler(Report())
        logging.getLogger(name).setLevel(logging.DEBUG)

    server = aio.AsyncTCPServer(("127.0.0.1", 0), Echo)
    server.event_loop = "asyncio"
    fillers = []

    def control():
        for line in sys.stdin:
            command = line.strip()
            if command == "fill":
                soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
                resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
                try:
                    while True:
                        fillers.append(os.dup(0))
                except OSError as exc:
                    print(json.dumps({"errno": exc.errno}), flush=True)
            elif command == "release":
                while fillers:
                    os.close(fillers.pop())
            elif command == "drain":
                def drain():
                    server.stop(10)
                    print(json.dumps({"drained": True}), flush=True)
                threading.Thread(target=drain).start()
            elif command == "stop":
                server.shutdown()
                return

    controller = threading.Thread(target=control)
    controller.start()
    print(json.dumps({"address": server.server_address}), flush=True)
    server.serve_forever(poll_interval=3600)
    controller.join()
    server.server_close()
    print(json.dumps({"stopped": True}), flush=True)
    """
)


class EmfileChild:
    """The EMFILE child in a subprocess: its messages (asyncio's DEBUG chatter
    skipped; none of asyncio's errors may come), its commands, and its end."""

    def __init__(self, tmp_path: Any) -> None:
        script = tmp_path / "emfile_server.py"
        script.write_text(EMFILE_CHILD)
        self.proc = subprocess.Popen(
            [sys.executable, str(script)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def next_line(self) -> dict[str, Any]:
        while True:
            line = self.proc.stdout.readline()  # type: ignore[union-attr]
            assert line, f"the server exited: {self.proc.stderr.read()}"  # type: ignore[union-attr]
            message: dict[str, Any] = json.loads(line)
            if message.get("name") != "asyncio":
                return message
            assert message["level"] == "DEBUG", message

    def command(self, text: str) -> None:
        self.proc.stdin.write(text + "\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]

    def close(self) -> None:
        proc = self.proc
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None and not stream.closed:
                stream.close()


def test_out_of_descriptors_on_asyncios_loop_is_one_line_and_the_connection_waits(tmp_path: Any) -> None:
    """asyncio's own accept reports every failed try with a traceback: the
    server says it once, at the accept's back-off, and once on recovery; the
    connection that could not be accepted waits, and is served."""
    with contextlib.closing(EmfileChild(tmp_path)) as child:
        address = tuple(child.next_line()["address"])
        assert round_trip(address, b"warm\n") == b"warm\n"  # the loop runs, and accepts
        # Fill only once the server has closed its side: a descriptor freed
        # after the fill would let the next accept succeed.
        assert child.next_line() == {"closed": True}
        child.command("fill")
        assert child.next_line()["errno"] == 24  # EMFILE
        with connect(address) as starved:  # the kernel completes it; accept() cannot
            starved.sendall(b"survived\n")
            first, second = child.next_line(), child.next_line()  # the first failure, then a retry
            assert first["level"] == "ERROR", first
            assert "cannot accept on" in first["msg"], first
            assert "Too many open files" in first["msg"], first
            assert second["level"] == "DEBUG", second
            assert "still failing" in second["msg"], second
            child.command("release")
            assert recv_line(starved) == b"survived\n"
        while not ("accepting on" in (message := child.next_line()).get("msg", "") and "again" in message["msg"]):
            assert message.get("level") == "DEBUG", message
        assert message["level"] == "WARNING"
        child.command("stop")
        while "stopped" not in (message := child.next_line()):
            assert message.get("level") in (None, "DEBUG"), message
        assert child.proc.wait(timeout=10) == 0


def test_an_accept_retry_that_fires_after_a_drain_closed_the_listener_is_not_an_error(tmp_path: Any) -> None:
    """Out of descriptors, asyncio arms a retry timer for each failed accept
    of its batch; a drain that begins meanwhile closes the loop's copy of the
    listening socket, and the retries then fire on a closed socket. asyncio
    reports that as an exception in a callback; the server knows it for a
    stale retry and says so at DEBUG, and the drain goes on."""
    with contextlib.closing(EmfileChild(tmp_path)) as child:
        address = tuple(child.next_line()["address"])
        with connect(address) as held:  # in flight: the drain waits for it, and the loop runs on
            held.sendall(b"held\n")
            assert recv_line(held) == b"held\n"
            child.command("fill")
            assert child.next_line()["errno"] == 24  # EMFILE
            with connect(address) as starved:
                starved.sendall(b"starved\n")
                first = child.next_line()
                assert first["level"] == "ERROR", first
                assert "cannot accept on" in first["msg"], first
                child.command("drain")
                while "stale accept retry" not in (message := child.next_line()).get("msg", ""):
                    assert message.get("level") in (None, "DEBUG", "INFO"), message
                assert message["level"] == "DEBUG", message
            child.command("release")
        while "drained" not in (message := child.next_line()):
            assert message.get("level") in (None, "DEBUG", "INFO"), message
        child.proc.stdin.close()  # the controller's loop ends
        while "stopped" not in (message := child.next_line()):
            assert message.get("level") in (None, "DEBUG", "INFO"), message
        assert child.proc.wait(timeout=10) == 0
