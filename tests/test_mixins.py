"""ThreadingMixIn and ForkingMixIn: the stdlib's semantics, no leftovers."""

from __future__ import annotations

import errno
import os
import threading
from typing import Any

import pytest

import sockserve
from sockserve.testing import running_server

from .helpers import connect, recv_line, round_trip


class NamesThread(sockserve.StreamRequestHandler):
    def handle(self) -> None:
        line = self.rfile.readline()
        self.wfile.write(threading.current_thread().name.encode() + b": " + line)


class NamesProcess(sockserve.StreamRequestHandler):
    def handle(self) -> None:
        line = self.rfile.readline()
        self.wfile.write(b"%d: " % os.getpid() + line)


def test_each_request_runs_in_its_own_thread() -> None:
    with running_server(sockserve.ThreadingTCPServer(("127.0.0.1", 0), NamesThread)) as server:
        first = round_trip(server.server_address)
        second = round_trip(server.server_address)
    names = {first.split(b": ")[0], second.split(b": ")[0]}
    assert len(names) == 2
    assert all(b"process_request_thread" in n for n in names)


def test_finished_threads_do_not_accumulate() -> None:
    with sockserve.ThreadingTCPServer(("127.0.0.1", 0), NamesThread) as server:
        for _ in range(20):
            with connect(server.server_address) as client:
                client.sendall(b"x\n")
                server.handle_request()
                recv_line(client)
        assert len(server._threads) < 3


def test_server_close_waits_for_request_threads() -> None:
    entered, release = threading.Event(), threading.Event()
    order: list[str] = []

    class Slow(sockserve.StreamRequestHandler):
        def handle(self) -> None:
            entered.set()
            release.wait(10)
            order.append("handler finished")

    server = sockserve.ThreadingTCPServer(("127.0.0.1", 0), Slow)
    with connect(server.server_address):
        server.handle_request()
        assert entered.wait(10)

        def close() -> None:
            server.server_close()
            order.append("server_close returned")

        closer = threading.Thread(target=close)
        closer.start()
        release.set()
        closer.join(10)
    assert order == ["handler finished", "server_close returned"]


def test_daemon_threads_flag_is_applied() -> None:
    seen: list[bool] = []

    class Daemonic(sockserve.ThreadingTCPServer):
        daemon_threads = True

    class Probe(sockserve.StreamRequestHandler):
        def handle(self) -> None:
            seen.append(threading.current_thread().daemon)
            self.wfile.write(self.rfile.readline())

    with running_server(Daemonic(("127.0.0.1", 0), Probe)) as server:
        assert round_trip(server.server_address) == b"hello\n"
    assert seen == [True]


def test_without_block_on_close_no_threads_are_kept() -> None:
    class Fire(sockserve.ThreadingTCPServer):
        block_on_close = False

    with running_server(Fire(("127.0.0.1", 0), NamesThread)) as server:
        round_trip(server.server_address)
        assert len(server._threads) == 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
class TestForking:
    def test_each_request_runs_in_a_child_process_that_is_reaped(self) -> None:
        server = sockserve.ForkingTCPServer(("127.0.0.1", 0), NamesProcess)
        with running_server(server):
            replies = [round_trip(server.server_address) for _ in range(3)]
        pids = {int(r.split(b": ")[0]) for r in replies}
        assert len(pids) == 3
        assert os.getpid() not in pids
        assert not server.active_children  # server_close() waited for every child

    def test_max_children_is_never_exceeded(self) -> None:
        peak = []

        class Capped(sockserve.ForkingTCPServer):
            max_children = 2

            def process_request(self, request: Any, client_address: Any) -> None:
                super().process_request(request, client_address)
                peak.append(len(self.active_children or ()))

        with running_server(Capped(("127.0.0.1", 0), NamesProcess)) as server:
            clients = [connect(server.server_address) for _ in range(6)]
            try:
                for c in clients:
                    c.sendall(b"x\n")
                for c in clients:
                    assert recv_line(c).endswith(b": x\n")
            finally:
                for c in clients:
                    c.close()
        assert len(peak) == 6
        assert max(peak) <= 2

    def test_a_child_the_program_forked_itself_is_not_reaped_by_the_server(self) -> None:
        """The stdlib's waitpid(-1) at max_children can steal the program's own child."""
        read_end, write_end = os.pipe()
        own_child = os.fork()
        if own_child == 0:
            os.close(write_end)
            os.read(read_end, 1)  # wait until the parent says "exit now"
            os._exit(72)
        os.close(read_end)

        class Capped(sockserve.ForkingTCPServer):
            max_children = 1

        try:
            with running_server(Capped(("127.0.0.1", 0), NamesProcess)) as server:
                os.write(write_end, b"x")  # our own child exits now, while the server is at its cap
                for _ in range(4):
                    assert round_trip(server.server_address).endswith(b": hello\n")
        finally:
            os.close(write_end)
        _, status = os.waitpid(own_child, 0)  # ChildProcessError here if the server reaped it
        assert os.waitstatus_to_exitcode(status) == 72

    def test_handler_exception_in_the_child_does_not_stop_the_server(self) -> None:
        class Fails(sockserve.StreamRequestHandler):
            def handle(self) -> None:
                if self.rfile.readline() == b"boom\n":
                    raise ValueError("child broke")
                self.wfile.write(b"fine\n")

        with running_server(sockserve.ForkingTCPServer(("127.0.0.1", 0), Fails)) as server:
            with connect(server.server_address) as client:
                client.sendall(b"boom\n")
                assert recv_line(client) == b""
            assert round_trip(server.server_address) == b"fine\n"


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="needs pidfd_open() (Linux 5.3+)")
def test_a_finished_child_is_reaped_at_once_whatever_the_poll_interval() -> None:
    """The stdlib reaps only every poll_interval: here a child's exit wakes the loop."""
    from .helpers import wait_until

    server = sockserve.ForkingTCPServer(("127.0.0.1", 0), NamesProcess)
    with running_server(server, poll_interval=3600):
        pid = int(round_trip(server.server_address).split(b": ")[0])
        assert wait_until(lambda: pid not in (server.active_children or ())), "the zombie outlived its request"
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # already reaped by the server


def _no_pidfds(pid: int) -> int:
    raise OSError(errno.ENOSYS, "pidfd_open denied")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
class TestForkingWithoutPidfds:
    """Where pidfd_open() is denied (a seccomp filter, an old container
    runtime, valgrind), children are still waited for and reaped, as the stdlib does."""

    def test_at_max_children_the_server_waits_for_a_child(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr("sockserve._forking._pidfd_open", _no_pidfds)

        class Capped(sockserve.ForkingTCPServer):
            max_children = 1

        with running_server(Capped(("127.0.0.1", 0), NamesProcess)) as server:
            clients = [connect(server.server_address) for _ in range(3)]
            try:
                for c in clients:
                    c.sendall(b"x\n")
                for c in clients:
                    assert recv_line(c).endswith(b": x\n")
            finally:
                for c in clients:
                    c.close()
        assert not server.active_children

    def test_a_drain_waits_for_a_child_and_keeps_its_deadline(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr("sockserve._forking._pidfd_open", _no_pidfds)
        read_end, write_end = os.pipe()

        class Slow(sockserve.StreamRequestHandler):
            def handle(self) -> None:
                line = self.rfile.readline()
                self.wfile.write(b"started " + line)
                self.wfile.flush()
                os.read(read_end, 1)  # the test says when to finish

        server = sockserve.ForkingTCPServer(("127.0.0.1", 0), Slow)
        try:
            with running_server(server), connect(server.server_address) as client:
                client.sendall(b"a\n")
                assert recv_line(client) == b"started a\n"
                report = server.stop(grace=0.2)  # the child outlives the grace period
                assert report.forced == 1
        finally:
            os.close(read_end)
            os.close(write_end)
        assert not server.active_children
