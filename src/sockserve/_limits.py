"""Limits that protect a server from its clients, and the registry of the
connections in flight that enforces them.

Shared by every concurrency model, synchronous and async: ``Limits`` is the
configuration, ``ConnectionTracker`` counts what is open (in total and per
client address), knows each connection's deadline, and lets a graceful stop
wait until everything has finished. No I/O happens here: closing a socket
whose deadline passed is the caller's job.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any

from ._errors import ConnectionLimitReached


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one server allows its clients. ``None`` means no limit.

    Attributes:
        max_connections: connections open at once. At the limit the server
            stops accepting; new connections wait in the kernel's backlog
            (and beyond it, the client's connect is refused or retried), so
            nothing already accepted is dropped.
        max_connections_per_ip: connections open at once from one client
            address. A connection beyond it is accepted and closed at once,
            with a log line (``ConnectionLimitReached``).
        idle_timeout: seconds a stream handler may wait for the client's next
            bytes; then the read fails (``IdleTimeoutExpired``) and the
            connection is closed.
        connection_timeout: seconds a connection may stay open in all, however
            busy; then it is closed (``ConnectionDeadlineExceeded``).
        max_line: the longest line, delimiter included, that the line readers
            return; a longer one raises ``LineTooLong``. A handler class's own
            ``max_line`` takes precedence. None: each reader's default, which
            is no cap for the drop-in ``StreamRequestHandler`` (as in the
            stdlib) and ``DEFAULT_MAX_LINE`` (64 KiB) for the async readers.
    """

    max_connections: int | None = None
    max_connections_per_ip: int | None = None
    idle_timeout: float | None = None
    connection_timeout: float | None = None
    max_line: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_connections", "max_connections_per_ip", "idle_timeout", "connection_timeout"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive or None, got {value!r}")
        if self.max_line is not None and self.max_line < 1:
            raise ValueError(f"max_line must be at least 1, got {self.max_line!r}")


NO_LIMITS = Limits()


def limits_of(server: object) -> Limits:
    """The limits a handler applies: its server's, or none at all when the
    handler runs without a sockserve server (``server=None`` in a unit test,
    or the stdlib's own ``socketserver`` servers), as the stdlib's handlers do."""
    limits = getattr(server, "limits", None)
    return limits if isinstance(limits, Limits) else NO_LIMITS


def client_key(client_address: Any) -> Hashable:
    """What counts as "one client" for max_connections_per_ip: the host part."""
    if isinstance(client_address, tuple) and client_address:
        return client_address[0]  # type: ignore[no-any-return]
    return client_address if isinstance(client_address, Hashable) else repr(client_address)


@dataclasses.dataclass(slots=True)
class Tracked:
    """One connection in flight."""

    request: object
    client_address: Any
    started: float
    deadline: float | None


class ConnectionTracker:
    """The connections in flight, thread-safe.

    ``admit()`` when a connection is accepted, ``release()`` when it is done
    (any number of times: only the first counts). ``on_free`` is called,
    outside the lock, when a release takes the tracker from full to not full,
    so a paused accept loop can be woken.
    """

    def __init__(self, limits: Limits = NO_LIMITS, on_free: Callable[[], None] | None = None) -> None:
        self.limits = limits
        self._on_free = on_free
        # Reentrant: interrupt() may run in a signal handler on a thread that
        # holds the lock at that moment.
        self._lock = threading.RLock()
        self._idle = threading.Condition(self._lock)
        self._interrupted = False
        self._open: dict[int, Tracked] = {}  # id(request) -> record (which holds the request)
        self._per_client: dict[Hashable, int] = {}
        self.admitted = 0  # connections admitted since the start (a counter, for reports)

    def admit(self, request: object, client_address: Any, now: float | None = None) -> None:
        """Count a new connection in.

        Raises:
            ConnectionLimitReached: this client already has
                ``max_connections_per_ip`` connections open.
        """
        limits = self.limits
        now = time.monotonic() if now is None else now
        deadline = None if limits.connection_timeout is None else now + limits.connection_timeout
        key = client_key(client_address)
        with self._lock:
            count = self._per_client.get(key, 0)
            per_ip = limits.max_connections_per_ip
            if per_ip is not None and count >= per_ip:
                raise ConnectionLimitReached(per_ip, client_address, per_ip=True)
            self._per_client[key] = count + 1
            self._open[id(request)] = Tracked(request, client_address, now, deadline)
            self.admitted += 1

    def release(self, request: object) -> None:
        """Count a finished connection out; a no-op if it was not admitted."""
        wake = False
        with self._lock:
            record = self._open.pop(id(request), None)
            if record is None:
                return
            key = client_key(record.client_address)
            remaining = self._per_client[key] - 1
            if remaining:
                self._per_client[key] = remaining
            else:
                del self._per_client[key]
            limit = self.limits.max_connections
            wake = limit is not None and len(self._open) == limit - 1
            if not self._open:
                self._idle.notify_all()
        if wake and self._on_free is not None:
            self._on_free()

    def at_capacity(self) -> bool:
        """True while max_connections are open: the accept loop should pause."""
        limit = self.limits.max_connections
        return limit is not None and len(self._open) >= limit

    def __len__(self) -> int:
        return len(self._open)

    def next_deadline(self) -> float | None:
        """The earliest connection deadline, or None."""
        with self._lock:
            deadlines = [r.deadline for r in self._open.values() if r.deadline is not None]
        return min(deadlines, default=None)

    def overdue(self, now: float | None = None) -> list[Tracked]:
        """The connections whose deadline has passed."""
        now = time.monotonic() if now is None else now
        with self._lock:
            return [r for r in self._open.values() if r.deadline is not None and r.deadline <= now]

    def snapshot(self) -> list[Tracked]:
        """The connections in flight now (to close them when a grace period ends)."""
        with self._lock:
            return list(self._open.values())

    def interrupt(self) -> None:
        """Make a current or future ``wait_idle()`` return False at once."""
        with self._idle:
            self._interrupted = True
            self._idle.notify_all()

    def wait_idle(self, timeout: float | None) -> bool:
        """Block until no connection is in flight; False if ``timeout`` ran out
        first or ``interrupt()`` was called."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._idle:
            while self._open:
                if self._interrupted:
                    return False
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._idle.wait(remaining)
        return True
