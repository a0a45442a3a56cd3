"""How the supervisor knows its workers serve: a pipe on which each worker
writes its pid (4 bytes: one atomic write) once its servers exist and it is
about to enter its serve loop, and the rule that a generation is ready when
all of its workers have said so."""

from __future__ import annotations

import os
import struct

from ._table import WorkerTable

_PID = struct.Struct("=i")


class ReadinessPipe:
    """Made by the supervisor before its first fork; each worker keeps the writer."""

    def __init__(self) -> None:
        self.reader, self.writer = os.pipe()
        os.set_blocking(self.reader, False)
        self.announced = -1  # the last generation found ready

    def worker_side(self) -> int:
        """In a worker just forked: close the reader, return the writer (for ``run_worker``)."""
        os.close(self.reader)
        return self.writer

    def read(self, table: WorkerTable) -> None:
        """Mark the workers whose pid arrived as ready (a pid no longer in
        the table is a worker that exited since: ignored)."""
        data = b""
        try:
            while chunk := os.read(self.reader, 4096):
                data += chunk
        except BlockingIOError:
            pass  # nothing (more) to read
        for (pid,) in _PID.iter_unpack(data[: len(data) - len(data) % _PID.size]):
            worker = table.get(pid)
            if worker is not None:
                worker.ready = True

    def newly_ready(self, table: WorkerTable, generation: int, workers: int) -> bool:
        """True once, the first time ``workers`` workers of ``generation`` serve."""
        if self.announced == generation:
            return False
        serving = [w for w in table.active() if w.generation == generation and w.ready]
        if len(serving) < workers:
            return False
        self.announced = generation
        return True

    def close(self) -> None:
        os.close(self.reader)
        os.close(self.writer)


def tell_ready(fd: int) -> None:
    """In a worker: say it serves (raises OSError if the supervisor is gone)."""
    os.write(fd, _PID.pack(os.getpid()))
