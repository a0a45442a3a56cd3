"""Handler threads do not block signals: the programs a handler starts can be
stopped (as under the stdlib's socketserver), and a signal that lands on a
handler thread still ends a graceful stop at once (see _thread_signals)."""

from __future__ import annotations

import json
import os
import signal
import textwrap
import threading
from typing import Any

import pytest

from .helpers import JsonLinesChild, connect, recv_all, recv_line, wait_until

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads signal masks from /proc")

SERVER = textwrap.dedent(
    """
    import json, logging, os, signal, subprocess, sys, threading
    import sockserve

    model, how = sys.argv[1], sys.argv[2]

    class Report(logging.Handler):
        def emit(self, record):
            print(json.dumps({"log": record.getMessage()}), flush=True)

    log = logging.getLogger("sockserve")
    log.addHandler(Report())
    log.setLevel(logging.INFO)

    def blocked(pid):
        with open(f"/proc/{pid}/status") as f:
            return next(line for line in f if line.startswith("SigBlk:")).split()[1]

    def start_and_terminate():
        # What a handler that runs a program does when it gives up on it.
        child = subprocess.Popen(["sleep", "30"])
        try:
            mask = blocked(child.pid)
            child.terminate()
            try:
                code = child.wait(5)
            except subprocess.TimeoutExpired:
                code = "still running"
            return {"SigBlk": mask, "code": code, "thread": threading.get_native_id()}
        finally:
            child.kill()
            child.wait()

    class Lines(sockserve.StreamRequestHandler):
        # "run": start a program and stop it; "hold": wait for the next line (a request in flight).
        def handle(self):
            for line in self.rfile:
                if line == b"run\\n":
                    self.wfile.write(json.dumps(start_and_terminate()).encode() + b"\\n")
                else:
                    self.wfile.write(json.dumps({"thread": threading.get_native_id()}).encode() + b"\\n")

    class FramedLines(sockserve.FramedRequestHandler):
        def handle_request(self, request):
            run = bytes(request).strip() == b"run"
            result = start_and_terminate() if run else {"thread": threading.get_native_id()}
            self.send(json.dumps(result).encode() + b"\\n")

    handler = FramedLines if model == "framed" else Lines
    server_class = "ThreadPoolTCPServer" if model == "framed" else model

    def make():
        # A connection timeout: a deadline watchdog thread runs, one of the internal threads that block signals.
        server = getattr(sockserve, server_class)(("127.0.0.1", 0), handler)
        server.limits = sockserve.Limits(connection_timeout=3600)
        return server

    servers = [make(), make()] if how == "serve_all" else [make()]
    # serve_all: the client uses the second server, which a thread of serve_all's serves.
    print(json.dumps({"address": servers[-1].server_address}), flush=True)
    if how == "serve":
        report = sockserve.serve(servers[0], grace=3600)
    elif how == "serve_all":
        (_, report) = sockserve.serve_all(servers, grace=3600)
    else:
        # No serve(): the program's own handlers, a loop on a thread, stop() on the main thread.
        server = servers[0]
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
        signal.signal(signal.SIGQUIT, lambda signum, frame: server.force_stop())
        loop = threading.Thread(target=server.serve_forever)
        loop.start()
        while not stop.wait(0.1):
            pass
        log.info("stopping")
        report = server.stop(3600)
        loop.join()
    print(json.dumps({"in_flight": report.in_flight, "forced": report.forced}), flush=True)
    """
)


class Child(JsonLinesChild):
    def __init__(self, tmp_path: Any, model: str, how: str) -> None:
        script = tmp_path / "thread_signals_child.py"
        script.write_text(SERVER)
        super().__init__(script, model, how)
        self.address = tuple(self.next("address"))


def _main_thread_wait(pid: int) -> str:
    with open(f"/proc/{pid}/wchan") as f:
        return f.read()


MODELS = ["ThreadingTCPServer", "ThreadPoolTCPServer", "framed", "TCPServer", "ForkingTCPServer"]
HOWS = ["loop", "serve", "serve_all"]
# Under serve_all() a sequential server's handler runs on one of its serving
# threads, which take the program's mask (_serve.py); a forking server's child
# is forked from such a thread, and resets its mask.


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("model", "how"),
    [(model, how) for model in MODELS for how in HOWS],
)
def test_a_program_a_handler_starts_can_be_terminated(tmp_path: Any, model: str, how: str) -> None:
    # It inherits the handler thread's signal mask: a blocked SIGTERM would
    # make terminate() do nothing (the stdlib's threads block nothing).
    child = Child(tmp_path, model, how)
    try:
        with connect(child.address) as client:
            client.sendall(b"run\n")
            result = json.loads(recv_line(client))
        assert result["SigBlk"] == "0" * 16
        assert result["code"] == -signal.SIGTERM
    finally:
        child.proc.send_signal(signal.SIGTERM)
        assert child.close() == 0


@pytest.mark.timeout(60)
# Without serve(), the program's handlers: SIGTERM starts the stop, SIGQUIT forces it.
@pytest.mark.parametrize(
    ("how", "second"), [("loop", signal.SIGQUIT), ("serve", signal.SIGTERM), ("serve", signal.SIGQUIT)]
)
@pytest.mark.parametrize("model", ["ThreadingTCPServer", "ThreadPoolTCPServer"])
def test_a_signal_that_lands_on_a_handler_thread_ends_the_drain_at_once(
    tmp_path: Any, model: str, how: str, second: signal.Signals
) -> None:
    # Several handlers in flight, and the second signal sent to one of their
    # threads: the kernel delivers a signal sent to a thread's id to that
    # thread if it does not block it. The main thread, waiting out a grace
    # period of an hour, must still run the handler that ends it.
    child = Child(tmp_path, model, how)
    clients = [connect(child.address) for _ in range(4)]
    try:
        threads = []
        for client in clients:
            client.sendall(b"hold\n")
            threads.append(json.loads(recv_line(client))["thread"])
        child.proc.send_signal(signal.SIGTERM)
        assert "4 connection(s) in flight" in child.next_log("draining")
        # Once the main thread sleeps in the drain's poll(): a signal that
        # comes before it is handled on its way there, and proves nothing.
        assert wait_until(lambda: "poll" in _main_thread_wait(child.proc.pid))
        os.kill(threads[-1], second)  # a thread's id: to that thread (see above)
        for client in clients:
            assert recv_all(client) == b""  # cut off: the grace period was ended
        assert child.next("forced") == 4
    finally:
        for client in clients:
            client.close()
        assert child.close() == 0


def _blocked(native_id: int) -> int:
    with open(f"/proc/self/task/{native_id}/status") as f:
        return int(next(line for line in f if line.startswith("SigBlk:")).split()[1], 16)


def test_internal_threads_block_and_the_user_code_threads_they_start_do_not() -> None:
    from sockserve._thread_signals import leave_signals_to_the_main_thread, signals_as_the_program_set_them

    masks: dict[str, int] = {}

    def user_code() -> None:
        signals_as_the_program_set_them()
        masks["user code"] = _blocked(threading.get_native_id())

    def internal() -> None:
        leave_signals_to_the_main_thread()
        masks["internal"] = _blocked(threading.get_native_id())
        started = threading.Thread(target=user_code)  # inherits this thread's mask
        started.start()
        started.join()

    thread = threading.Thread(target=internal)
    thread.start()
    thread.join()
    bit = 1 << (signal.SIGTERM - 1)
    assert masks["internal"] & bit  # a signal for the process is left to the others
    assert not masks["user code"] & bit  # the programs it starts can be terminated
    assert masks["user code"] == _blocked(threading.get_native_id())  # the program's mask (the main thread's)
