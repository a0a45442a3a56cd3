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
