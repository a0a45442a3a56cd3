"""Limits that protect a server from its clients: the configuration that
every concurrency model, synchronous and async, applies. ``_admission``
enforces the connection caps and deadlines; the readers enforce the line
cap and the idle timeout.
"""

from __future__ import annotations

from ._frozen import FrozenValue


class Limits(FrozenValue):
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

    A frozen value: equal and hashable by its fields; ``replace(**changes)``
    returns a copy with some fields changed (``_frozen.FrozenValue``).
    """

    __slots__ = ("connection_timeout", "idle_timeout", "max_connections", "max_connections_per_ip", "max_line")
    # The fields in the constructor's order (for repr and replace).
    _fields = ("max_connections", "max_connections_per_ip", "idle_timeout", "connection_timeout", "max_line")

    max_connections: int | None
    max_connections_per_ip: int | None
    idle_timeout: float | None
    connection_timeout: float | None
    max_line: int | None

    def __init__(
        self,
        max_connections: int | None = None,
        max_connections_per_ip: int | None = None,
        idle_timeout: float | None = None,
        connection_timeout: float | None = None,
        max_line: int | None = None,
    ) -> None:
        values = (max_connections, max_connections_per_ip, idle_timeout, connection_timeout, max_line)
        for name, value in zip(self._fields[:4], values, strict=False):
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive or None, got {value!r}")
        if max_line is not None and max_line < 1:
            raise ValueError(f"max_line must be at least 1, got {max_line!r}")
        self._freeze(*values)

    def replace(self, **changes: float | None) -> Limits:
        """A copy with the fields named in ``changes`` changed, validated again
        (what ``dataclasses.replace()`` did; ``copy.replace()`` calls it too)."""
        fields = dict(zip(self._fields, self._values(), strict=True))
        fields.update(changes)
        return Limits(**fields)

    __replace__ = replace


NO_LIMITS = Limits()


def limits_of(server: object) -> Limits:
    """The limits a handler applies: its server's, or none at all when the
    handler runs without a sockserve server (``server=None`` in a unit test,
    or the stdlib's own ``socketserver`` servers), as the stdlib's handlers do."""
    limits = getattr(server, "limits", None)
    return limits if isinstance(limits, Limits) else NO_LIMITS
