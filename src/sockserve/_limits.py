"""Limits that protect a server from its clients: the configuration that
every concurrency model, synchronous and async, applies. ``_admission``
enforces the connection caps and deadlines; the readers enforce the line
cap and the idle timeout.
"""

from __future__ import annotations

from ._frozen import FrozenValue

__all__ = ["MAX_SECONDS", "NO_LIMITS", "Limits", "check_seconds", "limits_of"]

# The longest timeout, grace or delay sockserve takes, in seconds (~11.6
# days). Each ends up as a wait: epoll.poll() refuses more than 2**31-1 ms
# (~24.8 days, "OverflowError: timeout is too large", which killed the pool's
# reactor thread), socket.settimeout() refuses what time_t cannot hold, and a
# deadline is a monotonic time plus the value. A round figure under half of
# epoll's bound, because two of them may be added up into one wait: a
# connection's stages share one deadline, the PROXY header's timeout plus the
# TLS handshake's (_stages.stages_timeout). Whoever wants no limit says None
# where the setting allows it, not a very large number.
MAX_SECONDS = 1_000_000.0


def check_seconds(name: str, value: object, *, zero: bool = False) -> float:
    """``value`` as seconds, checked: a number (not a bool), more than 0 (or 0
    too with ``zero``), and at most :data:`MAX_SECONDS` (NaN and infinity are
    refused). TypeError or ValueError naming ``name`` otherwise.

    The one check for every duration the library takes, so that a value that
    passes here cannot break a wait later."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, got {type(value).__name__}")
    if not (value >= 0 if zero else value > 0):  # NaN fails this too
        floor = "0 or more" if zero else "more than 0"
        raise ValueError(f"{name} must be {floor} seconds, got {value!r}")
    if not value <= MAX_SECONDS:
        raise ValueError(f"{name} must be at most {MAX_SECONDS:.0f} seconds (about 11.6 days), got {value!r}")
    return float(value)


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
        for name, value in zip(self._fields[:2], values, strict=False):
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive or None, got {value!r}")
        for name, value in zip(self._fields[2:4], values[2:4], strict=True):
            if value is not None:
                check_seconds(name, value)  # kept as given: the check only refuses
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
