"""How ``sockserve serve`` stops, end to end, where it used to hang or end in a
traceback: a sequential handler holding a connection when the signals come
(alone and in a prefork worker), and a Unix socket file that the process,
having dropped its privileges, may not remove.

The command runs in a subprocess, as a user runs it (see ``Serving``), and is
stopped by real signals; every wait has a timeout."""

from __future__ import annotations

import os
import signal

import pytest

from .helpers import connect, recv_all, recv_line
from .test_cli_serve import Serving, stream_round_trip

# The process's own flags, and how a client reaches its listener.
ONE_PROCESS = ["--model", "sequential"]
PREFORK = ["--model", "sequential", "--workers", "2"]


@pytest.mark.parametrize("how", [ONE_PROCESS, PREFORK, [*ONE_PROCESS, "--admin", "127.0.0.1:0"]])
@pytest.mark.parametrize(
    ("grace", "signals"),
    [
        ("0.2", [signal.SIGTERM]),  # the grace period begins, and its end cuts the connection
        ("0.2", [signal.SIGINT]),
        ("3600", [signal.SIGTERM, signal.SIGTERM]),  # a second one cuts at once
        ("3600", [signal.SIGTERM, signal.SIGQUIT]),
        ("3600", [signal.SIGQUIT]),
    ],
)
def test_a_sequential_handler_holding_a_connection_does_not_hold_up_the_stop(
    how: list[str], grace: str, signals: list[signal.Signals]
) -> None:
    with Serving("tests.cli_app:Echo", *how, "--bind", "tcp://127.0.0.1:0", "--grace", grace) as server:
        (address,) = server.addresses()
        server.wait_for("ready")
        with connect(address) as client:
            client.sendall(b"held\n")
            assert recv_line(client) == b"held\n"  # a handler is in flight, waiting for more
            for i, sig in enumerate(signals):
                server.proc.send_signal(sig)
                if i == 0 and len(signals) > 1:
                    server.wait_for("draining|received")  # handled before the next is sent
            assert recv_all(client) == b""  # cut off
        assert server.wait() == 0, server.text
        assert "Traceback" not in server.text


@pytest.fixture
def root_owned_dir(short_tmp: str) -> str:
    """A directory that the user ``nobody`` may not write (it is root's, 0755)."""
    if os.geteuid() != 0:
        pytest.skip("dropping privileges (--user) needs root")
    path = os.path.join(short_tmp, "d")
    os.mkdir(path, 0o755)
    return path


@pytest.mark.parametrize(
    ("handler", "args"),
    [
        ("Echo", ["--model", "sequential"]),
        ("Echo", ["--model", "pool"]),
        ("Echo", ["--model", "pool", "--workers", "2"]),
        ("DatagramEcho", ["--model", "pool"]),
    ],
)
def test_a_socket_file_it_may_not_remove_is_one_warning(handler: str, args: list[str], root_owned_dir: str) -> None:
    datagram = handler == "DatagramEcho"
    path = os.path.join(root_owned_dir, "s.sock")
    bind = f"unixgram:{path}" if datagram else f"unix:{path}"
    with Serving(f"tests.cli_app:{handler}", *args, "--bind", bind, "--user", "nobody") as server:
        server.addresses()
        server.wait_for("ready")
        if not datagram:
            assert stream_round_trip(path, b"hi\n") == b"hi\n"
        assert server.stop() == 0, server.text
    warnings = [line for line in server.seen if "could not remove the socket file" in line]
    assert len(warnings) == 1, server.text
    assert path in warnings[0]
    assert "Traceback" not in server.text
    assert os.path.exists(path)  # left behind, as the warning says (the next bind replaces it)
