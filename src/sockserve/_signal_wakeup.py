"""A signal interrupts the main thread's waits, however it is timed.

Python runs a signal's handler on the main thread, at its interpreter's next
check for pending signals. A signal that arrives after that check and before
the thread enters a blocking call (``poll()``) leaves the handler unrun until
the call ends by itself: a drain's wait for the grace period, a serve loop's
for ``poll_interval``. The handlers that end those waits (SIGQUIT, a second
SIGTERM) then seem to do nothing. ``signal.set_wakeup_fd`` closes the gap:
the C-level handler writes a byte to a socket, so a wait that includes that
socket returns at once, and the Python handler runs right after.

``serve()`` installs it for as long as it runs (on the main thread, unless the
program has a wake-up descriptor of its own); the waits look it up here.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

_receive: socket.socket | None = None  # the read end, while installed


@contextlib.contextmanager
def signals_interrupt_waits() -> Iterator[socket.socket | None]:
    """While the block runs, a signal makes the socket it yields readable.

    Yields None where that cannot be arranged: off the main thread, or when
    the program has set a wake-up descriptor of its own (asyncio's
    ``add_signal_handler`` does), which is then left alone."""
    import signal  # here: only serve() needs it, not every program that imports a server

    global _receive
    if threading.current_thread() is not threading.main_thread() or _receive is not None:
        yield _receive  # nested: the outer block's descriptor serves
        return
    receive, send = socket.socketpair()
    try:
        receive.setblocking(False)
        send.setblocking(False)
        previous = signal.set_wakeup_fd(send.fileno(), warn_on_full_buffer=False)
        if previous != -1:
            signal.set_wakeup_fd(previous)
            yield None
            return
        _receive = receive
        try:
            yield receive
        finally:
            signal.set_wakeup_fd(-1)
            _receive = None
    finally:
        receive.close()
        send.close()


def signal_wakeup() -> socket.socket | None:
    """The socket a signal makes readable, for a wait on the main thread; None otherwise."""
    if _receive is None or threading.current_thread() is not threading.main_thread():
        return None
    return _receive


def drain(sock: socket.socket) -> None:
    """Empty the socket (its bytes are signal numbers; the handlers run on their own)."""
    try:
        while sock.recv(4096):
            pass
    except (BlockingIOError, InterruptedError):
        pass
