"""The workers' metrics, read by the supervisor without asking them: one
``Metrics.SIZE`` slot per worker in a shared anonymous ``mmap``.

A worker writes only its own slot (``server.metrics = Metrics(buffer=slot)``,
set before it serves); the supervisor adds up the slots in use. When a worker
is reaped its counters and refusals are folded into a retired total (its
gauges end with it: a dead worker has no connection open) and its slot is
zeroed before the next worker takes it, so a worker that was killed loses
nothing it had written, and none is counted twice.

Each region is mapped before the forks that use it: a worker sees the
regions that existed when it was forked. When every slot is taken (a reload
runs two generations at once, SIGTTIN adds workers), a new region is added
for the workers forked from then on.
"""

from __future__ import annotations

import mmap
import threading

from .._metrics import Metrics, MetricsSnapshot, merge

_ZERO = bytes(Metrics.SIZE)


class MetricSlots:
    """The slots, the free list and the retired total. Thread-safe: an admin
    listener's thread may take a snapshot while the supervisor's loop retires
    a worker."""

    def __init__(self, capacity: int) -> None:
        self._lock = threading.Lock()
        self._maps: list[mmap.mmap] = []
        self._views: list[memoryview] = []
        self._free: list[int] = []
        self._in_use: set[int] = set()
        self._retired = MetricsSnapshot()
        self._grow(max(capacity, 1))

    def _grow(self, count: int) -> None:
        region = mmap.mmap(-1, count * Metrics.SIZE)  # MAP_SHARED | MAP_ANONYMOUS: the workers' writes show here
        view = memoryview(region)
        first = len(self._views)
        self._maps.append(region)
        self._views.extend(view[i * Metrics.SIZE : (i + 1) * Metrics.SIZE] for i in range(count))
        view.release()  # the slices keep their own exports
        self._free.extend(range(first + count - 1, first - 1, -1))

    def take(self) -> int:
        """A zeroed slot for the next worker (called before its fork)."""
        with self._lock:
            if not self._free:
                self._grow(len(self._views))
            slot = self._free.pop()
            self._in_use.add(slot)
            return slot

    def view(self, slot: int) -> memoryview:
        return self._views[slot]

    def retire(self, slot: int) -> None:
        """The worker that wrote ``slot`` is gone: keep its counts, free the slot."""
        with self._lock:
            if slot not in self._in_use:
                return
            final = Metrics(self._views[slot]).snapshot()
            self._retired = merge([self._retired, MetricsSnapshot(final.counters, final.refused)])
            self._views[slot][:] = _ZERO
            self._in_use.discard(slot)
            self._free.append(slot)

    def snapshot(self) -> MetricsSnapshot:
        """The retired total plus every live worker's slot, as they are now."""
        with self._lock:
            live = [Metrics(self._views[slot]).snapshot() for slot in sorted(self._in_use)]
            return merge([self._retired, *live])

    def close(self) -> None:
        with self._lock:
            for view in self._views:
                view.release()
            self._views.clear()
            for region in self._maps:
                try:
                    region.close()
                except BufferError:
                    pass  # a Metrics still writes to it (this process's own): unmapped when that goes
            self._maps.clear()
            self._free.clear()
            self._in_use.clear()
