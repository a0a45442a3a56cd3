"""The reader of an async stream handler: the connection's lean
``asyncio.Protocol`` (the writer, in ``_writer``, wraps the same protocol).

Three pieces, one job each:

- **buffering and line framing**: a ``protocol.LineSplitter``, the same core
  as the synchronous handler's capped ``rfile``. Lines, ``readuntil()`` and
  the raw reads are all served from its buffer, by its rule: a line has at
  most ``max_line`` bytes, delimiter included; the reader holds at most
  ``max_line + 1`` bytes of an unfinished line before deciding, so a line
  that has not ended by then raises ``LineTooLong`` without more being
  buffered, and a final, unterminated line within the cap (one of exactly
  ``max_line`` bytes included) is returned at the end of input.
- **the limits**: ``max_line`` is the splitter's cap, the idle timeout an
  ``_idle.IdleTimeout``; ``read_limit`` is flow control, below.
- **this protocol**: what the transport calls (bytes, EOF, the end, flow
  control), and the waits of the handler's reads and drains. Reading is
  bounded: the transport is paused while more than ``read_limit`` bytes
  wait unread.

Built without ``asyncio.StreamReader``/``StreamWriter`` on purpose: a line is
cut by the transport's callback and handed over in the future the handler
waits on, a read that the buffer can satisfy creates no coroutine, and there
is one protocol object per connection instead of three. The speed-ups that
rely on asyncio's internals live in ``_fastpaths``.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from .._access_log import tcp_bytes
from ..protocol.lines import DEFAULT_MAX_LINE, LineSplitter
from ._fastpaths import WaiterMaker, cap_reads, enabled_for, new_waiter
from ._idle import IdleTimeout

if TYPE_CHECKING:
    from .._admission import Ticket

DEFAULT_READ_LIMIT = 64 * 1024

# What a reader's pending future waits for: any bytes (the caller looks), a
# whole line (handed over in the future), or a line with StopAsyncIteration
# at the end of input (``async for``). The line modes are true.
_RAW, _LINE, _LINE_OR_STOP = 0, 1, 2


class AsyncStreamReader(asyncio.Protocol):
    """Reads what the client sends: ``read``, ``readexactly``, ``readline``,
    ``readuntil`` and ``async for line in reader``.

    ``readline()`` and ``readuntil()`` return at most ``max_line`` bytes,
    delimiter included; the reader holds at most ``max_line + 1`` bytes of an
    unfinished line before deciding: ``LineTooLong`` as soon as that many
    have come without the delimiter, or, if the input ends first, the
    unterminated rest (``readline()``; a last line of exactly ``max_line``
    bytes is within the cap) or ``asyncio.IncompleteReadError``
    (``readuntil()``). The rule is ``sockserve.protocol.LineSplitter``'s.

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
        self._lines = LineSplitter(max_line, client_address=client_address)
        self._idle = None if idle_timeout is None else IdleTimeout(loop, idle_timeout, client_address)
        # How waits are made: the loop's own futures (see _FastPathReader).
        self._make_waiter: WaiterMaker = type(loop).create_future
        # A done future: what write() returns while the transport has room,
        # so that ``await writer.write()`` then costs no Python frame at all.
        self._no_wait: asyncio.Future[None] = loop.create_future()
        self._no_wait.set_result(None)
        self._eof = False  # the client has finished sending (the splitter was told too)
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
        # (uvloop's transports do not subclass asyncio.Transport; they quack
        # like it. No cast(): a Python call, once per connection.)
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        waiter = self._waiter
        if (
            waiter is not None
            and self._line_mode
            and not self._lines.buffer
            and (end := data.find(b"\n", 0, self.max_line)) >= 0
            and end + 1 == len(data)
            and not waiter.done()
        ):
            # The usual case: a line is awaited, nothing is buffered, and one
            # whole line within the cap came. This is what feeding the
            # splitter and taking its next line would give (the fuzz tests
            # hold the two equal), without touching the buffer. With a
            # Wakeup, the handler runs before this returns.
            self._waiter = None
            if self._idle is not None:
                self._idle.disarm()
            waiter.set_result(data)
            return
        lines = self._lines
        lines.feed(data)
        if waiter is not None:
            self._wake()
        # Pause only if no read still waits: one that does needs more bytes
        # than are buffered (its own bound holds the buffer: max_line for a
        # line, n for readexactly), and pausing would leave it waiting forever.
        if (
            len(lines.buffer) > self._read_limit
            and self._waiter is None
            and not self._reading_paused
            and self._transport is not None
        ):
            self._reading_paused = True
            self._transport.pause_reading()

    # The connection's ticket, when its bytes are to be read from TCP_INFO
    # as it is lost (the loops call connection_lost() before closing the
    # socket): set by the server.
    _ticket: Ticket | None = None

    # Keep the connection half-open when the client finishes sending, so the
    # handler may still reply. False over TLS, which cannot half-close (the
    # loops then warn that True has no effect, once per connection).
    half_close = True

    def eof_received(self) -> bool:
        self._end_of_input()
        self._wake()
        return self.half_close

    def connection_lost(self, exc: Exception | None) -> None:
        ticket = self._ticket
        if ticket is not None and self._transport is not None:
            self._ticket = None
            tcp_bytes(self._transport.get_extra_info("socket"), ticket)
        self._end_of_input()
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
        if self._idle is not None:
            self._idle.disarm()
        if self._transport is not None:
            self._transport.abort()
        return waiting

    # -- reads -------------------------------------------------------------------------

    def at_eof(self) -> bool:
        """True when the client has finished sending and every byte was read."""
        return self._eof and not self._lines.buffer

    async def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (at least one unless the input is over: then b"").
        ``n < 0`` reads until the client finishes sending."""
        if n == 0:
            return b""
        lines = self._lines
        if n < 0:
            while not self._eof:
                await self._wait()
            self._raise_if_error()
            return self._take(len(lines.buffer))
        while not lines.buffer:
            if self._eof:
                self._raise_if_error()
                return b""
            await self._wait()
        return self._take(n)

    async def readexactly(self, n: int) -> bytes:
        """Exactly ``n`` bytes; ``asyncio.IncompleteReadError`` if the input ends first."""
        if n < 0:
            raise ValueError("readexactly() size can not be less than zero")
        lines = self._lines
        while len(lines.buffer) < n:
            if self._eof:
                self._raise_if_error()
                raise asyncio.IncompleteReadError(self._take(len(lines.buffer)), n)
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
        lines = self._lines
        if lines.buffer or self._eof:
            line = lines.next_line()
            if line is not None:
                if self._reading_paused or self._eof:
                    self._line_taken(line.endswith(b"\n"))
                done: asyncio.Future[bytes] = self._loop.create_future()
                if line or _mode != _LINE_OR_STOP:
                    done.set_result(line)
                else:
                    done.set_exception(StopAsyncIteration())
                return done
        if self._error is not None:
            raise self._error
        if self._reading_paused:
            self._resume_reading()  # what is buffered holds no line: more must come in
        waiter: asyncio.Future[bytes] = self._make_waiter(self._loop)
        self._waiter = waiter
        self._line_mode = _mode
        if self._idle is not None:
            self._idle.arm(waiter)
        return waiter

    async def readuntil(self, separator: bytes = b"\n") -> bytes:
        """Bytes up to and including ``separator``, at most ``max_line`` in all.

        Raises:
            LineTooLong: no separator within ``max_line`` bytes.
            asyncio.IncompleteReadError: the input ended first (``partial`` holds the rest).
        """
        if not separator:
            raise ValueError("separator must not be empty")
        lines = self._lines
        while True:
            if lines.buffer or self._eof:
                line = lines.next_line(separator)
                if line is not None:
                    complete = line.endswith(separator)  # else the input ended first
                    if self._reading_paused or self._eof:
                        self._line_taken(complete)
                    if complete:
                        return line
                    raise asyncio.IncompleteReadError(line, None)
            await self._wait()

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    def __anext__(self) -> Awaitable[bytes]:
        return self.readline(_LINE_OR_STOP)

    def _line_taken(self, complete: bool) -> None:
        """After a line left the buffer: resume reading if the buffer has room
        again. At the end of input, an incomplete line means the read needed
        more than came: the error that ended the input is raised, if any."""
        if self._eof and not complete:
            self._raise_if_error()
        if self._reading_paused and len(self._lines.buffer) <= self._read_limit // 2:
            self._resume_reading()

    def _take(self, n: int) -> bytes:
        data = self._lines.take(n)
        if self._reading_paused and len(self._lines.buffer) <= self._read_limit // 2:
            self._resume_reading()
        return data

    def _wait(self) -> Awaitable[None]:
        """A future done when more bytes, EOF or an error came, failed after ``idle_timeout``."""
        if self._error is not None:
            raise self._error
        if self._reading_paused:
            self._resume_reading()  # what is buffered is not enough: more must come in
        waiter: asyncio.Future[None] = self._make_waiter(self._loop)
        self._waiter = waiter
        self._line_mode = _RAW
        if self._idle is not None:
            self._idle.arm(waiter)
        return waiter

    def _wake(self) -> None:
        """Bytes, EOF or the end came: complete the wait if it can be."""
        waiter = self._waiter
        if waiter is None:
            return
        line: bytes | None = None
        if self._line_mode and not waiter.done():
            try:
                line = self._lines.next_line()
                if line is not None and (self._reading_paused or self._eof):
                    self._line_taken(line.endswith(b"\n"))
            except Exception as exc:  # LineTooLong, or the error that ended the input
                self._end_wait()
                waiter.set_exception(exc)
                return
            if line is None:
                return  # no whole line yet: wait on
        self._end_wait()
        if waiter.done():
            return  # cancelled meanwhile (its task was), or the idle timeout fired
        if line is None:
            waiter.set_result(None)
        elif line or self._line_mode != _LINE_OR_STOP:
            waiter.set_result(line)
        else:
            waiter.set_exception(StopAsyncIteration())

    def _end_wait(self) -> None:
        self._waiter = None
        if self._idle is not None:
            self._idle.disarm()

    def _end_of_input(self) -> None:
        if not self._eof:
            self._eof = True
            self._lines.feed(b"")

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
            self._drain_waiter = self._make_waiter(self._loop)
        return self._drain_waiter


class _FastPathReader(AsyncStreamReader):
    """The reader on asyncio's own loop, with the fast paths on: its waits
    resume the handler eagerly (``_fastpaths.Wakeup``), and its transport
    reads at most ``_fastpaths.READ_SIZE`` at once (``cap_reads``)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, client_address: Any, **options: Any) -> None:
        super().__init__(loop, client_address, **options)
        self._make_waiter = new_waiter

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        cap_reads(transport)


def reader_factory(loop: asyncio.AbstractEventLoop) -> Callable[..., AsyncStreamReader]:
    """What makes the readers that suit ``loop`` (called with the client's
    address and the reader's options): with the fast paths on asyncio's
    loop, ``_FastPathReader``; the plain protocol elsewhere (uvloop's own
    read path is already lean) or with the fast paths off. A server asks
    once, not once per connection."""
    if enabled_for(loop):
        return functools.partial(_FastPathReader, loop)
    return functools.partial(AsyncStreamReader, loop)


def new_reader(loop: asyncio.AbstractEventLoop, client_address: Any, **options: Any) -> AsyncStreamReader:
    """The reader that suits ``loop`` (see ``reader_factory``)."""
    return reader_factory(loop)(client_address, **options)
