"""The pytest plugin for users (sockserve.pytest_plugin), run as a user runs
it: test files of theirs, in a pytest session of their own (pytester, in this
process: the plugin is the installed entry point's, loaded there as here)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import sockserve.aio
import sockserve.examples.echo
import sockserve.examples.framed_echo
import sockserve.pytest_plugin

from .conftest import HAS_IPV6

# Loaded before any inner session: pytester takes out of sys.modules what a
# session imported, while the package keeps the names it resolved lazily, and
# a module imported again in the next session would make classes unequal to them.
for _name in sockserve.__all__:
    getattr(sockserve, _name)

pytest_plugins = ["pytester"]

EXAMPLE = Path(sockserve.pytest_plugin.__file__).parent / "examples" / "test_echo_handler.py"

# What a careful user's project has: unknown markers and any warning fail.
INI = "[pytest]\naddopts = --strict-markers\nfilterwarnings = error\n"

HANDLERS = """
import os
import socket
import threading
import time

import pytest

import sockserve
from sockserve import aio
from sockserve.pytest_plugin import SYNC_MODELS


class Echo(sockserve.StreamRequestHandler):
    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(line)


class CountToEnd(sockserve.StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(b"%d" % len(self.rfile.read()))


class AsyncEcho(aio.AsyncStreamRequestHandler):
    async def handle(self) -> None:
        async for line in self.reader:
            await self.writer.write(line)


class FramedEcho(sockserve.FramedRequestHandler):
    def handle_request(self, request: bytes) -> None:
        self.send(request)


class DatagramEcho(sockserve.DatagramRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.read())


def round_trip(client: socket.socket, line: bytes = b"hello\\n") -> bytes:
    client.sendall(line)
    return client.makefile("rb").readline()
"""


@pytest.fixture
def user(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    pytester.makeini(INI)
    # A leaked thread is reported after this long, not the plugin's 5 s.
    monkeypatch.setattr(sockserve.pytest_plugin, "_SETTLE", 0.5)
    return pytester


def test_a_users_tests_pass_under_every_model_and_family(user: pytest.Pytester, tmp_path: Path) -> None:
    record = tmp_path / "paths"
    families = '"tcp", "unix", "tcp6"' if HAS_IPV6 else '"tcp", "unix"'
    user.makepyfile(
        HANDLERS
        + f"""

@pytest.fixture
def sockserve_handler():
    return Echo


@pytest.mark.sockserve_models(*SYNC_MODELS)
@pytest.mark.sockserve_families({families})
def test_echo(sockserve_client, sockserve_model, sockserve_family, sockserve_server):
    assert round_trip(sockserve_client) == b"hello\\n"
    assert (sockserve_server.model, sockserve_server.family) == (sockserve_model, sockserve_family)


@pytest.mark.sockserve_families("tcp", "unix")
def test_async(sockserve_serve):
    assert round_trip(sockserve_serve(AsyncEcho, model="async").connect()) == b"hello\\n"


@pytest.mark.sockserve_models("framed", "pool")
def test_framed(sockserve_serve):
    assert round_trip(sockserve_serve(FramedEcho).connect()) == b"hello\\n"


@pytest.mark.sockserve_models("sequential", "thread", "pool", "fork", "async")
def test_udp(sockserve_serve, sockserve_model):
    handler = aio.AsyncDatagramRequestHandler if sockserve_model == "async" else DatagramEcho
    if sockserve_model == "async":
        class AsyncDatagramEcho(aio.AsyncDatagramRequestHandler):
            async def handle(self) -> None:
                await self.reply(self.packet)
        handler = AsyncDatagramEcho
    client = sockserve_serve(handler, family="udp").connect()
    client.send(b"ping")
    assert client.recv(100) == b"ping"


class WritesWhenItEnds(Echo):
    def handle(self) -> None:
        super().handle()
        with open(f"ended-{{self.client_address[1]}}", "w"):  # in pytester's directory
            pass


@pytest.mark.sockserve_models("thread", "fork")
def test_a_handler_sees_its_client_close_while_another_is_connected(sockserve_serve):
    # Under fork, handlers are forked from a server process made before the
    # clients: the second's child holds no copy of the first client's socket,
    # which would keep it open after the test closed it.
    server = sockserve_serve(WritesWhenItEnds)
    first = server.connect()
    assert round_trip(first) == b"hello\\n"
    second = server.connect()
    assert round_trip(second) == b"hello\\n"
    ended = f"ended-{{first.getsockname()[1]}}"
    first.close()
    deadline = time.monotonic() + 10
    while not os.path.exists(ended) and time.monotonic() < deadline:
        threading.Event().wait(0.01)
    assert os.path.exists(ended), "the first handler never saw its client close"


@pytest.mark.sockserve_models("sequential", "thread", "pool", "fork", "async")
def test_stop_reports_the_drain(sockserve_serve, sockserve_model):
    server = sockserve_serve(AsyncEcho if sockserve_model == "async" else Echo)
    client = server.connect()
    assert round_trip(client) == b"hello\\n"
    client.close()
    report = server.stop(grace=5)
    assert report.clean
    assert server.stop() is report
    with pytest.raises(OSError):
        server.connect()


class Greets(sockserve.ForkingUnixStreamServer):
    def finish_request(self, request, client_address):
        request.sendall(b"welcome\\n")
        super().finish_request(request, client_address)


def test_a_server_class_of_ones_own(sockserve_serve):
    server = sockserve_serve(Echo, server_class=Greets)
    assert (server.model, server.family) == ("fork", "unix")
    client = server.connect()
    assert client.makefile("rb").readline() == b"welcome\\n"
    assert round_trip(client) == b"hello\\n"


class WaitsForASecondByte(sockserve.BaseRequestHandler):
    def handle(self) -> None:
        self.request.sendall(self.request.recv(1))
        self.request.recv(1)


@pytest.mark.sockserve_models("thread", "fork")
def test_what_the_tests_own_stop_cuts_off_is_not_a_leak(sockserve_serve):
    server = sockserve_serve(WaitsForASecondByte, grace=0.1)
    client = server.connect()
    client.sendall(b"x")
    assert client.recv(1) == b"x"  # the handler is running
    report = server.stop()  # the grace it was started with
    assert (report.in_flight, report.forced) == (1, 1)


def test_server_attributes_are_set_before_binding(sockserve_serve):
    server = sockserve_serve(Echo, model="pool", request_queue_size=7, limits=sockserve.Limits(max_connections=3))
    assert server.server.request_queue_size == 7
    assert server.server.limits.max_connections == 3
    assert round_trip(server.connect()) == b"hello\\n"


@pytest.mark.sockserve_models(*SYNC_MODELS, "async")
def test_unix(sockserve_serve, sockserve_model):
    server = sockserve_serve(AsyncEcho if sockserve_model == "async" else Echo, family="unix")
    with open({str(record)!r}, "a") as f:
        f.write(server.address + "\\n")
    assert round_trip(server.connect()) == b"hello\\n"
"""
    )
    result = user.runpytest_inprocess("-p", "no:cacheprovider")
    sync_echo = 4 * (3 if HAS_IPV6 else 2)
    result.assert_outcomes(passed=sync_echo + 2 + 2 + 5 + 2 + 5 + 1 + 1 + 2 + 5)
    # A Unix socket's file is gone after its test, and the directory made for it.
    paths = record.read_text().split()
    assert len(paths) == 5
    for path in paths:
        assert not os.path.lexists(path)
        assert not os.path.lexists(os.path.dirname(path))


# One session for every way a user's test can go wrong (each pytester session costs ~0.5 s).
LEAKS_AND_MISTAKES = """
release = threading.Event()
kept = []


class StartsAThread(Echo):
    def handle(self) -> None:
        threading.Thread(target=release.wait, name="forgotten helper").start()
        super().handle()


def test_leaks_a_thread(sockserve_serve):
    assert round_trip(sockserve_serve(StartsAThread).connect()) == b"hello\\n"


class KeepsASocket(Echo):
    def handle(self) -> None:
        kept.append(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        super().handle()


def server_close(self) -> None:
    self.socket.close()  # an override that forgets the file


def test_leaks_a_socket_and_a_socket_file(sockserve_serve):
    server = sockserve_serve(KeepsASocket, family="unix", server_close=server_close)
    assert round_trip(server.connect()) == b"hello\\n"


class ReadsTwice(sockserve.BaseRequestHandler):
    def handle(self) -> None:
        self.request.recv(1)
        self.request.recv(1)  # the client below never sends a second byte, nor closes


def test_a_handler_outlives_the_test(sockserve_serve):
    server = sockserve_serve(ReadsTwice, grace=0.2)
    kept.append(socket.create_connection(server.address))  # not through connect(): the fixture cannot close it
    kept[-1].sendall(b"x")


def test_clean_up():
    release.set()
    for thread in threading.enumerate():
        if thread.name == "forgotten helper":
            thread.join(10)
    for sock in kept:
        sock.close()


def test_async_handler_under_threads(sockserve_serve):
    with pytest.raises(TypeError, match="AsyncEcho is an async handler: serve it with model='async', not 'thread'"):
        sockserve_serve(AsyncEcho)


def test_sync_handler_under_async(sockserve_serve):
    with pytest.raises(TypeError, match="needs a subclass of"):
        sockserve_serve(Echo, model="async")


def test_framed_needs_a_framed_handler(sockserve_serve):
    with pytest.raises(TypeError, match="model='framed' serves a FramedRequestHandler, and Echo is not one"):
        sockserve_serve(Echo, model="framed")


def test_a_misspelt_attribute(sockserve_serve):
    with pytest.raises(TypeError, match="ThreadingTCPServer has no attribute 'limts' to set"):
        sockserve_serve(Echo, limts=None)


def test_a_server_class_that_is_not_the_model(sockserve_serve):
    import socketserver

    with pytest.raises(TypeError, match="ForkingTCPServer serves the 'fork' model, not 'thread'"):
        sockserve_serve(Echo, model="thread", server_class=sockserve.ForkingTCPServer)
    with pytest.raises(TypeError, match="is not a sockserve server class"):
        sockserve_serve(Echo, server_class=socketserver.TCPServer)


def test_unknown_model_and_family(sockserve_serve):
    with pytest.raises(ValueError, match="unknown sockserve model 'threads'"):
        sockserve_serve(Echo, model="threads")
    with pytest.raises(ValueError, match="unknown address family 'ipv4'"):
        sockserve_serve(Echo, family="ipv4")


def test_no_handler_fixture(sockserve_client):
    pass
"""

MISSPELT_MARKER = """
import pytest

@pytest.mark.sockserve_models("threads")
def test_it(sockserve_serve):
    pass
"""


def test_leaks_and_mistakes_fail_the_test_with_what_and_why(user: pytest.Pytester) -> None:
    user.makepyfile(test_leaks_and_mistakes=HANDLERS + LEAKS_AND_MISTAKES, test_misspelt_marker=MISSPELT_MARKER)
    result = user.runpytest_inprocess("-p", "no:cacheprovider", "--continue-on-collection-errors")
    result.assert_outcomes(passed=10, errors=5)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_leaks_a_thread*",
            "sockserve_serve: the test left things behind:",
            "  thread left running: 'forgotten helper'",
            "*ERROR at teardown of test_leaks_a_socket_and_a_socket_file*",
            "sockserve_serve: the test left things behind:",
            "  socket file left behind: /*/0.sock",
            "  fd *: datagram socket ('0.0.0.0', 0) left open",
            "*ERROR at teardown of test_a_handler_outlives_the_test*",
            "sockserve_serve: the test left things behind:",
            "  <RunningServer ThreadingTCPServer (thread) at *>: 1 connection(s) still in the handler 0.2 s after "
            "the test had closed its clients were cut off*",
            "  fd *: stream socket ('127.0.0.1', *) connected to ('127.0.0.1', *) left open",
            "*ERROR at setup of test_no_handler_fixture*",
            "*define one (in the test module or a conftest.py)",
        ]
    )
    result.stdout.fnmatch_lines(
        ["*sockserve_models() takes one or more of sequential, thread, pool, framed, fork, async; got ('threads',)"]
    )
    assert "Traceback" not in result.stdout.str()


# Things left where the test process cannot see them by itself: a socket file at a
# handler's own path, and what the fork model's server process and its handlers leave.
LEFT_ELSEWHERE = """
import subprocess
import sys

# A process the handler starts lives until every write end of this pipe is
# closed: the test process's is closed by test_clean_up, after the check.
hold_r, hold_w = os.pipe()
kept = []

with socket.socket(socket.AF_UNIX) as before:
    before.bind("taken.sock")  # a file there before any test: not a test's


class BindsAPath(Echo):
    path = ""

    def handle(self) -> None:
        with socket.socket(socket.AF_UNIX) as other:
            other.bind(self.path)
        super().handle()


class LeavesAFile(BindsAPath):
    path = "left-by-a-handler.sock"  # in pytester's directory, relative


@pytest.mark.sockserve_models("thread", "fork")
def test_a_handler_leaves_a_socket_file(sockserve_serve, sockserve_model):
    LeavesAFile.path = f"left-by-{sockserve_model}.sock"
    assert round_trip(sockserve_serve(LeavesAFile).connect()) == b"hello\\n"


class CleansUp(Echo):
    def handle(self) -> None:
        with socket.socket(socket.AF_UNIX) as other:
            other.bind("removed.sock")
        os.unlink("removed.sock")
        with socket.socket(socket.AF_UNIX) as abstract:
            abstract.bind(b"\\0sockserve-abstract-%d" % os.getpid())
        with socket.socket(socket.AF_UNIX) as other, pytest.raises(OSError):
            other.bind("taken.sock")
        super().handle()


@pytest.mark.sockserve_models("thread", "fork")
def test_a_handler_that_cleans_up(sockserve_serve):
    assert round_trip(sockserve_serve(CleansUp).connect()) == b"hello\\n"


class StartsAProcess(Echo):
    def handle(self) -> None:
        code = "import os, sys; os.read(int(sys.argv[1]), 1)"
        subprocess.Popen([sys.executable, "-c", code, str(hold_r)], pass_fds=[hold_r])
        super().handle()


def test_a_forked_handler_leaves_a_process(sockserve_serve):
    assert round_trip(sockserve_serve(StartsAProcess, model="fork").connect()) == b"hello\\n"


class KeepsASocketInTheServerProcess(sockserve.ForkingTCPServer):
    def verify_request(self, request, client_address):
        kept.append(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        return True


def test_the_fork_server_process_leaks_a_descriptor(sockserve_serve):
    server = sockserve_serve(Echo, server_class=KeepsASocketInTheServerProcess)
    assert round_trip(server.connect()) == b"hello\\n"


def test_clean_up():
    os.close(hold_w)
    os.close(hold_r)
    for path in ("taken.sock", "left-by-thread.sock", "left-by-fork.sock"):
        os.unlink(path)
"""


def test_what_is_left_outside_the_test_process_and_its_directories_is_reported(user: pytest.Pytester) -> None:
    user.makepyfile(test_left_elsewhere=HANDLERS + LEFT_ELSEWHERE)
    result = user.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=7, errors=4)
    here = str(user.path)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_a_handler_leaves_a_socket_file[[]thread[]]*",
            "sockserve_serve: the test left things behind:",
            f"  socket file left behind: {here}/left-by-thread.sock",
            "*ERROR at teardown of test_a_handler_leaves_a_socket_file[[]fork[]]*",
            "sockserve_serve: the test left things behind:",
            f"  socket file left behind: {here}/left-by-fork.sock",
            "*ERROR at teardown of test_a_forked_handler_leaves_a_process*",
            "sockserve_serve: the test left things behind:",
            "  in the fork model's server process (pid *): child process left behind: pid * (python*, running)",
            "*ERROR at teardown of test_the_fork_server_process_leaks_a_descriptor*",
            "sockserve_serve: the test left things behind:",
            "  in the fork model's server process (pid *): fd *: datagram socket ('0.0.0.0', 0) left open",
        ]
    )
    assert "Traceback" not in result.stdout.str()
    assert "removed.sock" not in result.stdout.str()
    assert "taken.sock" not in result.stdout.str()
    assert sorted(path.name for path in user.path.glob("*.sock")) == []


def test_the_markers_are_registered_with_a_description(pytestconfig: pytest.Config) -> None:
    """(This very session has the plugin: sockserve is installed.)"""
    markers = pytestconfig.getini("markers")
    assert any(line.startswith("sockserve_models(*models): run the test once per sockserve model") for line in markers)
    assert any(
        line.startswith("sockserve_families(*families): run the test once per address family") for line in markers
    )


def test_the_example_test_of_a_users_handler_passes(user: pytest.Pytester) -> None:
    """examples/test_echo_handler.py, run where it lives, with the project's own settings."""
    result = user.runpytest_inprocess("-p", "no:cacheprovider", str(EXAMPLE))
    result.assert_outcomes(passed=10)


def test_importing_the_plugin_loads_no_server() -> None:
    """pytest imports it in every run of every project that has sockserve installed."""
    code = (
        "import sys, pytest; before = set(sys.modules); import sockserve.pytest_plugin; "
        "print(' '.join(sorted(m for m in set(sys.modules) - before if m.startswith('sockserve'))))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.split() == ["sockserve", "sockserve.pytest_plugin"]
