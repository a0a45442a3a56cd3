"""The prefork supervisor: binds, forks workers, keeps the right number alive.

It only supervises: signals arrive through ``_signals``, the table and the
restart policy live in ``_table``, and what a worker does is ``_worker``'s.
The vocabulary is gunicorn's and nginx's:

* SIGTERM, SIGINT: graceful stop. Workers stop accepting and finish their
  requests (up to ``grace`` seconds); the supervisor then exits. A second
  one makes it immediate. With ``drain_delay``, the first one only fails
  readiness (``on_stopping``) and the workers keep serving that long; a
  second one ends the delay and the graceful stop begins; a third one makes
  it immediate.
* SIGQUIT: immediate stop.
* SIGHUP: graceful reload. A new generation of workers starts, then the old
  one drains and exits.
* SIGTTIN / SIGTTOU: one worker more / fewer.

A worker that dies is replaced; one that dies soon after it started is
replaced after an exponential back-off, so a crash loop does not spin.
Workers are reaped by pid, from the worker table: a child the embedding
program forked itself keeps its exit status for the program to collect.

For a service manager (``sockserve serve`` under systemd): the listeners may
be sockets the supervisor inherited (``sockets=``, ``listeners=``), served
as they are (``_listeners``); ``on_ready`` is called once every worker of the
current generation serves (each says so with its pid on a pipe), again
after a reload; ``on_reloading`` on SIGHUP before the new generation starts;
``on_stopping`` when a stop begins. The workers' metrics are added up from a
shared map (``_metric_slots``): ``metrics_snapshot()``.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NoReturn, Protocol

from .._drain import DEFAULT_GRACE
from .._limits import check_seconds
from .._log import format_address
from .._metrics import MetricsSnapshot, merge
from ._listeners import Listener, ListenerSpec, plan_listeners
from ._metric_slots import MetricSlots
from ._orphan import watch_the_supervisor
from ._readiness import ReadinessPipe
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


class LoopService(Protocol):
    """Something the supervisor serves in its own loop, with no thread (an
    admin listener: ``sockserve._admin.AdminLoop``)."""

    def poll_fds(self) -> list[tuple[int, int]]:
        """Descriptors to wait on, with their ``select.poll`` events."""

    def timeout(self, now: float) -> float | None:
        """Seconds until it next needs ``serve()`` without an event (None: never)."""

    def serve(self, now: float) -> None:
        """Called after every wait: do what can be done without blocking."""

    def close_in_child(self) -> None:
        """In a worker just forked: close its copies of the descriptors (no lock taken)."""


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
        sockets: listening sockets the process inherited (systemd's socket
            activation): served instead of binding ``server_address`` (which
            may be None), one listener each, with ``server_class`` and
            ``handler_class``. Each is used as it is: never bound or listened
            on again, its Unix path never unlinked (``sockserve._adopt``);
            the workers inherit it. Not with ``reuse_port``.
        listeners: instead of the first three arguments, several listeners,
            each ``(server_class, address or inherited socket,
            handler_class)``: every worker serves them all, one thread each,
            and stops them together.
        on_ready: called (in the supervisor) once every worker of the first
            generation serves, and again when a reload's new generation
            does: for ``READY=1``. on_reloading: on SIGHUP, before the new
            generation starts (``RELOADING=1``). on_stopping: when a stop
            begins (``STOPPING=1``; readiness fails from then on). A callback
            that raises is logged; supervision goes on.
        metrics: the workers count into a map the supervisor shares with
            them, so ``metrics_snapshot()`` adds up every worker (False: each
            worker keeps its own counts, and the snapshot has only
            ``worker_restarts``).
        drain_delay: seconds the workers keep serving after the first
            SIGTERM/SIGINT, ``on_stopping`` called at once (readiness fails),
            before the graceful stop: so that a load balancer polling
            ``/readyz`` stops sending before the listeners close. A second
            SIGTERM/SIGINT ends the delay early; SIGQUIT stops at once. A
            worker that dies meanwhile is still replaced.
        after_fork: called in each worker right after ``fork()``, before
            it serves: to close what the supervisor holds that a worker must
            not keep open (an admin listener's sockets: a worker holding one
            would keep its port accepting after the supervisor is gone). It
            runs in a child forked from a process that may have other
            threads: it must take no lock those threads could hold. An
            exception from it stops the worker from starting (logged).
        services: served by the supervisor's own loop, no thread needed
            (``LoopService``: an admin listener, ``sockserve._admin.AdminLoop``),
            from ``run()`` until it returns, the stop included; each worker
            closes its copies right after fork (``close_in_child()``). More
            may be appended to ``services`` before ``run()``. The caller
            closes them after ``run()``.

    Resource handling:
        ``run()`` reaps every worker it started and closes the listening
        sockets (removing a Unix socket file it bound) on every way out.
    """

    def __init__(
        self,
        server_class: type[Any] | None = None,
        server_address: Any = None,
        handler_class: Any = None,
        *,
        workers: int | None = None,
        reuse_port: bool = False,
        grace: float | None = DEFAULT_GRACE,
        max_requests: int = 0,
        max_requests_jitter: int = 0,
        configure: Callable[[Any], None] | None = None,
        restart_policy: RestartPolicy | None = None,
        sockets: Sequence[socket.socket] | None = None,
        listeners: Sequence[ListenerSpec] | None = None,
        on_ready: Callable[[], object] | None = None,
        on_stopping: Callable[[], object] | None = None,
        on_reloading: Callable[[], object] | None = None,
        metrics: bool = True,
        drain_delay: float = 0.0,
        after_fork: Callable[[], object] | None = None,
        services: Sequence[LoopService] = (),
    ) -> None:
        self.workers = workers if workers is not None else (os.cpu_count() or 1)
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")
        check_seconds("drain_delay", drain_delay, zero=True)
        if grace is not None:
            check_seconds("grace", grace, zero=True)
        self._listeners: list[Listener] = plan_listeners(
            server_class, server_address, handler_class, listeners, sockets, reuse_port
        )
        first = self._listeners[0]
        self.server_class = first.server_class
        self.server_address = first.address  # the real address once bound (the first listener's)
        self.handler_class = first.handler_class
        self.reuse_port = reuse_port
        self.grace = grace
        self.max_requests = max_requests
        self.max_requests_jitter = max_requests_jitter
        self.configure = configure
        self.policy = restart_policy or RestartPolicy()
        self.signals = SignalQueue()
        self.on_ready = on_ready
        self.on_stopping = on_stopping
        self.on_reloading = on_reloading
        self.drain_delay = drain_delay
        self.after_fork = after_fork
        self.services: list[LoopService] = list(services)
        self._table = WorkerTable()
        # Which listener (its index, in the order given) the last bind() failed on.
        self.bind_failed: int | None = None
        self._generation = 0
        self._stopping: str | None = None  # None, "graceful" or "immediate"
        # While the drain delay runs: when it ends (readiness already fails,
        # the workers still serve, nothing is reloaded or scaled).
        self._delay_until: float | None = None
        self._announced_stop = False  # on_stopping was called
        self._deadline = float("inf")
        self._readiness: ReadinessPipe | None = None  # made by run()
        self._slots: MetricSlots | None = MetricSlots(2 * self.workers) if metrics else None
        self._restarts = 0
        self._restarts_lock = threading.Lock()

    @property
    def server_addresses(self) -> list[Any]:
        """Every listener's address, in order (the real ones once bound)."""
        return [listener.address for listener in self._listeners]

    # -- binding ---------------------------------------------------------------

    def bind(self) -> None:
        """Bind (or adopt) the listening sockets now (``run()`` does it if needed).
        In SO_REUSEPORT mode each worker binds its own; the supervisor only holds the ports.

        Raises:
            OSError: as the server class raised it (its type and message say
                why, for a caller that explains them); ``bind_failed`` says
                which listener it was. The ones bound before it stay bound
                until ``close()``."""
        self.bind_failed = None
        for index, listener in enumerate(self._listeners):
            try:
                listener.bind(self.configure)
            except OSError:
                self.bind_failed = index
                raise
        self.server_address = self._listeners[0].address

    def close(self) -> None:
        """Release what the constructor and ``bind()`` took (the signal pipe,
        the listening sockets, removing a Unix socket file it bound), for a
        program that stops before ``run()``; ``run()`` does it on its way out."""
        self.signals.close()
        for listener in self._listeners:
            listener.close()

    # -- metrics -----------------------------------------------------------------

    def metrics_snapshot(self) -> MetricsSnapshot:
        """Every worker's counters and gauges added up (the live ones' slots,
        plus what the workers that have exited counted), and the
        supervisor's own ``worker_restarts``: workers that died unexpectedly
        and were replaced. Safe from any thread of the supervisor's process
        (an admin listener's). A worker's counts reach its slot in batches
        (``sockserve._metrics``): the last moments of a worker killed with
        SIGKILL may be missing."""
        with self._restarts_lock:
            own = MetricsSnapshot({"worker_restarts": self._restarts})
        if self._slots is None:
            return own
        return merge([self._slots.snapshot(), own])

    # -- the loop --------------------------------------------------------------

    def run(self, *, unblock: Iterable[signal.Signals] = ()) -> int:
        """Supervise until stopped by a signal; returns the exit status (0).

        ``unblock``: signals the caller blocked so that none is lost before
        these handlers are installed (a SIGTERM while the program starts
        would otherwise end it with the default action, before it serves);
        they are unblocked right after, and one that arrived meanwhile is
        handled then, as ``serve(unblock=...)`` does. If binding fails, they
        stay blocked (the caller is about to exit with the bind's error).
        """
        self.bind()
        self.signals.install()
        if unblock:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, tuple(unblock))
        log.info(
            "supervisor %d: serving %s with %d worker(s)%s",
            os.getpid(),
            ", ".join(format_address(address) for address in self.server_addresses),
            self.workers,
            " (SO_REUSEPORT)" if self.reuse_port else "",
        )
        try:
            readiness = self._readiness = ReadinessPipe()
            while True:
                now = time.monotonic()
                if self._stopping is None:
                    timeout = self._spawn_missing(now)
                    if self._delay_until is not None:
                        if now >= self._delay_until:
                            self._stop("graceful", None)
                            continue
                        left = self._delay_until - now
                        timeout = left if timeout is None else min(timeout, left)
                else:
                    if not len(self._table):
                        break
                    if now >= self._deadline:
                        self._kill_all(signal.SIGKILL, "did not exit in time")
                        self._deadline = float("inf")
                    timeout = None if self._deadline == float("inf") else self._deadline - now
                also: list[int | tuple[int, int]] = [readiness.reader]
                for service in self.services:
                    also += service.poll_fds()
                    wake = service.timeout(now)
                    if wake is not None:
                        timeout = wake if timeout is None else min(timeout, wake)
                for sig in self.signals.wait(timeout, also):
                    self._on_signal(sig)
                self._read_ready(readiness)
                self._reap()
                self._serve_services()
        finally:
            self._cleanup()
        log.info("supervisor %d: stopped", os.getpid())
        return 0

    def _serve_services(self) -> None:
        now = time.monotonic()
        for service in self.services:
            try:
                service.serve(now)
            except Exception:
                log.exception("%r failed (supervision goes on)", service)

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
        slot = self._slots.take() if self._slots is not None else None
        previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, SUPERVISOR_SIGNALS)
        supervisor = os.getpid()
        try:
            pid = os.fork()
            if pid == 0:
                self._become_worker(max_requests, slot, supervisor)
        except BaseException:
            if slot is not None and self._slots is not None:
                self._slots.retire(slot)  # the fork failed: nobody writes it
            raise
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)
        self._table.add(pid, self._generation, slot)
        log.info("spawned worker %d (generation %d)", pid, self._generation)

    def _become_worker(self, max_requests: int, slot: int | None, supervisor: int) -> NoReturn:
        """The child's side of _spawn(): never returns into the supervisor's loop."""
        try:
            mark_worker_records(os.getpid())
            # A supervisor killed with SIGKILL must not leave its workers
            # serving for ever: they drain (SIGTERM) when it dies.
            watch_the_supervisor(supervisor)
            self.signals.close()
            for service in self.services:
                service.close_in_child()
            if self.after_fork is not None:
                self.after_fork()
            assert self._readiness is not None
            ready_fd = self._readiness.worker_side()
            listeners, configure = self._listeners, self.configure

            def make() -> list[tuple[Any, bool]]:
                return [(listener.server_in_worker(configure), listener.shared) for listener in listeners]

            buffer = None if slot is None or self._slots is None else self._slots.view(slot)
            run_worker(
                make,
                grace=self.grace,
                max_requests=max_requests,
                ready_fd=ready_fd,
                metrics_buffer=buffer,
            )
        except BaseException:
            log.exception("could not become a worker")
        finally:
            os._exit(WORKER_BOOT_ERROR)  # only reached if the lines before run_worker() raised

    def _read_ready(self, readiness: ReadinessPipe) -> None:
        """Take the workers' word that they serve; call on_ready when every
        worker of the current generation does."""
        readiness.read(self._table)
        if (
            self._stopping is None
            and self._delay_until is None
            and readiness.newly_ready(self._table, self._generation, self.workers)
        ):
            log.info("generation %d: %d worker(s) serving", self._generation, self.workers)
            self._call(self.on_ready, "on_ready")

    def _call(self, callback: Callable[[], object] | None, name: str) -> None:
        if callback is None:
            return
        try:
            callback()
        except Exception:
            log.exception("%s failed (supervision goes on)", name)

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
        """Log a worker's end, keep its counts, tell the restart policy; ``code`` None: unknown."""
        if worker.slot is not None and self._slots is not None:
            self._slots.retire(worker.slot)  # it is gone: nothing writes the slot any more
        pid = worker.pid
        now = time.monotonic()
        expected = worker.retiring or self._stopping is not None
        if code == WORKER_RECYCLED:
            log.info("worker %d recycled after max_requests", pid)
        elif expected:
            log.info("worker %d exited (%s)", pid, _describe(code))
        else:
            log.error("worker %d died unexpectedly (%s): replacing it", pid, _describe(code))
            with self._restarts_lock:
                self._restarts += 1
        if not expected:
            crashed = code not in (WORKER_OK, WORKER_RECYCLED)
            self.policy.worker_died(now - worker.started, now, crashed)
            if self.policy.delay:
                log.warning("worker %d lived %.2fs: next start in %.2fs", pid, now - worker.started, self.policy.delay)

    # -- signals ---------------------------------------------------------------

    def _on_signal(self, sig: signal.Signals) -> None:
        if sig in (signal.SIGTERM, signal.SIGINT):
            if self._stopping is not None:
                self._stop("immediate", sig)
            elif self._delay_until is not None:
                log.info("supervisor %d: %s, drain_delay cut short", os.getpid(), sig.name)
                self._stop("graceful", sig)
            elif self.drain_delay > 0:
                self._start_delay(sig)
            else:
                self._stop("graceful", sig)
        elif sig == signal.SIGQUIT:
            self._stop("immediate", sig)
        elif self._stopping is not None or self._delay_until is not None:
            return  # no reloads or scaling while stopping
        elif sig == signal.SIGHUP:
            self._reload()
        elif sig == signal.SIGTTIN:
            self.workers += 1
            log.info("SIGTTIN: %d worker(s)", self.workers)
        elif sig == signal.SIGTTOU:
            self._scale_down()

    def _start_delay(self, sig: signal.Signals) -> None:
        """The first stop signal with a drain delay: readiness fails now, the
        workers keep serving until the delay is over (or a second signal).
        Readiness fails before the line says so."""
        self._delay_until = time.monotonic() + self.drain_delay
        self._announce_stop()
        log.info(
            "supervisor %d: %s, not ready any more, serving %gs more before stopping (drain_delay)",
            os.getpid(),
            sig.name,
            self.drain_delay,
        )

    def _announce_stop(self) -> None:
        if not self._announced_stop:
            self._announced_stop = True
            self._call(self.on_stopping, "on_stopping")

    def _stop(self, how: str, sig: signal.Signals | None) -> None:
        if self._stopping == "immediate":
            return
        if sig is not None:
            log.info("supervisor %d: %s, %s stop", os.getpid(), sig.name, how)
        else:
            log.info("supervisor %d: drain_delay over, %s stop", os.getpid(), how)
        self._stopping = how
        self._delay_until = None
        self._announce_stop()
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
        self._call(self.on_reloading, "on_reloading")
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
        for listener in self._listeners:
            listener.stop_listening()

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
            if self._readiness is not None:
                self._readiness.close()
                self._readiness = None
            for listener in self._listeners:
                listener.close()  # closes the socket, removes a Unix socket file it bound


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass  # it has exited already; the reaper will see it


def _describe(code: int | None) -> str:
    if code is None:
        return "exit status unknown: another part of this process waited for it"
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"
