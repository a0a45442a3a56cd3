"""Limits that protect a server from its clients: the configuration that
every concurrency model, synchronous and async, applies. ``_admission``
enforces the connection caps and deadlines; the readers enforce the line
cap and the idle timeout.
"""

from __future__ import annotations

import dataclasses


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
