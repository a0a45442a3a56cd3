"""The reader of an async stream handler: the connection's lean
``asyncio.Protocol``, with its own buffer (the writer, in ``_writer``, wraps
the same protocol).

Built without ``asyncio.StreamReader``/``StreamWriter`` on purpose: a line is
cut by the transport's callback and handed over in the future the handler
waits on, a read that the buffer can satisfy creates no coroutine, and there
is one object per connection instead of three. Reading is bounded: the
transport is paused while more than ``read_limit`` bytes wait in the buffer.

Lines are cut by the same rule as ``sockserve.protocol.LineSplitter``: a
delimiter is searched for only within the first ``max_line`` bytes, a byte is
never searched twice, and a line that cannot end within the cap raises
``LineTooLong`` before more is buffered. (The splitter owns its buffer and
only gives it back whole, so the reader, which also serves ``read(n)`` and
``readexactly(n)`` from the same bytes, applies the rule to its own buffer.)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import Any, cast

from .._errors import IdleTimeoutExpired, LineTooLong
from ..protocol.lines import DEFAULT_MAX_LINE
from ._fastpaths import enabled_for, shared_read_buffer, waiter_maker

DEFAULT_READ_LIMIT = 64 * 1024

# What a reader's pending future waits for: any bytes (the caller looks), a
# whole line (handed over in the future), or a line with StopAsyncIteration
# at the end of input (``async for``).
_RAW, _LINE, _LINE_OR_STOP = 0, 1, 2


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
        self._scanned = 0  # bytes of _buf known to hold no newline (readline)
        self._scanned_sep = 0  # ... and no _scan_sep (readuntil)
        self._scan_sep = b"\n"
        # A done future: what write() returns while the transport has room,
        # so that ``await writer.write()`` then costs no Python frame at all.
        self._no_wait: asyncio.Future[None] = loop.create_future()
        self._no_wait.set_result(None)
        self._make_waiter = waiter_maker(loop)  # plain futures, or the fast path's
        self._idle_timer: asyncio.TimerHandle | None = None
        self._eof = False
        self._error: BaseException | None = None  # raised by reads that need more bytes, and by writes
        self._waiter: asyncio.Future[Any] | None = None
        self._line_mode = _RAW  # what _waiter waits for
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
        buf = self._buf
        buf += data
        if len(buf) > self._read_limit and not self._reading_paused and self._transport is not None:
            self._reading_paused = True
            self._transport.pause_reading()
        waiter = self._waiter
        if waiter is None:
            return
        if self._line_mode == _LINE and self._idle_timer is None and not self._reading_paused:
            # The usual case, a readline() waiting and one whole line come in:
            # _wake() inlined. With a Wakeup, the handler runs before this returns.
            found = buf.find(b"\n", self._scanned, self.max_line)
            if found + 1 == len(buf) and not waiter.done():
                line = bytes(buf)
                buf.clear()
                self._scanned = self._scanned_sep = 0
                self._waiter = None
                waiter.set_result(line)
                return
        self._wake()

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

    def readline(self, _mode: int = _LINE) -> Awaitable[bytes]:
        """The next line, b"\\n" included, of at most ``max_line`` bytes; at the
        end of input the unterminated rest, then b"".

        (A plain method that returns a future, so that a line costs no
        coroutine: the transport's callback cuts the line and hands it over.)

        Raises:
            LineTooLong: no newline within ``max_line`` bytes.
        """
        loop = self._loop
        if self._buf or self._eof:
            line = self._line_now()
            if line is not None:
                done: asyncio.Future[bytes] = loop.create_future()
                if line or _mode != _LINE_OR_STOP:
                    done.set_result(line)
                else:
                    done.set_exception(StopAsyncIteration())
                return done
        if self._error is not None:
            raise self._error
        if self._reading_paused:
            self._resume_reading()  # what is buffered holds no line: more must come in
        waiter: asyncio.Future[bytes] = self._make_waiter(loop)
        self._waiter = waiter
        self._line_mode = _mode
        if self.idle_timeout is not None:
            self._arm_idle_timer(waiter)
        return waiter

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

    def __anext__(self) -> Awaitable[bytes]:
        return self.readline(_LINE_OR_STOP)

    def _line_now(self) -> bytes | None:
        """A whole line from the buffer, the rest at the end of input, or None."""
        buf = self._buf
        if buf:
            found = buf.find(b"\n", self._scanned, self.max_line)
            if found >= 0:
                if found + 1 == len(buf) and not self._reading_paused:
                    # The usual case, one whole line and nothing more: _take() inlined.
                    line = bytes(buf)
                    buf.clear()
                    self._scanned = self._scanned_sep = 0
                    return line
                return self._take(found + 1)
            if len(buf) >= self.max_line:
                raise LineTooLong(self.max_line, self.client_address)
            self._scanned = len(buf)
        if self._eof:
            self._raise_if_error()
            return self._take(len(buf))
        return None

    def _scan(self, sep: bytes) -> int:
        """End of the first ``sep`` within the cap, or 0 if there is none yet."""
        buf = self._buf
        if sep != self._scan_sep:
            self._scan_sep = sep
            self._scanned_sep = 0
        start = self._scanned_sep - len(sep) + 1
        found = buf.find(sep, start if start > 0 else 0, self.max_line)
        if found >= 0:
            return found + len(sep)
        if len(buf) >= self.max_line:
            raise LineTooLong(self.max_line, self.client_address)
        self._scanned_sep = len(buf)
        return 0

    def _take(self, n: int) -> bytes:
        buf = self._buf
        if n >= len(buf):
            data = bytes(buf)
            buf.clear()
        else:
            data = bytes(buf[:n])
            del buf[:n]
        self._scanned = self._scanned_sep = 0
        if self._reading_paused and len(buf) <= self._read_limit // 2:
            self._resume_reading()
        return data

    def _wait(self) -> Awaitable[None]:
        """A future done when more bytes, EOF or an error came, failed after ``idle_timeout``."""
        if self._error is not None:
            raise self._error
        if self._reading_paused:
            self._resume_reading()  # what is buffered is not enough: more must come in
        loop = self._loop
        waiter: asyncio.Future[None] = self._make_waiter(loop)
        self._waiter = waiter
        self._line_mode = _RAW
        if self.idle_timeout is not None:
            self._arm_idle_timer(waiter)
        return waiter

    def _arm_idle_timer(self, waiter: asyncio.Future[Any]) -> None:
        assert self.idle_timeout is not None
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        self._idle_timer = self._loop.call_later(self.idle_timeout, self._idle_expired, waiter)

    def _idle_expired(self, waiter: asyncio.Future[Any]) -> None:
        self._idle_timer = None
        if self._waiter is waiter and not waiter.done():
            self._waiter = None
            assert self.idle_timeout is not None
            waiter.set_exception(IdleTimeoutExpired(self.idle_timeout, self.client_address))

    def _wake(self) -> None:
        """Bytes, EOF or the end came: complete the wait if it can be."""
        waiter = self._waiter
        if waiter is None:
            return
        line: bytes | None = None
        if not waiter.done() and self._line_mode != _RAW:
            try:
                line = self._line_now()
            except Exception as exc:  # LineTooLong, or the error that ended the input
                self._end_wait()
                waiter.set_exception(exc)
                return
            if line is None:
                return  # no whole line yet: wait on
        self._end_wait()
        if waiter.done():
            return  # cancelled meanwhile (its task was)
        if line is None:
            waiter.set_result(None)
        elif line or self._line_mode != _LINE_OR_STOP:
            waiter.set_result(line)
        else:
            waiter.set_exception(StopAsyncIteration())

    def _end_wait(self) -> None:
        self._waiter = None
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

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
            return self._no_wait
        if self._drain_waiter is None:
            loop = self._loop
            self._drain_waiter = self._make_waiter(loop)
        return self._drain_waiter


class _ReadIntoReader(AsyncStreamReader, asyncio.BufferedProtocol):
    """The reader on asyncio's own loop, with the fast paths on: the transport
    reads into a buffer that the loop's connections share (``recv_into``),
    and the bytes are copied out at once (see ``_fastpaths.shared_read_buffer``)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, client_address: Any, **options: Any) -> None:
        super().__init__(loop, client_address, **options)
        self._scratch = shared_read_buffer(loop)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._scratch

    def buffer_updated(self, nbytes: int) -> None:
        # Called right after the read into the shared buffer, before any
        # other connection's: the bytes are copied out at once.
        self.data_received(self._scratch[:nbytes])  # type: ignore[arg-type]


def new_reader(loop: asyncio.AbstractEventLoop, client_address: Any, **options: Any) -> AsyncStreamReader:
    """The reader that suits ``loop``: reading into a shared buffer on asyncio's
    loop (a fast path); the plain protocol elsewhere (uvloop's own read path
    is already that) or with the fast paths off."""
    if enabled_for(loop):
        return _ReadIntoReader(loop, client_address, **options)
    return AsyncStreamReader(loop, client_address, **options)
