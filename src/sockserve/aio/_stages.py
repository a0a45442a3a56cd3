"""The asyncio driver of a connection's stages (``sockserve._stages``): it
runs them on the accepted socket itself, before any transport exists.

It peeks at what the client sent and consumes only the stages' own bytes,
as the blocking driver does, so whatever follows them is still in the
socket when the transport (or the loop's TLS, which needs the client's
first TLS record intact) takes it over. Waiting for bytes is a reader
callback on the loop and a timer, never a task's worth of waiting in a
handler; a client that stalls is cut at the stages' deadline.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .._stages import Prepared, StageRunner, consume, peek, split_tls

if TYPE_CHECKING:
    from .._stages import SocketStage


async def run_stages(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, stages: Sequence[Any], client_address: Any, delay: float
) -> tuple[Prepared, SocketStage | None]:
    """Run the byte stages on ``sock`` within ``delay`` seconds; what they
    learnt, and the TLS handshake still to do (the caller's: it hands the
    socket to the loop's TLS).

    Raises:
        StageFailed: a stage rejected the connection, or the deadline passed.
        OSError: the connection failed.
    """
    byte_stages, tls = split_tls(stages)
    runner = StageRunner(byte_stages, client_address)
    deadline = loop.time() + delay
    # Peek before waiting: the bytes are usually there at accept (a proxy
    # sends its header with the connection), and a reader callback, a future
    # and a timer for nothing cost more than the stage itself. Not on a
    # socket with a timeout (socket.setdefaulttimeout()): its recv() polls
    # for that long first, MSG_DONTWAIT or not, which would block the loop.
    peek_first = not sock.gettimeout()
    while not runner.done:
        data = _peek_now(sock) if peek_first and loop.time() < deadline else None
        if data is None:
            await _readable(loop, sock, deadline, runner)  # its timer enforces the deadline
            data = _peek_now(sock)
            if data is None:
                continue
        step = runner.feed(data)
        if step.send:
            sock.send(step.send, socket.MSG_DONTWAIT)  # a stage's few bytes fit in an empty buffer
        if step.failed is not None:
            raise runner.failure(step.failed)
        consume(sock, step.consumed)
    return runner.prepared, tls


def _peek_now(sock: socket.socket) -> bytes | None:
    """What the client sent so far (unconsumed), or None if nothing yet."""
    try:
        return peek(sock)
    except (BlockingIOError, InterruptedError):
        return None
    except OSError:
        return b""  # reset: the stages see the end of the input


async def _readable(loop: asyncio.AbstractEventLoop, sock: socket.socket, deadline: float, runner: StageRunner) -> None:
    waiter: asyncio.Future[None] = loop.create_future()
    fd = sock.fileno()

    def ready() -> None:
        if not waiter.done():
            waiter.set_result(None)

    def expire() -> None:
        if not waiter.done():
            waiter.set_exception(runner.failure("the connection's stages did not finish in time"))

    loop.add_reader(fd, ready)
    timer = loop.call_at(deadline, expire)
    try:
        await waiter
    finally:
        timer.cancel()
        loop.remove_reader(fd)
