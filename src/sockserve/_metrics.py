"""A server's counters and gauges: int64 slots in one buffer, readable from
Python with nothing extra installed (``server.metrics.snapshot()``).

The buffer may be private (a ``bytearray``) or a slice of a shared anonymous
``mmap`` made before a fork, so that a supervisor reads its workers' values
without asking them: every value is one aligned int64, which a reader in
another process never sees half-written. The pipeline writes the values
(``_server_core``, the models' release paths); this module only holds them.

What is counted, and when:

- ``connections_accepted``: connections admitted (past the limits, the access
  list and ``verify_request()``). On a datagram server, each datagram: it
  passes the same admission, so ``connections_accepted`` plus the refusals is
  what arrived under every model. A connection refused later, by its PROXY
  header or its TLS handshake, is counted here and in ``refused``.
- ``connections_active`` (gauge): admitted and not yet released.
- ``requests``: one per connection under a classic handler; one per request
  under ``FramedRequestHandler``; one per datagram.
- ``handler_errors``: what reached ``handle_error()`` (or the async
  servers' equivalent).
- ``bytes_received``, ``bytes_sent``: payload bytes, counted at release.
- ``drains`` and ``last_drain_seconds`` (gauge): graceful stops and how long
  the last one took.
- ``worker_restarts``: written by the prefork supervisor only.
- ``refused`` by reason: every key of ``REFUSED`` is present, 0 when none.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see sockserve/__init__.py)
if TYPE_CHECKING:
    from typing import Any, ClassVar

# The names, in slot order. A name is never renamed or moved (the prefork
# supervisor and its workers share the layout); new ones go at the end of the
# buffer, after every existing slot.
COUNTERS: tuple[str, ...] = (
    "connections_accepted",
    "requests",
    "handler_errors",
    "bytes_received",
    "bytes_sent",
    "drains",
    "worker_restarts",
)
REFUSED: tuple[str, ...] = (
    "max_connections",
    "max_connections_per_ip",
    "access_list",
    "emfile",
    "timeout",
    "tls_handshake",
    "proxy_header",
)
GAUGES: tuple[str, ...] = ("connections_active", "last_drain_seconds")

# Slot numbers, for the pipeline's writers (an int constant is cheaper to
# look up than a name in a dict).
ACCEPTED, REQUESTS, HANDLER_ERRORS, BYTES_RECEIVED, BYTES_SENT, DRAINS, WORKER_RESTARTS = range(len(COUNTERS))
REFUSED_SLOT: Mapping[str, int] = MappingProxyType({name: len(COUNTERS) + i for i, name in enumerate(REFUSED)})
ACTIVE = len(COUNTERS) + len(REFUSED)
LAST_DRAIN_NS = ACTIVE + 1  # last_drain_seconds, held in nanoseconds to stay an int64
_NSLOTS = LAST_DRAIN_NS + 1


class MetricsSnapshot:
    """The values of a ``Metrics`` at one moment: a frozen plain value,
    picklable, comparable, with every name present.

    Each value was read atomically, but not all at one instant: a snapshot
    taken while connections come and go may show one counted in one value
    and not yet in the next.
    """

    __slots__ = ("counters", "gauges", "refused")

    counters: Mapping[str, int]
    refused: Mapping[str, int]
    gauges: Mapping[str, float]

    def __init__(
        self,
        counters: Mapping[str, int] | None = None,
        refused: Mapping[str, int] | None = None,
        gauges: Mapping[str, float] | None = None,
    ) -> None:
        # Every name present (0 when none), plus any the caller adds: a newer
        # worker's names survive an older supervisor's merge.
        object.__setattr__(self, "counters", MappingProxyType({**dict.fromkeys(COUNTERS, 0), **(counters or {})}))
        object.__setattr__(self, "refused", MappingProxyType({**dict.fromkeys(REFUSED, 0), **(refused or {})}))
        object.__setattr__(self, "gauges", MappingProxyType({**dict.fromkeys(GAUGES, 0.0), **(gauges or {})}))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"MetricsSnapshot is frozen: cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"MetricsSnapshot is frozen: cannot delete {name!r}")

    def __reduce__(self) -> tuple[Any, ...]:
        # mappingproxy does not pickle: send plain dicts.
        return (MetricsSnapshot, (dict(self.counters), dict(self.refused), dict(self.gauges)))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MetricsSnapshot):
            return NotImplemented
        return (
            dict(self.counters) == dict(other.counters)
            and dict(self.refused) == dict(other.refused)
            and dict(self.gauges) == dict(other.gauges)
        )

    def __hash__(self) -> int:
        return hash(
            (
                tuple(sorted(self.counters.items())),
                tuple(sorted(self.refused.items())),
                tuple(sorted(self.gauges.items())),
            )
        )

    def __repr__(self) -> str:
        return (
            f"MetricsSnapshot(counters={dict(self.counters)!r}, refused={dict(self.refused)!r}, "
            f"gauges={dict(self.gauges)!r})"
        )


class Metrics:
    """The counters and gauges of one server (``server.metrics``).

    ``buffer``: where the values live, ``SIZE`` writable bytes (e.g. a slice
    of a shared anonymous ``mmap`` made before ``fork()``, one per worker);
    None for a private one. The values are not reset: a new buffer starts
    from what it holds.

    Writers in one process go through ``add()`` and friends. Several threads
    write (the accept loop admits, the pool's workers release), and
    ``slots[i] += n`` is a read then a write, which a thread switch between
    the two (a finaliser run by the allocator can release the GIL there)
    would make lose an increment; so each update takes a lock. The
    pipeline does not take it per connection: the admission gathers its
    ended connections and adds them up in batches (``Admission.fold``), and
    ``snapshot()`` has every such source fold first, so what it returns is
    exact; another process reading the buffer sees them at the next fold
    (64 connections, or an idle turn of the serve loop). Writers in other
    processes each own their buffer: no lock is shared across a fork.
    """

    SIZE: ClassVar[int] = 8 * _NSLOTS

    __slots__ = ("_lock", "_parts", "_sources", "read_elsewhere", "slots")

    def __init__(self, buffer: Any = None) -> None:
        # A buffer given to it may be read by another process (a prefork
        # worker's slot, which its supervisor adds up): then the serve loops
        # fold their counts in on a clock too (``FOLD_INTERVAL``), not only
        # in batches, so that a busy or a killed worker's are not far behind.
        self.read_elsewhere = buffer is not None
        if buffer is None:
            buffer = bytearray(self.SIZE)
        view = memoryview(buffer)
        if view.readonly:
            raise ValueError("Metrics: the buffer must be writable")
        if view.nbytes != self.SIZE:
            raise ValueError(f"Metrics: the buffer must be {self.SIZE} bytes, not {view.nbytes}")
        self.slots = view.cast("B").cast("q")
        self._lock = threading.Lock()
        # Other buffers whose values this one's snapshot includes (a forking
        # server's children's, each written by its own process).
        self._parts: list[memoryview] = []
        # What folds counts gathered elsewhere in before a snapshot (the admissions').
        self._sources: list[Callable[[], None]] = []

    def add_part(self, buffer: Any) -> None:
        """Add another buffer's values (``SIZE`` bytes, written by another
        process: a forked child's row) to this one's snapshots, except its
        ``connections_active`` and ``last_drain_seconds``, which the process
        that owns this buffer keeps."""
        self._parts.append(memoryview(buffer).cast("B").cast("q"))

    def add(self, slot: int, n: int = 1) -> None:
        """Add ``n`` to one slot (thread-safe)."""
        with self._lock:
            self.slots[slot] += n

    def refuse(self, reason: str) -> None:
        """Count a refusal for ``reason`` (a name of ``REFUSED``)."""
        slot = REFUSED_SLOT[reason]
        with self._lock:
            self.slots[slot] += 1

    def add_source(self, fold: Callable[[], None]) -> None:
        """``fold()`` adds counts gathered elsewhere into these metrics: called
        before each snapshot (an admission's ended connections)."""
        self._sources.append(fold)

    def add_many(self, accepted: int = 0, active: int = 0, requests: int = 0, received: int = 0, sent: int = 0) -> None:
        """Add to several values under one turn of the lock (a batch of
        connections: ``active`` may be negative)."""
        slots = self.slots
        with self._lock:
            if accepted:
                slots[ACCEPTED] += accepted
            if active:
                slots[ACTIVE] += active
            if requests:
                slots[REQUESTS] += requests
            if received:
                slots[BYTES_RECEIVED] += received
            if sent:
                slots[BYTES_SENT] += sent

    def drained(self, seconds: float) -> None:
        """A graceful stop ended after ``seconds``."""
        slots = self.slots
        with self._lock:
            slots[DRAINS] += 1
            slots[LAST_DRAIN_NS] = int(seconds * 1e9)

    def snapshot(self) -> MetricsSnapshot:
        """The values now (the sum of this buffer and its parts)."""
        for fold in list(self._sources):
            fold()
        values = self.slots.tolist()
        for part in list(self._parts):
            for i, value in enumerate(part.tolist()):
                if i != LAST_DRAIN_NS and i != ACTIVE:
                    values[i] += value
        return _from_slots(values)


def _from_slots(values: list[int]) -> MetricsSnapshot:
    n = len(COUNTERS)
    return MetricsSnapshot(
        dict(zip(COUNTERS, values[:n], strict=True)),
        dict(zip(REFUSED, values[n : n + len(REFUSED)], strict=True)),
        {"connections_active": float(values[ACTIVE]), "last_drain_seconds": values[LAST_DRAIN_NS] / 1e9},
    )


def merge(snapshots: Iterable[MetricsSnapshot]) -> MetricsSnapshot:
    """The sum of several snapshots (a supervisor's workers'): counters,
    refusals and gauges added name by name, except ``last_drain_seconds``,
    the longest: the workers drain at the same time, so a sum would count
    that time once per worker."""
    counters: dict[str, int] = {}
    refused: dict[str, int] = {}
    gauges: dict[str, float] = {}
    for snap in snapshots:
        for name, value in snap.counters.items():
            counters[name] = counters.get(name, 0) + value
        for name, value in snap.refused.items():
            refused[name] = refused.get(name, 0) + value
        for name, gauge in snap.gauges.items():
            if name == "last_drain_seconds":
                gauges[name] = max(gauges.get(name, 0.0), gauge)
            else:
                gauges[name] = gauges.get(name, 0.0) + gauge
    return MetricsSnapshot(counters, refused, gauges)
