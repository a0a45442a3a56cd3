"""The prefork supervisor, driven as an operator would: with signals."""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import sockserve
from sockserve.prefork import Prefork

from .conftest import HAS_IPV6
from .helpers import TIMEOUT, connect, recv_all, recv_line, wait_until

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")

# What every supervisor script says: its events, and sockserve's log lines,
# as JSON lines on stdout (needs json, logging, os and time imported).
REPORTING = textwrap.dedent(
    """
    def say(**event):
        # One write() per line: the supervisor and its workers share this pipe.
        os.write(1, (json.dumps(event) + "\\n").encode())

    class Report(logging.Handler):
        def emit(self, record):
            say(log=record.getMessage(), t=time.monotonic(), pid=os.getpid(), name=record.name)

    log = logging.getLogger("sockserve")
    log.addHandler(Report())
    log.setLevel(logging.INFO)
    """
)

SUPERVISOR = (
    textwrap.dedent(
        """
    import json, logging, os, socket, sys, time
    import sockserve
    from sockserve.prefork import Prefork, RestartPolicy

    config = json.loads(sys.argv[1])
    """
    )
    + REPORTING
    + textwrap.dedent(
        """
    if config.get("own_child") is not None:
        # The embedding program's own child, exited before the supervisor
        # starts: a zombie whose status is the program's to collect.
        own_child = os.fork()
        if own_child == 0:
            os._exit(config["own_child"])
        os.waitid(os.P_PID, own_child, os.WEXITED | os.WNOWAIT)

    class Handler(sockserve.StreamRequestHandler):
        # "slow" lines wait for a second line before the reply: a request in flight.
        # "raise" fails the request; after "bye" the server closes first.
        def handle(self):
            for line in self.rfile:
                if line.startswith(b"raise"):
                    raise RuntimeError("this request fails")
                if line.startswith(b"slow"):
                    say(entered=os.getpid())
                    line = line.strip() + b" " + self.rfile.readline()
                self.wfile.write(b"%d " % os.getpid() + line)
                if line.startswith(b"bye"):
                    return

    class DatagramHandler(sockserve.DatagramRequestHandler):
        def handle(self):
            self.wfile.write(b"%d " % os.getpid() + self.rfile.read())

    class Crashing(sockserve.ThreadPoolTCPServer):
        def serve_forever(self, poll_interval=0.5):
            raise RuntimeError("this worker cannot serve")

    from sockserve import aio

    class AsyncHandler(aio.AsyncStreamRequestHandler):
        async def handle(self):
            async for line in self.reader:
                await self.writer.write(b"%d " % os.getpid() + line)

    server_class = Crashing if config.get("crash") else sockserve.ThreadPoolTCPServer
    if config.get("aio"):
        server_class, Handler = aio.AsyncTCPServer, AsyncHandler
    address = config.get("unix") or (config.get("host", "127.0.0.1"), config.get("port", 0))
    if config.get("unix"):
        server_class = sockserve.ThreadPoolUnixStreamServer
    if config.get("server"):
        server_class = getattr(sockserve, config["server"])
    if server_class.socket_type == socket.SOCK_DGRAM:
        Handler = DatagramHandler

    def report_socket(server):
        # Where the supervisor makes a server: in itself (inherited mode) or in each worker.
        sock = server.socket
        say(
            configured=os.getpid(),
            family=int(sock.family),
            type=int(sock.type),
            reuse_address=sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR),
            class_reuse_address=server_class.allow_reuse_address,
        )

    supervisor = Prefork(
        server_class, address, Handler,
        workers=config.get("workers", 2),
        reuse_port=config.get("reuse_port", False),
        grace=config.get("grace", 30),
        max_requests=config.get("max_requests", 0),
        configure=report_socket,
        restart_policy=RestartPolicy(initial=0.1, maximum=2.0, stable_after=1.0),
        metrics=config.get("metrics", True),
        drain_delay=config.get("drain_delay", 0.0),
        on_stopping=lambda: say(stopping=os.getpid()),
        after_fork=(lambda: say(after_fork=os.getpid())) if config.get("after_fork") else None,
    )
    supervisor.bind()
    say(address=supervisor.server_address, supervisor=os.getpid())
    if config.get("hold"):
        sys.stdin.readline()  # the test looks at the bound port before any worker starts
    if config.get("commands"):
        import threading

        def commands():
            # The test asks for the supervisor's aggregated metrics, as an admin listener's thread would.
            for command in sys.stdin:
                if command.strip() == "metrics":
                    snap = supervisor.metrics_snapshot()
                    say(metrics={"counters": dict(snap.counters), "gauges": dict(snap.gauges)})

        threading.Thread(target=commands, daemon=True).start()
    if config.get("sigterm_before_run"):
        # As sockserve serve --workers does: SIGTERM blocked until run()'s handlers are in place.
        import signal
        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM])
        os.kill(os.getpid(), signal.SIGTERM)  # the stop comes before run() has handlers
        code = supervisor.run(unblock=[signal.SIGTERM])
    else:
        code = supervisor.run()
    if config.get("own_child") is not None:
        try:
            say(own_child=os.waitstatus_to_exitcode(os.waitpid(own_child, 0)[1]))
        except ChildProcessError:
            say(own_child="reaped by someone else")
    sys.exit(code)
    """
    )
)


class Supervisor:
    """A supervisor in a subprocess, and its event stream on stdout."""

    def __init__(
        self, tmp_path: Any, script: str = SUPERVISOR, launch: Callable[..., Any] = subprocess.Popen, **config: Any
    ) -> None:
        """Start ``script`` with ``config``; ``launch`` starts the process
        (``subprocess.Popen``, or a fake service manager's ``start``)."""
        path = tmp_path / "supervisor.py"
        path.write_text(script)
        self.proc: subprocess.Popen[str] = launch(
            [sys.executable, str(path), json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own process group: a failed test can kill workers and all
        )
        self._lines: queue.Queue[str] = queue.Queue()
        self.logs: list[str] = []
        self.events: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()
        first = self.next("address")
        self.address: Any = first["address"] if isinstance(first["address"], str) else tuple(first["address"])
        self.pid = first["supervisor"]
        self.spawned: list[tuple[int, float]] = []

    def next(self, key: str, contains: str = "") -> dict[str, Any]:
        """The next event that has ``key`` (and, for logs, contains ``contains``)."""
        assert self.proc.stdout is not None
        while line := self._readline():
            event = json.loads(line)
            self.events.append(event)
            if "log" in event:
                self.logs.append(event["log"])
                if event["log"].startswith("spawned worker"):
                    self.spawned.append((int(event["log"].split()[2]), event["t"]))
            if key in event and contains in str(event.get(key, "")):
                return event  # type: ignore[no-any-return]
        raise AssertionError(f"the supervisor exited before {key} {contains!r}: {self.proc.stderr.read()}")  # type: ignore[union-attr]

    def _readline(self, timeout: float = 20.0) -> str:
        try:
            return self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no event from the supervisor for {timeout}s; so far: {self.logs}") from None

    def _pump(self) -> None:
        """Reader thread: select() cannot see lines already in the file's buffer, a queue can."""
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put("")  # end of output

    def wait_workers(self, n: int) -> None:
        """Until ``n`` workers have been spawned in all, and each is serving."""
        while len(self.spawned) < n:
            self.next("log", "spawned worker")
        for pid, _ in self.spawned[:n]:
            self.saw(f"worker {pid}: serving")

    def saw(self, text: str) -> None:
        """Until a log line containing ``text`` has come, now or earlier."""
        while not any(text in line for line in self.logs):
            self.next("log")

    def signal(self, sig: signal.Signals) -> None:
        os.kill(self.pid, sig)

    def metrics(self) -> dict[str, Any]:
        """The supervisor's metrics_snapshot() now (started with ``commands=True``)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("metrics\n")
        self.proc.stdin.flush()
        return self.next("metrics")["metrics"]  # type: ignore[no-any-return]

    def release(self) -> None:
        """Let a supervisor started with ``hold=True`` run its workers."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def read_to_end(self) -> None:
        """Collect every event until the output ends (after ``finish()``)."""
        while line := self._readline():
            event = json.loads(line)
            self.events.append(event)
            if "log" in event:
                self.logs.append(event["log"])

    def finish(self) -> int:
        try:
            code = self.proc.wait(timeout=30)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)  # the supervisor and every worker
                self.proc.wait()
            self._reader.join(10)
            for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
                if stream is not None:
                    stream.close()
        for pid, _ in self.spawned:  # every worker was reaped by the supervisor itself
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
        return code


def ask(address: Any, line: bytes = b"hello\n") -> tuple[int, bytes]:
    with connect(address) as client:
        client.sendall(line)
        pid, _, rest = recv_line(client).partition(b" ")
    return int(pid), rest


def test_workers_serve_and_a_graceful_stop_finishes_the_request_in_flight(tmp_path: Any) -> None:
    sup = Supervisor(tmp_path, workers=2)
    try:
        sup.wait_workers(2)
        workers = {pid for pid, _ in sup.spawned}
        for _ in range(6):
            pid, rest = ask(sup.address)
            assert rest == b"hello\n"
            assert pid in workers
            assert pid != sup.pid
        with connect(sup.address) as client:
            client.sendall(b"slow\n")
            busy = sup.next("entered")["entered"]
            idle = (workers - {busy}).pop()
            sup.signal(signal.SIGTERM)
            # Every copy of the listening socket is closed once the busy worker
            # drains (it closes its copy first) and the idle one has exited.
            sup.saw("connection(s) in flight")
            sup.saw(f"worker {idle} exited")
            with pytest.raises(ConnectionRefusedError):
                connect(sup.address).close()
            client.sendall(b"request\n")
            assert recv_line(client).endswith(b" slow request\n")
    finally:
        assert sup.finish() == 0


def test_a_killed_worker_is_replaced(tmp_path: Any) -> None:
    sup = Supervisor(tmp_path, workers=1)
    try:
        sup.wait_workers(1)
        victim, _ = ask(sup.address)
        os.kill(victim, signal.SIGKILL)
        sup.saw(f"worker {victim} died unexpectedly")
        sup.wait_workers(2)
        pid, rest = ask(sup.address)
        assert rest == b"hello\n"
        assert pid != victim
    finally:
        sup.signal(signal.SIGTERM)
        assert sup.finish() == 0


def test_a_crash_loop_backs_off(tmp_path: Any) -> None:
    sup = Supervisor(tmp_path, workers=1, crash=True)
    try:
        sup.wait_workers(5)
    finally:
        sup.signal(signal.SIGQUIT)
        assert sup.finish() == 0
    times = [t for _, t in sup.spawned]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # 0.1 s, then 0.2, 0.4, 0.8: the supervisor never starts a worker sooner.
    for gap, delay in zip(gaps, (0.1, 0.2, 0.4, 0.8), strict=False):
        assert gap >= delay * 0.9, gaps


def test_sigquit_stops_at_once(tmp_path: Any) -> None:
    sup = Supervisor(tmp_path, workers=1, grace=3600)
    try:
        sup.wait_workers(1)
        with connect(sup.address) as client:
            client.sendall(b"slow\n")
            sup.next("entered")
            started = time.monotonic()
            sup.signal(signal.SIGQUIT)
            assert recv_all(client) == b""
    finally:
        assert sup.finish() == 0
    assert time.monotonic() - started < 3600  # (not a timing threshold: the grace was an hour)


def test_sighup_starts_new_workers_and_drains_the_old(tmp_path: Any) -> None:
    sup = Supervisor(tmp_path, workers=1)
    try:
        sup.wait_workers(1)
        old = sup.spawned[0][0]
        with connect(sup.address) as client:
            client.sendall(b"slow\n")
            assert sup.next("entered")["entered"] == old
            sup.signal(signal.SIGHUP)
            sup.wait_workers(2)
            new = sup.spawned[1][0]
            sup.saw("connection(s) in flight")  # the old worker has closed its listening socket
            assert ask(sup.address)[0] == new  # new connections go to the new generation
            client.sendall(b"request\n")  # the old worker still finishes its request
            assert recv_line(client) == b"%d slow request\n" % old
        sup.saw(f"worker {old} exited")
    finally:
        sup.signal(signal.SIGTERM)
        assert sup.finish() == 0


def test_sigttin_and_sigttou_scale_the_workers(tmp_path: Any) -> None:
    sup = Supervisor(tmp_path, workers=1)
    try:
        sup.wait_workers(1)
        sup.signal(signal.SIGTTIN)
        sup.saw("SIGTTIN: 2 worker(s)")
        sup.wait_workers(2)
        sup.signal(signal.SIGTTOU)
        sup.saw("SIGTTOU: 1 worker(s)")
        sup.saw(f"worker {sup.spawned[0][0]} exited")  # the oldest retires
        assert ask(sup.address)[0] == sup.spawned[1][0]
    finally:
        sup.signal(signal.SIGTERM)
        assert sup.finish() == 0


def test_max_requests_recycles_workers(tmp_path: Any) -> None:
    sup = Supervisor(tmp_path, workers=1, max_requests=2)
    try:
        sup.wait_workers(1)
        first = [ask(sup.address)[0] for _ in range(2)]
        sup.saw("recycled")
        sup.wait_workers(2)
        assert first == [sup.spawned[0][0]] * 2
        assert ask(sup.address)[0] == sup.spawned[1][0]
    finally:
        sup.signal(signal.SIGTERM)
        assert sup.finish() == 0


def test_reuse_port_workers_bind_their_own_sockets(tmp_path: Any) -> None:
    sup = Supervisor(tmp_path, workers=2, reuse_port=True)
    try:
        sup.wait_workers(2)
        assert sup.address[1] != 0
        workers = {pid for pid, _ in sup.spawned}
        seen = set()
        for _ in range(40):  # the kernel hashes connections over the two sockets
            pid, rest = ask(sup.address)
            assert rest == b"hello\n"
            seen.add(pid)
            if seen == workers:
                break
        assert seen == workers
    finally:
        sup.signal(signal.SIGTERM)
        assert sup.finish() == 0


def test_unix_socket_prefork_removes_its_file(tmp_path: Any, short_tmp: str) -> None:
    path = os.path.join(short_tmp, "prefork.sock")
    sup = Supervisor(tmp_path, workers=2, unix=path)
    try:
        sup.wait_workers(2)
        assert ask(path)[1] == b"hello\n"
    finally:
        sup.signal(signal.SIGTERM)
        assert sup.finish() == 0
    assert not os.path.exists(path)


def test_async_servers_run_in_prefork_workers(tmp_path: Any) -> None:
    sup = Supervisor(tmp_path, workers=2, aio=True)
    try:
        sup.wait_workers(2)
        workers = {pid for pid, _ in sup.spawned}
        seen = set()
        for _ in range(20):
            pid, rest = ask(sup.address)
            assert rest == b"hello\n"
            assert pid in workers
            seen.add(pid)
    finally:
        sup.signal(signal.SIGTERM)
        assert sup.finish() == 0
    assert seen  # served by worker processes, none by the supervisor


# -- family, type and address from the server class -----------------------------------------------

LOOPBACK = {"127.0.0.1": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::1": "::1", "::": "::1"}


def needs_ipv6(host: str) -> Any:
    return pytest.param(host, marks=pytest.mark.skipif(not HAS_IPV6, reason="no IPv6 loopback"), id=host)


HOSTS = [
    pytest.param("127.0.0.1", id="127.0.0.1"),
    pytest.param("0.0.0.0", id="0.0.0.0"),
    needs_ipv6("::1"),
    needs_ipv6("::"),
]


def family_of(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


@contextlib.contextmanager
def datagram_client(target: Any, short_tmp: str | None = None, name: str = "client") -> Iterator[socket.socket]:
    """A UDP (or, for a path, Unix datagram) socket connected to ``target``.
    Connected, so an ICMP "port unreachable" comes back as ConnectionRefusedError."""
    if isinstance(target, str):
        assert short_tmp is not None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(os.path.join(short_tmp, name))  # the server replies to this address
    else:
        sock = socket.socket(family_of(target[0]), socket.SOCK_DGRAM)
    with sock:
        sock.settimeout(TIMEOUT)
        sock.connect(target)
        yield sock


def ask_datagram(target: Any, payload: bytes, short_tmp: str | None = None, name: str = "client") -> tuple[int, bytes]:
    with datagram_client(target, short_tmp, name) as sock:
        sock.send(payload)
        pid, _, rest = sock.recv(65536).partition(b" ")
    return int(pid), rest


def assert_bind_refused(socket_type: int, host: str, port: int) -> None:
    """A program without SO_REUSEPORT cannot bind (or listen on) the port, with or without SO_REUSEADDR."""
    for reuse_address in (False, True):
        with socket.socket(family_of(host), socket_type) as intruder:
            if reuse_address:
                intruder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            with pytest.raises(OSError, match="in use") as refused:  # noqa: PT012 - bind or listen, whichever refuses
                intruder.bind((host, port))
                if socket_type == socket.SOCK_STREAM:
                    intruder.listen()
            assert refused.value.errno == errno.EADDRINUSE, (host, port, reuse_address)


def intruder_hosts(host: str) -> list[str]:
    """The address the supervisor was given, its family's wildcard and loopback, and for the
    dual-stack IPv6 wildcard the IPv4 wildcard too."""
    hosts = {host, LOOPBACK[host], "::" if ":" in host else "0.0.0.0"}
    if host == "::":
        hosts.add("0.0.0.0")
    return sorted(hosts)


def configured(sup: Supervisor) -> dict[str, Any]:
    return next(event for event in sup.events if "configured" in event)


@pytest.mark.parametrize("host", HOSTS)
def test_reuse_port_tcp_reservation_holds_the_port_and_is_never_connected_to(tmp_path: Any, host: str) -> None:
    sup = Supervisor(tmp_path, host=host, workers=2, reuse_port=True, hold=True)
    try:
        port = sup.address[1]
        assert port != 0
        # Only the supervisor's reservation exists: bound, not listening.
        for intruder in intruder_hosts(host):
            assert_bind_refused(socket.SOCK_STREAM, intruder, port)
        with pytest.raises(ConnectionRefusedError):
            connect((LOOPBACK[host], port)).close()
        sup.release()
        sup.wait_workers(2)
        workers = {pid for pid, _ in sup.spawned}
        seen = set()
        for _ in range(60):  # the kernel hashes connections over the workers' sockets
            pid, rest = ask((LOOPBACK[host], port))
            assert rest == b"hello\n"
            seen.add(pid)
            if seen == workers:
                break
        assert seen == workers
        for intruder in intruder_hosts(host):
            assert_bind_refused(socket.SOCK_STREAM, intruder, port)
        assert {e["configured"] for e in sup.events if "configured" in e} <= workers  # each worker made its own
        report = configured(sup)
        assert report["reuse_address"]
        assert report["type"] == socket.SOCK_STREAM
        assert report["family"] == family_of(host)
    finally:
        sup.signal(signal.SIGTERM)
        assert sup.finish() == 0


@pytest.mark.parametrize("host", HOSTS)
def test_reuse_port_udp_reservation_holds_the_port_and_receives_no_datagram(tmp_path: Any, host: str) -> None:
    sup = Supervisor(tmp_path, server="ThreadPoolUDPServer", host=host, workers=2, reuse_port=True, hold=True)
    try:
        port = sup.address[1]
        assert port != 0
        target = (LOOPBACK[host], port)
        # Only the supervisor's reservation exists. It holds the UDP port...
        for intruder in intruder_hosts(host):
            assert_bind_refused(socket.SOCK_DGRAM, intruder, port)
        # ...and takes no datagram: with nobody to receive it, the kernel answers "port unreachable".
        with datagram_client(target) as client:
            client.send(b"anyone?")
            with pytest.raises(ConnectionRefusedError):
                client.recv(100)
        sup.release()
        sup.wait_workers(2)
        workers = {pid for pid, _ in sup.spawned}
        answered = []
        for i in range(60):  # from 60 client sockets: every datagram answered, by a worker
            pid, rest = ask_datagram(target, b"hello %d" % i)
            assert rest == b"hello %d" % i
            answered.append(pid)
        assert set(answered) == workers  # the kernel spread them over both workers, and none was lost
        for intruder in intruder_hosts(host):
            assert_bind_refused(socket.SOCK_DGRAM, intruder, port)
        report = configured(sup)
        assert report["type"] == socket.SOCK_DGRAM
        assert report["family"] == family_of(host)
        assert not report["reuse_address"]  # never for UDP
    finally:
        sup.signal(signal.SIGTERM)
        assert sup.finish() == 0


@pytest.mark.parametrize(
    ("server", "host"),
    [
        pytest.param("TCPServer", "127.0.0.1", id="tcp-v4"),
        pytest.param("ThreadPoolTCPServer", "::1", id="tcp-v6", marks=needs_ipv6("::1").marks),
        pytest.param("UDPServer", "127.0.0.1", id="udp-v4"),
        pytest.param("ThreadPoolUDPServer", "::1", id="udp-v6", marks=needs_ipv6("::1").marks),
        pytest.param("ThreadPoolUDPServer", "0.0.0.0", id="udp-v4-wildcard"),
    ],
)
def test_inherited_socket_of_the_class_family_and_type(tmp_path: Any, server: str, host: str) -> None:
    sup = Supervisor(tmp_path, server=server, host=host, workers=2)
    try:
        sup.wait_workers(2)
        workers = {pid for pid, _ in sup.spawned}
        target = (LOOPBACK[host], sup.address[1])
        stream = "TCP" in server
        for i in range(10):
            if stream:
                pid, rest = ask(target, b"hello %d\n" % i)
                assert rest == b"hello %d\n" % i
            else:
                pid, rest = ask_datagram(target, b"hello %d" % i)
                assert rest == b"hello %d" % i
            assert pid in workers
        report = configured(sup)
        assert report["configured"] == sup.pid  # one socket, bound by the supervisor, shared
        assert report["family"] == family_of(host)
        assert report["type"] == (socket.SOCK_STREAM if stream else socket.SOCK_DGRAM)
        # The supervisor's stream servers reuse the address; the user's class is left as it was.
        assert bool(report["reuse_address"]) == stream
        assert report["class_reuse_address"] is getattr(sockserve, server).allow_reuse_address
    finally:
        sup.signal(signal.SIGTERM)
        assert sup.finish() == 0


def test_unix_datagram_workers_share_the_inherited_socket(tmp_path: Any, short_tmp: str) -> None:
    path = os.path.join(short_tmp, "prefork.sock")
    sup = Supervisor(tmp_path, server="ThreadPoolUnixDatagramServer", unix=path, workers=2)
    try:
        sup.wait_workers(2)
        workers = {pid for pid, _ in sup.spawned}
        for i in range(10):
            pid, rest = ask_datagram(path, b"hello %d" % i, short_tmp, f"c{i}")
            assert rest == b"hello %d" % i
            assert pid in workers
        assert configured(sup)["family"] == socket.AF_UNIX
    finally:
        sup.signal(signal.SIGTERM)
        assert sup.finish() == 0
    assert not os.path.exists(path)


@pytest.mark.parametrize(
    "server_class", [sockserve.UnixStreamServer, sockserve.ThreadPoolUnixDatagramServer], ids=["stream", "datagram"]
)
@pytest.mark.parametrize("name", ["path", "abstract"])
def test_reuse_port_refuses_a_unix_socket_at_construction(short_tmp: str, server_class: Any, name: str) -> None:
    path = os.path.join(short_tmp, "prefork.sock") if name == "path" else "\0sockserve-prefork-test"
    with pytest.raises(ValueError, match="reuse_port=True cannot serve the Unix socket") as refused:
        Prefork(server_class, path, sockserve.BaseRequestHandler, workers=1, reuse_port=True)
    shown = "@" + path[1:] if path.startswith("\0") else path  # an abstract name is written as unix:@name binds it
    assert repr(shown) in str(refused.value)
    assert "SO_REUSEPORT" in str(refused.value)
    assert not os.path.exists(path)


def test_a_restarted_supervisor_binds_its_port_again_at_once(tmp_path: Any) -> None:
    first = Supervisor(tmp_path, workers=1)
    try:
        first.wait_workers(1)
        with connect(first.address) as client:
            client.sendall(b"bye\n")
            assert recv_line(client).endswith(b" bye\n")
            assert recv_all(client) == b""  # the server closed first: its side waits in TIME_WAIT
    finally:
        first.signal(signal.SIGTERM)
        assert first.finish() == 0
    port = first.address[1]
    second = Supervisor(tmp_path, workers=1, port=port)  # refused with EADDRINUSE without SO_REUSEADDR
    try:
        second.wait_workers(1)
        assert second.address[1] == port
        assert ask(second.address)[1] == b"hello\n"
    finally:
        second.signal(signal.SIGTERM)
        assert second.finish() == 0


# -- reaping by pid ---------------------------------------------------------------------------------


def test_an_embedding_programs_own_child_keeps_its_exit_status(tmp_path: Any) -> None:
    sup = Supervisor(tmp_path, workers=1, own_child=7)
    try:
        sup.wait_workers(1)
        victim = sup.spawned[0][0]
        os.kill(victim, signal.SIGKILL)  # the supervisor reaps: it must take its worker, and only it
        sup.saw(f"worker {victim} died unexpectedly (killed by SIGKILL)")
        sup.wait_workers(2)
    finally:
        sup.signal(signal.SIGTERM)
        assert sup.finish() == 0
    sup.read_to_end()
    assert [event["own_child"] for event in sup.events if "own_child" in event] == [7]


# -- the worker's pid in every worker log line ---------------------------------------------------


def test_every_log_line_from_a_worker_names_the_worker(tmp_path: Any) -> None:
    sup = Supervisor(tmp_path, workers=2)
    try:
        sup.wait_workers(2)
        with connect(sup.address) as client:  # a handler error, logged by the core
            client.sendall(b"raise\n")
            assert recv_all(client) == b""
        sup.saw("exception while handling a request from 127.0.0.1:")
        with connect(sup.address) as client:  # a drain, logged by the core
            client.sendall(b"slow\n")
            busy = sup.next("entered")["entered"]
            sup.signal(signal.SIGTERM)
            sup.saw(f"worker {busy}: draining 127.0.0.1:{sup.address[1]}: 1 connection(s) in flight")
            client.sendall(b"request\n")
            assert recv_line(client).endswith(b" slow request\n")
        # Before the SIGTERM below: a second one would force the drain while
        # the handler is still seeing the client's close.
        sup.saw(f"worker {busy}: drained")
    finally:
        sup.signal(signal.SIGTERM)
        assert sup.finish() == 0
    sup.read_to_end()
    logs = [event for event in sup.events if "log" in event]
    from_workers = [event for event in logs if event["pid"] != sup.pid]
    assert {event["pid"] for event in from_workers} == {pid for pid, _ in sup.spawned}
    for event in from_workers:
        assert event["log"].startswith(f"worker {event['pid']}: "), event
    assert {event["name"] for event in from_workers} == {"sockserve", "sockserve.prefork"}
    messages = " | ".join(event["log"] for event in from_workers)
    for core_line in ("exception while handling a request", "draining", "drained", "received SIGTERM"):
        assert core_line in messages
    for event in logs:  # the supervisor's own lines are left as they were
        if event["pid"] == sup.pid:
            assert not event["log"].startswith(f"worker {sup.pid}: "), event
    serving = next(event["log"] for event in logs if event["pid"] == sup.pid and "serving" in event["log"])
    assert f"serving 127.0.0.1:{sup.address[1]} with 2 worker(s)" in serving  # one address format


def test_after_fork_runs_in_each_worker_before_it_serves(tmp_path: Any) -> None:
    sup = Supervisor(tmp_path, workers=2, after_fork=True)
    try:
        called = {sup.next("after_fork")["after_fork"] for _ in range(2)}
        sup.wait_workers(2)
        assert called == {pid for pid, _ in sup.spawned}  # in the workers, not in the supervisor
        order = [event.get("after_fork") or event.get("log") for event in sup.events]
        for pid in called:  # before the worker served
            assert order.index(pid) < order.index(f"worker {pid}: serving 127.0.0.1:{sup.address[1]}")
    finally:
        sup.signal(signal.SIGTERM)
        assert sup.finish() == 0


def test_drain_delay_keeps_the_workers_serving_and_replaced(tmp_path: Any) -> None:
    sup = Supervisor(tmp_path, workers=1, drain_delay=30)
    try:
        sup.wait_workers(1)
        sup.signal(signal.SIGTERM)
        assert sup.next("stopping")["stopping"] == sup.pid  # on_stopping at once
        sup.saw("SIGTERM, not ready any more, serving 30s more before stopping (drain_delay)")
        victim, rest = ask(sup.address)  # still served
        assert rest == b"hello\n"
        os.kill(victim, signal.SIGKILL)  # a worker that dies during the delay is replaced
        sup.saw(f"worker {victim} died unexpectedly")
        sup.wait_workers(2)
        pid, rest = ask(sup.address)
        assert (pid != victim, rest) == (True, b"hello\n")
        sup.signal(signal.SIGTERM)
        sup.saw("SIGTERM, drain_delay cut short")
        sup.saw("SIGTERM, graceful stop")
    finally:
        assert sup.finish() == 0
    assert [event for event in sup.events if "stopping" in event] == [{"stopping": sup.pid}]  # called once


def test_drain_delay_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="drain_delay must be 0 or more"):
        Prefork(sockserve.TCPServer, ("127.0.0.1", 0), sockserve.StreamRequestHandler, drain_delay=-1)


def test_a_failed_bind_raises_the_servers_own_error_and_says_which_listener() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        handler = sockserve.StreamRequestHandler
        supervisor = Prefork(
            listeners=[
                (sockserve.TCPServer, ("127.0.0.1", 0), handler),
                (sockserve.TCPServer, taken.getsockname(), handler),
            ],
            workers=1,
        )
        try:
            with pytest.raises(OSError, match="in use") as failed:
                supervisor.bind()
            assert failed.type is OSError  # the server's own error, not a wrapper (callers explain its type)
            assert failed.value.errno == errno.EADDRINUSE
            assert supervisor.bind_failed == 1
        finally:
            supervisor.close()


def test_a_sigterm_before_run_installs_its_handlers_is_a_graceful_stop(tmp_path: Any) -> None:
    # Blocked by the caller, delivered once run()'s handlers are in place: not
    # the default action (the process killed, exit 143, workers orphaned).
    sup = Supervisor(tmp_path, workers=1, sigterm_before_run=True)
    try:
        sup.next("log", "received SIGTERM")
    finally:
        assert sup.finish() == 0
    sup.read_to_end()
    assert any("stopped" in line for line in sup.logs)


def gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie too: whoever reaps orphans may be slow)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_workers_drain_and_exit_when_the_supervisor_is_killed(tmp_path: Any) -> None:
    sup = Supervisor(tmp_path, workers=2, grace=3600)
    try:
        sup.wait_workers(2)
        workers = [pid for pid, _ in sup.spawned]
        with connect(sup.address) as client:
            client.sendall(b"slow\n")
            serving = sup.next("entered")["entered"]
            os.kill(sup.pid, signal.SIGKILL)
            sup.next("log", f"worker {serving}: ")  # its drain begins: the supervisor's death was noticed
            client.sendall(b"request\n")  # the connection in flight is still served
            assert recv_line(client) == b"%d slow request\n" % serving
        # No event to wait on: the workers are not our children.
        assert wait_until(lambda: all(gone(pid) for pid in workers)), f"workers still running: {workers}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(sup.proc.pid, signal.SIGKILL)  # whatever is left of the group
        sup.proc.wait(timeout=30)
        sup._reader.join(10)
        for stream in (sup.proc.stdin, sup.proc.stdout, sup.proc.stderr):
            if stream is not None:
                stream.close()
