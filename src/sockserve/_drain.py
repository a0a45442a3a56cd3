"""Graceful stop, the policy shared by every concurrency model: stop accepting
at once, let the connections in flight finish until a deadline, then close
what remains. Each model supplies the two model-specific steps (wait for its
work, cut its stragglers); this module owns the order, the deadline, the
log lines and the report.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ._frozen import FrozenValue
from ._log import format_address, logger

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see sockserve/__init__.py)
if TYPE_CHECKING:
    from typing import Any

# How long a graceful stop waits by default for requests in flight (as
# gunicorn's graceful_timeout and uvicorn's timeout_graceful_shutdown do).
DEFAULT_GRACE = 30.0


class DrainReport(FrozenValue):
    """What a graceful stop did.

    Attributes:
        in_flight: connections open when accepting stopped.
        forced: connections still open when the grace period ended, which were closed.
        seconds: how long the drain took.

    A frozen value, equal and hashable by its fields (``_frozen.FrozenValue``).
    """

    __slots__ = ("forced", "in_flight", "seconds")

    in_flight: int
    forced: int
    seconds: float

    _fields = ("in_flight", "forced", "seconds")

    def __init__(self, in_flight: int, forced: int, seconds: float) -> None:
        self._freeze(in_flight, forced, seconds)

    @property
    def clean(self) -> bool:
        """True if every connection finished within the grace period."""
        return self.forced == 0


def force_reason(grace: float | None, forced_early: bool) -> ConnectionAbortedError:
    """Why a connection that outlived its drain is cut: the error its handler sees."""
    if forced_early:
        return ConnectionAbortedError("the server's stop was forced")
    return ConnectionAbortedError(f"the server's grace period ({_seconds(grace)}) is over")


def begin(address: Any, in_flight: int, grace: float | None, unit: str = "connection") -> float:
    """Log the start of a drain; returns its start time (for ``end``)."""
    if in_flight:
        logger.info(
            "draining %s: %d %s(s) in flight, grace %s", format_address(address), in_flight, unit, _seconds(grace)
        )
    return time.monotonic()


def end(
    address: Any,
    in_flight: int,
    forced: int,
    grace: float | None,
    started: float,
    *,
    finished: bool = True,
    forced_early: bool = False,
    unit: str = "connection",
) -> DrainReport:
    """Log the end of a drain and build its report. ``finished``: everything
    ended in time; ``forced_early``: ``force_stop()`` ended the grace period."""
    report = DrainReport(in_flight, forced, time.monotonic() - started)
    where = format_address(address)
    if not finished:
        if forced_early:
            logger.warning(
                "stop of %s forced after %.3fs: closed %d %s(s) still in flight", where, report.seconds, forced, unit
            )
        else:
            logger.warning(
                "drain of %s: grace period (%s) over, closed %d %s(s) still in flight",
                where,
                _seconds(grace),
                forced,
                unit,
            )
    elif in_flight:
        logger.info("drained %s: every %s finished in %.3fs", where, unit, report.seconds)
    return report


def drain(
    address: Any,
    in_flight: int,
    grace: float | None,
    wait_until_idle: Callable[[float | None], bool],
    force_remaining: Callable[[BaseException], int],
    forced_early: Callable[[], bool],
    unit: str = "connection",
) -> DrainReport:
    """Run a drain for a blocking model: ``wait_until_idle(timeout) -> finished?``,
    then, if not, ``force_remaining(reason) -> how many were cut``.
    ``grace=None`` waits without a deadline; ``grace=0`` cuts everything at
    once. (The async servers run the same steps with ``begin``/``end`` around
    awaits.)"""
    started = begin(address, in_flight, grace, unit)
    finished = wait_until_idle(grace)
    forced = 0
    early = forced_early()
    if not finished:
        forced = force_remaining(force_reason(grace, early))
    return end(address, in_flight, forced, grace, started, finished=finished, forced_early=early, unit=unit)


def _seconds(grace: float | None) -> str:
    return "unbounded" if grace is None else f"{grace:g}s"
