"""The ``sockserve`` logger, how addresses appear in its messages, and the
lines that report what happened to a connection.

The library only emits records; configuring handlers is the application's job
(the CLI does it for its own commands). Lines about events a client can cause
at will (refusals, limits that fire, vanished clients, failed handshakes,
handler errors) go through a budget: a flood of them costs a few lines a
second, and the next line that gets through says how many were held back.
"""

from __future__ import annotations

import os
import sys
import threading
import time

from ._address import format_address as format_address
from ._errors import IdleTimeoutExpired, LimitExceeded

# logging's levels, named without importing it.
_INFO, _WARNING, _ERROR = 20, 30, 40


class _LoggerOnFirstUse:
    """The ``sockserve`` logger, looked up when a line is first logged.

    ``logging`` is not imported until then: a server that logs nothing does
    not pay for its import (about 3 ms), nor, in every child a forking
    server makes, for the at-fork hook it registers, which re-creates the
    lock of every handler in the child.
    """

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        import logging

        return getattr(logging.getLogger("sockserve"), name)


TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see sockserve/__init__.py)
if TYPE_CHECKING:
    import logging
    from typing import Any

    logger: logging.Logger
else:
    logger = _LoggerOnFirstUse()

# Per kind of event: at most LOG_BURST lines in any LOG_PERIOD seconds.
LOG_BURST = 20
LOG_PERIOD = 1.0


class LogBudget:
    """Lets at most ``burst`` lines of each kind through per ``period`` seconds."""

    def __init__(self, burst: int = LOG_BURST, period: float = LOG_PERIOD) -> None:
        self.burst = burst
        self.period = period
        self._lock = threading.Lock()
        self._windows: dict[str, tuple[float, int, int]] = {}  # kind -> (window start, lines, held back)

    def take(self, kind: str, now: float | None = None) -> int | None:
        """None if this line must be held back; otherwise how many were held back since the last one."""
        now = time.monotonic() if now is None else now
        with self._lock:
            start, lines, held = self._windows.get(kind, (now, 0, 0))
            if now - start >= self.period:
                start, lines = now, 0
            if lines >= self.burst:
                self._windows[kind] = (start, lines, held + 1)
                return None
            self._windows[kind] = (start, lines + 1, 0)
            return held


budget = LogBudget()


def _budget_lock_for_a_child() -> None:
    """A forked child gets a new lock for the budget: a fork while another
    thread of the parent held it (a serve loop logging a refusal while a
    forking server's loop forked) would leave it held for ever in the
    child, whose first rate-limited line would then never return."""
    budget._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_budget_lock_for_a_child)


def _emit(kind: str, level: int, message: str, *args: Any, exc_info: bool = False) -> None:
    if not logger.isEnabledFor(level):
        return
    held = budget.take(kind)
    if held is None:
        return
    if held:
        message += " (%d more like it held back)"
        args = (*args, held)
    logger.log(level, message, *args, exc_info=exc_info or None)


def log_refused(error: BaseException) -> None:
    """A connection refused by the admission policy (its message names the limit and the client)."""
    _emit("refused", _WARNING, "%s", error)


def log_limit(error: BaseException, client_address: Any = None) -> None:
    """A limit fired on a connection in flight, which the server closes.

    A limit raised by code that did not know the client (a handler's own
    ``LineSplitter``) is told who it was here."""
    if client_address is not None and getattr(error, "client_address", True) is None:
        _emit("limit", _WARNING, "%s from %s: closing the connection", error, format_address(client_address))
    else:
        _emit("limit", _WARNING, "%s: closing the connection", error)


def log_dropped(error: BaseException) -> None:
    """A datagram dropped before any handler saw it (its message names the sender)."""
    _emit("dropped", _WARNING, "%s", error)


def log_datagram_dropped(client_address: Any, reason: str) -> None:
    """A datagram dropped for what it carried (a PROXY header missing, bad or
    not believed), before any handler saw it."""
    _emit("dropped", _WARNING, "datagram from %s dropped: %s", format_address(client_address), reason)


def log_stage_failed(error: BaseException, client_address: Any) -> None:
    """A connection's stages (PROXY header, TLS handshake...) did not complete."""
    if isinstance(error, OSError):
        _emit(
            "vanished",
            _INFO,
            "client %s went away before its request: %s",
            format_address(client_address),
            error,
        )
    else:
        _emit("stage", _WARNING, "closing the connection from %s: %s", format_address(client_address), error)


def log_tls_failed(error: BaseException, client_address: Any, *, vanished: bool) -> None:
    """A TLS handshake that did not complete: a warning when it failed, an
    info line when the client simply went away (a TCP health check does)."""
    if vanished:
        _emit("vanished", _INFO, "client %s went away during the TLS handshake", format_address(client_address))
    else:
        _emit("tls", _WARNING, "closing the connection from %s: %s", format_address(client_address), error)


_VANISHED = (ConnectionResetError, ConnectionAbortedError, BrokenPipeError)


def report_request_error(
    client_address: Any,
    idle_timeout: float | None,
    *,
    cut_by_server: BaseException | None = None,
    datagram: bool = False,
) -> None:
    """What the servers' default ``handle_error()`` does, sync and async alike.

    Called inside an ``except`` block. A connection the server itself cut
    (``cut_by_server``: a limit or a drain, already logged when it happened):
    a debug line only. A client that reset or closed the connection
    mid-request: one info line. A limit that fired (``LimitExceeded``, or a
    read that outlived ``idle_timeout``): one warning naming the limit and the
    client. Anything else: an error with its traceback. All rate-limited.
    """
    exc = sys.exc_info()[1]
    peer = format_address(client_address)
    if cut_by_server is not None and isinstance(exc, OSError):
        logger.debug("request from %s ended after the server closed it (%s): %s", peer, cut_by_server, exc)
    elif isinstance(exc, LimitExceeded):
        log_limit(exc, client_address)
    elif isinstance(exc, TimeoutError) and idle_timeout is not None and not datagram:
        log_limit(IdleTimeoutExpired(idle_timeout, client_address))
    elif datagram and isinstance(exc, ConnectionRefusedError):
        # An ICMP "port unreachable" for an earlier reply: the client's socket is gone.
        _emit("vanished", _INFO, "datagram client %s is unreachable: %s", peer, exc)
    elif isinstance(exc, _VANISHED) and not datagram:
        # The client vanished mid-request: routine on a busy server, not a bug here.
        _emit("vanished", _INFO, "client %s went away mid-request: %s", peer, exc)
    else:
        what = "a datagram" if datagram else "a request"
        _emit("error", _ERROR, "exception while handling %s from %s", what, peer, exc_info=True)
