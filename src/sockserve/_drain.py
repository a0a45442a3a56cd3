"""Graceful stop, the policy shared by every concurrency model: stop accepting
at once, let the connections in flight finish until a deadline, then close
what remains. Each model supplies the two model-specific steps (wait for its
work, force its stragglers); this module owns the order, the deadline, the
log lines and the report.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

from ._log import format_address, logger

# How long a graceful stop waits by default for requests in flight (as
# gunicorn's graceful_timeout and uvicorn's timeout_graceful_shutdown do).
DEFAULT_GRACE = 30.0


@dataclasses.dataclass(frozen=True)
class DrainReport:
    """What a graceful stop did.

    Attributes:
        in_flight: connections open when accepting stopped.
        forced: connections still open when the grace period ended, which were closed.
        seconds: how long the drain took.
    """

    in_flight: int
    forced: int
    seconds: float

    @property
    def clean(self) -> bool:
        """True if every connection finished within the grace period."""
        return self.forced == 0


def begin(address: Any, in_flight: int, grace: float | None) -> float:
    """Log the start of a drain; returns its start time (for ``end``)."""
    if in_flight:
        logger.info(
            "draining %s: %d connection(s) in flight, grace %s", format_address(address), in_flight, _seconds(grace)
        )
    return time.monotonic()


def end(address: Any, in_flight: int, forced: int, grace: float | None, started: float) -> DrainReport:
    """Log the end of a drain and build its report."""
    report = DrainReport(in_flight, forced, time.monotonic() - started)
    if forced:
        logger.warning(
            "drain of %s: grace period (%s) over, closed %d connection(s) still in flight",
            format_address(address),
            _seconds(grace),
            forced,
        )
    elif in_flight:
        logger.info("drained %s: every connection finished in %.3fs", format_address(address), report.seconds)
    return report


def drain(
    address: Any,
    in_flight: int,
    grace: float | None,
    wait_until_idle: Callable[[float | None], bool],
    force_remaining: Callable[[], int],
) -> DrainReport:
    """Run a drain for a threaded model: ``wait_until_idle(timeout) -> finished?``,
    then, if not, ``force_remaining() -> how many were closed``. ``grace=None``
    waits without a deadline; ``grace=0`` closes everything at once. (The async
    servers run the same steps with ``begin``/``end`` around awaits.)"""
    started = begin(address, in_flight, grace)
    finished = wait_until_idle(grace)
    forced = 0 if finished else force_remaining()
    return end(address, in_flight, forced, grace, started)


def _seconds(grace: float | None) -> str:
    return "unbounded" if grace is None else f"{grace:g}s"
