"""What a worker process runs, from just after fork() to its exit.

It serves the listening sockets it inherited (or, in SO_REUSEPORT mode, ones it
binds itself) with the servers' own in-process model, sync, thread, pool or
async, through ``sockserve.serve()`` (``serve_all()`` for several):
SIGTERM drains, SIGQUIT stops at once. SIGINT is ignored: Ctrl-C reaches the
whole process group, and it is the supervisor's decision what a worker does
about it. The exit code says why
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
from .._metrics import Metrics
from .._serve import serve_all
from ._readiness import tell_ready
from ._signals import SUPERVISOR_SIGNALS

# Exit codes: the supervisor's restart policy reads them.
WORKER_OK = 0  # stopped when told to
WORKER_CRASHED = 1  # an exception escaped the serving loop
WORKER_BOOT_ERROR = 3  # could not create its server (e.g. bind failed in SO_REUSEPORT mode)
WORKER_RECYCLED = 4  # served max_requests and retired, to be replaced at once

log = logging.getLogger("sockserve.prefork")


def run_worker(
    make_servers: Callable[[], list[tuple[Any, bool]]],
    *,
    grace: float | None,
    max_requests: int,
    ready_fd: int | None = None,
    metrics_buffer: memoryview | None = None,
) -> NoReturn:
    """Serve until told to stop, then exit the process. Never returns.

    The supervisor's signals arrive blocked (see ``Prefork._spawn``); they are
    unblocked once ``serve()``'s handlers are in place, so a SIGTERM sent
    while the worker starts is handled, not lost.

    ``make_servers`` gives each server to serve and whether its socket is
    shared: the supervisor's, inherited by every worker (False: this worker
    bound a socket of its own, SO_REUSEPORT mode). Several servers are served
    one thread each (``serve_all()``), and stopped together.

    ``metrics_buffer``: this worker's slot in the supervisor's shared map;
    every server of the worker counts into it. ``ready_fd``: once the servers
    exist and are about to serve, the worker writes its pid there (4 bytes,
    one atomic write), which is how the supervisor knows it serves.
    """
    code = WORKER_CRASHED
    try:
        for sig in (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            made = make_servers()
        except Exception:
            log.exception("could not start its server")
            code = WORKER_BOOT_ERROR
            _exit(code)
        servers = [server for server, _ in made]
        metrics = None if metrics_buffer is None else Metrics(metrics_buffer)
        for server, shared in made:
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
            if metrics is not None:
                server.metrics = metrics  # read by the admission when serving starts
            log.info("serving %s", format_address(getattr(server, "server_address", "?")))
            if max_requests > 0:
                server.max_requests = max_requests  # the core stops accepting after that many
        if ready_fd is not None:
            try:
                tell_ready(ready_fd)
            except OSError as exc:  # the supervisor is gone: serve anyway, its stop will come as a signal
                log.warning("could not tell the supervisor it serves: %s", exc.strerror)
            os.close(ready_fd)
        options: dict[str, Any] = {
            "grace": grace,
            "graceful_signals": (signal.SIGTERM,),
            "immediate_signals": (signal.SIGQUIT,),
            "unblock": SUPERVISOR_SIGNALS,
        }
        serve_all(servers, **options)  # serve() of one server is this too
        recycled = any(getattr(server, "max_requests_reached", False) for server in servers)
        code = WORKER_RECYCLED if recycled else WORKER_OK
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
