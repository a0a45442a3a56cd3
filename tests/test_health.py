"""Health: starting -> ready -> draining -> stopped, never backwards."""

from __future__ import annotations

import pytest

from sockserve._health import Health


def test_a_process_starts_live_and_not_ready() -> None:
    health = Health()
    assert (health.state, health.live, health.ready) == ("starting", True, False)


def test_the_states_in_order() -> None:
    health = Health()
    health.set_ready()
    assert (health.state, health.live, health.ready) == ("ready", True, True)
    health.start_drain()
    # Still live: an orchestrator must not restart a process that is finishing its requests.
    assert (health.state, health.live, health.ready) == ("draining", True, False)
    health.set_stopped()
    assert (health.state, health.live, health.ready) == ("stopped", False, False)


@pytest.mark.parametrize(
    ("first", "then", "state"),
    [
        ("start_drain", "set_ready", "draining"),  # a server that finished starting after the first SIGTERM
        ("set_stopped", "set_ready", "stopped"),
        ("set_stopped", "start_drain", "stopped"),
        ("start_drain", "start_drain", "draining"),
    ],
)
def test_a_state_is_never_taken_back(first: str, then: str, state: str) -> None:
    health = Health()
    getattr(health, first)()
    getattr(health, then)()
    assert health.state == state
    assert not health.ready


def test_repr_says_the_state() -> None:
    assert repr(Health()) == "Health(state='starting')"
