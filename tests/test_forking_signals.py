"""A forking server's children take signals, whatever thread forked them."""

from __future__ import annotations

import signal
import socketserver
import threading

import pytest

import sockserve

from .helpers import connect, recv_line

pytestmark = pytest.mark.skipif(
    not hasattr(signal, "pthread_sigmask") or not hasattr(sockserve, "ForkingTCPServer"),
    reason="needs pthread_sigmask and fork",
)


class SigBlkHandler(socketserver.StreamRequestHandler):
    """Answers with the child's blocked-signal mask, as /proc/self/status shows it."""

    def handle(self) -> None:
        with open("/proc/self/status", encoding="ascii") as status:
            (line,) = [line for line in status if line.startswith("SigBlk:")]
        self.wfile.write(line.encode())


def test_a_child_forked_by_a_thread_that_blocks_signals_does_not_block_them() -> None:
    server = sockserve.ForkingTCPServer(("127.0.0.1", 0), SigBlkHandler)
    blocked = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT}

    def serve() -> None:
        # As serve_all() runs a server's loop: on a thread that leaves the
        # signals to the main thread.
        signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
        server.serve_forever(poll_interval=0.05)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with connect(server.server_address) as client:
            line = recv_line(client)
        assert line.startswith(b"SigBlk:"), line
        assert int(line.split()[1], 16) == 0, line
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()
    assert not thread.is_alive()
