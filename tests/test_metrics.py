"""Metrics on their own: the slots, the snapshot, merge, and a buffer shared
across fork (as the prefork supervisor and the forking server use it)."""

from __future__ import annotations

import mmap
import os
import pickle
import threading
from typing import Any

import pytest

import sockserve
import sockserve.aio
from sockserve import Metrics, MetricsSnapshot
from sockserve._metrics import ACCEPTED, COUNTERS, GAUGES, REFUSED, REQUESTS, merge


def test_a_new_snapshot_has_every_name_at_zero() -> None:
    snap = Metrics().snapshot()
    assert dict(snap.counters) == dict.fromkeys(COUNTERS, 0)
    assert dict(snap.refused) == dict.fromkeys(REFUSED, 0)
    assert dict(snap.gauges) == dict.fromkeys(GAUGES, 0.0)
    assert set(REFUSED) == {
        "max_connections",
        "max_connections_per_ip",
        "access_list",
        "emfile",
        "timeout",
        "tls_handshake",
        "proxy_header",
    }
    assert {"connections_accepted", "requests", "handler_errors", "bytes_received", "bytes_sent"} <= set(COUNTERS)
    assert {"drains", "worker_restarts"} <= set(COUNTERS)


def test_updates_show_in_the_snapshot() -> None:
    metrics = Metrics()
    metrics.add_many(accepted=2, active=2)
    metrics.refuse("emfile")
    metrics.add(REQUESTS, 3)
    snap = metrics.snapshot()
    assert snap.counters["connections_accepted"] == 2
    assert snap.gauges["connections_active"] == 2
    assert snap.counters["requests"] == 3
    assert snap.refused["emfile"] == 1
    metrics.add_many(active=-2, requests=2, received=10, sent=20)
    metrics.drained(1.5)
    snap = metrics.snapshot()
    assert snap.gauges["connections_active"] == 0
    assert snap.counters["requests"] == 5
    assert (snap.counters["bytes_received"], snap.counters["bytes_sent"]) == (10, 20)
    assert snap.counters["drains"] == 1
    assert snap.gauges["last_drain_seconds"] == pytest.approx(1.5)


def test_an_unknown_refusal_reason_is_an_error() -> None:
    with pytest.raises(KeyError):
        Metrics().refuse("no_such_reason")


def test_the_buffer_must_be_writable_and_the_right_size() -> None:
    with pytest.raises(ValueError, match="writable"):
        Metrics(bytes(Metrics.SIZE))
    with pytest.raises(ValueError, match="bytes"):
        Metrics(bytearray(Metrics.SIZE + 8))
    buffer = bytearray(Metrics.SIZE)
    Metrics(buffer).add(ACCEPTED)
    assert Metrics(buffer).snapshot().counters["connections_accepted"] == 1  # the values live in the buffer


def test_the_snapshot_is_frozen_picklable_and_comparable() -> None:
    metrics = Metrics()
    metrics.add(ACCEPTED)
    snap = metrics.snapshot()
    with pytest.raises(AttributeError):
        snap.counters = {}
    with pytest.raises(TypeError):
        snap.counters["requests"] = 1  # type: ignore[index]
    metrics.add(ACCEPTED)  # a snapshot is a copy: later updates do not show in it
    assert snap.counters["connections_accepted"] == 1
    copy = pickle.loads(pickle.dumps(snap))
    assert copy == snap
    assert hash(copy) == hash(snap)
    assert copy != metrics.snapshot()
    assert "connections_accepted" in repr(snap)


def test_merge_sums_all_but_the_last_drain_which_is_the_longest() -> None:
    a, b = Metrics(), Metrics()
    a.add_many(accepted=1, active=1)
    b.add_many(accepted=2, active=2)
    a.refuse("timeout")
    b.refuse("timeout")
    a.drained(1.0)
    b.drained(3.0)
    total = merge([a.snapshot(), b.snapshot()])
    assert total.counters["connections_accepted"] == 3
    assert total.gauges["connections_active"] == 3
    assert total.refused["timeout"] == 2
    assert total.counters["drains"] == 2
    assert total.gauges["last_drain_seconds"] == pytest.approx(3.0)
    assert merge([]) == MetricsSnapshot()
    # A name this version does not know (a newer worker's) is kept and summed.
    extra = MetricsSnapshot(counters={"new_counter": 2})
    assert merge([extra, extra]).counters["new_counter"] == 4


def test_concurrent_updates_are_not_lost() -> None:
    metrics = Metrics()
    start = threading.Barrier(4)

    def work() -> None:
        start.wait(timeout=10)
        for _ in range(5000):
            metrics.add_many(accepted=1, active=1)
            metrics.add_many(active=-1, requests=1, received=1, sent=2)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    snap = metrics.snapshot()
    assert snap.counters["connections_accepted"] == 20000
    assert snap.counters["requests"] == 20000
    assert snap.counters["bytes_sent"] == 40000
    assert snap.gauges["connections_active"] == 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_shared_buffer_shows_a_child_s_updates_in_the_parent() -> None:
    shared = mmap.mmap(-1, 2 * Metrics.SIZE)
    try:
        view = memoryview(shared)
        parent_slot, child_slot = view[: Metrics.SIZE], view[Metrics.SIZE :]
        pid = os.fork()
        if pid == 0:  # the child: count into its own slot, then leave at once
            try:
                child = Metrics(child_slot)
                for _ in range(7):
                    child.add_many(accepted=1, active=1)
                child.add(ACCEPTED, 3)
            finally:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        parent = Metrics(parent_slot)
        parent.add_many(accepted=1, active=1)
        total = merge([parent.snapshot(), Metrics(child_slot).snapshot()])
        assert total.counters["connections_accepted"] == 11
        assert total.gauges["connections_active"] == 8
        del parent, parent_slot, child_slot, view
    finally:
        shared.close()


def test_an_admission_counts_in_batches_and_exactly_when_read() -> None:
    from sockserve._admission import FOLD_BATCH, Admission, Ticket

    metrics = Metrics()
    admission = Admission(metrics=metrics)
    tickets = [admission.admit(("127.0.0.1", 1)) for _ in range(FOLD_BATCH + 5)]
    assert all(isinstance(t, Ticket) for t in tickets)
    assert metrics.slots[ACCEPTED] == 0  # nothing counted per admission...
    snap = metrics.snapshot()  # ... until it is read
    assert snap.counters["connections_accepted"] == FOLD_BATCH + 5
    assert snap.gauges["connections_active"] == FOLD_BATCH + 5
    for t in tickets:
        assert isinstance(t, Ticket)
        t.requests = 1
        admission.release(t)
    assert metrics.slots[REQUESTS] == FOLD_BATCH  # a full batch is counted as it completes
    snap = metrics.snapshot()
    assert snap.counters["requests"] == FOLD_BATCH + 5
    assert snap.counters["connections_accepted"] == FOLD_BATCH + 5
    assert snap.gauges["connections_active"] == 0
    other = Metrics()
    admission.use_metrics(other)  # another buffer from now on (a prefork worker's slot)
    admission.admit(("127.0.0.1", 1))
    assert other.snapshot().counters["connections_accepted"] == 1
    assert metrics.snapshot().counters["connections_accepted"] == FOLD_BATCH + 5


def test_an_accept_out_of_descriptors_is_counted() -> None:
    import errno

    with sockserve.TCPServer(("127.0.0.1", 0), sockserve.BaseRequestHandler) as server:
        assert server._accept_backoff.failed(OSError(errno.EMFILE, "Too many open files"), server.server_address)
        assert not server._accept_backoff.failed(OSError(errno.ECONNABORTED, "aborted"), server.server_address)
        assert server.refused == {"emfile": 1}
        assert server.metrics.snapshot().refused["emfile"] == 1


class _Hold(sockserve.StreamRequestHandler):
    def handle(self) -> None:
        self.rfile.readline()  # until the client ends


class _AsyncHold(sockserve.aio.AsyncStreamRequestHandler):
    async def handle(self) -> None:
        await self.reader.readline()


@pytest.mark.parametrize("kind", ["pool", "async", "async_uvloop"])
def test_a_shared_buffer_is_kept_current_on_a_clock(kind: str) -> None:
    """Another process (a prefork supervisor) reads the raw buffer, which no
    snapshot of the server's folds first: connections held open, fewer than
    a fold's batch, show in it while the server serves, even with a serve
    loop that has no idle turns of its own (poll_interval=None)."""
    from sockserve.testing import running_server

    from .helpers import connect, wait_until

    if kind == "async_uvloop" and not sockserve.aio.uvloop_available():
        pytest.skip("uvloop is not installed")
    buffer = bytearray(Metrics.SIZE)
    server: Any
    if kind == "pool":
        server = sockserve.ThreadPoolTCPServer(("127.0.0.1", 0), _Hold)
    else:
        loop = "uvloop" if kind == "async_uvloop" else "asyncio"
        cls: Any = type("Server", (sockserve.aio.AsyncTCPServer,), {"event_loop": loop})
        server = cls(("127.0.0.1", 0), _AsyncHold)
    server.metrics = Metrics(buffer)
    reader = Metrics(memoryview(buffer))  # the supervisor's view: its snapshots fold nothing

    def shows(active: int, accepted: int) -> bool:
        snap = reader.snapshot()
        return snap.gauges["connections_active"] == active and snap.counters["connections_accepted"] == accepted

    with running_server(server, poll_interval=None):  # type: ignore[arg-type]
        held = [connect(server.server_address) for _ in range(2)]
        try:
            assert wait_until(lambda: shows(active=2, accepted=2)), reader.snapshot()
        finally:
            for client in held:
                client.close()
        assert wait_until(lambda: shows(active=0, accepted=2)), reader.snapshot()
