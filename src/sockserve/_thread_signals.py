"""Which threads leave signals to the main thread, and which may receive them.

Python runs signal handlers only in the main thread, but the kernel delivers
a signal sent to the process to any thread that does not block it (Linux
prefers the main thread, unless a signal is already pending there: a
burst, a second SIGTERM right after the first).

sockserve's internal threads, which never run user code (the reactor, the
deadline watchdog, the admin endpoint, the sd_notify pinger, serve()'s
control thread), block the asynchronous signals: that leaves the kernel
fewer threads to pick that are not the main one. They call
``leave_signals_to_the_main_thread()`` first thing.

Threads that run user code (a request's thread, the pool's workers) must
not: a thread's mask is inherited by every process it starts
(``subprocess``, ``os.fork``, ``multiprocessing``), and ``subprocess``'s
C ``fork_exec`` has no hook to reset it short of ``preexec_fn`` (which is
not fork-safe in a threaded program): a program a handler starts would
ignore SIGTERM, SIGINT and SIGHUP, which the stdlib's ``socketserver``
threads do not do. They call ``signals_as_the_program_set_them()``
instead, which undoes a block inherited from an internal thread (the
reactor starts pool workers, serve_all()'s threads run serve loops).

Since a signal may then land on such a thread while the main thread waits
in a graceful stop, the waits see to it that its handler still runs at
once: ``signal.set_wakeup_fd`` (``_signal_wakeup``, installed by
``serve()``) wakes them whichever thread the signal lands on, and without
it ``_wakeup.Waker.wait`` wakes every ``MAIN_THREAD_SLICE`` seconds on
the main thread, which lets the interpreter run a pending handler.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Set as AbstractSet

# Signals the kernel raises for a fault of the thread itself must stay
# deliverable to that thread.
_SYNCHRONOUS = {"SIGSEGV", "SIGBUS", "SIGFPE", "SIGILL", "SIGTRAP", "SIGSYS", "SIGABRT", "SIGKILL", "SIGSTOP"}

SigMask = Callable[[int, "AbstractSet[int]"], "AbstractSet[int]"]

_sigmask: SigMask | None = None  # pthread_sigmask on plain ints, made when a thread first starts
_asynchronous: frozenset[int] = frozenset()  # what the internal threads block; set with _sigmask
_BLOCK, _SETMASK = 0, 2  # signal.SIG_BLOCK and SIG_SETMASK, set with _sigmask
_NOTHING: frozenset[int] = frozenset()
# The mask an internal thread had before it blocked the signals: the mask of
# the program's thread that started it. None while no internal thread has
# blocked anything (then no thread can have inherited a block of ours).
_program_mask: frozenset[int] | None = None


def _make_sigmask() -> SigMask:
    """pthread_sigmask on plain ints, for the calling thread.

    Made once, on first use, not at import: a program that imports a server
    class does not pay for ``signal`` (its enums). It takes and returns
    plain ints: ``signal.pthread_sigmask`` converts the old mask to
    ``Signals`` members, ~60 of them for a blocked mask, which costs as
    much as the rest of a request's thread.
    """
    global _asynchronous, _BLOCK, _SETMASK
    import signal

    if not hasattr(signal, "pthread_sigmask"):
        return lambda how, mask: _NOTHING  # pragma: no cover - Windows
    _BLOCK, _SETMASK = int(signal.SIG_BLOCK), int(signal.SIG_SETMASK)
    _asynchronous = frozenset(int(s) for s in signal.valid_signals() if getattr(s, "name", "") not in _SYNCHRONOUS)
    try:
        import _signal  # type: ignore[import-not-found]  # the C module: plain ints, no enums

        raw: SigMask = _signal.pthread_sigmask
    except (ImportError, AttributeError):  # pragma: no cover - another implementation
        raw = lambda how, mask: {int(s) for s in signal.pthread_sigmask(how, mask)}  # noqa: E731
    return raw


def _get_sigmask() -> SigMask:
    global _sigmask
    sigmask = _sigmask
    if sigmask is None:
        sigmask = _sigmask = _make_sigmask()
    return sigmask


def leave_signals_to_the_main_thread() -> None:
    """Called first thing in every internal thread sockserve starts (one that runs no user code)."""
    global _program_mask
    sigmask = _get_sigmask()
    before = sigmask(_BLOCK, _asynchronous)
    if _program_mask is None and not before >= _asynchronous:
        # Started by a thread of the program's (not by another internal one): its mask is the program's.
        _program_mask = frozenset(before)


def signals_as_the_program_set_them() -> None:
    """Called first thing in every thread sockserve starts to run user code.

    A thread inherits the mask of the thread that starts it. Started by
    one of the program's threads, it already has the program's mask, as a
    ``socketserver`` thread would: nothing is done (no system call at all
    while no internal thread blocks signals). Started by an internal thread
    (the reactor queues a framed pool's work, serve_all()'s threads run
    serve loops), it would carry that thread's block into the processes its
    handlers start: it takes the program's mask instead.
    """
    program = _program_mask
    if program is None:
        return
    sigmask = _get_sigmask()
    if sigmask(_BLOCK, _NOTHING) >= _asynchronous:
        sigmask(_SETMASK, program)
