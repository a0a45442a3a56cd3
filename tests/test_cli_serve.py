"""``sockserve serve`` end to end: the command in a subprocess, as a user runs
it, serving the handlers of tests/cli_app.py under every model on every bind
type that fits, stopped by real signals; the config file and the flags;
``--check``; and every kind of bad setting as one line on stderr and exit
status 2.

Each server binds port 0 (or a Unix path in a temporary directory) and the
test reads the real address from its start-up line on stderr. Every wait has
a timeout, and a server still running when a test ends is killed with its
whole process group (prefork workers included)."""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .fake_systemd import FakeManager, ServiceManager, listen_environment, spawn
from .helpers import connect, recv_all, recv_line, wait_until
from .tls_certs import Pki, client_context, install

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent  # where `tests.cli_app` is importable from
WAIT = 20.0  # seconds: a start-up or a stop on a loaded machine


class Serving:
    """A ``sockserve serve`` subprocess and the lines of its stderr, read by a
    thread into a queue so that every wait can time out."""

    def __init__(
        self,
        *args: str,
        cwd: Path = ROOT,
        env: dict[str, str] | None = None,
        spawn: Callable[..., subprocess.Popen[str]] = subprocess.Popen,
        **popen: Any,
    ) -> None:
        if env is None and cwd != ROOT:
            env = {**os.environ, "PYTHONPATH": str(ROOT)}  # sockserve's tests stay importable
        if env is not None:
            popen["env"] = env
        self.proc = spawn(
            [sys.executable, "-m", "sockserve", "serve", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=cwd,
            start_new_session=True,  # its own process group: kill() reaches prefork workers too
            **popen,
        )
        self.seen: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, name="stderr reader")
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._lines.put(line)
        self._lines.put(None)

    def wait_for(self, pattern: str, timeout: float = WAIT) -> re.Match[str]:
        """The first line from now on that matches ``pattern``."""
        while True:
            try:
                line = self._lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r} within {timeout}s:\n{self.text}") from None
            if line is None:
                self._lines.put(None)
                raise AssertionError(f"the server ended before a line matching {pattern!r}:\n{self.text}")
            self.seen.append(line)
            found = re.search(pattern, line)
            if found:
                return found

    def addresses(self, count: int = 1) -> list[Any]:
        """The addresses of the first ``count`` listeners, from their start-up lines."""
        return [address_of(self.wait_for(r"serving (\S+) \(")[1]) for _ in range(count)]

    @property
    def text(self) -> str:
        return "".join(self.seen)

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        """Send ``sig`` and wait for the exit status; the rest of stderr is in ``text``."""
        self.proc.send_signal(sig)
        return self.wait()

    def wait(self) -> int:
        code = self.proc.wait(timeout=WAIT)
        self._reader.join(WAIT)
        while (line := self._lines.get_nowait() if not self._lines.empty() else None) is not None:
            self.seen.append(line)
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=WAIT)
        self._reader.join(WAIT)
        assert self.proc.stdout is not None
        assert self.proc.stderr is not None
        self.proc.stdout.close()
        self.proc.stderr.close()

    def __enter__(self) -> Serving:  # noqa: PYI034 - a final class of the tests
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def address_of(url: str) -> Any:
    if url.startswith(("unix:", "unixgram:")):
        return url.split(":", 1)[1]
    host, _, port = url.split("://", 1)[1].rpartition(":")
    return (host.strip("[]"), int(port))


def run(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``sockserve serve`` with ``args``, expected to exit by itself (a check or an error)."""
    return subprocess.run(
        [sys.executable, "-m", "sockserve", "serve", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=cwd,
        env=env,
    )


def udp_round_trip(address: Any, payload: bytes) -> bytes:
    with socket.socket(socket.AF_INET6 if ":" in address[0] else socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(10)
        client.sendto(payload, address)
        return client.recvfrom(65536)[0]


def unix_datagram_round_trip(path: str, payload: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
        client.bind(path + ".client")  # a reply needs an address to go to
        try:
            client.settimeout(10)
            client.sendto(payload, path)
            return client.recv(65536)
        finally:
            os.unlink(path + ".client")


def stream_round_trip(address: Any, payload: bytes) -> bytes:
    with connect(address) as client:
        client.sendall(payload)
        return recv_line(client)


@pytest.fixture
def bind_for(short_tmp: str) -> Any:
    def make(scheme: str) -> str:
        return {
            "tcp": "tcp://127.0.0.1:0",
            "udp": "udp://127.0.0.1:0",
            "unix": f"unix:{os.path.join(short_tmp, 'app.sock')}",
            "unixgram": f"unixgram:{os.path.join(short_tmp, 'app.dgram')}",
        }[scheme]

    return make


# -- every model on every bind type that fits its handler ------------------------------------------------

COMBINATIONS = [
    *[("Echo", model, scheme) for model in ("sequential", "thread", "pool", "fork") for scheme in ("tcp", "unix")],
    *[("DatagramEcho", model, "udp") for model in ("sequential", "thread", "pool", "fork")],
    ("DatagramEcho", "pool", "unixgram"),
    ("DatagramEcho", "fork", "unixgram"),
    ("FramedEcho", "framed", "tcp"),
    ("FramedEcho", "framed", "unix"),
    ("AsyncEcho", "async", "tcp"),
    ("AsyncEcho", "async", "unix"),
    ("AsyncDatagramEcho", "async", "udp"),
    ("AsyncDatagramEcho", "async", "unixgram"),
]


@pytest.mark.parametrize(("handler", "model", "scheme"), COMBINATIONS)
def test_serves_every_model_on_every_bind_that_fits(handler: str, model: str, scheme: str, bind_for: Any) -> None:
    with Serving(f"tests.cli_app:{handler}", "--bind", bind_for(scheme), "--model", model) as server:
        (address,) = server.addresses()
        assert re.search(rf"serving \S+ \(model {model}, 1 process, pid {server.proc.pid}\)", server.text)
        payload = f"{handler} under {model}\n".encode()
        if scheme == "udp":
            assert udp_round_trip(address, payload) == payload
        elif scheme == "unixgram":
            assert unix_datagram_round_trip(address, payload) == payload
        else:
            assert stream_round_trip(address, payload) == payload
        assert server.stop(signal.SIGTERM) == 0, server.text
        assert "stopped (" in server.text
        assert "Traceback" not in server.text
        if scheme in ("unix", "unixgram"):
            assert not os.path.exists(address)  # the server removed its socket file


@pytest.mark.parametrize(("handler", "model"), [("Echo", "pool"), ("FramedEcho", "framed"), ("AsyncEcho", "async")])
def test_the_default_model_fits_the_handler(handler: str, model: str) -> None:
    with Serving(f"tests.cli_app:{handler}", "--bind", "tcp://127.0.0.1:0") as server:
        (address,) = server.addresses()
        assert f"(model {model}, " in server.text
        assert stream_round_trip(address, b"default\n") == b"default\n"
        assert server.stop() == 0


@pytest.mark.parametrize("model", ["pool", "thread", "async"])
def test_sigterm_lets_a_connection_in_flight_finish(model: str) -> None:
    handler = "AsyncEcho" if model == "async" else "Echo"
    with Serving(f"tests.cli_app:{handler}", "--bind", "tcp://127.0.0.1:0", "--model", model) as server:
        (address,) = server.addresses()
        with connect(address) as client:
            client.sendall(b"before\n")
            assert recv_line(client) == b"before\n"  # the handler runs
            server.proc.send_signal(signal.SIGTERM)
            server.wait_for("received SIGTERM, stopping gracefully")
            client.sendall(b"after\n")
            assert recv_line(client) == b"after\n"  # the connection in flight is still served
        assert server.wait() == 0, server.text
        # (How many were in flight depends on whether the stop counted before or
        # after this client closed: the "received" line comes before the count.)
        assert re.search(r"stopped \(\d connection\(s\) in flight, 0 closed early\)", server.text)


def test_sigint_stops_it_too() -> None:
    with Serving("tests.cli_app:Echo", "--bind", "tcp://127.0.0.1:0") as server:
        server.addresses()
        assert server.stop(signal.SIGINT) == 0
        assert "received SIGINT" in server.text


def test_a_second_sigterm_cuts_the_drain_short() -> None:
    with Serving("tests.cli_app:Echo", "--bind", "tcp://127.0.0.1:0", "--grace", "60") as server:
        (address,) = server.addresses()
        with connect(address) as client:
            client.sendall(b"hold\n")
            assert recv_line(client) == b"hold\n"
            server.proc.send_signal(signal.SIGTERM)
            server.wait_for("received SIGTERM")
            assert server.stop(signal.SIGTERM) == 0, server.text  # long before the 60 s grace
            assert recv_line(client) == b""  # closed by the server
        assert "1 closed early" in server.text


def test_prefork_workers_serve_reload_on_sighup_and_stop_on_sigterm() -> None:
    with Serving("tests.cli_app:Echo", "--bind", "tcp://127.0.0.1:0", "--workers", "2") as server:
        (address,) = server.addresses()
        assert re.search(r"\(model pool, 2 workers, supervisor pid \d+\)", server.text)
        # The start-up line comes once the supervisor handles signals and both workers serve.
        assert len(re.findall(r"worker \d+: serving ", server.text)) == 2
        assert stream_round_trip(address, b"prefork\n") == b"prefork\n"
        server.proc.send_signal(signal.SIGHUP)
        server.wait_for("SIGHUP: starting generation 1")
        for _ in range(2):
            server.wait_for(r"worker \d+: serving ")
        assert stream_round_trip(address, b"reloaded\n") == b"reloaded\n"
        assert server.stop() == 0, server.text
        assert "did not exit in time" not in server.text


def test_several_binds_of_every_type_in_one_process(short_tmp: str) -> None:
    path = os.path.join(short_tmp, "any.sock")
    binds = ["tcp://127.0.0.1:0", f"unix:{path}", "udp://127.0.0.1:0"]
    args = [arg for bind in binds for arg in ("--bind", bind)]
    with Serving("tests.cli_app:AnyEcho", *args, "--model", "thread") as server:
        tcp, unix, udp = server.addresses(3)
        assert unix == path
        assert stream_round_trip(tcp, b"tcp\n") == b"tcp\n"
        assert stream_round_trip(unix, b"unix\n") == b"unix\n"
        assert udp_round_trip(udp, b"udp") == b"udp"
        assert server.stop() == 0, server.text
        assert not os.path.exists(path)


def test_sighup_in_one_process_keeps_serving() -> None:
    with Serving("tests.cli_app:Echo", "--bind", "tcp://127.0.0.1:0") as server:
        (address,) = server.addresses()
        server.proc.send_signal(signal.SIGHUP)  # without a handler for it, the process would die
        server.wait_for("SIGHUP: nothing to reload without TLS")
        assert stream_round_trip(address, b"still here\n") == b"still here\n"
        assert server.stop() == 0, server.text


def test_drain_delay_keeps_serving_after_sigterm() -> None:
    with Serving("tests.cli_app:Echo", "--bind", "tcp://127.0.0.1:0", "--drain-delay", "30") as server:
        (address,) = server.addresses()
        server.proc.send_signal(signal.SIGTERM)
        server.wait_for(r"received SIGTERM: not ready any more, serving 30s more")
        assert stream_round_trip(address, b"new connection\n") == b"new connection\n"  # still accepted
        assert server.stop() == 0, server.text  # a second SIGTERM cuts the delay short
        assert "drain_delay cut short" in server.text


def test_pid_file_while_serving(tmp_path: Path) -> None:
    pid_file = tmp_path / "app.pid"
    with Serving("tests.cli_app:Echo", "--bind", "tcp://127.0.0.1:0", "--pid-file", str(pid_file)) as server:
        server.addresses()
        assert pid_file.read_text().strip() == str(server.proc.pid)
        assert server.stop() == 0, server.text
    assert not pid_file.exists()


def test_a_pid_file_held_by_a_live_process_is_one_line_and_exit_status_1(tmp_path: Path) -> None:
    pid_file = tmp_path / "app.pid"
    pid_file.write_text(f"{os.getpid()}\n")  # this test's process: alive
    proc = run("tests.cli_app:Echo", "--bind", "tcp://127.0.0.1:0", "--pid-file", str(pid_file))
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert str(pid_file) in proc.stderr
    assert pid_file.read_text() == f"{os.getpid()}\n"  # someone else's: left alone


@pytest.mark.skipif(os.geteuid() != 0, reason="a privilege drop needs root")
def test_privileges_are_dropped_after_binding(tmp_path: Path) -> None:
    import pwd

    nobody = pwd.getpwnam("nobody")
    args = ["--bind", "tcp://127.0.0.1:0", "--user", "nobody", "--umask", "027"]
    with Serving("tests.cli_app:WhoAmI", *args) as server:
        (address,) = server.addresses()
        assert stream_round_trip(address, b"who\n") == f"{nobody.pw_uid} {nobody.pw_gid} 027\n".encode()
        assert server.stop() == 0, server.text


@pytest.mark.parametrize(
    ("handler", "model", "scheme"),
    [("FramedEcho", "framed", "tcp"), ("AsyncEcho", "async", "unix"), ("DatagramEcho", "pool", "udp")],
)
def test_prefork_under_other_models(handler: str, model: str, scheme: str, bind_for: Any) -> None:
    with Serving(f"tests.cli_app:{handler}", "--bind", bind_for(scheme), "--workers", "2") as server:
        (address,) = server.addresses()
        assert f"(model {model}, 2 workers, " in server.text
        assert len(re.findall(r"worker \d+: serving ", server.text)) == 2
        payload = b"prefork %s\n" % model.encode()
        round_trip = udp_round_trip if scheme == "udp" else stream_round_trip
        assert round_trip(address, payload) == payload
        assert server.stop() == 0, server.text
        assert "did not exit in time" not in server.text


def test_prefork_serves_several_binds_and_tells_systemd(short_tmp: str) -> None:
    path = os.path.join(short_tmp, "prefork.sock")
    manager = FakeManager.unique(short_tmp)
    env = {**os.environ, "NOTIFY_SOCKET": manager.address}
    args = ["--bind", "tcp://127.0.0.1:0", "--bind", f"unix:{path}", "--workers", "2"]
    try:
        with Serving("tests.cli_app:Echo", *args, env=env) as server:
            tcp, unix = server.addresses(2)
            assert manager.wait_for("READY=1").split("\n") == [
                "READY=1",
                "STATUS=serving 2 listener(s), model pool, 2 workers",
            ]
            assert stream_round_trip(tcp, b"tcp\n") == b"tcp\n"
            assert stream_round_trip(unix, b"unix\n") == b"unix\n"
            server.proc.send_signal(signal.SIGHUP)
            assert manager.wait_for("RELOADING=1")
            assert manager.wait_for("READY=1")  # the new generation serves
            assert stream_round_trip(unix, b"reloaded\n") == b"reloaded\n"
            server.proc.send_signal(signal.SIGTERM)
            assert manager.wait_for("STOPPING=1")
            assert server.wait() == 0, server.text
        assert not os.path.exists(path)
    finally:
        manager.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_prefork_pings_the_watchdog_from_the_supervisors_loop(short_tmp: str) -> None:
    manager = FakeManager.unique(short_tmp)
    env = {**os.environ, "NOTIFY_SOCKET": manager.address, "WATCHDOG_USEC": "200000"}
    try:
        args = ["--bind", "tcp://127.0.0.1:0", "--workers", "2", "--admin", "127.0.0.1:0"]
        with Serving("tests.cli_app:Echo", *args, env=env) as server:
            assert manager.wait_for("READY=1")
            for _ in range(3):
                assert manager.wait_for("WATCHDOG=1")  # every 0.1 s, half of WATCHDOG_USEC
            with open(f"/proc/{server.proc.pid}/status") as status:  # pinged without a thread
                assert "\nThreads:\t1\n" in status.read()
            assert server.stop() == 0, server.text
    finally:
        manager.close()


def test_prefork_serves_inherited_sockets(short_tmp: str) -> None:
    with ServiceManager(short_tmp) as manager:
        tcp = manager.listen(socket.AF_INET, socket.SOCK_STREAM, ("127.0.0.1", 0))
        port = tcp.getsockname()[1]
        args = ["tests.cli_app:Echo", "--bind", "tcp://127.0.0.1:9?name=web", "--workers", "2"]
        with activated(args, manager, ["web"]) as server:
            line = server.wait_for(r"serving (\S+) \(model pool, 2 workers, supervisor pid \d+; inherited fd 3 'web'\)")
            assert line[1] == f"tcp://127.0.0.1:{port}"  # the inherited socket's address, not the bind's
            assert manager.notify.wait_for("READY=1")
            for _ in range(3):
                assert stream_round_trip(("127.0.0.1", port), b"worker\n") == b"worker\n"
            assert server.stop() == 0, server.text


def test_prefork_admin_listener_adds_up_the_workers() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    def accepted(admin: Any) -> float:
        status, body = http_get(admin, "/metrics")
        assert status == 200
        families = {family.name: family for family in text_string_to_metric_families(body.decode())}
        return sum(s.value for s in families["sockserve_connections_accepted"].samples if s.name.endswith("_total"))

    args = ["--bind", "tcp://127.0.0.1:0", "--workers", "2", "--admin", "127.0.0.1:0"]
    with Serving("tests.cli_app:Echo", *args) as server:
        admin = address_of("tcp://" + server.wait_for(r"admin listener on http://(\S+):")[1])
        (address,) = server.addresses()  # logged once the workers serve, after the admin listener's line
        server.wait_for(r"ready: serving 1 listener\(s\), model pool, 2 workers")
        assert http_get(admin, "/readyz")[0] == 200
        for _ in range(4):
            assert stream_round_trip(address, b"count me\n") == b"count me\n"
        assert wait_until(lambda: accepted(admin) == 4)  # the workers' counts reach the supervisor in batches
        with connect(address) as held:
            held.sendall(b"held\n")
            assert recv_line(held) == b"held\n"
            server.proc.send_signal(signal.SIGTERM)
            server.wait_for(r"SIGTERM, graceful stop")  # logged just before readiness fails
            # Draining (the held connection keeps a worker busy): /readyz says so.
            assert wait_until(lambda: http_get(admin, "/readyz")[0] == 503)
            assert http_get(admin, "/healthz")[0] == 200
        assert server.wait() == 0, server.text


def test_prefork_writes_the_pid_file_of_its_supervisor(tmp_path: Path) -> None:
    pid_file = tmp_path / "app.pid"
    args = ["--bind", "tcp://127.0.0.1:0", "--workers", "2", "--pid-file", str(pid_file)]
    with Serving("tests.cli_app:Echo", *args) as server:
        (address,) = server.addresses()
        assert pid_file.read_text().strip() == str(server.proc.pid)
        assert stream_round_trip(address, b"prefork\n") == b"prefork\n"
        assert server.stop() == 0, server.text
    assert not pid_file.exists()  # removed by the supervisor, not by a worker leaving the block


def http_get(address: Any, path: str) -> tuple[int, bytes]:
    """One GET to the admin listener: (status, body)."""
    with connect(address) as client:
        client.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
        response = recv_all(client)
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def test_prefork_drain_delay_fails_readiness_at_once_and_keeps_serving() -> None:
    args = ["--bind", "tcp://127.0.0.1:0", "--workers", "2", "--admin", "127.0.0.1:0", "--drain-delay", "30"]
    with Serving("tests.cli_app:Echo", *args) as server:
        admin = address_of("tcp://" + server.wait_for(r"admin listener on http://(\S+):")[1])
        (address,) = server.addresses()
        server.wait_for(r"ready: serving 1 listener\(s\), model pool, 2 workers")
        assert http_get(admin, "/readyz")[0] == 200
        server.proc.send_signal(signal.SIGTERM)
        server.wait_for(r"SIGTERM, not ready any more, serving 30s more before stopping \(drain_delay\)")
        assert http_get(admin, "/readyz") == (503, b"draining\n")  # at once: failed before the line
        assert http_get(admin, "/healthz")[0] == 200
        for _ in range(3):  # new connections are still accepted and served by the workers
            assert stream_round_trip(address, b"during the delay\n") == b"during the delay\n"
        assert "graceful stop" not in server.text
        with connect(address) as held:
            held.sendall(b"held\n")
            assert recv_line(held) == b"held\n"
            server.proc.send_signal(signal.SIGTERM)  # a second one ends the delay: the drain begins
            server.wait_for(r"SIGTERM, drain_delay cut short")
            server.wait_for(r"SIGTERM, graceful stop")
            held.sendall(b"still served\n")
            assert recv_line(held) == b"still served\n"  # the connection in flight finishes
        assert server.wait() == 0, server.text
        assert "did not exit in time" not in server.text
        assert "Traceback" not in server.text


def test_prefork_drain_delay_runs_out_then_the_workers_drain() -> None:
    args = ["--bind", "tcp://127.0.0.1:0", "--workers", "2", "--drain-delay", "0.5"]
    with Serving("tests.cli_app:Echo", *args) as server:
        (address,) = server.addresses()
        server.wait_for(r"ready: ")
        with connect(address) as held:
            held.sendall(b"held\n")
            assert recv_line(held) == b"held\n"
            server.proc.send_signal(signal.SIGTERM)  # only one: the delay ends by itself
            server.wait_for(r"SIGTERM, not ready any more, serving 0.5s more")
            server.wait_for(r"drain_delay over, graceful stop")
            server.wait_for(r"received SIGTERM, stopping gracefully")
            held.sendall(b"finishing\n")
            assert recv_line(held) == b"finishing\n"
        assert server.wait() == 0, server.text
        assert "Traceback" not in server.text


def test_prefork_sigquit_during_the_drain_delay_stops_at_once() -> None:
    args = ["--bind", "tcp://127.0.0.1:0", "--workers", "2", "--drain-delay", "30", "--grace", "60"]
    with Serving("tests.cli_app:Echo", *args) as server:
        (address,) = server.addresses()
        server.wait_for(r"ready: ")
        with connect(address) as held:
            held.sendall(b"held\n")
            assert recv_line(held) == b"held\n"
            server.proc.send_signal(signal.SIGTERM)
            server.wait_for(r"not ready any more")
            assert server.stop(signal.SIGQUIT) == 0, server.text  # long before the delay or the grace
            assert recv_line(held) == b""  # cut
        assert "SIGQUIT, immediate stop" in server.text


def _listening_inode(port: int) -> str:
    """The inode of the TCP socket listening on 127.0.0.1:``port`` (/proc/net/tcp)."""
    with open("/proc/net/tcp") as table:
        for row in table.read().splitlines()[1:]:
            fields = row.split()
            if fields[1] == f"0100007F:{port:04X}" and fields[3] == "0A":  # 0A: LISTEN
                return fields[9]
    raise AssertionError(f"nothing listens on 127.0.0.1:{port}")


def _connection_inode(local_port: int, remote_port: int) -> str:
    """The inode of the server's side of the loopback connection between those ports."""
    with open("/proc/net/tcp") as table:
        for row in table.read().splitlines()[1:]:
            fields = row.split()
            if fields[1] == f"0100007F:{local_port:04X}" and fields[2] == f"0100007F:{remote_port:04X}":
                return fields[9]
    raise AssertionError(f"no connection from port {remote_port} to port {local_port}")


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(FileNotFoundError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    return inodes


def _gone(pid: int) -> bool:
    """The process has exited (a zombie nobody reaps counts: it holds no descriptor)."""
    try:
        with open(f"/proc/{pid}/stat") as stat_file:
            return stat_file.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_prefork_workers_hold_no_admin_socket_and_the_admin_port_dies_with_the_supervisor() -> None:
    args = ["--bind", "tcp://127.0.0.1:0", "--workers", "2", "--admin", "127.0.0.1:0"]
    with Serving("tests.cli_app:Echo", *args) as server:
        admin = address_of("tcp://" + server.wait_for(r"admin listener on http://(\S+):")[1])
        server.wait_for(r"ready: ")
        supervisor = server.proc.pid
        with open(f"/proc/{supervisor}/status") as status:  # no thread that a fork could catch holding a lock
            assert "\nThreads:\t1\n" in status.read()
        listening = _listening_inode(admin[1])
        assert listening in _socket_inodes(supervisor)
        workers = [int(pid) for pid in re.findall(r"spawned worker (\d+)", server.text)]
        assert len(workers) == 2
        for worker in workers:
            assert listening not in _socket_inodes(worker), server.text
        # A scrape in flight while the supervisor forks a new generation (SIGHUP):
        # the new workers must not hold its connection either.
        with connect(admin) as scrape:
            scrape.sendall(b"GET /readyz HTTP/1.1\r\n")  # the head is not finished: the admin holds it
            port = scrape.getsockname()[1]
            # Accepted by the admin listener (the inode is 0 while in the accept queue).
            assert wait_until(lambda: _connection_inode(admin[1], port) in _socket_inodes(supervisor))
            connection = _connection_inode(admin[1], port)
            server.proc.send_signal(signal.SIGHUP)
            server.wait_for(r"generation 1: 2 worker\(s\) serving")
            new = [int(pid) for pid in re.findall(r"spawned worker (\d+) \(generation 1\)", server.text)]
            assert len(new) == 2
            for worker in new:
                held = _socket_inodes(worker)
                assert listening not in held
                assert connection not in held
            scrape.sendall(b"Host: test\r\n\r\n")
            assert recv_all(scrape).startswith(b"HTTP/1.1 200 OK\r\n")  # answered, and closed: the FIN came
        os.kill(supervisor, signal.SIGKILL)
        server.proc.wait(timeout=WAIT)
        try:
            alive = [worker for worker in new if not _gone(worker)]
            assert alive  # orphaned workers still run (they serve until told to stop)...
            with pytest.raises(ConnectionRefusedError):  # ...and none of them keeps the admin port open
                socket.create_connection(admin, timeout=WAIT).close()
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(supervisor, signal.SIGKILL)  # the workers, in the supervisor's process group
            assert wait_until(lambda: all(_gone(worker) for worker in workers + new))


# A SIGTERM that comes while the supervisor binds (before its handlers exist):
# sent by a Prefork.bind() wrapper, so that it lands in that window every time.
SIGTERM_WHILE_BINDING = """
import os, signal, sys
from sockserve.cli import main
from sockserve.prefork import Prefork

real_bind = Prefork.bind
sent = []


def bind(self):
    if not sent:
        sent.append(True)
        os.kill(os.getpid(), signal.SIGTERM)
    return real_bind(self)


Prefork.bind = bind
sys.exit(main(["serve", "tests.cli_app:Echo", "--bind", "tcp://127.0.0.1:0", "--workers", "2"]))
"""


def test_prefork_a_sigterm_during_start_up_stops_it_gracefully() -> None:
    # It found the default action (the supervisor killed, exit -15, its
    # workers orphaned): the signals are blocked from the start, and the
    # supervisor unblocks them once its handlers are in place.
    proc = subprocess.run(
        [sys.executable, "-c", SIGTERM_WHILE_BINDING],
        capture_output=True,
        text=True,
        timeout=WAIT * 3,
        check=False,
        cwd=ROOT,
        start_new_session=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "SIGTERM" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_prefork_names_the_bind_that_failed() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run(
            "tests.cli_app:Echo", "--bind", "tcp://127.0.0.1:0", "--bind", f"tcp://127.0.0.1:{port}", "--workers", "2"
        )
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.endswith(f"cannot listen on tcp://127.0.0.1:{port}: the address is already in use\n"), (
        proc.stderr
    )
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert "tcp://127.0.0.1:0" not in proc.stderr  # only the bind that failed is named


def test_the_admin_listener_says_ready_then_draining() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    args = ["--bind", "tcp://127.0.0.1:0", "--admin", "127.0.0.1:0", "--drain-delay", "30"]
    with Serving("tests.cli_app:Echo", *args) as server:
        (address,) = server.addresses()
        admin = address_of("tcp://" + server.wait_for(r"admin listener on http://(\S+):")[1])
        server.wait_for(r"ready: serving 1 listener")
        assert http_get(admin, "/healthz")[0] == 200
        assert http_get(admin, "/readyz")[0] == 200
        assert stream_round_trip(address, b"counted\n") == b"counted\n"
        status, body = http_get(admin, "/metrics")
        assert status == 200
        url = f"tcp://{address[0]}:{address[1]}"
        families = {family.name: family for family in text_string_to_metric_families(body.decode())}
        accepted = families["sockserve_connections_accepted"].samples
        assert [(sample.labels, sample.value) for sample in accepted if sample.name.endswith("_total")] == [
            ({"listener": url}, 1.0)
        ]
        server.proc.send_signal(signal.SIGTERM)
        server.wait_for(r"not ready any more")
        assert http_get(admin, "/readyz")[0] == 503  # the balancer stops sending...
        assert http_get(admin, "/healthz")[0] == 200  # ...but the process is alive
        assert stream_round_trip(address, b"still served\n") == b"still served\n"  # and still serving
        assert server.stop() == 0, server.text


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]], ids=["one-process", "prefork"])
def test_reload_restarts_the_server_when_a_source_file_changes(tmp_path: Path, workers: list[str]) -> None:
    app = tmp_path / "reload_app.py"
    app.write_text(VERSIONED_APP.format(version=1))
    # "inherited fd 3)": no name after it (it said 'unknown', sd_listen_fds' word for none).
    started = r"serving (\S+) \(model pool, [^;]*pid (\d+); inherited fd 3\)"
    with Serving("reload_app:Version", "--bind", "tcp://127.0.0.1:0", "--reload", *workers, cwd=tmp_path) as server:
        held = address_of(server.wait_for(r"reload: holding (\S+) ")[1])
        first = server.wait_for(started)
        assert address_of(first[1]) == held  # the child serves the parent's socket, never binds its own
        server.wait_for(r"ready: ")
        assert stream_round_trip(held, b"which\n") == b"version 1\n"
        app.write_text(VERSIONED_APP.format(version=2) + "# a longer file: a new size, whatever the clock\n")
        second = server.wait_for(started)
        assert second[2] != first[2]  # a new process
        server.wait_for(r"ready: ")
        assert stream_round_trip(held, b"which\n") == b"version 2\n"
        assert server.stop() == 0, server.text


VERSIONED_APP = """
import sockserve


class Version(sockserve.StreamRequestHandler):
    def handle(self):
        self.rfile.readline()
        self.wfile.write(b"version {version}\\n")
"""


def activated(args: list[str], manager: ServiceManager, names: list[str], env: dict[str, str] | None = None) -> Serving:
    """``sockserve serve`` started as systemd starts a socket-activated
    service (tests/fake_systemd.py): the manager's sockets on descriptors 3,
    4, ..., ``LISTEN_PID``, ``LISTEN_FDS``, ``LISTEN_FDNAMES``, ``NOTIFY_SOCKET``."""
    fds = [sock.fileno() for sock in manager.sockets]
    variables = {"NOTIFY_SOCKET": manager.notify.address, **listen_environment(len(fds), names), **(env or {})}
    return Serving(*args, spawn=lambda argv, **popen: spawn(argv, fds, variables, **popen))


def test_socket_activation_serves_the_inherited_sockets(short_tmp: str) -> None:
    path = os.path.join(short_tmp, "activated.sock")
    with ServiceManager(short_tmp) as manager:
        tcp = manager.listen(socket.AF_INET, socket.SOCK_STREAM, ("127.0.0.1", 0))
        manager.listen(socket.AF_UNIX, socket.SOCK_STREAM, path)
        port = tcp.getsockname()[1]
        args = ["tests.cli_app:Echo", "--bind", f"unix:{path}?name=app-unix", "--bind", f"tcp://127.0.0.1:{port}"]
        with activated(args, manager, ["app-tcp", "app-unix"]) as server:
            first = server.wait_for(r"serving (\S+) .*inherited fd (\d)")
            second = server.wait_for(r"serving (\S+) .*inherited fd (\d)")
            assert (first[1], first[2]) == (f"unix:{path}", "4")  # by its name
            assert (second[1], second[2]) == (f"tcp://127.0.0.1:{port}", "3")  # by its address
            assert manager.notify.wait_for("READY=1")
            assert stream_round_trip(("127.0.0.1", port), b"tcp\n") == b"tcp\n"
            assert stream_round_trip(path, b"unix\n") == b"unix\n"
            assert server.stop() == 0, server.text
            assert manager.notify.wait_for("STOPPING=1")
        assert os.path.exists(path)  # the manager's socket file: never unlinked
        # The manager's sockets still listen: the next start would find its connections queued.
        with connect(("127.0.0.1", port)):
            pass


def test_socket_activation_that_does_not_fit_the_binds_is_one_line(short_tmp: str) -> None:
    with ServiceManager(short_tmp) as manager:
        manager.listen(socket.AF_INET, socket.SOCK_DGRAM, ("127.0.0.1", 0))
        with activated(["tests.cli_app:Echo", "--bind", "tcp://127.0.0.1:0"], manager, ["dns"]) as server:
            assert server.wait() == 2
        assert len(server.seen) == 1, server.text
        assert server.seen[0].startswith(
            "sockserve serve: socket activation: bind tcp://127.0.0.1:0: no inherited TCP socket"
        )


def test_systemd_notifications(short_tmp: str) -> None:
    manager = FakeManager.unique(short_tmp)
    env = {**os.environ, "NOTIFY_SOCKET": manager.address, "WATCHDOG_USEC": "200000"}
    try:
        with Serving("tests.cli_app:Echo", "--bind", "tcp://127.0.0.1:0", env=env) as server:
            (address,) = server.addresses()
            ready = manager.wait_for("READY=1")
            assert ready.split("\n") == ["READY=1", "STATUS=serving 1 listener(s), model pool"]
            assert manager.wait_for("WATCHDOG=1")  # every 0.1 s, half of WATCHDOG_USEC
            server.proc.send_signal(signal.SIGHUP)
            reloading = dict(line.split("=", 1) for line in manager.wait_for("RELOADING=1").split("\n"))
            assert int(reloading["MONOTONIC_USEC"]) > 0  # what Type=notify-reload checks
            assert manager.wait_for("READY=1")  # reloaded
            assert stream_round_trip(address, b"after reload\n") == b"after reload\n"
            server.proc.send_signal(signal.SIGTERM)
            assert manager.wait_for("STOPPING=1")
            assert server.wait() == 0, server.text
    finally:
        manager.close()


@pytest.mark.parametrize(
    ("variables", "warning"),
    [
        ({"NOTIFY_SOCKET": "relative/notify"}, "NOTIFY_SOCKET='relative/notify': not an absolute path"),
        ({"NOTIFY_SOCKET": "vsock:2:1234"}, "NOTIFY_SOCKET='vsock:2:1234': AF_VSOCK addresses are not supported"),
        ({"NOTIFY_SOCKET": "/" + "x" * 200}, "longer than a Unix socket address can be"),
    ],
    ids=["relative", "vsock", "too-long"],
)
@pytest.mark.parametrize("workers", [[], ["--workers", "2"]], ids=["one-process", "prefork"])
def test_a_bad_notify_socket_is_one_warning_and_it_serves_on(
    variables: dict[str, str], warning: str, workers: list[str]
) -> None:
    # It died with a traceback after "serving".
    env = {**os.environ, **variables, "WATCHDOG_USEC": "200000"}
    with Serving("tests.cli_app:Echo", "--bind", "tcp://127.0.0.1:0", *workers, env=env) as server:
        server.wait_for(r"ready: ")  # the warning comes before it, after "serving" in one process
        (warned,) = [line for line in server.seen if "NOTIFY_SOCKET" in line]
        assert " WARNING " in warned
        assert warning in warned
        assert warned.rstrip().endswith(": not telling the service manager anything")
        address = address_of(re.findall(r"serving (\S+) \(", server.text)[0])
        assert stream_round_trip(address, b"still here\n") == b"still here\n"
        assert server.stop() == 0, server.text
    assert "Traceback" not in server.text
    assert sum("NOTIFY_SOCKET" in line for line in server.seen) == 1, server.text


@pytest.mark.parametrize("usec", ["garbage", "0", "-5"])
@pytest.mark.parametrize("workers", [[], ["--workers", "2"]], ids=["one-process", "prefork"])
def test_a_bad_watchdog_usec_is_one_warning_and_it_notifies_without_it(
    short_tmp: str, usec: str, workers: list[str]
) -> None:
    manager = FakeManager.unique(short_tmp)
    env = {**os.environ, "NOTIFY_SOCKET": manager.address, "WATCHDOG_USEC": usec}
    try:
        with Serving("tests.cli_app:Echo", "--bind", "tcp://127.0.0.1:0", *workers, env=env) as server:
            server.wait_for(r"ready: ")
            (warned,) = [line for line in server.seen if "WATCHDOG_USEC" in line]
            assert " WARNING " in warned
            assert (
                f"WATCHDOG_USEC={usec!r}: not a positive number of microseconds: running without the systemd" in warned
            )
            address = address_of(re.findall(r"serving (\S+) \(", server.text)[0])
            assert manager.wait_for("READY=1")
            assert stream_round_trip(address, b"no watchdog\n") == b"no watchdog\n"
            server.proc.send_signal(signal.SIGTERM)
            assert manager.wait_for("STOPPING=1")
            assert server.wait() == 0, server.text
        assert "Traceback" not in server.text
    finally:
        manager.close()


def test_admin_metrics_count_bytes_without_the_access_log() -> None:
    # The byte counters read 0 unless --access-log was on (count_bytes was never set).
    from prometheus_client.parser import text_string_to_metric_families

    def counted(admin: Any) -> tuple[float, float]:
        status, body = http_get(admin, "/metrics")
        assert status == 200
        families = {family.name: family for family in text_string_to_metric_families(body.decode())}
        return tuple(  # type: ignore[return-value]
            sum(sample.value for sample in families[name].samples if sample.name.endswith("_total"))
            for name in ("sockserve_received_bytes", "sockserve_sent_bytes")
        )

    args = ["--bind", "tcp://127.0.0.1:0", "--admin", "127.0.0.1:0"]
    with Serving("tests.cli_app:Echo", *args) as server:
        (address,) = server.addresses()
        admin = address_of("tcp://" + server.wait_for(r"admin listener on http://(\S+):")[1])
        payload = b"x" * 1000 + b"\n"
        assert stream_round_trip(address, payload) == payload
        # Counted as the connection closes: the client closed, the server's close follows.
        assert wait_until(lambda: counted(admin) == (1001.0, 1001.0)), counted(admin)
        assert server.stop() == 0, server.text


# -- the config file and the flags -------------------------------------------------------------------------


def test_the_config_file_and_a_flag_over_it(tmp_path: Path, short_tmp: str) -> None:
    path = os.path.join(short_tmp, "from-file.sock")
    config = tmp_path / "app.toml"
    config.write_text(f'handler = "tests.cli_app:Echo"\nbind = ["unix:{path}"]\nmodel = "thread"\nmax_line = 8\n')
    with Serving("--config", str(config), "--bind", "tcp://127.0.0.1:0") as server:
        (address,) = server.addresses()  # the flag's bind, not the file's
        assert "(model thread, " in server.text  # the file's model
        assert not os.path.exists(path)
        with connect(address) as client:
            client.sendall(b"0123456789\n")  # longer than the file's max_line
            assert recv_line(client) == b""  # the handler failed on LineTooLong and the connection closed
        assert server.stop() == 0


def test_check_prints_the_effective_settings_and_binds_nothing(tmp_path: Path) -> None:
    config = tmp_path / "app.toml"
    config.write_text('handler = "tests.cli_app:FramedEcho"\nmax_connections = 100\nidle_timeout = 30\n')
    with socket.socket() as taken:  # --check must not bind: a port in use is no error
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run("--config", str(config), "--bind", f"tcp://127.0.0.1:{port}", "--max-connections", "5", "--check")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    effective = tomllib.loads(proc.stdout)
    assert effective["handler"] == "tests.cli_app:FramedEcho"
    assert effective["model"] == "framed"  # chosen for the handler
    assert effective["bind"] == [f"tcp://127.0.0.1:{port}"]
    assert effective["max_connections"] == 5  # the flag over the file
    assert effective["idle_timeout"] == 30.0
    assert "max_connections_per_ip" not in effective
    # What it prints is a config file: run with it, --check says the same.
    (tmp_path / "again.toml").write_text(proc.stdout)
    again = run("--config", str(tmp_path / "again.toml"), "--check")
    assert again.returncode == 0, again.stderr
    assert tomllib.loads(again.stdout) == effective


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


def test_tls_from_the_flags(pki: Pki, tmp_path: Path) -> None:
    certfile, keyfile = install(pki.server, tmp_path, "server")
    with Serving(
        "tests.cli_app:Echo", "--bind", "tcp://127.0.0.1:0", "--tls-cert", certfile, "--tls-key", keyfile
    ) as server:
        ((host, port),) = server.addresses()
        with (
            socket.create_connection((host, port), timeout=10) as raw,
            client_context(pki).wrap_socket(raw, server_hostname="localhost") as client,
        ):
            client.sendall(b"over tls\n")
            assert recv_line(client) == b"over tls\n"
        assert server.stop() == 0


def test_check_loads_the_tls_files(pki: Pki, tmp_path: Path) -> None:
    certfile, keyfile = install(pki.server, tmp_path, "server")
    proc = run("tests.cli_app:Echo", "--tls-cert", certfile, "--tls-key", keyfile, "--check")
    assert proc.returncode == 0, proc.stderr
    (tmp_path / "bad.pem").write_text("not a certificate\n")
    proc = run("tests.cli_app:Echo", "--tls-cert", str(tmp_path / "bad.pem"), "--check")
    assert proc.returncode == 2
    assert proc.stderr == (
        f"sockserve serve: --tls-cert: {tmp_path / 'bad.pem'}: no PEM certificate in it (-----BEGIN CERTIFICATE-----)\n"
    )
    proc = run("tests.cli_app:Echo", "--tls-cert", certfile, "--tls-key", certfile, "--check")
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"sockserve serve: --tls-key: {certfile}: no PEM private key in it"), proc.stderr


# -- bad settings: one line, exit status 2, never a traceback -----------------------------------------------

BAD = [
    (["tests.cli_app:Echo", "--bogus"], "unrecognized arguments: --bogus (see sockserve serve --help)"),
    (
        ["tests.cli_app:Echo", "--max-connections", "-3"],
        "--max-connections: expected a whole number, 1 or more, got '-3'",
    ),
    (["tests.cli_app:Echo", "--bind", "tcp://[::1:80"], "--bind: bad bind 'tcp://[::1:80': expected [IPV6]:PORT"),
    ([], "no handler: give MODULE:ATTRIBUTE"),
    (["tests.cli_app:Nope"], "handler: module tests.cli_app has no attribute 'Nope'"),
    (["tests.no_such_module:Echo"], "handler: no module named 'tests.no_such_module'"),
    (["tests.cli_app:NOT_A_HANDLER"], "handler: tests.cli_app:NOT_A_HANDLER is 42, not a handler class"),
    (
        ["tests.cli_app:FramedEcho", "--model", "fork"],
        "--model: FramedEcho is a FramedRequestHandler: it runs on the pool (model framed), not fork",
    ),
    (
        ["tests.cli_app:AsyncEcho", "--model", "pool"],
        "--model: AsyncEcho is an AsyncStreamRequestHandler: it runs with model async, not pool",
    ),
    (
        ["tests.cli_app:Echo", "--model", "async"],
        "--model: Echo is a StreamRequestHandler, a blocking handler: it runs with model pool, thread, fork, "
        "sequential, not async",
    ),
    (
        ["tests.cli_app:Echo", "--model", "framed"],
        "--model: model framed runs a FramedRequestHandler; Echo is a StreamRequestHandler (use model pool)",
    ),
    (
        ["tests.cli_app:Echo", "--bind", "udp://127.0.0.1:0"],
        "--bind: udp://127.0.0.1:0: Echo is a StreamRequestHandler, which serves streams (tcp:// and unix:)",
    ),
    (
        ["tests.cli_app:AsyncDatagramEcho", "--bind", "tcp://127.0.0.1:0"],
        "--bind: tcp://127.0.0.1:0: AsyncDatagramEcho is an async datagram handler, which serves datagrams "
        "(udp:// and unixgram:)",
    ),
    (["tests.cli_app:Echo", "--tls-cert", "/nonexistent.pem"], "--tls-cert: /nonexistent.pem: cannot read it"),
    (["tests.cli_app:Echo", "--user", "no-such-user-here"], "--user: "),
    (["tests.cli_app:Echo", "--group", "no-such-group-here"], "--group: "),
    (["tests.cli_app:Echo", "--tls-key", "key.pem"], "--tls-key: needs tls_cert (TLS is on only with a certificate)"),
    # --check: were a check missing, the test would fail at once instead of serving.
    # Any callable passed, and failed (or did something else) at the first connection.
    (
        ["os:system", "--check"],
        "handler: os:system is the built-in function system, not a handler class (a subclass of",
    ),
    (
        ["tests.cli_app:Echo.__init__", "--check"],
        "handler: tests.cli_app:Echo.__init__ is the function BaseRequestHandler.__init__, not a handler class",
    ),
    (["tests.cli_app:Kind", "--check"], "handler: tests.cli_app:Kind is the class Kind, not a handler class"),
    (["tests.cli_app:Echo", "--check", "--workers", "100000"], "--workers: expected a whole number from 1 to 1024"),
    (["tests.cli_app:Echo", "--check", "--bind", "unix:/tmp/" + "x" * 103], "--bind: bad bind 'unix:/tmp/"),
    (["tests.cli_app:Echo", "--check", "--bind", "unix:/tmp/new\nline.sock"], "--bind: a control character"),
    (
        ["tests.cli_app:Echo", "--check", "--proxy-trusted", "10.0.0.0/8", "--proxy-timeout", "2592000"],
        "--proxy-timeout: ",
    ),
    (
        ["tests.cli_app:Echo", "--check", "--tls-handshake-timeout", "2592000"],
        "--tls-handshake-timeout: expected at most",
    ),
    (["tests.cli_app:Echo", "--check", "--idle-timeout", "1e300"], "--idle-timeout: expected at most 1000000 seconds"),
    (["tests.cli_app:Echo", "--check", "--drain-delay", "1e300"], "--drain-delay: expected at most 1000000 seconds"),
]


@pytest.mark.parametrize(("args", "message"), BAD)
def test_a_bad_setting_is_one_line_and_exit_status_2(args: list[str], message: str) -> None:
    proc = run(*args)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.startswith(f"sockserve serve: {message}"), proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("max_conections = 3\n", "unknown setting 'max_conections' in app.toml (did you mean max_connections?)"),
        ("grace = 'soon'\n", "app.toml: grace: expected a number of seconds, 0 or more, got 'soon'"),
        ("model = 'fork'\n", "app.toml: model: FramedEcho is a FramedRequestHandler: it runs on the pool"),
        ("bind = 'tcp://127.0.0.1'\n", "app.toml: bind: bad bind 'tcp://127.0.0.1': no port"),
        ("bind = [\n", "app.toml: not valid TOML: "),
        # A NUL passed --check, then a traceback at serve ("embedded null byte").
        ('pid_file = "/tmp/x\\u0000.pid"\n', "app.toml: pid_file: a control character (a newline, a NUL, ...)"),
        ('tls_cert = "/tmp/x\\u0000.pem"\n', "app.toml: tls_cert: a control character"),
        ('bind = ["unix:/tmp/new\\nline.sock"]\n', "app.toml: bind: a control character"),
        ("workers = 99999999999999999999\n", "app.toml: workers: expected a whole number from 1 to 1024"),
    ],
)
def test_a_bad_config_file_is_one_line_naming_the_setting_and_the_file(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "app.toml").write_text(text)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = run("tests.cli_app:FramedEcho", "--config", "app.toml", cwd=tmp_path, env=env)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"sockserve serve: {message}"), proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr


@pytest.mark.parametrize("check", [[], ["--check"]], ids=["serve", "check"])
def test_a_config_file_that_is_not_utf8(tmp_path: Path, check: list[str]) -> None:
    (tmp_path / "app.toml").write_bytes(b"\xff\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = run("tests.cli_app:Echo", "--config", "app.toml", *check, cwd=tmp_path, env=env)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == "sockserve serve: app.toml: not valid TOML: not UTF-8 (byte 0xff at offset 0)\n"


@pytest.mark.parametrize(
    ("source", "message"),
    [
        # It exited 3 without a word.
        ("raise SystemExit(3)\n", "importing exits_app failed: SystemExit: 3 ("),
        ("import sys\nsys.exit('no config')\n", "importing exits_app failed: SystemExit: no config ("),
        # A traceback.
        ("raise KeyboardInterrupt\n", "importing exits_app failed: KeyboardInterrupt ("),
    ],
)
def test_a_handler_module_that_exits_when_imported(tmp_path: Path, source: str, message: str) -> None:
    (tmp_path / "exits_app.py").write_text(source)
    proc = run("exits_app:Handler", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"sockserve serve: handler: {message}{tmp_path / 'exits_app.py'}, line "), proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr


def test_a_handler_module_that_fails_to_import(tmp_path: Path) -> None:
    (tmp_path / "broken_app.py").write_text("import json\n\nvalue = json.loads('{')\n")
    proc = run("broken_app:Handler", cwd=tmp_path)  # the current directory is importable, as with uvicorn
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("sockserve serve: handler: importing broken_app failed: JSONDecodeError: "), (
        proc.stderr
    )
    assert proc.stderr.count("\n") == 1, proc.stderr


@pytest.mark.parametrize("which", ["bind", "admin"])
def test_an_address_in_use_is_one_line_and_exit_status_1(which: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        if which == "bind":
            proc = run("tests.cli_app:Echo", "--bind", f"tcp://127.0.0.1:{port}")
        else:
            proc = run("tests.cli_app:Echo", "--bind", "tcp://127.0.0.1:0", "--admin", f"127.0.0.1:{port}")
    assert proc.returncode == 1, proc.stderr
    what = " (the admin listener)" if which == "admin" else ""
    assert proc.stderr.endswith(f"cannot listen on tcp://127.0.0.1:{port}{what}: the address is already in use\n")
    assert proc.stderr.count("\n") == 1, proc.stderr


def test_json_log_format() -> None:
    import json

    with Serving("tests.cli_app:Echo", "--bind", "tcp://127.0.0.1:0", "--log-format", "json") as server:
        line = json.loads(server.wait_for(r"serving").string)
        assert line["logger"] == "sockserve.serve"
        assert line["pid"] == server.proc.pid
        assert server.stop() == 0
    for text in server.seen:
        json.loads(text)  # every line is JSON


def _accepts(path: str) -> bool:
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(path)
        except OSError:  # not there yet, or bound but not listening yet
            return False
    return True


def test_the_access_log_in_json_whatever_the_log_level(short_tmp: str) -> None:
    import json

    path = os.path.join(short_tmp, "access.sock")
    args = ["--bind", f"unix:{path}", "--access-log", "--log-format", "json", "--log-level", "warning"]
    with Serving("tests.cli_app:Echo", *args) as server:
        # --log-level warning: no start-up line to wait for. The socket file is
        # there from bind(), a moment before listen(): a connection says it listens.
        assert wait_until(lambda: _accepts(path) or server.proc.poll() is not None)
        assert stream_round_trip(path, b"logged\n") == b"logged\n"
        line = json.loads(server.wait_for(r'"logger": "sockserve.access"').string)
        assert line["closed_by"] == "client"
        assert server.stop() == 0, server.text
        assert "serving" not in server.text  # the INFO lines of the other loggers stay hidden


def test_listener_and_admin_urls_are_written_as_binds_are() -> None:
    # An abstract Unix admin socket's address comes back as bytes: it was
    # taken for TCP, and the start-up line raised TypeError after binding.
    from sockserve._cli_serve import _admin_url, url_of

    assert url_of("tcp", ("::1", 9000)) == "tcp://[::1]:9000"
    assert url_of("udp", ("127.0.0.1", 53)) == "udp://127.0.0.1:53"
    assert url_of("unixgram", b"\0name") == "unixgram:@name"
    assert url_of("unix", "/run/app.sock") == "unix:/run/app.sock"
    assert _admin_url(("127.0.0.1", 9100)) == "http://127.0.0.1:9100"
    assert _admin_url("/run/admin.sock") == "http+unix:/run/admin.sock"
    assert _admin_url(b"\0admin") == "http+unix:@admin"
