"""shutdown(): prompt whatever poll_interval is, and never a deadlock.

Each test here fails on the stdlib: there serve_forever() only notices a
shutdown after its poll_interval, and shutdown() waits forever when no
serve_forever() is running in another thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

import sockserve

from .helpers import connect, recv_line, round_trip

# Far longer than any test may take: a loop that waited for it would hang the
# test until the join timeout below fails it.
FOREVER = 3600.0
JOIN_TIMEOUT = 10.0


class LineEcho(sockserve.StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.readline())


def _in_thread(target: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def _assert_finishes(thread: threading.Thread, what: str) -> None:
    thread.join(JOIN_TIMEOUT)
    assert not thread.is_alive(), f"{what} did not return within {JOIN_TIMEOUT}s"


def test_shutdown_interrupts_a_long_poll_interval() -> None:
    with sockserve.TCPServer(("127.0.0.1", 0), LineEcho) as server:
        loop = _in_thread(lambda: server.serve_forever(poll_interval=FOREVER))
        assert round_trip(server.server_address) == b"hello\n"  # the loop is running
        stopper = _in_thread(server.shutdown)
        _assert_finishes(stopper, "shutdown()")
        _assert_finishes(loop, "serve_forever()")


def test_shutdown_while_idle_before_any_request() -> None:
    with sockserve.ThreadingTCPServer(("127.0.0.1", 0), LineEcho) as server:
        started = threading.Event()

        def serve() -> None:
            started.set()
            server.serve_forever(poll_interval=FOREVER)

        loop = _in_thread(serve)
        assert started.wait(JOIN_TIMEOUT)
        server.shutdown()
        _assert_finishes(loop, "serve_forever()")


def test_shutdown_before_serve_forever_returns_and_the_loop_then_exits_at_once() -> None:
    with sockserve.TCPServer(("127.0.0.1", 0), LineEcho) as server:
        stopper = _in_thread(server.shutdown)
        _assert_finishes(stopper, "shutdown() with no loop running")
        # The stop stays pending, as in the stdlib: the next loop ends at once.
        loop = _in_thread(lambda: server.serve_forever(poll_interval=FOREVER))
        _assert_finishes(loop, "serve_forever() after an earlier shutdown()")
        # ... and only that one: the one after serves again.
        loop = _in_thread(lambda: server.serve_forever(poll_interval=FOREVER))
        assert round_trip(server.server_address) == b"hello\n"
        server.shutdown()
        _assert_finishes(loop, "serve_forever()")


def test_shutdown_twice_and_after_the_loop_ended() -> None:
    with sockserve.TCPServer(("127.0.0.1", 0), LineEcho) as server:
        loop = _in_thread(lambda: server.serve_forever(poll_interval=FOREVER))
        assert round_trip(server.server_address) == b"hello\n"
        stoppers = [_in_thread(server.shutdown) for _ in range(2)]
        for stopper in stoppers:
            _assert_finishes(stopper, "a concurrent shutdown()")
        _assert_finishes(loop, "serve_forever()")
        _assert_finishes(_in_thread(server.shutdown), "shutdown() after the loop ended")


def test_shutdown_from_a_handler_of_a_synchronous_server() -> None:
    """The stdlib deadlocks here: the handler runs on the loop's own thread."""

    class StopAfterReply(sockserve.StreamRequestHandler):
        def handle(self) -> None:
            self.wfile.write(self.rfile.readline())
            self.server.shutdown()  # returns at once; the loop ends after this request

    with sockserve.TCPServer(("127.0.0.1", 0), StopAfterReply) as server:
        loop = _in_thread(lambda: server.serve_forever(poll_interval=FOREVER))
        assert round_trip(server.server_address, b"last\n") == b"last\n"
        _assert_finishes(loop, "serve_forever() after shutdown() from its own handler")


def test_shutdown_from_a_handler_thread_of_a_threading_server() -> None:
    class StopAfterReply(sockserve.StreamRequestHandler):
        def handle(self) -> None:
            self.wfile.write(self.rfile.readline())
            self.server.shutdown()  # another thread than the loop's: waits for it

    with sockserve.ThreadingTCPServer(("127.0.0.1", 0), StopAfterReply) as server:
        loop = _in_thread(lambda: server.serve_forever(poll_interval=FOREVER))
        assert round_trip(server.server_address, b"last\n") == b"last\n"
        _assert_finishes(loop, "serve_forever()")


def test_stdlib_private_flag_still_stops_the_loop() -> None:
    """Some programs stop a server by setting the stdlib's private flag from a handler."""

    class StopViaFlag(sockserve.StreamRequestHandler):
        def handle(self) -> None:
            self.wfile.write(self.rfile.readline())
            self.server._BaseServer__shutdown_request = True  # type: ignore[attr-defined]

    with sockserve.TCPServer(("127.0.0.1", 0), StopViaFlag) as server:
        loop = _in_thread(lambda: server.serve_forever(poll_interval=0.01))
        assert round_trip(server.server_address) == b"hello\n"
        _assert_finishes(loop, "serve_forever()")


def test_a_second_concurrent_serve_forever_is_refused() -> None:
    with sockserve.TCPServer(("127.0.0.1", 0), LineEcho) as server:
        loop = _in_thread(lambda: server.serve_forever(poll_interval=FOREVER))
        assert round_trip(server.server_address) == b"hello\n"
        with pytest.raises(RuntimeError, match="already running"):
            server.serve_forever()
        server.shutdown()
        _assert_finishes(loop, "serve_forever()")


def test_request_in_progress_completes_when_shutdown_is_called() -> None:
    """shutdown() stops the loop; it does not cut off the request being served."""
    entered, release = threading.Event(), threading.Event()

    class Slow(sockserve.StreamRequestHandler):
        def handle(self) -> None:
            line = self.rfile.readline()
            entered.set()
            release.wait(JOIN_TIMEOUT)
            self.wfile.write(line)

    with sockserve.TCPServer(("127.0.0.1", 0), Slow) as server:
        loop = _in_thread(lambda: server.serve_forever(poll_interval=FOREVER))
        with connect(server.server_address) as client:
            client.sendall(b"slow\n")
            assert entered.wait(JOIN_TIMEOUT)
            stopper = _in_thread(server.shutdown)
            release.set()
            assert recv_line(client) == b"slow\n"
        _assert_finishes(stopper, "shutdown()")
        _assert_finishes(loop, "serve_forever()")
