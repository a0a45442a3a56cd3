"""The ``sockserve`` command: the demo, and an echo server that stops cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

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
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()
    assert first.startswith("sockserve echo: listening on "), first + proc.stderr.read()  # type: ignore[union-attr]
    return proc, first.removeprefix("sockserve echo: listening on ").strip()


def _finish(proc: subprocess.Popen[str]) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
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


def test_echo_with_prefork_workers_stops_on_sigterm() -> None:
    proc, where = _start_echo("127.0.0.1:0", "--workers", "2")
    host, port = where.split(" ")[0].rsplit(":", 1)
    for _ in range(3):
        with connect((host, int(port))) as client:
            client.sendall(b"prefork\n")
            assert recv_line(client) == b"prefork\n"
    proc.send_signal(signal.SIGTERM)
    code, out = _finish(proc)
    assert code == 0
    assert "sockserve echo: stopped" in out
