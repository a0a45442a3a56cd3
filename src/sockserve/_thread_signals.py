"""Signals go to the main thread: the threads sockserve starts block them.

Python runs signal handlers only in the main thread, but the kernel delivers
a signal sent to the process to any thread that does not block it. When it
picks a worker thread while the main thread waits on a lock (a graceful
stop's wait for the requests in flight), that wait is not interrupted, and
the handler (SIGQUIT, or the second SIGTERM that should end the grace
period) does not run until the wait ends by itself: after the whole grace
period. Blocking the signals in our own threads leaves the kernel only the
main thread to deliver them to, which interrupts its wait at once.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

# Signals the kernel raises for a fault of the thread itself must stay
# deliverable to that thread.
_SYNCHRONOUS = {"SIGSEGV", "SIGBUS", "SIGFPE", "SIGILL", "SIGTRAP", "SIGSYS", "SIGABRT", "SIGKILL", "SIGSTOP"}
_block: Callable[[], object] | None = None  # made when a thread first starts


def _blocker() -> Callable[[], object]:
    """What blocks the asynchronous signals in the calling thread.

    Made once, on first use, not at import: a program that imports a server
    class does not pay for ``signal`` (its enums). The mask holds plain ints:
    converting ~60 ``Signals`` members at every thread start cost as much
    as the rest of a request's thread.
    """
    import signal

    if not hasattr(signal, "pthread_sigmask"):
        return lambda: None  # pragma: no cover - Windows
    mask = frozenset(int(s) for s in signal.valid_signals() if getattr(s, "name", "") not in _SYNCHRONOUS)
    return functools.partial(signal.pthread_sigmask, signal.SIG_BLOCK, mask)


def leave_signals_to_the_main_thread() -> None:
    """Called first thing in every thread sockserve starts."""
    global _block
    block = _block
    if block is None:
        block = _block = _blocker()
    block()
