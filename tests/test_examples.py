"""The examples run as a user runs them (a script in examples/, or a module
of sockserve.examples), and say what the article says."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run(args: list[str]) -> str:
    proc = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=60, check=False, cwd=EXAMPLES.parent
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.stdout


@pytest.fixture(params=["script", "module"])
def how(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def run_example(name: str, how: str) -> str:
    if how == "script":
        return run([str(EXAMPLES / f"{name}.py")])
    return run(["-m", f"sockserve.examples.{name}"])


def test_logging_echo_shows_the_hooks_in_call_order(how: str) -> None:
    out = run_example("logging_echo", how)
    assert "client: response from server: b'Hello, world'" in out
    hooks = [
        "EchoServer: verify_request",
        "EchoServer: process_request",
        "EchoServer: finish_request",
        "EchoRequestHandler: __init__",
        "EchoRequestHandler: setup",
        "EchoRequestHandler: handle",
        "EchoRequestHandler: finish",
        "EchoServer: close_request",
    ]
    lines = out.splitlines()
    positions = [next(i for i, line in enumerate(lines) if line.startswith(h)) for h in hooks]
    assert positions == sorted(positions), out
    assert lines.index("EchoServer: server_activate") < positions[0]


def test_plain_echo_comes_back(how: str) -> None:
    out = run_example("echo", how)
    assert out.splitlines() == ["Sending : 'Hello, world'", "Received: 'Hello, world'"]


def test_threaded_reply_names_a_worker_thread(how: str) -> None:
    out = run_example("threaded_echo", how)
    loop_thread = re.search(r"Server loop running in thread: (.+)", out).group(1)  # type: ignore[union-attr]
    worker = re.search(r"Received: '(.+): Hello, world'", out).group(1)  # type: ignore[union-attr]
    assert worker != loop_thread
    assert worker.startswith("Thread-")


def test_forking_reply_names_a_child_process(how: str) -> None:
    out = run_example("forking_echo", how)
    server_pid = int(re.search(r"Server loop running in process: (\d+)", out).group(1))  # type: ignore[union-attr]
    child_pid = int(re.search(r"Received: '(\d+): Hello, world'", out).group(1))  # type: ignore[union-attr]
    assert child_pid != server_pid
    assert child_pid != os.getpid()


def test_the_examples_folder_is_the_package() -> None:
    """One copy of the examples: the package sockserve.examples, which the top
    of the repository shows as examples/ through a symlink."""
    assert EXAMPLES.is_symlink()
    assert EXAMPLES.resolve() == (EXAMPLES.parent / "src" / "sockserve" / "examples").resolve()


def test_framed_echo_serves_eight_connections_with_four_threads(how: str) -> None:
    out = run_example("framed_echo", how)
    assert "8 connections open, served by at most 4 worker threads" in out
    assert sorted(re.findall(r"Received: 'line (\d)\\n'", out)) == [str(n) for n in range(8)]


def test_proxy_echo_sees_the_real_client_and_denies_the_listed_one(how: str) -> None:
    out = run_example("proxy_echo", how)
    assert out.splitlines() == [
        "203.0.113.7: 203.0.113.7:40000 via 127.0.0.1 said hello",
        "198.51.100.9: closed (denied by the access list)",
        "refused: {'access_list': 1}",
    ]


def test_tls_echo_serves_tls_and_reloads_its_certificate(how: str) -> None:
    from tests.peers.peers import require_program

    require_program("openssl")
    out = run_example("tls_echo", how)
    assert out.splitlines() == [
        "first certificate:  TLSv1.3 localhost: hello",
        "reloaded: True",
        "second certificate: TLSv1.3 localhost: hello",
    ]
