"""``serve()`` and ``serve_all()``: run servers until a signal, then stop them gracefully.

The conventions people know from gunicorn and nginx: the first SIGTERM or
SIGINT stops accepting and lets requests in flight finish (up to ``grace``
seconds); a second one, or SIGQUIT, closes what remains at once. On a
server with TLS, SIGHUP reloads its certificates for the connections that
follow. The handlers that were installed before are restored on the way out.

The signal handlers only record the signal and wake whoever acts on it: the
serving loop itself when one server is served with no extras (what
``serve()`` always did), otherwise a control thread, which moves the
``Health`` along, runs the callbacks, waits out ``drain_delay`` and asks
every server to stop. Nothing else runs inside a handler: a handler
interrupts the main thread wherever it is, possibly inside a lock that a
callback would then wait for forever.
"""

from __future__ import annotations

import queue
import signal
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from types import FrameType
from typing import Protocol

from ._drain import DEFAULT_GRACE, DrainReport
from ._health import Health
from ._limits import check_seconds
from ._log import format_address, logger
from ._signal_wakeup import signals_interrupt_waits
from ._thread_signals import leave_signals_to_the_main_thread

GRACEFUL_SIGNALS = (signal.SIGTERM, signal.SIGINT)
IMMEDIATE_SIGNALS = (signal.SIGQUIT,)


class Stoppable(Protocol):
    """What serve() needs of a server (the sync and async servers have it)."""

    server_address: object

    def serve_forever(self, poll_interval: float = ...) -> object: ...
    def shutdown(self) -> None: ...
    def force_stop(self) -> None: ...
    def stop(self, grace: float | None = ...) -> DrainReport: ...


Callback = Callable[[], object]


def serve(
    server: Stoppable,
    *,
    grace: float | None = DEFAULT_GRACE,
    poll_interval: float = 0.5,
    graceful_signals: Iterable[signal.Signals] = GRACEFUL_SIGNALS,
    immediate_signals: Iterable[signal.Signals] = IMMEDIATE_SIGNALS,
    unblock: Iterable[signal.Signals] = (),
    health: Health | None = None,
    drain_delay: float = 0.0,
    on_ready: Callback | None = None,
    on_stopping: Callback | None = None,
    on_reloading: Callback | None = None,
) -> DrainReport:
    """Serve until a signal arrives, then stop gracefully; returns what the stop did.

    Must be called from the main thread (only it can receive signals).
    ``unblock``: signals the caller blocked so that none is lost before these
    handlers are installed; they are unblocked right after.

    The rest is optional (``serve_all()`` says what each does): ``health``
    moves from ``starting`` to ``ready`` to ``draining`` to ``stopped``;
    ``drain_delay`` keeps serving that many seconds after the first
    SIGTERM/SIGINT, readiness already failing, before the stop begins;
    ``on_ready``, ``on_stopping``, ``on_reloading`` are called at those
    moments (for ``sd_notify``). With none of them, the server is served on
    the calling thread and no thread is started.

    Resource handling:
        The server is stopped and closed when this returns, however it returns.

    Error handling:
        An exception from ``serve_forever()`` still stops and closes the server
        (with the grace period) before it propagates.
    """
    (report,) = serve_all(
        (server,),
        grace=grace,
        poll_interval=poll_interval,
        graceful_signals=graceful_signals,
        immediate_signals=immediate_signals,
        unblock=unblock,
        health=health,
        drain_delay=drain_delay,
        on_ready=on_ready,
        on_stopping=on_stopping,
        on_reloading=on_reloading,
    )
    return report


def serve_all(
    servers: Sequence[Stoppable],
    *,
    grace: float | None = DEFAULT_GRACE,
    poll_interval: float = 0.5,
    graceful_signals: Iterable[signal.Signals] = GRACEFUL_SIGNALS,
    immediate_signals: Iterable[signal.Signals] = IMMEDIATE_SIGNALS,
    unblock: Iterable[signal.Signals] = (),
    health: Health | None = None,
    drain_delay: float = 0.0,
    on_ready: Callback | None = None,
    on_stopping: Callback | None = None,
    on_reloading: Callback | None = None,
) -> list[DrainReport]:
    """Serve several servers (sync or async, any mix) in one process until a
    signal, then stop them all together; returns one report per server, in order.

    The first server is served on the calling thread (the main thread), each
    other on a thread of its own. The stop is one for all: every server stops
    accepting at once and drains in parallel, so ``grace`` bounds the whole
    stop, not each server's. When any server's loop ends by itself (or fails),
    the others are stopped too: the process serves all of its listeners or none.

    ``health``: ``ready`` once every server is serving, ``draining`` from
    the first SIGTERM/SIGINT (or a loop that ended), ``stopped`` once every
    server is closed. ``drain_delay``: after that first signal, keep serving
    this many seconds with readiness failing, so that a load balancer that
    polls ``/readyz`` stops sending before the listeners close; a second
    signal during the delay ends it early and the graceful stop begins (one
    more forces it, as always; SIGQUIT forces at once).

    ``on_ready``: once every server is serving, and again after each SIGHUP
    reload (systemd's ``Type=notify-reload`` waits for ``READY=1`` after
    ``RELOADING=1``). ``on_stopping``: once, when the stop begins (at the first
    signal, before ``drain_delay``). ``on_reloading``: on SIGHUP, before the
    servers with TLS reload their certificates (``reload_tls()``); without
    TLS, SIGHUP still calls ``on_reloading`` then ``on_ready``: what to
    reload is then the caller's. SIGHUP is left alone when no server has TLS
    and ``on_reloading`` is None. The callbacks run one at a time, on a
    control thread, never inside a signal handler; one that raises is logged
    and serving goes on.

    Must be called from the main thread. Every thread it starts is joined,
    and every server stopped and closed, however it returns.

    Raises:
        ValueError: no server was given.
        RuntimeError: not called from the main thread.
        Exception: the first exception a server's ``serve_forever()`` (or its
            stop) raised, once every server has stopped.
    """
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("serve() installs signal handlers and must run in the main thread")
    servers = tuple(servers)
    if not servers:
        raise ValueError("serve_all() needs at least one server")
    check_seconds("drain_delay", drain_delay, zero=True)
    if grace is not None:
        check_seconds("grace", grace, zero=True)
    extras = (health, on_ready, on_stopping, on_reloading)
    plain = len(servers) == 1 and not drain_delay and all(extra is None for extra in extras)
    if plain and not _handlers_run_on_the_loop(servers[0]):
        return [_serve_on_this_thread(servers[0], grace, poll_interval, graceful_signals, immediate_signals, unblock)]
    control = _Control(servers, grace, health, drain_delay, on_ready, on_stopping, on_reloading)
    return control.run(poll_interval, tuple(graceful_signals), tuple(immediate_signals), tuple(unblock))


def _handlers_run_on_the_loop(server: object) -> bool:
    """True for a sequential sockserve server: its handler runs on the thread
    that serves, so only another thread can drain it (cut its connection when
    the grace period ends) while a signal handler has interrupted that handler.
    Read from the class, not the model: the model is made when serving starts."""
    from ._base_server import BaseServer

    make_model = getattr(type(server), "_make_model", None)
    return make_model is not None and make_model is BaseServer._make_model


def _tls_source_of(server: object) -> Callable[[], object] | None:
    """A sockserve server's TLS source getter if it has TLS (serve() also takes anything Stoppable)."""
    if getattr(server, "tls", None) is None:
        return None
    source: Callable[[], object] | None = getattr(server, "_tls_source", None)
    return source


def _log_received(
    server: Stoppable, received: list[signal.Signals], immediate: tuple[signal.Signals, ...], grace: float | None
) -> None:
    if received:
        logger.info(
            "%s: received %s, stopping %s",
            format_address(server.server_address),
            received[0].name,
            "at once" if received[0] in immediate else f"gracefully (grace {grace}s)",
        )


def _serve_on_this_thread(
    server: Stoppable,
    grace: float | None,
    poll_interval: float,
    graceful_signals: Iterable[signal.Signals],
    immediate_signals: Iterable[signal.Signals],
    unblock: Iterable[signal.Signals],
) -> DrainReport:
    """One server, no extras: served on the main thread, the signal handlers
    acting on it directly, no thread started (a forking server must not fork
    a multi-threaded process)."""
    received: list[signal.Signals] = []

    def graceful(signum: int, frame: FrameType | None) -> None:
        received.append(signal.Signals(signum))
        server.shutdown()  # on the serving thread this only sets a flag and wakes the loop
        if len(received) > 1:
            server.force_stop()

    def immediate(signum: int, frame: FrameType | None) -> None:
        received.append(signal.Signals(signum))
        server.force_stop()
        server.shutdown()

    tls_source = _tls_source_of(server)

    def reload_tls(signum: int, frame: FrameType | None) -> None:
        source = tls_source() if tls_source is not None else None
        request_reload = getattr(source, "request_reload", None)
        if request_reload is not None:
            request_reload()  # only sets a flag: the reload happens at the next connection

    immediate_signals = tuple(immediate_signals)
    with signals_interrupt_waits():
        previous = {sig: signal.signal(sig, graceful) for sig in graceful_signals}
        previous.update({sig: signal.signal(sig, immediate) for sig in immediate_signals})
        try:
            if tls_source is not None:
                # SIGHUP reloads the certificates (a server without TLS keeps SIGHUP's default).
                tls_source()  # a bad configuration fails here, before serving
                previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, reload_tls)
            if unblock:
                # Signals the caller kept blocked until these handlers were in place:
                # one that arrived meanwhile is delivered now, to them.
                signal.pthread_sigmask(signal.SIG_UNBLOCK, unblock)
            try:
                server.serve_forever(poll_interval)
            finally:
                _log_received(server, received, immediate_signals, grace)
                report = server.stop(grace)
            return report
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


# What the control thread is told, through a queue.SimpleQueue: its put() is
# reentrant, so a signal handler may call it even if it interrupted a put().
_GRACEFUL, _FORCE, _RELOAD, _READY, _ENDED, _EXIT = range(6)


class _Control:
    """serve_all() with threads: the servers' threads, the control thread
    that acts on what the signal handlers record, and the stop of them all."""

    def __init__(
        self,
        servers: tuple[Stoppable, ...],
        grace: float | None,
        health: Health | None,
        drain_delay: float,
        on_ready: Callback | None,
        on_stopping: Callback | None,
        on_reloading: Callback | None,
    ) -> None:
        self.servers = servers
        self.grace = grace
        self.health = health
        self.drain_delay = drain_delay
        self.on_ready = on_ready
        self.on_stopping = on_stopping
        self.on_reloading = on_reloading
        self.events: queue.SimpleQueue[tuple[int, int]] = queue.SimpleQueue()
        self.received: list[signal.Signals] = []
        self.immediate: tuple[signal.Signals, ...] = ()
        # True from the first graceful signal until the drain delay is over:
        # set by the handler itself, so a second signal that comes before the
        # control thread has even woken still only ends the delay.
        self.delaying = False
        self.reports: list[DrainReport | None] = [None] * len(servers)
        self.errors: list[BaseException] = []
        self.served: set[int] = set()  # the servers whose serve loop was entered (each stops itself)
        self.logged: set[int] = set()  # the servers whose "received SIGTERM" line was logged already

    # -- the signal handlers: record, wake, and force_stop() (signal-safe) ----------------

    def _graceful(self, signum: int, frame: FrameType | None) -> None:
        self.received.append(signal.Signals(signum))
        if len(self.received) == 1:
            self.delaying = self.drain_delay > 0
            self.events.put((_GRACEFUL, 0))
        elif self.delaying:
            self.delaying = False
            self.events.put((_GRACEFUL, 0))  # ends the delay; the graceful stop follows
        else:
            self._force_all()

    def _immediate(self, signum: int, frame: FrameType | None) -> None:
        self.received.append(signal.Signals(signum))
        self.delaying = False
        self._force_all()

    def _reload(self, signum: int, frame: FrameType | None) -> None:
        self.events.put((_RELOAD, 0))

    def _force_all(self) -> None:
        for server in self.servers:
            server.force_stop()
        self.events.put((_FORCE, 0))

    # -- the main thread --------------------------------------------------------------

    def run(
        self,
        poll_interval: float,
        graceful_signals: tuple[signal.Signals, ...],
        immediate_signals: tuple[signal.Signals, ...],
        unblock: tuple[signal.Signals, ...],
    ) -> list[DrainReport]:
        self.immediate = immediate_signals
        tls_sources = [source for source in map(_tls_source_of, self.servers) if source is not None]
        control = threading.Thread(target=self._control, name="sockserve serve control")
        threads: list[threading.Thread] = []
        with signals_interrupt_waits():
            previous = {sig: signal.signal(sig, self._graceful) for sig in graceful_signals}
            previous.update({sig: signal.signal(sig, self._immediate) for sig in immediate_signals})
            try:
                try:
                    for source in tls_sources:
                        source()  # a bad configuration fails here, before serving
                    if tls_sources or self.on_reloading is not None:
                        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._reload)
                    control.start()
                    for index in range(1, len(self.servers)):
                        thread = threading.Thread(
                            target=self._serve_thread,
                            args=(index, poll_interval, unblock),
                            name=f"sockserve serve {format_address(self.servers[index].server_address)}",
                        )
                        thread.start()
                        threads.append(thread)
                    if unblock:
                        # Signals the caller kept blocked until these handlers were in place.
                        signal.pthread_sigmask(signal.SIG_UNBLOCK, unblock)
                    self.events.put((_READY, 0))
                except BaseException:
                    self.events.put((_ENDED, 0))
                    raise
                self._serve(0, poll_interval)
            finally:
                for thread in threads:
                    thread.join()
                for index in range(len(self.servers)):
                    if index not in self.served:
                        self._stop(index)  # never served (a failure while starting): still closed
                self.events.put((_EXIT, 0))
                if control.ident is not None:  # started
                    control.join()
                if self.health is not None:
                    self.health.set_stopped()
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
        if self.errors:
            for extra in self.errors[1:]:
                logger.error("serve_all(): another server failed as well", exc_info=extra)
            raise self.errors[0]
        return [report for report in self.reports if report is not None]

    # -- the serving threads (the main thread serves the first server) ---------------

    def _serve_thread(self, index: int, poll_interval: float, unblock: tuple[signal.Signals, ...]) -> None:
        # The program's signal mask, not a block of our own: a sequential
        # server's handlers run on this thread, and the programs they start
        # inherit its mask (a blocked SIGTERM would make them unkillable). It
        # was started before the caller's blocked signals were let through:
        # let them through here too. A signal the kernel delivers to this
        # thread still wakes the main thread (the wake-up descriptor).
        if unblock:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, unblock)
        try:
            self._serve(index, poll_interval)
        except BaseException as exc:  # handed to the main thread, which raises it
            self.errors.append(exc)

    def _serve(self, index: int, poll_interval: float) -> None:
        server = self.servers[index]
        self.served.add(index)
        try:
            server.serve_forever(poll_interval)
        except BaseException as exc:
            logger.error("%s: serving failed: %r", format_address(server.server_address), exc)
            raise
        finally:
            self.events.put((_ENDED, index))  # one loop ended: every other one is asked to stop
            if index not in self.logged:
                _log_received(server, self.received, self.immediate, self.grace)
            self._stop(index)

    def _stop(self, index: int) -> None:
        try:
            self.reports[index] = self.servers[index].stop(self.grace)
        except BaseException as exc:
            self.errors.append(exc)

    # -- the control thread -----------------------------------------------------------

    def _control(self) -> None:
        leave_signals_to_the_main_thread()
        stopping = False
        while True:
            kind, index = self.events.get()
            if kind == _EXIT:
                break
            if stopping:
                continue  # a stop runs already: a reload, a readiness, another end change nothing
            if kind == _READY:
                if self.health is not None:
                    self.health.set_ready()
                self._call(self.on_ready, "on_ready")
            elif kind == _RELOAD:
                self._reload_all()
            else:  # _GRACEFUL, _FORCE, _ENDED: the stop begins
                stopping = True
                if kind == _ENDED and len(self.servers) > 1 and not self.received:
                    logger.info(
                        "%s stopped serving: stopping every server",
                        format_address(self.servers[index].server_address),
                    )
                if self.health is not None:
                    self.health.start_drain()
                self._call(self.on_stopping, "on_stopping")
                if kind == _GRACEFUL and self.delaying and not self._wait_drain_delay():
                    break  # told to exit during the delay: every loop has ended already
                self._shutdown_all()

    def _wait_drain_delay(self) -> bool:
        """Keep serving ``drain_delay`` seconds, unless a signal or a loop's end
        comes first; False if told to exit meanwhile."""
        signal_name = self.received[0].name if self.received else "a signal"
        logger.info(
            "received %s: not ready any more, serving %gs more before stopping (drain_delay)",
            signal_name,
            self.drain_delay,
        )
        deadline = time.monotonic() + self.drain_delay
        try:
            while (remaining := deadline - time.monotonic()) > 0:
                try:
                    kind, _ = self.events.get(timeout=remaining)
                except queue.Empty:
                    break
                if kind == _EXIT:
                    return False
                if kind in (_GRACEFUL, _FORCE, _ENDED):
                    logger.info("drain_delay cut short: stopping now")
                    break
                # _RELOAD, _READY while draining: nothing to do
        finally:
            self.delaying = False
        return True

    def _shutdown_all(self) -> None:
        """Ask every serving loop to end, in parallel, and wait until they have:
        a loop's shutdown() waits for it, which must not hold up the others' stops.

        A sequential server is stopped here instead, with its grace period:
        its shutdown() would wait for the handler in flight on its loop for
        as long as the client keeps the connection, so the grace period
        (which begins once the loop has ended) would never begin, and no
        signal could end the wait. Its stop() drains from this thread, cuts
        the connection when the grace period (or a force_stop()) ends it, and
        the serving thread's own stop() then returns the same report."""
        askers = []
        for index, server in enumerate(self.servers):
            early = _runs_on_its_loop(server)
            askers.append(
                threading.Thread(
                    target=self._stop_early if early else _shutdown_quietly,
                    args=(index,) if early else (server,),
                    name="sockserve serve shutdown",
                )
            )
        for asker in askers:
            asker.start()
        for asker in askers:
            asker.join()

    def _stop_early(self, index: int) -> None:
        """The stop of a server whose loop runs its handler (see _shutdown_all)."""
        leave_signals_to_the_main_thread()
        server = self.servers[index]
        self.logged.add(index)
        _log_received(server, self.received, self.immediate, self.grace)  # before the drain's lines
        try:
            server.stop(self.grace)
        except Exception:
            logger.exception("%s: stop() failed", format_address(server.server_address))

    def _reload_all(self) -> None:
        self._call(self.on_reloading, "on_reloading")
        for server in self.servers:
            reload_tls = getattr(server, "reload_tls", None)
            if getattr(server, "tls", None) is not None and reload_tls is not None:
                try:
                    reload_tls()  # logs its own success or failure
                except Exception:
                    logger.exception("%s: TLS reload failed", format_address(server.server_address))
        self._call(self.on_ready, "on_ready")

    @staticmethod
    def _call(callback: Callback | None, name: str) -> None:
        if callback is None:
            return
        try:
            callback()
        except Exception:
            logger.exception("serve(): %s raised; serving goes on", name)


def _runs_on_its_loop(server: Stoppable) -> bool:
    model = getattr(server, "_concurrency", None)  # a sync sockserve server's, once it serves
    return bool(getattr(model, "runs_on_loop", False))


def _shutdown_quietly(server: Stoppable) -> None:
    leave_signals_to_the_main_thread()
    try:
        server.shutdown()
    except Exception:
        logger.exception("%s: shutdown() failed", format_address(server.server_address))
