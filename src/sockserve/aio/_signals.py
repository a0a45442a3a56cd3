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
import threading
from collections.abc import Iterator

from .._signal_wakeup import drain, signals_interrupt_waits
from ._loop import loop_kind


@contextlib.contextmanager
def signals_wake(loop: asyncio.AbstractEventLoop) -> Iterator[None]:
    """While the block runs, any signal makes ``loop`` turn (main thread only,
    asyncio's loop only, and only if the program has no wake-up descriptor of
    its own). The descriptor is the one ``sockserve.serve()`` installed, if it
    runs this server (see ``sockserve._signal_wakeup``)."""
    if threading.current_thread() is not threading.main_thread() or loop_kind(loop) != "asyncio":
        yield
        return
    with signals_interrupt_waits() as receive:
        if receive is None:  # someone else's (e.g. loop.add_signal_handler): theirs already wakes the loop
            yield
            return
        loop.add_reader(receive.fileno(), drain, receive)
        try:
            yield
        finally:
            loop.remove_reader(receive.fileno())
