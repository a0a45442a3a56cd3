"""The writer of an async stream handler: sends through the transport, with
backpressure. A write's awaitable waits while more than ``write_limit``
bytes wait to be sent; a write the transport takes at once returns a done
future, so ``await writer.write()`` then runs no Python frame."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._reader import AsyncStreamReader

DEFAULT_WRITE_LIMIT = 64 * 1024


class AsyncStreamWriter:
    """Sends to the client, with backpressure.

    ``writer.write(data)`` hands the bytes to the transport at once and
    returns an awaitable: ``await writer.write(data)`` waits while more than
    the write limit is still unsent (the client is not reading), so memory
    stays bounded; without ``await`` it behaves like asyncio's ``write()``.
    ``await writer.drain()`` is the same wait on its own.
    """

    __slots__ = ("_reader", "transport")

    def __init__(self, transport: asyncio.Transport, reader: AsyncStreamReader) -> None:
        self.transport = transport
        self._reader = reader

    def write(self, data: bytes | bytearray | memoryview) -> Awaitable[None]:
        """Send ``data``; the result, awaited, waits for room in the buffer."""
        reader = self._reader
        if reader._lost or reader._error is not None:
            return reader._drain()  # raises: the connection is gone
        self.transport.write(data)
        if reader._write_paused:
            return reader._drain()
        return reader._no_wait

    def writelines(self, data: Iterable[bytes | bytearray | memoryview]) -> Awaitable[None]:
        """Send every buffer of ``data``, in order; awaitable like ``write()``."""
        if self._reader._lost or self._reader._error is not None:
            return self._reader._drain()
        self.transport.writelines(data)
        return self._reader._drain()

    def drain(self) -> Awaitable[None]:
        """Wait until the buffer is below its limit again (at once if it is)."""
        return self._reader._drain()

    def can_write_eof(self) -> bool:
        return self.transport.can_write_eof()

    def write_eof(self) -> None:
        """Half-close: the client reads EOF after what was written."""
        self.transport.write_eof()

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def close(self) -> None:
        """Close once what was written is sent (the server also does this after ``finish()``)."""
        transport = self.transport
        if transport.is_closing():
            return
        if not self._reader._lost and transport.can_write_eof():
            try:
                # EOF first, as the synchronous servers do: the client sees
                # the reply end cleanly even if it has not read everything.
                transport.write_eof()
            except (OSError, RuntimeError):
                pass  # already half-closed, or the client is gone: closing is all that is left
        transport.close()

    async def wait_closed(self) -> None:
        """Wait until the connection is closed."""
        await asyncio.shield(self._reader.closed)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """The transport's extra info: ``"peername"``, ``"sockname"``, ``"socket"``..."""
        return self.transport.get_extra_info(name, default)
