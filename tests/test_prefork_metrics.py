"""Prefork metrics: every worker counts into its slot of a map it shares with
the supervisor, whose metrics_snapshot() adds them up, keeps what a dead
worker counted, and counts the workers it had to restart."""

from __future__ import annotations

import os
import signal
import socket
from typing import Any

import pytest

from sockserve._metrics import Metrics
from sockserve.prefork._metric_slots import MetricSlots

from .helpers import TIMEOUT, wait_until
from .test_prefork import Supervisor, ask

pytestmark = [pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()"), pytest.mark.timeout(120)]


def counted(sup: Supervisor, name: str, value: float, gauge: bool = False) -> dict[str, Any]:
    """Wait until the supervisor's snapshot shows ``value`` for ``name`` (a
    worker writes its counts in batches, at the latest at an idle turn of its
    loop); the snapshot. Fails with the last one seen."""
    seen: list[dict[str, Any]] = []

    def check() -> bool:
        seen.append(sup.metrics())
        return bool(seen[-1]["gauges" if gauge else "counters"][name] == value)

    assert wait_until(check, TIMEOUT, interval=0.05), f"{name} never reached {value}: {seen[-1]}"
    return seen[-1]


def test_connections_through_several_workers_are_summed(tmp_path: Any) -> None:
    sup = Supervisor(tmp_path, workers=3, commands=True)
    try:
        sup.wait_workers(3)
        served: dict[int, int] = {}
        # The kernel gives each connection to one of the workers waiting on the
        # shared socket: go on until at least two of them have served some.
        while len(served) < 2 or sum(served.values()) < 12:
            assert sum(served.values()) < 500, f"the connections all went to {served}"
            pid = ask(sup.address)[0]
            served[pid] = served.get(pid, 0) + 1
        total = sum(served.values())
        snapshot = counted(sup, "connections_accepted", total)
        assert snapshot["counters"]["requests"] == total
        assert snapshot["counters"]["worker_restarts"] == 0
        assert set(served) <= {pid for pid, _ in sup.spawned}
    finally:
        sup.signal(signal.SIGTERM)
        assert sup.finish() == 0


def test_a_killed_worker_is_restarted_counted_and_its_counts_kept(tmp_path: Any) -> None:
    sup = Supervisor(tmp_path, workers=2, commands=True)
    try:
        sup.wait_workers(2)
        served = [ask(sup.address)[0] for _ in range(10)]
        counted(sup, "connections_accepted", 10)  # in the slots, before the kill
        victim = max(set(served), key=served.count)
        os.kill(victim, signal.SIGKILL)
        sup.saw(f"worker {victim} died unexpectedly (killed by SIGKILL)")
        sup.wait_workers(3)  # its replacement serves
        snapshot = counted(sup, "worker_restarts", 1)
        assert snapshot["counters"]["connections_accepted"] == 10, f"worker {victim}'s counts are kept"
        assert snapshot["counters"]["requests"] == 10
        assert snapshot["gauges"]["connections_active"] == 0.0
        for _ in range(5):
            ask(sup.address)
        counted(sup, "connections_accepted", 15)
    finally:
        sup.signal(signal.SIGTERM)
        assert sup.finish() == 0
    # The graceful stop's exits are no restarts.
    assert [line for line in sup.logs if "died unexpectedly" in line] == [
        f"worker {victim} died unexpectedly (killed by SIGKILL): replacing it"
    ]


def test_metrics_off_leaves_only_the_supervisors_own_count(tmp_path: Any) -> None:
    sup = Supervisor(tmp_path, workers=1, commands=True, metrics=False)
    try:
        sup.wait_workers(1)
        ask(sup.address)
        snapshot = sup.metrics()
        assert snapshot["counters"]["connections_accepted"] == 0
    finally:
        sup.signal(signal.SIGTERM)
        assert sup.finish() == 0


# --- the slots, in one process -----------------------------------------------------


def test_a_retired_slot_is_folded_and_zeroed_before_reuse() -> None:
    slots = MetricSlots(1)
    first = slots.take()
    worker = Metrics(slots.view(first))
    worker.add_many(accepted=3, active=2, requests=3, received=10, sent=20)
    worker.refuse("max_connections")
    worker.drained(1.5)
    del worker  # the worker is gone
    slots.retire(first)
    assert bytes(slots.view(first)) == bytes(Metrics.SIZE), "zeroed before the next worker takes it"
    again = slots.take()
    assert again == first
    Metrics(slots.view(again)).add_many(accepted=1, active=1)
    grown = slots.take()  # every slot in use: a new region, for the workers forked from now on
    assert grown != first
    Metrics(slots.view(grown)).add_many(accepted=5)
    snapshot = slots.snapshot()
    assert snapshot.counters["connections_accepted"] == 9
    assert snapshot.counters["bytes_sent"] == 20
    assert snapshot.refused["max_connections"] == 1
    assert snapshot.gauges["connections_active"] == 1.0, "a dead worker's open connections end with it"
    slots.retire(grown)
    slots.retire(grown)  # twice is once
    assert slots.snapshot().counters["connections_accepted"] == 9
    slots.close()
    slots.close()


def test_prefork_metrics_snapshot_before_running_is_zero() -> None:
    from sockserve.prefork import Prefork

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        import sockserve

        supervisor = Prefork(sockserve.TCPServer, None, sockserve.StreamRequestHandler, sockets=[sock.dup()])
        try:
            snapshot = supervisor.metrics_snapshot()
        finally:
            supervisor.close()
            supervisor.close()  # twice is once
    assert snapshot.counters["connections_accepted"] == 0
    assert snapshot.counters["worker_restarts"] == 0
