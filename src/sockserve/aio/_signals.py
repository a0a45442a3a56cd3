"""Makes a signal wake the event loop that a blocking ``serve_forever()`` runs.

A Python signal handler (say, a prefork worker's SIGTERM handler that calls
``shutdown()``) runs only when the main thread gets back to the interpreter.
A signal that lands just before the loop blocks in ``epoll_wait()`` leaves it
blocked, handler unrun, until something else happens: with no timers and no
traffic, forever. asyncio closes that race only for ``loop.add_signal_handler``
by pointing ``signal.set_wakeup_fd`` at the loop; this does the same for plain
``signal.signal`` handlers while ``serve_forever()`` runs. uvloop does it
itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import threading
from collections.abc import Iterator

from ._loop import loop_kind


@contextlib.contextmanager
def signals_wake(loop: asyncio.AbstractEventLoop) -> Iterator[None]:
    """While the block runs, any signal makes ``loop`` turn (main thread only,
    asyncio's loop only, and only if no wake-up descriptor is set already)."""
    if threading.current_thread() is not threading.main_thread() or loop_kind(loop) != "asyncio":
        yield
        return
    receive, send = socket.socketpair()
    try:
        receive.setblocking(False)
        send.setblocking(False)
        previous = signal.set_wakeup_fd(send.fileno(), warn_on_full_buffer=False)
        if previous != -1:  # someone else's (e.g. loop.add_signal_handler): theirs already wakes the loop
            signal.set_wakeup_fd(previous)
            yield
            return
        loop.add_reader(receive.fileno(), _drain, receive)
        try:
            yield
        finally:
            loop.remove_reader(receive.fileno())
            signal.set_wakeup_fd(-1)
    finally:
        receive.close()
        send.close()


def _drain(sock: socket.socket) -> None:
    # The bytes are signal numbers; the Python handlers run anyway, on their own.
    try:
        while sock.recv(4096):
            pass
    except (BlockingIOError, InterruptedError):
        pass
