"""The asyncio driver of a connection's stages (``sockserve._stages``): the
transport feeds the stages from ``data_received`` before the handler's own
protocol takes over, so a client that stalls a header or a handshake holds
a buffer and a timer, never a task's worth of waiting in the handler.

Once every stage is done, the connection's protocol is swapped for the
handler's (``transport.set_protocol``), which is then told of the connection
and given the bytes that arrived behind the stages.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, cast

from .._stages import Prepared, StageFactory, StageFailed, StageRunner


class StagedProtocol(asyncio.Protocol):
    """The transport's protocol while a connection's stages run.

    ``result`` is done with ``(Prepared, rest)`` once every stage is over, or
    fails with ``StageFailed`` (a stage rejected the connection, the client
    finished sending first, or ``expire()`` was called at the deadline) or
    with the error that ended the connection.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, factories: Sequence[StageFactory], client_address: Any) -> None:
        self.result: asyncio.Future[tuple[Prepared, bytes]] = loop.create_future()
        self.transport: asyncio.Transport | None = None
        self._runner = StageRunner(factories, client_address)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's quack like it

    def data_received(self, data: bytes) -> None:
        self._feed(data)

    def eof_received(self) -> bool:
        self._feed(b"")
        return True  # the connection stays half-open until the result is dealt with

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionResetError("the client closed the connection during the stages"))

    def expire(self) -> None:
        """The stages' deadline passed."""
        self._fail(StageFailed("the connection's stages did not finish in time", self._runner.prepared.client_address))

    def _feed(self, data: bytes) -> None:
        if self.result.done():
            return
        try:
            step = self._runner.feed(data)
        except Exception as exc:  # a stage's bug must not escape into the transport
            self._fail(exc)
            return
        if step.send and self.transport is not None:
            self.transport.write(step.send)
        if step.failed is not None:
            self._fail(self._runner.failure(step.failed))
        elif step.done:
            self.result.set_result((self._runner.prepared, data[step.consumed :]))

    def _fail(self, exc: BaseException) -> None:
        if not self.result.done():
            self.result.set_exception(exc)


async def run_stages(loop: asyncio.AbstractEventLoop, staged: StagedProtocol, delay: float) -> tuple[Prepared, bytes]:
    """Wait for ``staged``'s stages, for at most ``delay`` seconds."""
    timer = loop.call_later(delay, staged.expire)
    try:
        return await staged.result
    finally:
        timer.cancel()


def hand_over(transport: asyncio.Transport, protocol: asyncio.BaseProtocol, rest: bytes) -> None:
    """Make ``protocol`` the connection's protocol, as if it had been from the
    start, and give it the bytes that came behind the stages."""
    transport.set_protocol(protocol)
    protocol.connection_made(transport)
    if isinstance(protocol, asyncio.BufferedProtocol):
        while rest:
            view = memoryview(protocol.get_buffer(len(rest)))
            size = min(len(view), len(rest))
            view[:size] = rest[:size]
            protocol.buffer_updated(size)
            rest = rest[size:]
    elif rest:
        cast(asyncio.Protocol, protocol).data_received(rest)
