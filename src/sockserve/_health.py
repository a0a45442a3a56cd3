"""A process's health, as a load balancer or an orchestrator asks about it:
is it alive, and should it be sent traffic? ``serve()`` moves the state along;
the admin listener (``_admin``) answers ``/healthz`` and ``/readyz`` from it.
"""

from __future__ import annotations

import threading

STARTING = "starting"
READY = "ready"
DRAINING = "draining"
STOPPED = "stopped"

# The states in the only order they are visited: a process never becomes
# ready again once it has begun to drain, however late a set_ready() comes
# (a server that finishes starting after the first SIGTERM must not turn
# readiness back on while the load balancer is being told to go away).
_ORDER = (STARTING, READY, DRAINING, STOPPED)


class Health:
    """The state of one process: ``starting`` -> ``ready`` -> ``draining`` -> ``stopped``.

    Thread-safe: ``serve()`` changes it on the main thread while the admin
    listener reads it on its own. A step may be skipped (a signal before the
    servers are ready drains straight from ``starting``), never taken back: a
    move to an earlier state is ignored.

    ``ready``: send this process traffic (only in ``ready``). ``live``: the
    process is working, so there is no reason to restart it: true until
    ``stopped``, including while it drains (an orchestrator that restarted a
    draining process would cut the requests the drain is finishing).
    """

    __slots__ = ("_lock", "_state")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state = STARTING

    def __repr__(self) -> str:
        return f"Health(state={self._state!r})"

    @property
    def state(self) -> str:
        """``"starting"``, ``"ready"``, ``"draining"`` or ``"stopped"``."""
        return self._state  # one reference read: atomic, no lock needed

    @property
    def ready(self) -> bool:
        """True while the process should be sent traffic."""
        return self._state == READY

    @property
    def live(self) -> bool:
        """True until the process has stopped (draining is still alive)."""
        return self._state != STOPPED

    def set_ready(self) -> None:
        """Every listener is serving."""
        self._move(READY)

    def start_drain(self) -> None:
        """A stop has begun: readiness fails from this moment."""
        self._move(DRAINING)

    def set_stopped(self) -> None:
        """Every listener is closed."""
        self._move(STOPPED)

    def _move(self, state: str) -> None:
        # The lock makes the compare and the write one step, so two threads
        # moving at once cannot leave the state behind where one of them put it.
        with self._lock:
            if _ORDER.index(state) > _ORDER.index(self._state):
                self._state = state
