"""Admission without caps: no lock, yet every ticket is counted in and out
exactly once, numbered exactly, and a drain waiting for idleness is woken."""

from __future__ import annotations

import threading

import pytest

from sockserve import Limits
from sockserve._admission import Admission, Refusal, Ticket

THREADS = 8
PER_THREAD = 500


def admit(admission: Admission, peer: object = ("127.0.0.1", 1)) -> Ticket:
    verdict = admission.admit(peer)
    assert isinstance(verdict, Ticket)
    return verdict


def test_tickets_are_numbered_and_released_once() -> None:
    admission = Admission()
    first, second = admit(admission), admit(admission)
    assert (first.number, second.number) == (1, 2)
    assert len(admission) == 2
    admission.release(first)
    admission.release(first)  # a second release of the same ticket counts nothing
    assert first.released
    assert len(admission) == 1
    assert admission.tickets() == [second]
    admission.release(second)
    assert len(admission) == 0


@pytest.mark.timeout(60)
def test_threads_admitting_and_releasing_at_once_lose_no_count_and_share_no_number() -> None:
    admission = Admission()
    numbers: list[list[int]] = [[] for _ in range(THREADS)]
    start = threading.Barrier(THREADS)

    def churn(mine: list[int]) -> None:
        start.wait(timeout=10)
        for _ in range(PER_THREAD):
            ticket = admit(admission)
            mine.append(ticket.number)
            admission.release(ticket)
            admission.release(ticket)

    threads = [threading.Thread(target=churn, args=(mine,)) for mine in numbers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
        assert not thread.is_alive()
    assert len(admission) == 0
    every = sorted(n for mine in numbers for n in mine)
    assert every == list(range(1, THREADS * PER_THREAD + 1))


@pytest.mark.timeout(60)
def test_a_release_from_another_thread_wakes_wait_idle() -> None:
    admission = Admission()
    ticket = admit(admission)
    waiting = threading.Event()
    result: list[bool] = []

    def wait() -> None:
        waiting.set()
        result.append(admission.wait_idle(timeout=30))

    waiter = threading.Thread(target=wait)
    waiter.start()
    assert waiting.wait(timeout=10)
    admission.release(ticket)
    waiter.join(timeout=30)
    assert result == [True]


def test_per_client_counting_only_where_a_per_client_cap_is_set() -> None:
    capped = Admission(Limits(max_connections_per_ip=1))
    first = admit(capped, ("10.0.0.1", 1))
    refused = capped.admit(("10.0.0.1", 2))
    assert isinstance(refused, Refusal)
    assert refused.reason == "max_connections_per_ip"
    capped.release(first)
    admit(capped, ("10.0.0.1", 3))  # the slot came back with the release
