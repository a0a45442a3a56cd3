"""A worker whose supervisor is gone stops, instead of serving for ever.

A supervisor killed with SIGKILL (the OOM killer, ``kill -9``, a crashed
container runtime) cannot tell its workers: they would go on accepting on the
inherited socket, unsupervised, unrestartable, holding the port so that a new
supervisor cannot bind it (without SO_REUSEPORT). On Linux the kernel can
send a signal to a child when its parent dies (``PR_SET_PDEATHSIG``): the
worker asks for SIGTERM, which its ``serve()`` handles as a graceful drain,
so the connections in flight still finish. Elsewhere nothing is armed (see
``watch_the_supervisor``).
"""

from __future__ import annotations

# Imported here, not in the worker that uses it: workers fork after a
# privilege drop, and the new user may not be able to read the interpreter's
# library at all (sockserve serve --user).
import ctypes
import logging
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>

log = logging.getLogger("sockserve.prefork")


def watch_the_supervisor(supervisor_pid: int, sig: signal.Signals = signal.SIGTERM) -> bool:
    """In a freshly forked worker: have ``sig`` sent to it when the
    supervisor (its parent, ``supervisor_pid``) dies; True if armed.

    The supervisor may have died between fork() and this call, before the
    request was in place: then the worker's parent is already someone else
    (init, or a subreaper), and the signal is sent now. The signal should be
    blocked until the worker's handlers are in place (it is: see
    ``Prefork._spawn``), so that it is handled, not fatal.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)  # the process's own symbols: libc's prctl
        if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    except (OSError, AttributeError) as exc:
        log.warning("cannot ask to be told when the supervisor dies (prctl): %s", exc)
        return False
    if os.getppid() != supervisor_pid:
        os.kill(os.getpid(), sig)  # it died before the request was in place
    return True
