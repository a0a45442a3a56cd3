"""sockserve.serve(): the first SIGTERM/SIGINT drains, a second one (or
SIGQUIT) stops at once; the handlers it borrowed are given back."""

from __future__ import annotations

import json
import logging
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
from sockserve import _serve as sockserve_serve
from sockserve import aio
from sockserve._address import format_address
from sockserve._health import Health

from .helpers import JsonLinesChild, connect, recv_all, recv_line, wait_until

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

    server = getattr(sockserve, sys.argv[3])(("127.0.0.1", 0), TwoLines)
    print(json.dumps({"address": server.server_address}), flush=True)
    # "serve_all": through the control thread (what sockserve serve runs), not the plain loop
    extras = {"on_ready": lambda: None} if sys.argv[4] == "serve_all" else {}
    report = sockserve.serve(server, grace=float(sys.argv[1]), drain_delay=float(sys.argv[2]), **extras)
    print(json.dumps({"in_flight": report.in_flight, "forced": report.forced}), flush=True)
    """
)


class Child(JsonLinesChild):
    def __init__(
        self,
        tmp_path: Any,
        grace: float,
        drain_delay: float = 0.0,
        server_class: str = "ThreadPoolTCPServer",
        how: str = "serve",
    ) -> None:
        script = tmp_path / "serve_child.py"
        script.write_text(SERVER)
        super().__init__(script, str(grace), str(drain_delay), server_class, how)
        self.address = tuple(self.next("address"))


# Every model, served alone and through serve_all()'s control thread. A
# sequential server's handler runs on the loop that a signal interrupts.
MODELS = ["ThreadPoolTCPServer", "TCPServer", "ThreadingTCPServer", "ForkingTCPServer"]
MODELS_AND_HOW = [(model, how) for model in MODELS for how in ("serve", "serve_all")]


@pytest.mark.parametrize(("server_class", "how"), MODELS_AND_HOW)
@pytest.mark.parametrize("first_signal", [signal.SIGTERM, signal.SIGINT])
def test_first_signal_drains_the_request_in_flight(
    tmp_path: Any, first_signal: signal.Signals, server_class: str, how: str
) -> None:
    child = Child(tmp_path, grace=30, server_class=server_class, how=how)
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


@pytest.mark.parametrize(("server_class", "how"), MODELS_AND_HOW)
@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGQUIT])
def test_second_signal_or_sigquit_stops_at_once(
    tmp_path: Any, second: signal.Signals, server_class: str, how: str
) -> None:
    child = Child(tmp_path, grace=3600, server_class=server_class, how=how)
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


@pytest.mark.parametrize(("server_class", "how"), MODELS_AND_HOW)
def test_the_grace_period_ends_with_the_connection_cut(tmp_path: Any, server_class: str, how: str) -> None:
    # A client that never finishes its request: the first signal's grace
    # period still begins, and its end cuts the connection (a sequential
    # server's stop used to wait for its handler first, forever).
    child = Child(tmp_path, grace=0.2, server_class=server_class, how=how)
    try:
        with connect(child.address) as client:
            client.sendall(b"slow\n")
            assert child.next("entered") == "slow\n"
            child.proc.send_signal(signal.SIGTERM)
            assert recv_all(client) == b""  # cut off when the grace period ended
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


def test_serve_without_extras_starts_no_thread() -> None:
    # A forking server must not fork a multi-threaded process (Python 3.12
    # warns, and a lock held by another thread stays held in the child). (A
    # sequential one has a control thread: see the grace period tests.)
    counts: list[int] = []

    class CountsThreads(sockserve.ForkingTCPServer):
        def service_actions(self) -> None:
            counts.append(threading.active_count())
            os.kill(os.getpid(), signal.SIGTERM)

    before = threading.active_count()
    sockserve.serve(CountsThreads(("127.0.0.1", 0), sockserve.BaseRequestHandler), grace=1, poll_interval=0.01)
    assert counts[0] == before


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


# -- health, drain_delay, the callbacks, serve_all() ------------------------------------

READINESS_SERVER = textwrap.dedent(
    """
    import json, sys
    import sockserve
    from sockserve._admin import AdminServer
    from sockserve._health import Health

    def say(**message):
        print(json.dumps(message), flush=True)

    class Echo(sockserve.StreamRequestHandler):
        def handle(self):
            self.wfile.write(self.rfile.readline())

    server = sockserve.ThreadPoolTCPServer(("127.0.0.1", 0), Echo)
    health = Health()
    admin = AdminServer(("127.0.0.1", 0), health)
    admin.start()
    say(address=server.server_address, admin=admin.server_address)
    try:
        report = sockserve.serve(
            server,
            grace=30,
            health=health,
            drain_delay=float(sys.argv[1]),
            on_ready=lambda: say(event="ready", state=health.state),
            on_stopping=lambda: say(event="stopping", state=health.state),
            on_reloading=lambda: say(event="reloading", state=health.state),
        )
    finally:
        admin.close()
    say(state=health.state, forced=report.forced)
    """
)


class ReadinessChild(Child):
    def __init__(self, tmp_path: Any, drain_delay: float) -> None:
        script = tmp_path / "readiness_child.py"
        script.write_text(READINESS_SERVER)
        self.proc = subprocess.Popen(
            [sys.executable, str(script), str(drain_delay)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        first = json.loads(self.proc.stdout.readline() or "{}")
        assert "address" in first, self.proc.stderr.read()  # type: ignore[union-attr]
        self.address = tuple(first["address"])
        self.admin = tuple(first["admin"])

    def next_event(self) -> tuple[str, str]:
        assert self.proc.stdout is not None
        while line := self.proc.stdout.readline():
            message = json.loads(line)
            if "event" in message:
                return message["event"], message["state"]
        raise AssertionError(f"the server exited: {self.proc.stderr.read()}")  # type: ignore[union-attr]


def readyz(admin: Any) -> tuple[int, bytes]:
    with connect(admin) as sock:
        sock.sendall(b"GET /readyz HTTP/1.1\r\n\r\n")
        head, _, body = recv_all(sock).partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


def refuses(address: Any) -> bool:
    try:
        connect(address).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.mark.parametrize("cut_short", [True, False])
def test_readiness_fails_at_the_first_sigterm_while_the_listener_serves_on(tmp_path: Any, cut_short: bool) -> None:
    # cut_short: a delay longer than any test, ended by a second SIGTERM;
    # otherwise a short one that runs out by itself.
    child = ReadinessChild(tmp_path, drain_delay=3600 if cut_short else 0.5)
    try:
        admin = child.admin
        assert child.next_event() == ("ready", "ready")
        assert readyz(admin) == (200, b"ready\n")
        child.proc.send_signal(signal.SIGTERM)
        assert child.next_event() == ("stopping", "draining")
        assert readyz(admin) == (503, b"draining\n")  # from the first signal on
        with connect(child.address) as client:  # and the service still takes new connections
            client.sendall(b"still here\n")
            assert recv_line(client) == b"still here\n"
        if cut_short:
            child.proc.send_signal(signal.SIGTERM)  # ends the delay: the graceful stop follows
        assert wait_until(lambda: refuses(child.address))
        assert child.next("forced") == 0
    finally:
        assert child.close() == 0


class LineEcho(sockserve.StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.readline())


class DatagramEcho(sockserve.DatagramRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.read())


class AsyncLineEcho(aio.AsyncStreamRequestHandler):
    async def handle(self) -> None:
        async for line in self.reader:
            await self.writer.write(line)


def udp_round_trip(address: Any, payload: bytes) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(10)
        sock.sendto(payload, address)
        return sock.recv(4096)


def test_serve_all_serves_a_mix_and_stops_them_together(unix_path: str) -> None:
    servers: list[Any] = [
        sockserve.ThreadPoolTCPServer(("127.0.0.1", 0), LineEcho),
        sockserve.ThreadingUnixStreamServer(unix_path, LineEcho),
        sockserve.UDPServer(("127.0.0.1", 0), DatagramEcho),
        aio.AsyncTCPServer(("127.0.0.1", 0), AsyncLineEcho),
    ]
    health = Health()
    seen: list[tuple[str, str]] = []

    def ready() -> None:
        seen.append(("ready", health.state))
        for server in servers:
            if isinstance(server, sockserve.UDPServer):
                assert udp_round_trip(server.server_address, b"dgram") == b"dgram"
            else:
                with connect(server.server_address) as sock:
                    sock.sendall(b"line\n")
                    assert recv_line(sock) == b"line\n"
        seen.append(("served", health.state))
        os.kill(os.getpid(), signal.SIGTERM)

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP)}
    threads_before = set(threading.enumerate())
    reports = sockserve_serve.serve_all(
        servers, grace=5, health=health, on_ready=ready, on_stopping=lambda: seen.append(("stopping", health.state))
    )
    assert seen == [("ready", "ready"), ("served", "ready"), ("stopping", "draining")]
    assert health.state == "stopped"
    assert len(reports) == 4
    assert all(report.forced == 0 for report in reports)
    assert {sig: signal.getsignal(sig) for sig in before} == before
    assert not os.path.exists(unix_path)
    for server in servers[:3]:
        assert server.socket.fileno() == -1
    assert refuses(servers[0].server_address)
    assert refuses(servers[3].server_address)
    assert set(threading.enumerate()) == threads_before  # every thread joined before it returned


def test_serve_all_stops_every_server_when_one_fails(caplog: pytest.LogCaptureFixture) -> None:
    class Fails(sockserve.ThreadPoolTCPServer):
        def service_actions(self) -> None:
            raise ValueError("broken loop")

    failing = Fails(("127.0.0.1", 0), LineEcho)
    healthy = sockserve.ThreadPoolTCPServer(("127.0.0.1", 0), LineEcho)
    stopped: list[str] = []
    threads_before = set(threading.enumerate())
    with caplog.at_level(logging.INFO, logger="sockserve"), pytest.raises(ValueError, match="broken loop"):
        sockserve_serve.serve_all(
            [healthy, failing], grace=5, poll_interval=0.01, on_stopping=lambda: stopped.append("stopping")
        )
    assert stopped == ["stopping"]
    where = format_address(failing.server_address)
    assert f"{where}: serving failed: ValueError('broken loop')" in caplog.messages
    assert f"{where} stopped serving: stopping every server" in caplog.messages
    assert healthy.socket.fileno() == -1
    assert failing.socket.fileno() == -1
    assert set(threading.enumerate()) == threads_before


def test_serve_all_needs_a_server() -> None:
    with pytest.raises(ValueError, match="at least one server"):
        sockserve_serve.serve_all([])


def test_a_callback_that_raises_is_logged_and_serving_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    server = sockserve.ThreadPoolTCPServer(("127.0.0.1", 0), LineEcho)

    def ready() -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        raise RuntimeError("bad callback")

    with caplog.at_level(logging.ERROR, logger="sockserve"):
        report = sockserve.serve(server, grace=5, on_ready=ready)
    assert report.forced == 0
    assert [r.getMessage() for r in caplog.records] == ["serve(): on_ready raised; serving goes on"]


SIGHUP_SERVER = textwrap.dedent(
    """
    import json, os, signal
    import sockserve

    def say(event):
        print(json.dumps({"event": event}), flush=True)

    server = sockserve.ThreadPoolTCPServer(("127.0.0.1", 0), sockserve.BaseRequestHandler)
    report = sockserve.serve(
        server,
        grace=5,
        on_ready=lambda: say("ready"),
        on_stopping=lambda: say("stopping"),
        on_reloading=lambda: say("reloading"),
    )
    say("stopped")
    """
)


def test_sighup_without_tls_calls_on_reloading_then_on_ready(tmp_path: Any) -> None:
    script = tmp_path / "sighup_child.py"
    script.write_text(SIGHUP_SERVER)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None

        def event() -> str:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            assert line, proc.stderr.read()  # type: ignore[union-attr]
            return str(json.loads(line)["event"])

        assert event() == "ready"
        proc.send_signal(signal.SIGHUP)  # without a handler, SIGHUP would end the process
        assert (event(), event()) == ("reloading", "ready")
        proc.send_signal(signal.SIGTERM)
        assert (event(), event()) == ("stopping", "stopped")
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def test_sighup_with_callbacks_reloads_tls_before_on_ready(tmp_path: Any) -> None:
    # systemd's notify-reload: RELOADING=1, the reload, then READY=1; a client
    # that connects once on_ready has run again gets the new certificate.
    from .tls_certs import Pki, client_context, der, install

    pki = Pki()
    certfile, keyfile = install(pki.server, tmp_path, "live")
    server = sockserve.ThreadPoolTCPServer(("127.0.0.1", 0), LineEcho)
    server.tls = sockserve.TLSConfig(certfile, keyfile, watch=False)
    events: list[str] = []

    def presented() -> bytes:
        with (
            connect(server.server_address) as raw,
            client_context(pki).wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            certificate = tls.getpeercert(binary_form=True)
            assert certificate is not None
            return certificate

    def ready() -> None:
        events.append("ready")
        if len(events) == 1:
            assert presented() == der(pki.server)
            install(pki.server2, tmp_path, "live")
            os.kill(os.getpid(), signal.SIGHUP)
        else:
            assert presented() == der(pki.server2)
            os.kill(os.getpid(), signal.SIGTERM)

    sockserve_serve.serve_all(
        [server],
        grace=5,
        on_ready=ready,
        on_reloading=lambda: events.append("reloading"),
        on_stopping=lambda: events.append("stopping"),
    )
    assert events == ["ready", "reloading", "ready", "stopping"]


@pytest.mark.parametrize("server_class", [sockserve.ThreadPoolTCPServer, sockserve.TCPServer, aio.AsyncTCPServer])
def test_serve_with_health_on_the_main_thread(server_class: Any) -> None:
    # With extras, the first server still runs on the main thread: each kind
    # of loop there (the sequential one, the pool's, an event loop) is told to stop by the control thread.
    server = server_class(("127.0.0.1", 0), AsyncLineEcho if server_class is aio.AsyncTCPServer else LineEcho)
    health = Health()
    served: list[bytes] = []

    def ready() -> None:
        with connect(server.server_address) as sock:
            sock.sendall(b"main\n")
            served.append(recv_line(sock))
        os.kill(os.getpid(), signal.SIGTERM)

    report = sockserve.serve(server, grace=5, health=health, on_ready=ready)
    assert served == [b"main\n"]
    assert report.forced == 0
    assert health.state == "stopped"
    assert refuses(server.server_address)


@pytest.mark.parametrize(
    ("after_the_first", "forced"),
    [
        ([signal.SIGQUIT], 1),  # at once, delay or not
        ([signal.SIGTERM], 0),  # ends the delay: the graceful stop lets the request finish
        ([signal.SIGTERM, signal.SIGTERM], 1),  # and one more forces it, as always
    ],
)
def test_signals_during_the_drain_delay(tmp_path: Any, after_the_first: list[signal.Signals], forced: int) -> None:
    child = Child(tmp_path, grace=3600, drain_delay=3600)
    try:
        with connect(child.address) as client:
            client.sendall(b"slow\n")
            assert child.next("entered") == "slow\n"
            child.proc.send_signal(signal.SIGTERM)
            child.next_log("received SIGTERM: not ready any more")
            for i, sig in enumerate(after_the_first):
                child.proc.send_signal(sig)
                if sig == signal.SIGTERM and i == 0:
                    # Handled before the next is sent: two pending SIGTERMs would be one.
                    assert "1 connection(s) in flight" in child.next_log("draining")
            if forced:
                assert recv_all(client) == b""  # cut off
            else:
                client.sendall(b"request\n")
                assert recv_line(client) == b"full reply: slow request\n"
        assert child.next("forced") == forced
    finally:
        assert child.close() == 0
