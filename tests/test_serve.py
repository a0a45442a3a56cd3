"""sockserve.serve(): the first SIGTERM/SIGINT drains, a second one (or
SIGQUIT) stops at once; the handlers it borrowed are given back."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from typing import Any

import pytest

import sockserve
from sockserve.testing import running_server

from .helpers import connect, recv_all, recv_line

SERVER = textwrap.dedent(
    """
    import json, logging, sys
    import sockserve

    class Report(logging.Handler):
        def emit(self, record):
            print(json.dumps({"log": record.getMessage()}), flush=True)

    log = logging.getLogger("sockserve")
    log.addHandler(Report())
    log.setLevel(logging.INFO)

    class TwoLines(sockserve.StreamRequestHandler):
        # Replies once the client has sent two lines: a request in flight
        # for as long as the test wants.
        def handle(self):
            first = self.rfile.readline()
            print(json.dumps({"entered": first.decode()}), flush=True)
            second = self.rfile.readline()
            self.wfile.write(b"full reply: " + first.strip() + b" " + second)

    server = sockserve.ThreadPoolTCPServer(("127.0.0.1", 0), TwoLines)
    print(json.dumps({"address": server.server_address}), flush=True)
    report = sockserve.serve(server, grace=float(sys.argv[1]))
    print(json.dumps({"in_flight": report.in_flight, "forced": report.forced}), flush=True)
    """
)


class Child:
    def __init__(self, tmp_path: Any, grace: float) -> None:
        script = tmp_path / "serve_child.py"
        script.write_text(SERVER)
        self.proc = subprocess.Popen(
            [sys.executable, str(script), str(grace)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.address = tuple(self.next("address"))

    def next(self, key: str) -> Any:
        """The next message that has ``key``, skipping others (bounded by the test timeout)."""
        assert self.proc.stdout is not None
        while line := self.proc.stdout.readline():
            message = json.loads(line)
            if key in message:
                return message[key]
        raise AssertionError(f"the server exited before saying {key!r}: {self.proc.stderr.read()}")  # type: ignore[union-attr]

    def next_log(self, startswith: str) -> str:
        while not (message := self.next("log")).startswith(startswith):
            pass
        return str(message)

    def close(self) -> int:
        try:
            return self.proc.wait(timeout=10)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            for stream in (self.proc.stdout, self.proc.stderr):
                if stream is not None:
                    stream.close()


@pytest.mark.parametrize("first_signal", [signal.SIGTERM, signal.SIGINT])
def test_first_signal_drains_the_request_in_flight(tmp_path: Any, first_signal: signal.Signals) -> None:
    child = Child(tmp_path, grace=30)
    try:
        with connect(child.address) as client:
            client.sendall(b"slow\n")
            assert child.next("entered") == "slow\n"
            child.proc.send_signal(first_signal)
            assert "1 connection(s) in flight" in child.next_log("draining")
            with pytest.raises(ConnectionRefusedError):
                connect(child.address).close()  # stopped accepting ...
            client.sendall(b"request\n")  # ... but the request in flight completes
            assert recv_line(client) == b"full reply: slow request\n"
        assert child.next("forced") == 0
    finally:
        assert child.close() == 0


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGQUIT])
def test_second_signal_or_sigquit_stops_at_once(tmp_path: Any, second: signal.Signals) -> None:
    child = Child(tmp_path, grace=3600)
    try:
        with connect(child.address) as client:
            client.sendall(b"slow\n")
            assert child.next("entered") == "slow\n"
            child.proc.send_signal(signal.SIGTERM)
            child.next_log("draining")
            child.proc.send_signal(second)
            assert recv_all(client) == b""  # cut off: the grace period was ended
        assert child.next("forced") == 1
    finally:
        assert child.close() == 0


def test_serve_restores_the_signal_handlers_it_borrowed() -> None:
    class SignalsItself(sockserve.ThreadPoolTCPServer):
        sent = False

        def service_actions(self) -> None:
            # Runs inside serve_forever(), so serve()'s handlers are in place.
            if not self.sent:
                self.sent = True
                os.kill(os.getpid(), signal.SIGTERM)

    server = SignalsItself(("127.0.0.1", 0), sockserve.BaseRequestHandler)
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)}
    report = sockserve.serve(server, grace=1, poll_interval=0.01)
    assert server.sent
    assert report.forced == 0
    assert {sig: signal.getsignal(sig) for sig in before} == before
    assert server.socket.fileno() == -1


def test_serve_refuses_to_run_off_the_main_thread() -> None:
    errors: list[BaseException] = []
    with sockserve.TCPServer(("127.0.0.1", 0), sockserve.BaseRequestHandler) as server:

        def run() -> None:
            try:
                sockserve.serve(server)
            except RuntimeError as exc:
                errors.append(exc)

        thread = threading.Thread(target=run)
        thread.start()
        thread.join(10)
    assert errors
    assert "main thread" in str(errors[0])


def _blocked_signals(native_id: int) -> set[signal.Signals]:
    with open(f"/proc/self/task/{native_id}/status") as f:
        mask = int(next(line for line in f if line.startswith("SigBlk:")).split()[1], 16)
    return {s for s in signal.Signals if mask & (1 << (s.value - 1))}


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="reads thread signal masks from /proc")
@pytest.mark.parametrize("server_class", [sockserve.ThreadingTCPServer, sockserve.ThreadPoolTCPServer])
def test_request_threads_leave_signals_to_the_main_thread(server_class: type[sockserve.TCPServer]) -> None:
    # Otherwise the kernel may deliver SIGQUIT to a request thread while the
    # main thread waits out a drain, and the handler that ends the drain would
    # run only when the grace period is over.
    seen: list[set[signal.Signals]] = []

    class Report(sockserve.StreamRequestHandler):
        def handle(self) -> None:
            seen.append(_blocked_signals(threading.get_native_id()))
            self.wfile.write(self.rfile.readline())

    with running_server(server_class(("127.0.0.1", 0), Report)) as server, connect(server.server_address) as client:
        client.sendall(b"hi\n")
        assert recv_line(client) == b"hi\n"
    assert {signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP} <= seen[0]
    assert signal.SIGSEGV not in seen[0]
    assert signal.SIGTERM not in _blocked_signals(threading.get_native_id())  # the main thread's own are untouched


def test_a_signal_ends_a_wait_of_the_main_thread_whatever_its_timing() -> None:
    # A signal that lands just before the main thread blocks leaves its Python
    # handler unrun until the wait ends; the wake-up socket serve() installs
    # makes the wait end at once instead. Here the handler itself does
    # nothing: only the wake-up socket can end the wait.
    from sockserve._signal_wakeup import signals_interrupt_waits
    from sockserve._wakeup import Waker

    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: None)
    waker = Waker()
    sender = threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGUSR1))
    try:
        with signals_interrupt_waits() as wakeup:
            assert wakeup is not None
            sender.start()
            assert waker.wait(10), "the signal did not end the wait"
    finally:
        sender.join()
        waker.close()
        signal.signal(signal.SIGUSR1, previous)
