"""The bounded thread pool: reused worker threads, a fixed or min/max number.

The pool never starts more than ``max_workers`` threads. ``try_submit`` hands
a call to an idle worker, or starts a new one below the maximum, or says no:
the classic pool server then stops accepting until a worker is free, so
under overload connections wait in the kernel's listen backlog, not in an
unbounded queue of ours. ``queue`` lets a call wait for a worker instead, for
work whose waiting costs no thread (a framed connection's next request).
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from typing import Any

from ._thread_signals import signals_as_the_program_set_them

Task = tuple[Callable[..., object], tuple[Any, ...]]


class WorkerPool:
    """Between ``min_workers`` and ``max_workers`` threads running submitted calls.

    Workers above ``min_workers`` exit after ``idle_timeout`` seconds without
    work. ``on_idle`` is called (from the worker, outside any lock) each time a
    worker finishes a call, so a paused accept loop can be woken.
    """

    def __init__(
        self,
        max_workers: int,
        min_workers: int = 0,
        idle_timeout: float | None = 30.0,
        on_idle: Callable[[], None] | None = None,
        name: str = "sockserve-pool",
    ) -> None:
        if max_workers < 1 or not 0 <= min_workers <= max_workers:
            raise ValueError(
                f"need 0 <= min_workers <= max_workers and max_workers >= 1, got {min_workers}/{max_workers}"
            )
        self.max_workers = max_workers
        self.min_workers = min_workers
        self.idle_timeout = idle_timeout
        self._on_idle = on_idle
        self._name = name
        self._lock = threading.Lock()
        self._work_ready = threading.Condition(self._lock)  # idle workers wait here for tasks
        self._slot_free = threading.Condition(self._lock)  # submit() waits here for an idle worker
        self._submit_waiters = 0
        self._tasks: collections.deque[Task] = collections.deque()
        self._workers: set[threading.Thread] = set()
        self._exited: list[threading.Thread] = []  # joined later: they have ended or are ending
        self._idle = 0
        self._closing = False
        self._started = 0
        for _ in range(min_workers):
            self._start_worker()

    @property
    def size(self) -> int:
        """Worker threads alive now."""
        return len(self._workers)

    @property
    def idle(self) -> int:
        """Workers waiting for work now."""
        return self._idle

    def try_submit(self, fn: Callable[..., object], *args: Any) -> bool:
        """Start ``fn(*args)`` on a worker now; False if every worker is busy at the maximum."""
        with self._lock:
            return self._try_submit_locked(fn, args)

    def queue(self, fn: Callable[..., object], *args: Any) -> None:
        """Run ``fn(*args)`` on a worker: at once if one is free (or can be
        started), else as soon as one is. For work whose waiting costs no
        thread (the reactor's connections): each connection has at most one
        task here, so the queue is bounded by the connections admitted."""
        with self._lock:
            if not self._try_submit_locked(fn, args):
                self._tasks.append((fn, args))  # the next worker to turn idle takes it

    def waiting(self) -> int:
        """Tasks that wait for a worker to become free."""
        return max(0, len(self._tasks) - self._idle)

    def any_waiting(self) -> bool:
        """``waiting() > 0``, for the framed pool's hot path."""
        return len(self._tasks) > self._idle

    def submit(self, fn: Callable[..., object], *args: Any) -> None:
        """Like try_submit, but waits for a free worker instead of failing."""
        with self._lock:
            self._submit_waiters += 1
            try:
                while not self._try_submit_locked(fn, args):
                    self._slot_free.wait()  # a worker turning idle notifies, under this same lock
            finally:
                self._submit_waiters -= 1

    def _try_submit_locked(self, fn: Callable[..., object], args: tuple[Any, ...]) -> bool:
        if self._closing:
            raise RuntimeError("the pool is shut down")
        if self._idle > len(self._tasks):
            self._tasks.append((fn, args))
            self._work_ready.notify()
            return True
        if len(self._workers) < self.max_workers:
            self._tasks.append((fn, args))
            self._start_worker()
            return True
        return False

    def shutdown(self) -> None:
        """Let the workers finish what they run, then join them all."""
        with self._lock:
            self._closing = True
            self._work_ready.notify_all()
            self._slot_free.notify_all()
            workers = list(self._workers) + self._exited
            self._exited = []
        for worker in workers:
            if worker is not threading.current_thread():
                worker.join()

    def _start_worker(self) -> None:
        # Called with the lock held. Reap workers that retired meanwhile.
        self._exited = [t for t in self._exited if t.is_alive()]
        self._started += 1
        worker = threading.Thread(target=self._work, name=f"{self._name}-{self._started}", daemon=True)
        self._workers.add(worker)
        worker.start()

    def _work(self) -> None:
        signals_as_the_program_set_them()  # it runs handlers: their programs must get SIGTERM (see _thread_signals)
        me = threading.current_thread()
        try:
            while True:
                with self._lock:
                    self._idle += 1
                    if self._submit_waiters:
                        self._slot_free.notify()
                    try:
                        while not self._tasks and not self._closing:
                            if not self._work_ready.wait(self._retire_after()) and self._may_retire():
                                return
                        if not self._tasks:
                            return  # closing, and nothing left to run
                        fn, args = self._tasks.popleft()
                    finally:
                        self._idle -= 1
                try:
                    fn(*args)
                finally:
                    del fn, args  # do not keep the request alive while idle
                    # Only wake what waits for a free worker: the serve loop, if
                    # it paused (on_idle), or submit() (when this worker turns
                    # idle, above). Notifying _work_ready here would wake an idle
                    # worker for nothing (measured: 43% of the context switches
                    # per connection).
                    if self._on_idle is not None:
                        self._on_idle()
        finally:
            with self._lock:
                self._workers.discard(me)
                self._exited.append(me)

    def _retire_after(self) -> float | None:
        return self.idle_timeout if len(self._workers) > self.min_workers else None

    def _may_retire(self) -> bool:
        # Called with the lock held, after an idle timeout.
        return not self._tasks and len(self._workers) > self.min_workers
