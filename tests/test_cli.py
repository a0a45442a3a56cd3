"""The ``sockserve`` command: the demo, an echo server that stops cleanly, and
startup errors reported as one clear line (bad values: argparse's usage error)."""

from __future__ import annotations

import errno
import os
import re
import signal
import socket
import subprocess
import sys
from typing import Any

import pytest

from .conftest import requires_ipv6
from .helpers import connect, recv_line


def test_demo_walks_through_the_four_examples() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "sockserve", "demo"], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    for name in ("logging_echo", "echo", "threaded_echo", "forking_echo"):
        assert f". {name}: " in proc.stdout
    assert proc.stdout.count("Hello, world") >= 4
    assert "All four examples ran" in proc.stdout


def _start_echo(listen: str, *extra: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "sockserve", "echo", "--listen", listen, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: _finish() can reach prefork workers too
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()
    assert first.startswith("sockserve echo: listening on "), first + proc.stderr.read()  # type: ignore[union-attr]
    return proc, first.removeprefix("sockserve echo: listening on ").strip()


def _finish(proc: subprocess.Popen[str]) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        # Kill the whole group: a worker left behind by a killed supervisor
        # would hold the pipes open, and the next communicate() would hang.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # everything in the group has exited meanwhile
        proc.communicate(timeout=10)
        raise
    return proc.returncode, out


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_echo_serves_and_stops_on_a_signal(stop_signal: signal.Signals) -> None:
    proc, where = _start_echo("127.0.0.1:0")
    host, port = where.split(" ")[0].rsplit(":", 1)
    with connect((host, int(port))) as client:
        client.sendall(b"echo me\n")
        assert recv_line(client) == b"echo me\n"
    proc.send_signal(stop_signal)
    code, out = _finish(proc)
    assert code == 0
    assert "sockserve echo: stopped" in out


def test_echo_on_a_unix_socket_removes_its_file(short_tmp: str) -> None:
    path = os.path.join(short_tmp, "echo.sock")
    proc, where = _start_echo(f"unix:{path}")
    assert where == path
    with connect(path) as client:
        client.sendall(b"over unix\n")
        assert recv_line(client) == b"over unix\n"
    proc.send_signal(signal.SIGTERM)
    code, _ = _finish(proc)
    assert code == 0
    assert not os.path.exists(path)


def _echo(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``sockserve echo`` with ``args``, expecting it to exit by itself."""
    return subprocess.run(
        [sys.executable, "-m", "sockserve", "echo", *args], capture_output=True, text=True, timeout=30, check=False
    )


def test_bad_listen_address_is_a_clear_usage_error() -> None:
    proc = _echo("--listen", "nonsense")
    assert proc.returncode == 2
    assert "expected HOST:PORT" in proc.stderr


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--listen", "127.0.0.1:65536"], "argument --listen: the port must be 0 to 65535, got '127.0.0.1:65536'"),
        (
            ["--listen", "::1:7007"],
            "argument --listen: an IPv6 address goes in brackets, as in [::1]:7007, got '::1:7007'",
        ),
        (["--listen", "[::1:7007"], "argument --listen: brackets enclose the whole IPv6 address"),
        (["--listen", "[no.v6]:7007"], "argument --listen: only an IPv6 address goes in brackets, got '[no.v6]:7007'"),
        (["--listen", "a..b:7007"], "argument --listen: 'a..b' is not a valid host name, got 'a..b:7007'"),
        (["--listen", "unix:"], "argument --listen: unix: needs a path"),
        (["--grace", "-1"], "argument --grace: expected a number of seconds, 0 or more, got '-1'"),
        (["--grace", "nan"], "argument --grace: expected a number of seconds, 0 or more, got 'nan'"),
        (["--grace", "soon"], "argument --grace: expected a number of seconds, 0 or more, got 'soon'"),
        (["--workers", "-1"], "argument --workers: expected a whole number, 0 (one process) or more, got '-1'"),
        (["--workers", "two"], "argument --workers: expected a whole number, 0 (one process) or more, got 'two'"),
    ],
)
def test_bad_values_are_usage_errors_that_say_what_is_wrong(args: list[str], complaint: str) -> None:
    proc = _echo(*args) if args[0] == "--listen" else _echo("--listen", "127.0.0.1:0", *args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout == ""  # refused before it listened
    lines = proc.stderr.splitlines()
    assert lines[0].startswith("usage: sockserve echo "), proc.stderr
    assert lines[-1].startswith(f"sockserve echo: error: {complaint}"), proc.stderr
    assert "Traceback" not in proc.stderr


def _wait_for_workers(proc: subprocess.Popen[str], count: int) -> str:
    """Read the supervisor's output until ``count`` workers say they serve.

    A worker still between fork() and installing its own signal handlers can
    lose the supervisor's SIGTERM (a start-up race in prefork, not the CLI's),
    and is then only killed grace + 5 s later: this test is about stopping
    servers that run, so it waits until they do.
    """
    assert proc.stdout is not None
    seen = ""
    while len(re.findall(r"worker \d+: serving ", seen)) < count:
        line = proc.stdout.readline()
        assert line, f"the command ended before {count} workers served:\n{seen}"
        seen += line
    return seen


def test_echo_with_prefork_workers_stops_on_sigterm() -> None:
    proc, where = _start_echo("127.0.0.1:0", "--workers", "2")
    started = _wait_for_workers(proc, 2)
    host, port = where.split(" ")[0].rsplit(":", 1)
    for _ in range(3):
        with connect((host, int(port))) as client:
            client.sendall(b"prefork\n")
            assert recv_line(client) == b"prefork\n"
    proc.send_signal(signal.SIGTERM)
    code, out = _finish(proc)
    assert code == 0
    assert "sockserve echo: stopped" in out
    assert "did not exit in time" not in started + out  # every worker stopped on SIGTERM itself


# -- addresses that cannot be listened on: one line on stderr, exit status 1 --------------------------

WORKERS = pytest.mark.parametrize("workers", [[], ["--workers", "2"]], ids=["one-process", "prefork"])


def _assert_cannot_listen(proc: subprocess.CompletedProcess[str], address: str, reason: str) -> None:
    everything = proc.stdout + proc.stderr
    assert proc.returncode == 1, everything
    assert proc.stderr == f"sockserve echo: cannot listen on {address}: {reason}\n", everything
    assert "Traceback" not in everything
    assert "listening on" not in proc.stdout


@WORKERS
@pytest.mark.parametrize("host", ["127.0.0.1", pytest.param("::1", marks=requires_ipv6)])
def test_port_in_use(host: str, workers: list[str]) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as taken:
        taken.bind((host, 0))
        taken.listen()
        port = taken.getsockname()[1]
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        proc = _echo("--listen", address, *workers)
    _assert_cannot_listen(proc, address, "the address is already in use")


@WORKERS
def test_unix_path_with_a_live_server_on_it(short_tmp: str, workers: list[str]) -> None:
    path = os.path.join(short_tmp, "live.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as live:
        live.bind(path)
        live.listen()
        proc = _echo("--listen", f"unix:{path}", *workers)
        with connect(path):  # still the other server's socket file
            pass
    _assert_cannot_listen(proc, path, "another server is live on this path")


@WORKERS
def test_unix_path_that_is_a_regular_file(short_tmp: str, workers: list[str]) -> None:
    path = os.path.join(short_tmp, "notes.txt")
    with open(path, "w") as f:
        f.write("keep me\n")
    proc = _echo("--listen", f"unix:{path}", *workers)
    _assert_cannot_listen(proc, path, "the path exists and is not a socket (sockserve never replaces such a file)")
    with open(path) as f:
        assert f.read() == "keep me\n"


def test_unix_path_in_a_directory_that_does_not_exist(short_tmp: str) -> None:
    path = os.path.join(short_tmp, "missing", "echo.sock")
    proc = _echo("--listen", f"unix:{path}")
    _assert_cannot_listen(proc, path, f"the directory {os.path.dirname(path)} does not exist")


def test_unix_path_under_a_regular_file(short_tmp: str) -> None:
    regular = os.path.join(short_tmp, "regular")
    open(regular, "w").close()
    path = os.path.join(regular, "echo.sock")
    proc = _echo("--listen", f"unix:{path}")
    _assert_cannot_listen(proc, path, "a part of the path is not a directory")


@WORKERS
def test_unix_path_too_long(short_tmp: str, workers: list[str]) -> None:
    path = os.path.join(short_tmp, "x" * 200 + ".sock")
    proc = _echo("--listen", f"unix:{path}", *workers)
    _assert_cannot_listen(proc, path, "AF_UNIX path too long")


@WORKERS
def test_host_that_does_not_resolve(workers: list[str]) -> None:
    # .invalid never resolves (RFC 6761); the resolver's wording varies, so
    # only the start of the reason is compared.
    proc = _echo("--listen", "no-such-host.invalid:7007", *workers)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.startswith(
        "sockserve echo: cannot listen on no-such-host.invalid:7007: the host name does not resolve ("
    )
    assert proc.stderr.count("\n") == 1
    assert proc.stderr.endswith(")\n")
    assert "Traceback" not in proc.stdout + proc.stderr


def _bind_fails_with(code: int, address: Any) -> bool:
    """Whether binding ``address`` in this process fails with errno ``code``:
    the CLI's test only means something on a machine where it does."""
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(address)
        except OSError as exc:
            return exc.errno == code
    if isinstance(address, str):
        os.unlink(address)
    return False


def test_address_of_another_machine() -> None:
    host = "192.0.2.1"  # TEST-NET-1 (RFC 5737): documentation only, on no real interface
    if not _bind_fails_with(errno.EADDRNOTAVAIL, (host, 0)):
        pytest.skip(f"this machine has {host} on an interface")
    proc = _echo("--listen", f"{host}:7007")
    _assert_cannot_listen(proc, f"{host}:7007", "no network interface on this machine has this address")


def test_privileged_port_without_the_privilege() -> None:
    if not _bind_fails_with(errno.EACCES, ("127.0.0.1", 1)):
        pytest.skip("this process may bind ports below 1024 (root, or a low ip_unprivileged_port_start)")
    proc = _echo("--listen", "127.0.0.1:1")
    _assert_cannot_listen(
        proc, "127.0.0.1:1", "permission denied (ports below 1024 usually need root or CAP_NET_BIND_SERVICE)"
    )


def test_unix_path_in_a_directory_without_write_permission(short_tmp: str) -> None:
    locked = os.path.join(short_tmp, "locked")
    os.mkdir(locked, 0o500)
    path = os.path.join(locked, "echo.sock")
    if not _bind_fails_with(errno.EACCES, path):
        pytest.skip("this process may write anywhere (root)")
    proc = _echo("--listen", f"unix:{path}")
    _assert_cannot_listen(proc, path, "permission denied")


def test_an_unexpected_error_keeps_its_traceback() -> None:
    # A bug is not a startup failure to explain away in one line.
    program = (
        "import sys, sockserve.cli as cli\n"
        "def broken(*args):\n"
        "    raise RuntimeError('a bug, not a bad address')\n"
        "cli.ThreadPoolTCPServer = broken\n"
        "sys.exit(cli.main(['echo', '--listen', '127.0.0.1:0']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr
    assert proc.stderr.endswith("RuntimeError: a bug, not a bad address\n")
    assert "cannot listen" not in proc.stderr


def test_the_serve_command_is_listed_and_has_its_own_help() -> None:
    listed = subprocess.run(
        [sys.executable, "-m", "sockserve", "--help"], capture_output=True, text=True, timeout=30, check=False
    )
    assert listed.returncode == 0
    assert "serve" in listed.stdout
    own = subprocess.run(
        [sys.executable, "-m", "sockserve", "serve", "--help"], capture_output=True, text=True, timeout=30, check=False
    )
    assert own.returncode == 0
    assert own.stdout.startswith("usage: sockserve serve ")
    assert "--max-connections N" in own.stdout
