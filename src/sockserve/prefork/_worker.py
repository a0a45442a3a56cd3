"""What a worker process runs, from just after fork() to its exit.

It serves the listening socket it inherited (or, in SO_REUSEPORT mode, one it
binds itself) with the server's own in-process model, sync, thread or pool,
through ``sockserve.serve()``: SIGTERM drains, SIGQUIT stops at once. SIGINT
is ignored: Ctrl-C reaches the whole process group, and it is the
supervisor's decision what a worker does about it. The exit code says why
the worker ended. Every sockserve log line it emits starts with
``worker <pid>: `` (see ``_worker_log``).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
from collections.abc import Callable
from typing import Any, NoReturn

from .._log import format_address
from .._serve import serve
from ._signals import SUPERVISOR_SIGNALS

# Exit codes: the supervisor's restart policy reads them.
WORKER_OK = 0  # stopped when told to
WORKER_CRASHED = 1  # an exception escaped the serving loop
WORKER_BOOT_ERROR = 3  # could not create its server (e.g. bind failed in SO_REUSEPORT mode)
WORKER_RECYCLED = 4  # served max_requests and retired, to be replaced at once

log = logging.getLogger("sockserve.prefork")


def run_worker(make_server: Callable[[], Any], *, grace: float | None, max_requests: int, shared: bool) -> NoReturn:
    """Serve until told to stop, then exit the process. Never returns.

    The supervisor's signals arrive blocked (see ``Prefork._spawn``); they are
    unblocked once ``serve()``'s handlers are in place, so a SIGTERM sent
    while the worker starts is handled, not lost.

    ``shared``: the server's socket is the supervisor's, inherited by every
    worker (False: this worker bound a socket of its own, SO_REUSEPORT mode).
    """
    code = WORKER_CRASHED
    try:
        for sig in (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            server = make_server()
        except Exception:
            log.exception("could not start its server")
            code = WORKER_BOOT_ERROR
            _exit(code)
        listener = getattr(server, "socket", None)
        if listener is not None and (shared or listener.type == socket.SOCK_STREAM):
            # Every worker waits on the same socket, and every one wakes for
            # each connection or datagram; only one gets it. The others must
            # find nothing (EAGAIN, which the serve loop ignores), not block in
            # accept() or recvfrom() until the next one. A listening socket of
            # our own is non-blocking too, as it always was; a datagram socket
            # of our own is left blocking, so replies sent through it wait for
            # buffer space instead of failing with EAGAIN.
            listener.setblocking(False)
        log.info("serving %s", format_address(getattr(server, "server_address", "?")))
        if max_requests > 0:
            server.max_requests = max_requests  # the core stops accepting after that many
        serve(
            server,
            grace=grace,
            graceful_signals=(signal.SIGTERM,),
            immediate_signals=(signal.SIGQUIT,),
            unblock=SUPERVISOR_SIGNALS,
        )
        code = WORKER_RECYCLED if getattr(server, "max_requests_reached", False) else WORKER_OK
    except BaseException:
        log.exception("crashed")
    _exit(code)


def _exit(code: int) -> NoReturn:
    # os._exit: the parent's atexit handlers and buffered files are not ours to run.
    for handler in logging.getLogger().handlers + logging.getLogger("sockserve").handlers:
        try:
            handler.flush()
        except Exception:  # noqa: S110 - nothing left to report a flush failure to
            pass
    os._exit(code)
