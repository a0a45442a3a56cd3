"""The matrix fixtures: every test that takes ``server_kind`` runs under every
model on TCP and Unix sockets; ``datagram_kind``, under every model that serves
UDP."""

from __future__ import annotations

import pytest

from .kinds import DATAGRAM_KINDS, STREAM_KINDS, Kind


@pytest.fixture(params=STREAM_KINDS, ids=lambda kind: kind.id)
def server_kind(request: pytest.FixtureRequest) -> Kind:
    kind: Kind = request.param
    return kind


@pytest.fixture(params=DATAGRAM_KINDS, ids=lambda kind: kind.id)
def datagram_kind(request: pytest.FixtureRequest) -> Kind:
    kind: Kind = request.param
    return kind


@pytest.fixture(autouse=True)
def fresh_log_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test's lines get through: the rate limit is per process and per
    second, and a test that expects a line must not find it held back
    because the tests before it, a moment ago, logged many of the same kind."""
    from sockserve import _log

    monkeypatch.setattr(_log, "budget", _log.LogBudget())
