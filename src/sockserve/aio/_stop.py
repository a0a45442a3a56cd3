"""Graceful stop for the async servers: stop accepting at once, let the
connections in flight finish until a deadline, abort what remains, and close
everything, including the event loop a blocking ``serve_forever()`` made.

``AsyncBaseServer`` inherits it (as the synchronous ``BaseServer`` inherits
``GracefulStop``); the order of the steps, the log lines and the report are
the shared policy in ``_drain``.
"""

from __future__ import annotations

import asyncio
import threading
import types
from typing import TYPE_CHECKING, Any

from .. import _drain

if TYPE_CHECKING:
    from typing_extensions import Self

    from .._admission import Admission
    from .._shutdown import ShutdownHandshake

# How long closing waits for connections that were aborted to finish their
# clean-up (their finish() hooks run; a well-behaved one takes microseconds).
SETTLE_SECONDS = 5.0


class AsyncGracefulStop:
    """stop(grace), aclose(grace), force_stop() and server_close(); the server supplies the state below."""

    server_address: Any
    _serving_loop: asyncio.AbstractEventLoop | None
    _own_loop: asyncio.AbstractEventLoop | None
    _own_loop_lock: threading.Lock
    _handler_tasks: set[asyncio.Task[None]]
    _idle_waiter: asyncio.Future[bool] | None
    _drain_done: asyncio.Future[None] | None
    _force_requested: bool
    _stop_report: _drain.DrainReport | None = None
    _counts_datagrams = False  # a datagram server: its drain counts datagrams, not connections

    if TYPE_CHECKING:  # supplied by AsyncBaseServer and ServerCore
        _handshake: ShutdownHandshake
        _admission_book: Admission | None

        def _close_listener(self) -> None: ...
        def _close_listener_here(self, *, keep_datagram_socket: bool = False) -> None: ...
        def _in_flight_count(self) -> int: ...
        def _count_drain(self, seconds: float) -> None: ...

    def _abort_all(self, exc: BaseException) -> int:
        """Abort every connection in flight; how many there were."""
        admission = self._admission_book
        if admission is None:
            return 0
        tickets = admission.tickets()
        for ticket in tickets:
            ticket.cut(exc)
        return len(tickets)

    async def _wait_idle(self, timeout: float | None) -> bool:
        """Wait until nothing is in flight; False if ``timeout`` or ``force_stop()`` came first."""
        if not self._in_flight_count():
            return True
        if self._force_requested:
            return False
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        self._idle_waiter = waiter
        timer = None if timeout is None else loop.call_later(timeout, resolve, waiter, False)
        try:
            return await waiter
        finally:
            self._idle_waiter = None
            if timer is not None:
                timer.cancel()

    # -- stopping -----------------------------------------------------------------------

    async def aclose(self, grace: float | None = _drain.DEFAULT_GRACE) -> _drain.DrainReport:
        """Stop gracefully, on the server's loop: stop accepting at once (new
        connections are refused), let those in flight finish for up to
        ``grace`` seconds (None: no limit), abort the rest, close the server.
        ``serve()`` returns once this is done. The async form of ``stop()``."""
        loop = asyncio.get_running_loop()
        if self._serving_loop is not None and self._serving_loop is not loop and not self._serving_loop.is_closed():
            raise RuntimeError("aclose() must run on the event loop the server serves on")
        self._serving_loop = loop
        if self._stop_report is not None:  # stopped already: one drain, one set of log lines
            self.server_close()
            return self._stop_report
        done: asyncio.Future[None] = loop.create_future()
        self._drain_done = done
        try:
            self._handshake.request()
            self._close_listener_here(keep_datagram_socket=True)
            in_flight = self._in_flight_count()
            unit = "datagram" if self._counts_datagrams else "connection"
            started = _drain.begin(self.server_address, in_flight, grace, unit)
            forced = 0
            finished = await self._wait_idle(grace)
            if not finished:
                forced = self._abort_all(_drain.force_reason(grace, self._force_requested))
                await self._wait_idle(SETTLE_SECONDS)
            report = self._stop_report = _drain.end(
                self.server_address,
                in_flight,
                forced,
                grace,
                started,
                finished=finished,
                forced_early=self._force_requested,
                unit=unit,
            )
            self._count_drain(report.seconds)
        finally:
            self._drain_done = None
            done.set_result(None)
        self.server_close()
        return report

    def stop(self, grace: float | None = _drain.DEFAULT_GRACE) -> _drain.DrainReport:
        """Stop gracefully (see ``aclose()``), from plain code or another thread.

        On the loop's own thread, while it runs, use ``await aclose(grace)``
        instead (or ``shutdown()`` and, once ``serve_forever()`` returned,
        ``stop()``), which is what a prefork worker does.
        """
        if self._stop_report is not None:  # stopped already: one drain, one set of log lines
            self.server_close()
            return self._stop_report
        loop = self._serving_loop
        if loop is not None and not loop.is_closed():
            if loop.is_running():
                if _running_loop() is loop:
                    raise RuntimeError("stop() would block the server's own loop: use await server.aclose(grace)")
                return asyncio.run_coroutine_threadsafe(self.aclose(grace), loop).result()
            report = loop.run_until_complete(self.aclose(grace))
            self._close_own_loop()
            return report
        if self._stop_report is None:
            self._handshake.request()
            started = _drain.begin(self.server_address, 0, grace)
            self._stop_report = _drain.end(self.server_address, 0, 0, grace, started)
            self._count_drain(self._stop_report.seconds)
        self.server_close()
        return self._stop_report

    def force_stop(self) -> None:
        """End a graceful stop's grace period now, or make the next one end at
        once (safe from any thread and a signal handler)."""
        self._force_requested = True
        loop = self._serving_loop
        if loop is not None:
            try:
                loop.call_soon_threadsafe(self._end_grace)
            except RuntimeError:
                pass  # the loop is closed: no grace period is running

    def _end_grace(self) -> None:
        if self._idle_waiter is not None:
            resolve(self._idle_waiter, False)

    def server_close(self) -> None:
        """Close the listening socket and abort the connections still open. May be overridden.

        Nothing is left behind: a loop that ``serve_forever()`` made is run
        until the aborted connections have finished, then closed.
        """
        self._close_listener()
        loop = self._serving_loop
        if loop is None or loop.is_closed():
            return
        if loop.is_running():
            exc = ConnectionAbortedError("the server was closed")
            if _running_loop() is loop:
                self._abort_all(exc)
            else:
                try:
                    loop.call_soon_threadsafe(self._abort_all, exc)
                except RuntimeError:
                    pass  # closed meanwhile
            return
        self._close_own_loop()

    def _close_own_loop(self) -> None:
        # serve_forever()'s thread closes the loop when it returns after a stop
        # from another thread, and that thread's server_close() may try at the
        # same moment: only one of them may drive the loop.
        with self._own_loop_lock:
            loop = self._own_loop
            if loop is None or loop.is_closed() or loop.is_running():
                return
            try:
                self._abort_all(ConnectionAbortedError("the server was closed"))
                loop.run_until_complete(self._settle_aborted())
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()
                self._own_loop = None
                if self._serving_loop is loop:
                    self._serving_loop = None

    async def _settle_aborted(self) -> None:
        """Let aborted connections run their clean-up (bounded)."""
        await self._wait_idle(SETTLE_SECONDS)
        tasks = [t for t in self._handler_tasks if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=SETTLE_SECONDS)
        await asyncio.sleep(0)  # the transports' last callbacks close their sockets

    # -- context managers ---------------------------------------------------------------

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: types.TracebackType | None,
    ) -> None:
        self.server_close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: types.TracebackType | None,
    ) -> None:
        self.server_close()
        await self._settle_aborted()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def resolve(future: asyncio.Future[Any], value: Any = None) -> None:
    if not future.done():
        future.set_result(value)
