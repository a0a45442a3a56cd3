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


def test_bad_listen_address_is_a_clear_usage_error() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "sockserve", "echo", "--listen", "nonsense"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 2
    assert "expected HOST:PORT" in proc.stderr


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
