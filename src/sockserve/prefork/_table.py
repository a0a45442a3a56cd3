"""The worker table and the restart policy: who runs, since when, in which
generation, and when a dead worker may be replaced."""

from __future__ import annotations

import dataclasses
import time


@dataclasses.dataclass
class Worker:
    pid: int
    generation: int
    started: float
    retiring: bool = False  # told to stop (reload, scale down, recycle): not counted as capacity
    slot: int | None = None  # its metrics slot (_metric_slots), None without shared metrics
    ready: bool = False  # said it serves (its byte on the readiness pipe arrived)


class WorkerTable:
    """The live workers, by pid."""

    def __init__(self) -> None:
        self._workers: dict[int, Worker] = {}

    def add(self, pid: int, generation: int, slot: int | None = None) -> Worker:
        worker = self._workers[pid] = Worker(pid, generation, time.monotonic(), slot=slot)
        return worker

    def get(self, pid: int) -> Worker | None:
        return self._workers.get(pid)

    def remove(self, pid: int) -> Worker | None:
        return self._workers.pop(pid, None)

    def active(self) -> list[Worker]:
        """Workers that count towards the target: not retiring."""
        return [w for w in self._workers.values() if not w.retiring]

    def all(self) -> list[Worker]:
        return list(self._workers.values())

    def __len__(self) -> int:
        return len(self._workers)


class RestartPolicy:
    """Exponential back-off for workers that die soon after they start.

    A worker that lived at least ``stable_after`` seconds resets the back-off;
    one that died sooner doubles it, from ``initial`` up to ``maximum``. So a
    crash loop costs at most one fork every ``maximum`` seconds, and a worker
    that dies once after a long life is replaced at once.
    """

    def __init__(self, initial: float = 0.1, maximum: float = 10.0, stable_after: float = 1.0) -> None:
        self.initial = initial
        self.maximum = maximum
        self.stable_after = stable_after
        self.delay = 0.0
        self.not_before = 0.0  # monotonic time before which no worker is spawned

    def worker_died(self, lived: float, now: float, crashed: bool) -> None:
        if not crashed or lived >= self.stable_after:
            self.delay = 0.0
        else:
            self.delay = min(self.maximum, max(self.initial, self.delay * 2))
        self.not_before = now + self.delay

    def may_spawn(self, now: float) -> bool:
        return now >= self.not_before

    def wait_time(self, now: float) -> float:
        return max(0.0, self.not_before - now)
