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

``StageRunner`` is the sans-IO core every driver feeds. Drivers move the
bytes: the blocking driver here, used where a connection already owns a
thread or a process (sequential, threads, fork), runs every stage on the
socket with one absolute deadline for all of them, and consumes exactly the
stages' bytes, so whatever follows stays in the socket for the handler; the
pool's reactor (``_reactor``) does the same without blocking, so a client
that stalls its stages holds no worker; the async servers feed the stages
from their transport (``aio._stages``).
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

# As a plain int: ``socket.MSG_PEEK | socket.MSG_DONTWAIT`` is an IntFlag
# operation, ~6.5 k instructions per peek in enum's Python code (the recv()
# itself costs ~3 k).
_PEEK_FLAGS = int(socket.MSG_PEEK | socket.MSG_DONTWAIT)
_DONTWAIT = int(socket.MSG_DONTWAIT)


@final
@dataclasses.dataclass(frozen=True, slots=True)
class NeedMore:
    """The stage needs more bytes. ``send``: bytes for the client first."""

    send: bytes = b""


UNCHANGED: Any = object()


# Not frozen, unlike the other outcomes: a frozen dataclass sets each field
# with object.__setattr__(), ~10 k instructions for Done's four against ~5 k,
# and one is made per stage per connection. Nothing changes one once made.
@final
@dataclasses.dataclass(slots=True)
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


class SocketStage(Protocol):
    """The last stage, which ends with a new socket rather than the same one
    (the TLS handshake, ``_edge_stages.TLSHandshake``): each driver runs it
    its own way, with the methods its model can use."""

    replaces_socket: bool
    timeout: float

    def run_blocking(self, sock: socket.socket, deadline: float, client_address: Any) -> socket.socket:
        """On the connection's own thread, before ``deadline``: the new socket."""
        ...

    def start(self, sock: socket.socket) -> Any:
        """Begin without blocking: the new socket (``ssl.SSLSocket``), to ``step()``."""
        ...

    def step(self, new_socket: Any) -> int:
        """Go on without blocking: 0 once done, else the poll event awaited."""
        ...

    def failed(self, exc: BaseException, client_address: Any) -> BaseException:
        """Log and count a failure; the error for the driver."""
        ...

    def context(self) -> Any:
        """For the event loop's own TLS: the ``ssl.SSLContext`` of a new connection."""
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


@final
@dataclasses.dataclass(slots=True)
class Step:
    """What one feed of a connection's stages gave.

    Attributes:
        consumed: how many of the bytes fed belong to the stages; the others
            (``data[consumed:]``, once ``done``) came behind them.
        send: bytes for the client.
        done: every stage is over (``StageRunner.prepared`` holds the result).
        failed: why the connection must be closed, or None.
    """

    consumed: int = 0
    send: bytes = b""
    done: bool = False
    failed: str | None = None


@final
class StageRunner:
    """One connection's stages, in order: the sans-IO core that every driver
    (blocking, the pool's reactor, asyncio) feeds with what the client sent."""

    __slots__ = ("_factories", "_next", "_stage", "prepared")

    def __init__(self, factories: Sequence[StageFactory], client_address: Any) -> None:
        self.prepared = Prepared(client_address, {})
        self._factories = factories
        self._next = 1  # the index of the factory of the stage after this one
        self._stage: Stage | None = factories[0](client_address) if factories else None

    @property
    def done(self) -> bool:
        return self._stage is None

    def failure(self, reason: str) -> StageFailed:
        """The error for a failed step (``Step.failed``), naming the client as the stages know it."""
        return StageFailed(reason, self.prepared.client_address)

    def feed(self, data: bytes) -> Step:
        """Feed what the client sent (``b""``: it finished sending) to the stages."""
        step = Step()
        offset = 0
        while self._stage is not None:
            chunk = data[offset:] if offset else data
            outcome = self._stage.feed(chunk)
            step.send += outcome.send
            if isinstance(outcome, Reject):
                step.failed = outcome.reason
                return step
            if isinstance(outcome, NeedMore):
                if not data:
                    step.failed = "the client closed the connection during the stages"
                step.consumed = len(data)  # the stage keeps what it needs of them
                return step
            if len(outcome.rest) > len(chunk):
                raise RuntimeError(f"{type(self._stage).__name__} returned more rest than it was fed")
            offset += len(chunk) - len(outcome.rest)
            if outcome.client_address is not UNCHANGED:
                self.prepared.client_address = outcome.client_address
            self.prepared.info.update(outcome.info)
            factories, index = self._factories, self._next
            self._stage = factories[index](self.prepared.client_address) if index < len(factories) else None
            self._next = index + 1
            if self._stage is not None and offset == len(data) and data:
                step.consumed = offset
                return step  # the next stage waits for more bytes
        step.consumed = offset
        step.done = True
        return step


def run_blocking(
    sock: socket.socket, factories: Sequence[StageFactory], client_address: Any, deadline: float
) -> Prepared:
    """Run every stage on ``sock``, in order, before ``deadline`` (monotonic).

    Bytes are peeked first and consumed only as far as the stages' part goes,
    so the bytes behind the last stage stay in the socket for the handler
    (no buffer has to be handed over). The socket's own timeout is left as
    it was.

    Raises:
        StageFailed: a stage rejected the connection, the client finished
            sending first, or the deadline passed.
        OSError: the connection failed.
    """
    runner = StageRunner(factories, client_address)
    # A socket with a timeout polls inside every recv(), MSG_DONTWAIT or not,
    # for as long as that timeout: only a blocking (or non-blocking) one can
    # be peeked at before waiting.
    peek_first = not sock.gettimeout()
    while not runner.done:
        data = _peek(sock, deadline, runner.prepared.client_address, peek_first)
        step = runner.feed(data)
        if step.send:
            _send(sock, step.send, deadline, runner.prepared.client_address)
        if step.failed is not None:
            raise runner.failure(step.failed)
        consume(sock, step.consumed)
    return runner.prepared


def run_available(sock: socket.socket, factories: Sequence[StageFactory], client_address: Any) -> Prepared | None:
    """Run every stage on what ``sock`` holds now, without waiting: the
    result if that completes them (their bytes consumed), else None, with
    nothing consumed, so that another driver can start them afresh.

    Raises:
        StageFailed: a stage rejected the connection.
        OSError: the connection failed.
    """
    try:
        data = peek(sock)
    except (BlockingIOError, InterruptedError):
        return None
    runner = StageRunner(factories, client_address)
    step = runner.feed(data)
    if step.failed is not None:
        raise runner.failure(step.failed)
    if not step.done or step.send:
        return None  # more is needed (or a stage would answer: left to a driver that can send)
    consume(sock, step.consumed)
    return runner.prepared


def _wait(sock: socket.socket, events: int, deadline: float, client_address: Any) -> None:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise StageFailed("the connection's stages did not finish in time", client_address)
    poller = select.poll()
    poller.register(sock, events)
    if not poller.poll(remaining * 1000.0):
        raise StageFailed("the connection's stages did not finish in time", client_address)


def _peek(sock: socket.socket, deadline: float, client_address: Any, peek_first: bool) -> bytes:
    if peek_first:
        # The bytes are usually there already (a proxy sends its header with
        # the connection): a poll before them would be a system call, and a
        # poll object, for nothing.
        if time.monotonic() >= deadline:
            raise StageFailed("the connection's stages did not finish in time", client_address)
        try:
            return peek(sock)
        except (BlockingIOError, InterruptedError):
            pass
    _wait(sock, select.POLLIN, deadline, client_address)
    return peek(sock)


def peek(sock: socket.socket) -> bytes:
    """What the client sent so far and nobody consumed, without consuming it
    (BlockingIOError if nothing is there)."""
    return sock.recv(STAGE_READ_SIZE, _PEEK_FLAGS)


def consume(sock: socket.socket, count: int) -> None:
    """Take ``count`` bytes that were peeked: they are in the socket's buffer,
    so one receive of exactly that size takes them, without waiting."""
    if count > 0:
        sock.recv(count, _DONTWAIT)


def _send(sock: socket.socket, data: bytes, deadline: float, client_address: Any) -> None:
    view = memoryview(data)
    while view:
        _wait(sock, select.POLLOUT, deadline, client_address)
        sent = sock.send(view, socket.MSG_DONTWAIT)
        view = view[sent:]


def split_tls(stages: Sequence[Any]) -> tuple[Sequence[StageFactory], SocketStage | None]:
    """The byte stages, and the TLS handshake that follows them, if the
    server has TLS (``_edge_stages``: it is last, and each driver runs it
    its own way, because it replaces the connection's socket)."""
    if stages and getattr(stages[-1], "replaces_socket", False):
        return stages[:-1], stages[-1]
    return stages, None


def stages_timeout(stages: Sequence[Any]) -> float:
    """How long a connection's stages may take in all: the sum of what each
    declares (``timeout``: the PROXY header's, the handshake's), or
    ``DEFAULT_STAGE_TIMEOUT`` if none does."""
    total: float = 0  # a loop, not sum() over a list: this runs per connection
    declared = False
    for stage in stages:
        timeout = getattr(stage, "timeout", None)
        if timeout is not None:
            total += timeout
            declared = True
    return total if declared else DEFAULT_STAGE_TIMEOUT
