"""The reader and writer of an async stream handler, on one lean
``asyncio.Protocol`` with its own buffer.

Built without ``asyncio.StreamReader``/``StreamWriter`` on purpose: a read that
the buffer can satisfy returns without creating a future, a write that the
transport takes at once returns a ready awaitable instead of running a
coroutine, and there is one object per connection instead of three. Both
directions are bounded: reading pauses the transport while more than
``read_limit`` bytes wait in the buffer, and a write's awaitable waits while
more than ``write_limit`` bytes wait to be sent.

Lines are cut by the same rule as ``sockserve.protocol.LineSplitter``: a
delimiter is searched for only within the first ``max_line`` bytes, a byte is
never searched twice, and a line that cannot end within the cap raises
``LineTooLong`` before more is buffered. (The splitter owns its buffer and
only gives it back whole, so the reader, which also serves ``read(n)`` and
``readexactly(n)`` from the same bytes, applies the rule to its own buffer.)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Generator, Iterable
from typing import Any, cast

from .._errors import IdleTimeoutExpired, LineTooLong
from ..protocol.lines import DEFAULT_MAX_LINE

DEFAULT_READ_LIMIT = 64 * 1024
DEFAULT_WRITE_LIMIT = 64 * 1024


class _Ready:
    """An awaitable that is already done: what ``write()`` returns when the
    transport is not full, so ``await writer.write(...)`` costs no future."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        return
        yield  # pragma: no cover - makes this a generator


READY = _Ready()


class AsyncStreamReader(asyncio.Protocol):
    """Reads what the client sends: ``read``, ``readexactly``, ``readline``,
    ``readuntil`` and ``async for line in reader``.

    One per connection, made by the server. (It is also the connection's
    ``asyncio.Protocol``; the methods that the transport calls are not for
    handlers.)
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        client_address: Any,
        *,
        max_line: int = DEFAULT_MAX_LINE,
        idle_timeout: float | None = None,
        read_limit: int = DEFAULT_READ_LIMIT,
    ) -> None:
        self._loop = loop
        self.client_address = client_address
        self.max_line = max_line
        self.idle_timeout = idle_timeout
        self._read_limit = read_limit
        self._buf = bytearray()
        self._scanned = 0  # bytes of _buf known to hold no _scan_sep
        self._scan_sep = b"\n"
        self._eof = False
        self._error: BaseException | None = None  # raised by reads that need more bytes, and by writes
        self._waiter: asyncio.Future[None] | None = None
        self._transport: asyncio.Transport | None = None
        self._reading_paused = False
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._lost = False
        self.closed: asyncio.Future[None] = loop.create_future()  # done once the transport is closed

    # -- what the transport calls ------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports do not subclass asyncio.Transport; they quack like it)
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._buf += data
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)
        if len(self._buf) > self._read_limit and not self._reading_paused and self._transport is not None:
            self._reading_paused = True
            self._transport.pause_reading()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return True  # keep the connection half-open: the handler may still reply

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self._lost = True
        if exc is not None and self._error is None:
            self._error = exc
        self._wake()
        drain = self._drain_waiter
        if drain is not None:
            self._drain_waiter = None
            if not drain.done():
                drain.set_exception(self._error or ConnectionResetError("connection lost"))
                drain.exception()  # retrieved: nobody may be waiting on it
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        drain = self._drain_waiter
        if drain is not None:
            self._drain_waiter = None
            if not drain.done():
                drain.set_result(None)

    # -- for the server ------------------------------------------------------------

    def abort(self, exc: BaseException) -> bool:
        """Fail the connection with ``exc`` (a limit fired, a drain ended): a
        read or drain in progress raises it, and the transport is closed at
        once. True if the handler was waiting in a read or a drain."""
        if self._error is None:
            self._error = exc
        waiting = False
        for waiter in (self._waiter, self._drain_waiter):
            if waiter is not None and not waiter.done():
                waiter.set_exception(exc)
                waiting = True
        self._waiter = self._drain_waiter = None
        if self._transport is not None:
            self._transport.abort()
        return waiting

    # -- reads -------------------------------------------------------------------------

    def at_eof(self) -> bool:
        """True when the client has finished sending and every byte was read."""
        return self._eof and not self._buf

    async def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (at least one unless the input is over: then b"").
        ``n < 0`` reads until the client finishes sending."""
        if n == 0:
            return b""
        if n < 0:
            while not self._eof:
                await self._wait()
            self._raise_if_error()
            return self._take(len(self._buf))
        while not self._buf:
            if self._eof:
                self._raise_if_error()
                return b""
            await self._wait()
        return self._take(n)

    async def readexactly(self, n: int) -> bytes:
        """Exactly ``n`` bytes; ``asyncio.IncompleteReadError`` if the input ends first."""
        if n < 0:
            raise ValueError("readexactly() size can not be less than zero")
        while len(self._buf) < n:
            if self._eof:
                self._raise_if_error()
                partial = self._take(len(self._buf))
                raise asyncio.IncompleteReadError(partial, n)
            await self._wait()
        return self._take(n)

    async def readline(self) -> bytes:
        """The next line, b"\\n" included, of at most ``max_line`` bytes; at the
        end of input the unterminated rest, then b"".

        Raises:
            LineTooLong: no newline within ``max_line`` bytes.
        """
        while True:
            end = self._scan(b"\n")
            if end:
                return self._take(end)
            if self._eof:
                self._raise_if_error()
                return self._take(len(self._buf))
            await self._wait()

    async def readuntil(self, separator: bytes = b"\n") -> bytes:
        """Bytes up to and including ``separator``, at most ``max_line`` in all.

        Raises:
            LineTooLong: no separator within ``max_line`` bytes.
            asyncio.IncompleteReadError: the input ended first (``partial`` holds the rest).
        """
        if not separator:
            raise ValueError("separator must not be empty")
        while True:
            end = self._scan(separator)
            if end:
                return self._take(end)
            if self._eof:
                self._raise_if_error()
                raise asyncio.IncompleteReadError(self._take(len(self._buf)), None)
            await self._wait()

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        line = await self.readline()
        if not line:
            raise StopAsyncIteration
        return line

    def _scan(self, sep: bytes) -> int:
        """End of the first ``sep`` within the cap, or 0 if there is none yet."""
        buf = self._buf
        if sep != self._scan_sep:
            self._scan_sep = sep
            self._scanned = 0
        start = self._scanned - len(sep) + 1
        found = buf.find(sep, start if start > 0 else 0, self.max_line)
        if found >= 0:
            return found + len(sep)
        if len(buf) >= self.max_line:
            raise LineTooLong(self.max_line, self.client_address)
        self._scanned = len(buf)
        return 0

    def _take(self, n: int) -> bytes:
        buf = self._buf
        if n >= len(buf):
            data = bytes(buf)
            buf.clear()
        else:
            data = bytes(buf[:n])
            del buf[:n]
        self._scanned = 0
        if self._reading_paused and len(buf) <= self._read_limit // 2:
            self._resume_reading()
        return data

    async def _wait(self) -> None:
        """Wait for more bytes, EOF or an error, at most ``idle_timeout``."""
        if self._error is not None:
            raise self._error
        if self._reading_paused:
            self._resume_reading()  # what is buffered is not enough: more must come in
        waiter = self._loop.create_future()
        self._waiter = waiter
        if self.idle_timeout is None:
            try:
                await waiter
            finally:
                self._waiter = None
            return
        timer = self._loop.call_later(self.idle_timeout, self._idle_expired, waiter)
        try:
            await waiter
        finally:
            self._waiter = None
            timer.cancel()

    def _idle_expired(self, waiter: asyncio.Future[None]) -> None:
        if not waiter.done():
            assert self.idle_timeout is not None
            waiter.set_exception(IdleTimeoutExpired(self.idle_timeout, self.client_address))

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _resume_reading(self) -> None:
        self._reading_paused = False
        if self._transport is not None and not self._lost:
            self._transport.resume_reading()

    def _raise_if_error(self) -> None:
        # A reset after the client's last bytes does not hide those bytes:
        # the error is raised only when a read needs more than was received.
        if self._error is not None and not isinstance(self._error, (ConnectionResetError, BrokenPipeError)):
            raise self._error

    def _drain(self) -> Awaitable[None]:
        if self._error is not None:
            raise self._error
        if self._lost:
            raise ConnectionResetError(f"connection to {self.client_address!r} lost")
        if not self._write_paused:
            return READY
        if self._drain_waiter is None:
            self._drain_waiter = self._loop.create_future()
        return self._drain_waiter


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
        return READY

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
