"""Stages: what happens to a connection after admission and before its
handler (reading a PROXY protocol header, a TLS handshake, waiting for the
first byte of a request), written once, sans-IO, and driven by whichever
model runs the connection.

A stage is fed the bytes the client sends and answers with one of three
outcomes: ``NeedMore`` (keep feeding), ``Done`` (the stage is over: what it
learnt, and the bytes that arrived behind its part, which belong to the
next stage or the handler), or ``Reject`` (close the connection; its reason
is logged once). Any outcome may carry bytes to send to the client (a TLS
handshake answers as it goes). ``feed(b"")`` means the client finished
sending.

Drivers move the bytes. This module has the blocking driver, used where a
connection already owns a thread or a process (sequential, threads, fork):
it runs every stage on the socket with one absolute deadline for all of
them, and consumes exactly the stages' bytes, so whatever follows stays in
the socket for the handler. The async servers feed the same stages from
their transport (``aio._stages``).
"""

from __future__ import annotations

import dataclasses
import select
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, final

# Bytes looked at per read while a stage runs. A stage with a larger header
# simply gets it in several pieces.
STAGE_READ_SIZE = 16 * 1024

# How long all of a connection's stages may take together when no
# connection_timeout is shorter: a client that stalls a header or a
# handshake holds its connection for no longer than this.
DEFAULT_STAGE_TIMEOUT = 10.0


@final
@dataclasses.dataclass(frozen=True, slots=True)
class NeedMore:
    """The stage needs more bytes. ``send``: bytes for the client first."""

    send: bytes = b""


UNCHANGED: Any = object()


@final
@dataclasses.dataclass(frozen=True, slots=True)
class Done:
    """The stage is over.

    Attributes:
        rest: bytes received behind the stage's own part (for what comes next).
        send: bytes for the client.
        client_address: the client's real address, if the stage learnt it
            (a PROXY header); otherwise left as it was.
        info: what the stage learnt for the handler (a TLS session's server
            name, a PROXY header's TLVs), merged into the connection's info.
    """

    rest: bytes = b""
    send: bytes = b""
    client_address: Any = UNCHANGED
    info: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@final
@dataclasses.dataclass(frozen=True, slots=True)
class Reject:
    """Close the connection: ``reason`` says why, for one log line."""

    reason: str
    send: bytes = b""


Outcome = NeedMore | Done | Reject


class Stage(Protocol):
    """One step between admission and the handler, sans-IO."""

    def feed(self, data: bytes) -> Outcome:
        """Take bytes from the client (``b""``: the client finished sending)."""
        ...


# A factory makes a fresh stage for each connection, from the client's address
# as known so far (an earlier stage may have replaced it).
StageFactory = Callable[[Any], Stage]


@final
@dataclasses.dataclass(slots=True)
class Prepared:
    """A connection that passed every stage: who the client really is, and what the stages learnt."""

    client_address: Any
    info: dict[str, Any]


@final
class StageFailed(Exception):
    """A stage rejected the connection, or the stages' deadline passed."""

    def __init__(self, reason: str, client_address: Any) -> None:
        super().__init__(reason)
        self.reason = reason
        self.client_address = client_address


def run_blocking(
    sock: socket.socket, factories: Sequence[StageFactory], client_address: Any, deadline: float
) -> Prepared:
    """Run every stage on ``sock``, in order, before ``deadline`` (monotonic).

    Bytes are peeked first and consumed only as far as a stage's part goes,
    so the bytes behind the last stage stay in the socket for the handler
    (no buffer has to be handed over). The socket's own timeout is left as
    it was.

    Raises:
        StageFailed: a stage rejected the connection, the client finished
            sending first, or the deadline passed.
        OSError: the connection failed.
    """
    prepared = Prepared(client_address, {})
    for factory in factories:
        stage = factory(prepared.client_address)
        while True:
            data = _peek(sock, deadline, prepared.client_address)
            outcome = stage.feed(data)
            if outcome.send:
                _send(sock, outcome.send, deadline, prepared.client_address)
            if isinstance(outcome, Reject):
                raise StageFailed(outcome.reason, prepared.client_address)
            if isinstance(outcome, Done):
                _consume(sock, len(data) - len(outcome.rest))
                if outcome.client_address is not UNCHANGED:
                    prepared.client_address = outcome.client_address
                prepared.info.update(outcome.info)
                break
            if not data:
                raise StageFailed("the client closed the connection during the stages", prepared.client_address)
            _consume(sock, len(data))  # the stage keeps what it needs of these
    return prepared


def _wait(sock: socket.socket, events: int, deadline: float, client_address: Any) -> None:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise StageFailed("the connection's stages did not finish in time", client_address)
    poller = select.poll()
    poller.register(sock, events)
    if not poller.poll(remaining * 1000.0):
        raise StageFailed("the connection's stages did not finish in time", client_address)


def _peek(sock: socket.socket, deadline: float, client_address: Any) -> bytes:
    _wait(sock, select.POLLIN, deadline, client_address)
    return sock.recv(STAGE_READ_SIZE, socket.MSG_PEEK | socket.MSG_DONTWAIT)


def _consume(sock: socket.socket, count: int) -> None:
    # The bytes were peeked, so they are in the socket's buffer: one receive
    # of exactly that size takes them, without waiting.
    if count > 0:
        sock.recv(count, socket.MSG_DONTWAIT)


def _send(sock: socket.socket, data: bytes, deadline: float, client_address: Any) -> None:
    view = memoryview(data)
    while view:
        _wait(sock, select.POLLOUT, deadline, client_address)
        sent = sock.send(view, socket.MSG_DONTWAIT)
        view = view[sent:]
