"""Accept policy: several requests per wake-up, and surviving EMFILE."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import textwrap
import threading
from typing import Any

import sockserve
from sockserve._accept import BACKOFF_SECONDS
from sockserve.testing import running_server

from .helpers import connect, recv_line


class LineEcho(sockserve.StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.readline())


def test_pending_connections_are_accepted_in_one_wake_up() -> None:
    """The stdlib takes one request per loop turn, running service_actions()
    between each; here every connection already waiting is taken first."""
    events: list[str] = []
    served = threading.Semaphore(0)

    class Recording(sockserve.TCPServer):
        request_queue_size = 16

        def process_request(self, request: Any, client_address: Any) -> None:
            events.append("request")
            super().process_request(request, client_address)
            served.release()

        def service_actions(self) -> None:
            events.append("service_actions")

    with Recording(("127.0.0.1", 0), LineEcho) as server:
        clients = [connect(server.server_address) for _ in range(5)]
        try:
            for client in clients:  # all five wait in the backlog before the loop starts
                client.sendall(b"x\n")
            with running_server(server, poll_interval=3600):
                for _ in clients:
                    assert served.acquire(timeout=10)
                for client in clients:
                    assert recv_line(client) == b"x\n"
        finally:
            for client in clients:
                client.close()
    assert events[:6] == ["request"] * 5 + ["service_actions"], events


EMFILE_CHILD = textwrap.dedent(
    """
    import json, logging, os, resource, sys, threading, time
    import sockserve

    class LineEcho(sockserve.StreamRequestHandler):
        def handle(self):
            self.wfile.write(self.rfile.readline())

    class Report(logging.Handler):
        def emit(self, record):
            print(json.dumps({"t": time.monotonic(), "level": record.levelname, "msg": record.getMessage()}),
                  flush=True)

    log = logging.getLogger("sockserve")
    log.addHandler(Report())
    log.setLevel(logging.DEBUG)

    class Reporting(sockserve.TCPServer):
        def close_request(self, request):
            super().close_request(request)
            print(json.dumps({"closed": True}), flush=True)

    server = Reporting(("127.0.0.1", 0), LineEcho)
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
                    print(json.dumps({"filled": len(fillers), "errno": exc.errno}), flush=True)
            elif command == "release":
                while fillers:
                    os.close(fillers.pop())
                print(json.dumps({"released": True}), flush=True)
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


def test_out_of_descriptors_backs_off_and_recovers(tmp_path: Any) -> None:
    script = tmp_path / "emfile_server.py"
    script.write_text(EMFILE_CHILD)
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdin is not None
    assert proc.stdout is not None

    def next_message() -> dict[str, Any]:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert line, f"the server exited: {proc.stderr.read()}"  # type: ignore[union-attr]
        return json.loads(line)  # type: ignore[no-any-return]

    def command(text: str) -> None:
        proc.stdin.write(text + "\n")  # type: ignore[union-attr]
        proc.stdin.flush()  # type: ignore[union-attr]

    try:
        address = tuple(next_message()["address"])
        with connect(address) as warm_up:  # proves the loop is running before we starve it
            warm_up.sendall(b"warm\n")
            assert recv_line(warm_up) == b"warm\n"
        # Fill only once the server has closed its side: a descriptor freed
        # after the fill would let the next accept succeed.
        assert next_message() == {"closed": True}

        command("fill")
        filled = next_message()
        assert filled["errno"] == 24, filled  # EMFILE

        with connect(address) as starved:  # the kernel completes it; accept() cannot
            starved.sendall(b"survived\n")
            failures = []
            while len(failures) < 4:  # the first failure, then three retries
                message = next_message()
                if "level" in message and ("cannot accept" in message["msg"] or "still failing" in message["msg"]):
                    failures.append(message)
            assert failures[0]["level"] == "ERROR"
            assert "Too many open files" in failures[0]["msg"]
            assert all(f["level"] == "DEBUG" for f in failures[1:]), "one loud line per episode, not one per try"
            gaps = [b["t"] - a["t"] for a, b in itertools.pairwise(failures)]
            assert min(gaps) >= BACKOFF_SECONDS * 0.9, f"retried without backing off: {gaps}"

            command("release")
            assert recv_line(starved) == b"survived\n"
        # Retries logged before the release may come first; the recovery line must follow.
        while not ("accepting on" in (message := next_message()).get("msg", "") and "again" in message["msg"]):
            assert message.get("level") in (None, "DEBUG"), message
        assert message["level"] == "WARNING"

        command("stop")
        while "stopped" not in (message := next_message()):
            pass
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
