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

import inspect
import logging
import os
import signal
import socket
from collections.abc import Callable
from typing import Any, NoReturn

from .._log import format_address
from .._serve import serve

# Exit codes: the supervisor's restart policy reads them.
WORKER_OK = 0  # stopped when told to
WORKER_CRASHED = 1  # an exception escaped the serving loop
WORKER_BOOT_ERROR = 3  # could not create its server (e.g. bind failed in SO_REUSEPORT mode)
WORKER_RECYCLED = 4  # served max_requests and retired, to be replaced at once

log = logging.getLogger("sockserve.prefork")


def run_worker(make_server: Callable[[], Any], *, grace: float | None, max_requests: int, shared: bool) -> NoReturn:
    """Serve until told to stop, then exit the process. Never returns.

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
        recycled = _recycle_after(server, max_requests) if max_requests > 0 else lambda: False
        serve(server, grace=grace, graceful_signals=(signal.SIGTERM,), immediate_signals=(signal.SIGQUIT,))
        code = WORKER_RECYCLED if recycled() else WORKER_OK
    except BaseException:
        log.exception("crashed")
    _exit(code)


def _recycle_after(server: Any, max_requests: int) -> Callable[[], bool]:
    """Make the server stop accepting after ``max_requests`` requests, counted
    in ``verify_request`` (every model calls it once per request, on the loop)."""
    original = server.verify_request
    count = 0
    done = False

    def count_one() -> None:
        nonlocal count, done
        count += 1
        if count >= max_requests and not done:
            done = True
            log.info("worker %d served %d requests: retiring", os.getpid(), count)
            server.shutdown()  # on the loop's own thread: only stops the loop, then serve() drains

    if inspect.iscoroutinefunction(original):

        async def verify_async(request: Any, client_address: Any) -> bool:
            count_one()
            return bool(await original(request, client_address))

        server.verify_request = verify_async
    else:

        def verify(request: Any, client_address: Any) -> bool:
            count_one()
            return bool(original(request, client_address))

        server.verify_request = verify
    return lambda: done


def _exit(code: int) -> NoReturn:
    # os._exit: the parent's atexit handlers and buffered files are not ours to run.
    for handler in logging.getLogger().handlers + logging.getLogger("sockserve").handlers:
        try:
            handler.flush()
        except Exception:  # noqa: S110 - nothing left to report a flush failure to
            pass
    os._exit(code)
