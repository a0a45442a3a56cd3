"""The prefork supervisor: binds, forks workers, keeps the right number alive.

It only supervises: signals arrive through ``_signals``, the table and the
restart policy live in ``_table``, and what a worker does is ``_worker``'s.
The vocabulary is gunicorn's and nginx's:

* SIGTERM, SIGINT: graceful stop. Workers stop accepting and finish their
  requests (up to ``grace`` seconds); the supervisor then exits. A second
  one makes it immediate.
* SIGQUIT: immediate stop.
* SIGHUP: graceful reload. A new generation of workers starts, then the old
  one drains and exits.
* SIGTTIN / SIGTTOU: one worker more / fewer.

A worker that dies is replaced; one that dies soon after it started is
replaced after an exponential back-off, so a crash loop does not spin.
Workers are reaped by pid, from the worker table: a child the embedding
program forked itself keeps its exit status for the program to collect.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import socket
import time
from collections.abc import Callable
from typing import Any, NoReturn

from .._drain import DEFAULT_GRACE
from .._log import format_address
from ._reserve import Endpoint, check_reuse_port, reserve
from ._signals import SUPERVISOR_SIGNALS, SignalQueue
from ._table import RestartPolicy, Worker, WorkerTable
from ._worker import WORKER_BOOT_ERROR, WORKER_OK, WORKER_RECYCLED, run_worker
from ._worker_log import mark_worker_records

log = logging.getLogger("sockserve.prefork")

# How long after the grace period the supervisor waits for workers to exit
# before it kills them: they may still be closing sockets and flushing logs.
EXIT_MARGIN = 5.0
# How long an immediate stop waits before SIGKILL.
IMMEDIATE_TIMEOUT = 5.0


class Prefork:
    """Serve one address with several worker processes.

    Args:
        server_class: any sockserve server class, stream or datagram, IP or
            Unix (sync, thread, pool, or an async server with the same
            constructor). Each worker serves with it. Its ``address_family``
            and ``socket_type`` decide what is bound (an IPv6 address turns a
            class that kept AF_INET to AF_INET6, as the servers themselves do).
            The servers made for a stream class have ``allow_reuse_address``
            set, so a restarted supervisor can bind the port again at once;
            datagram servers keep the class's value.
        server_address: where to listen (port 0: the kernel picks one, and
            ``server_address`` says which after ``bind()``).
        handler_class: the request handler, unchanged.
        workers: how many worker processes (default: one per CPU).
        reuse_port: each worker binds its own socket with SO_REUSEPORT and the
            kernel spreads connections (or datagrams) between them, instead of
            all workers taking them from one inherited socket. The supervisor
            holds the port meanwhile with a socket that receives nothing (see
            ``_reserve``). TCP and UDP only: a Unix socket address cannot be
            bound by several sockets, so it raises ValueError.
        grace: seconds a worker may spend finishing requests when stopped.
        max_requests: recycle a worker after about this many requests (0: never),
            plus a random ``0..max_requests_jitter`` so they do not all restart at once.
        configure: called with each new server object (e.g. to set ``limits``).
        restart_policy: back-off for crashing workers.

    Resource handling:
        ``run()`` reaps every worker it started and closes the listening
        socket (removing a Unix socket file) on every way out.
    """

    def __init__(
        self,
        server_class: type[Any],
        server_address: Any,
        handler_class: Any,
        *,
        workers: int | None = None,
        reuse_port: bool = False,
        grace: float | None = DEFAULT_GRACE,
        max_requests: int = 0,
        max_requests_jitter: int = 0,
        configure: Callable[[Any], None] | None = None,
        restart_policy: RestartPolicy | None = None,
    ) -> None:
        self.workers = workers if workers is not None else (os.cpu_count() or 1)
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")
        self._endpoint = Endpoint.of(server_class, server_address)
        if reuse_port:
            check_reuse_port(self._endpoint)
        self.server_class = server_class
        self.server_address = server_address
        self.handler_class = handler_class
        self.reuse_port = reuse_port
        self.grace = grace
        self.max_requests = max_requests
        self.max_requests_jitter = max_requests_jitter
        self.configure = configure
        self.policy = restart_policy or RestartPolicy()
        self.signals = SignalQueue()
        self._table = WorkerTable()
        self._generation = 0
        self._server: Any = None  # the bound server (inherited mode)
        self._reserved: socket.socket | None = None  # holds the port (SO_REUSEPORT mode)
        self._worker_class = _worker_server_class(server_class, self._endpoint, reuse_port)
        self._stopping: str | None = None  # None, "graceful" or "immediate"
        self._deadline = float("inf")

    # -- binding ---------------------------------------------------------------

    def bind(self) -> None:
        """Bind the listening socket now (``run()`` does it if needed)."""
        if self._server is not None or self._reserved is not None:
            return
        if not self.reuse_port:
            self._server = self._new_server(self.server_address)
            self.server_address = self._server.server_address
            return
        # Each worker binds its own socket; the supervisor only holds the port.
        self._reserved, self.server_address = reserve(Endpoint.of(self.server_class, self.server_address))

    def _new_server(self, address: Any) -> Any:
        server = self._worker_class(address, self.handler_class)
        if self.configure is not None:
            self.configure(server)
        return server

    # -- the loop --------------------------------------------------------------

    def run(self) -> int:
        """Supervise until stopped by a signal; returns the exit status (0)."""
        self.bind()
        self.signals.install()
        log.info(
            "supervisor %d: serving %s with %d worker(s)%s",
            os.getpid(),
            format_address(self.server_address),
            self.workers,
            " (SO_REUSEPORT)" if self.reuse_port else "",
        )
        try:
            while True:
                now = time.monotonic()
                if self._stopping is None:
                    timeout = self._spawn_missing(now)
                else:
                    if not len(self._table):
                        break
                    if now >= self._deadline:
                        self._kill_all(signal.SIGKILL, "did not exit in time")
                        self._deadline = float("inf")
                    timeout = None if self._deadline == float("inf") else self._deadline - now
                for sig in self.signals.wait(timeout):
                    self._on_signal(sig)
                self._reap()
        finally:
            self._cleanup()
        log.info("supervisor %d: stopped", os.getpid())
        return 0

    def _spawn_missing(self, now: float) -> float | None:
        missing = self.workers - len(self._table.active())
        if missing <= 0:
            return None
        if not self.policy.may_spawn(now):
            return self.policy.wait_time(now)
        for _ in range(missing):
            self._spawn()
        return None

    def _spawn(self) -> None:
        max_requests = self.max_requests
        if max_requests and self.max_requests_jitter:
            max_requests += random.randint(0, self.max_requests_jitter)  # noqa: S311 - spreading, not security
        # A signal sent to the child between fork() and its own handlers would
        # reach the supervisor's handlers, which the child no longer serves, and
        # be lost: the child starts with them blocked, and unblocks them once
        # its handlers are in place (run_worker).
        previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, SUPERVISOR_SIGNALS)
        try:
            pid = os.fork()
            if pid == 0:
                self._become_worker(max_requests)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)
        self._table.add(pid, self._generation)
        log.info("spawned worker %d (generation %d)", pid, self._generation)

    def _become_worker(self, max_requests: int) -> NoReturn:
        """The child's side of _spawn(): never returns into the supervisor's loop."""
        try:
            mark_worker_records(os.getpid())
            self.signals.close()
            if self.reuse_port:
                address = self.server_address
                if self._reserved is not None:
                    self._reserved.close()
                make = lambda: self._new_server(address)  # noqa: E731
            else:
                server = self._server
                make = lambda: server  # noqa: E731
            run_worker(make, grace=self.grace, max_requests=max_requests, shared=not self.reuse_port)
        except BaseException:
            log.exception("could not become a worker")
        finally:
            os._exit(WORKER_BOOT_ERROR)  # only reached if the lines before run_worker() raised

    def _reap(self) -> None:
        """Collect the workers that have exited, asking for each by pid: a
        wait for any child (``waitpid(-1)``) could take the exit status of a
        child the embedding program forked itself, before the program asks."""
        for worker in self._table.all():
            try:
                pid, status = os.waitpid(worker.pid, os.WNOHANG)
            except ChildProcessError:
                # Someone else in this process waited for it (a waitpid(-1)
                # elsewhere): it is gone, and how it ended is lost.
                self._table.remove(worker.pid)
                self._worker_exited(worker, None)
                continue
            if pid == worker.pid:
                self._table.remove(pid)
                self._worker_exited(worker, os.waitstatus_to_exitcode(status))

    def _worker_exited(self, worker: Worker, code: int | None) -> None:
        """Log a worker's end and tell the restart policy; ``code`` None: unknown."""
        pid = worker.pid
        now = time.monotonic()
        expected = worker.retiring or self._stopping is not None
        if code == WORKER_RECYCLED:
            log.info("worker %d recycled after max_requests", pid)
        elif expected:
            log.info("worker %d exited (%s)", pid, _describe(code))
        else:
            log.error("worker %d died unexpectedly (%s): replacing it", pid, _describe(code))
        if not expected:
            crashed = code not in (WORKER_OK, WORKER_RECYCLED)
            self.policy.worker_died(now - worker.started, now, crashed)
            if self.policy.delay:
                log.warning("worker %d lived %.2fs: next start in %.2fs", pid, now - worker.started, self.policy.delay)

    # -- signals ---------------------------------------------------------------

    def _on_signal(self, sig: signal.Signals) -> None:
        if sig in (signal.SIGTERM, signal.SIGINT):
            if self._stopping is None:
                self._stop("graceful", sig)
            else:
                self._stop("immediate", sig)
        elif sig == signal.SIGQUIT:
            self._stop("immediate", sig)
        elif self._stopping is not None:
            return  # no reloads or scaling while stopping
        elif sig == signal.SIGHUP:
            self._reload()
        elif sig == signal.SIGTTIN:
            self.workers += 1
            log.info("SIGTTIN: %d worker(s)", self.workers)
        elif sig == signal.SIGTTOU:
            self._scale_down()

    def _stop(self, how: str, sig: signal.Signals) -> None:
        if self._stopping == "immediate":
            return
        log.info("supervisor %d: %s, %s stop", os.getpid(), sig.name, how)
        self._stopping = how
        self._close_listener()  # new connections are refused from now on
        if how == "graceful":
            self._deadline = time.monotonic() + (self.grace if self.grace is not None else float("inf")) + EXIT_MARGIN
            self._kill_all(signal.SIGTERM)
        else:
            self._deadline = time.monotonic() + IMMEDIATE_TIMEOUT
            self._kill_all(signal.SIGQUIT)

    def _reload(self) -> None:
        old = self._table.active()
        self._generation += 1
        log.info("SIGHUP: starting generation %d, draining %d old worker(s)", self._generation, len(old))
        for worker in old:
            worker.retiring = True
        for _ in range(self.workers):
            self._spawn()
        for worker in old:
            _signal(worker.pid, signal.SIGTERM)

    def _scale_down(self) -> None:
        if self.workers <= 1:
            log.info("SIGTTOU: already at one worker")
            return
        self.workers -= 1
        oldest = min(self._table.active(), key=lambda w: w.started, default=None)
        log.info("SIGTTOU: %d worker(s)", self.workers)
        if oldest is not None:
            oldest.retiring = True
            _signal(oldest.pid, signal.SIGTERM)

    # -- the way out ----------------------------------------------------------

    def _kill_all(self, sig: signal.Signals, why: str = "") -> None:
        for worker in self._table.all():
            if why:
                log.warning("worker %d %s: sending %s", worker.pid, why, sig.name)
            _signal(worker.pid, sig)

    def _close_listener(self) -> None:
        if self._server is not None:
            self._server.socket.close()
        if self._reserved is not None:
            self._reserved.close()

    def _cleanup(self) -> None:
        try:
            if len(self._table):  # an exception got us here: leave no worker behind
                self._kill_all(signal.SIGKILL)
                for worker in self._table.all():
                    try:
                        os.waitpid(worker.pid, 0)
                    except ChildProcessError:
                        pass
                    self._table.remove(worker.pid)
        finally:
            self.signals.close()
            if self._server is not None:
                self._server.server_close()  # closes the socket, removes a Unix socket file
            if self._reserved is not None:
                self._reserved.close()


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass  # it has exited already; the reaper will see it


def _worker_server_class(server_class: type[Any], endpoint: Endpoint, reuse_port: bool) -> type[Any]:
    """The class the supervisor makes its servers with: ``server_class`` with
    ``allow_reuse_address`` for a stream server (a restarted supervisor binds
    again at once while connections of the previous one are in TIME_WAIT) and
    ``allow_reuse_port`` in SO_REUSEPORT mode. Datagram servers keep the
    class's ``allow_reuse_address``: with SO_REUSEADDR two UDP servers can
    bind the same port and silently split its datagrams. The user's class is
    left as it is."""
    overrides: dict[str, Any] = {}
    if endpoint.is_stream and not getattr(server_class, "allow_reuse_address", False):
        overrides["allow_reuse_address"] = True
    if reuse_port and not getattr(server_class, "allow_reuse_port", False):
        overrides["allow_reuse_port"] = True
    if not overrides:
        return server_class
    names = {"__module__": server_class.__module__, "__qualname__": server_class.__qualname__}
    return type(server_class.__name__, (server_class,), {**names, **overrides})


def _describe(code: int | None) -> str:
    if code is None:
        return "exit status unknown: another part of this process waited for it"
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"
