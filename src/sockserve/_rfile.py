"""The synchronous stream handler's ``rfile`` when a line cap is in force: a
binary file on the socket whose lines are cut by ``protocol.LineSplitter``,
the same core as the async reader's. (With no cap, ``rfile`` is the stdlib's
own ``socket.makefile("rb")``; this module is not involved.)
"""

from __future__ import annotations

import io
import socket

from .protocol.lines import LineSplitter

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see sockserve/__init__.py)
if TYPE_CHECKING:
    from typing import Any


class CappedReader(io.BufferedIOBase):
    """A read-only binary file on a socket whose lines are at most ``max_line`` bytes.

    ``readline()`` and iteration return lines of at most ``max_line`` bytes,
    b"\\n" included, and raise ``LineTooLong`` for a longer one as soon as
    ``max_line + 1`` bytes of it have arrived, without waiting for its end. A
    final line without b"\\n" is returned if it is within the cap (a last line
    of exactly ``max_line`` bytes included). ``readline(size)`` with ``size``
    below the cap is the stdlib's: at most ``size`` bytes of the line, no
    error. ``read()``, ``read1()``, ``readinto()`` and ``peek()`` read from the
    same buffer.

    ``bufsize`` is the handler's ``rbufsize``: bytes asked of the socket per
    read (-1: ``io.DEFAULT_BUFFER_SIZE``; 0: unbuffered, so that no byte past
    the line the handler asked for is read from the socket, as with the
    stdlib's unbuffered ``rfile``). A socket timeout raises ``TimeoutError``
    and leaves the buffer intact. Closing the file does not close the socket.
    """

    def __init__(self, sock: socket.socket, max_line: int, client_address: Any = None, bufsize: int = -1) -> None:
        self._sock = sock
        self._lines = LineSplitter(max_line, client_address=client_address)
        self._unbuffered = bufsize == 0
        self._chunk = bufsize if bufsize > 0 else io.DEFAULT_BUFFER_SIZE

    @property
    def max_line(self) -> int:
        return self._lines.max_line

    def readable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._sock.fileno()

    def readline(self, size: int | None = -1, /) -> bytes:
        self._check_open()
        lines = self._lines
        if size is not None and 0 <= size < lines.max_line:
            return self._readline_within(size)  # the caller's own bound is tighter: the stdlib's readline(size)
        while (line := lines.next_line()) is None:
            self._fill(1 if self._unbuffered else self._chunk)
        return line

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line

    def read(self, size: int | None = -1, /) -> bytes:
        self._check_open()
        lines = self._lines
        if size is None or size < 0:
            while self._fill(self._chunk):
                pass
            return lines.take_buffered()
        while len(lines.buffer) < size and not lines.eof:
            missing = size - len(lines.buffer)
            self._fill(missing if self._unbuffered else max(missing, self._chunk))
        return lines.take(size)

    def read1(self, size: int = -1, /) -> bytes:
        self._check_open()
        lines = self._lines
        if size == 0:
            return b""
        if not lines.buffer and not lines.eof:
            self._fill(size if self._unbuffered and size > 0 else max(size, self._chunk))
        return lines.take(len(lines.buffer) if size < 0 else size)

    def peek(self, size: int = 0, /) -> bytes:
        self._check_open()
        if not self._lines.buffer and not self._lines.eof:
            self._fill(self._chunk)
        return bytes(self._lines.buffer)

    def _readline_within(self, size: int) -> bytes:
        """At most ``size`` bytes, up to and including the first b"\\n"."""
        lines = self._lines
        scanned = 0
        while True:
            buffer = lines.buffer
            found = buffer.find(b"\n", scanned, size)
            if found >= 0:
                return lines.take(found + 1)
            if len(buffer) >= size or lines.eof:
                return lines.take(size)
            scanned = len(buffer)
            self._fill(1 if self._unbuffered else self._chunk)

    def _fill(self, size: int) -> bool:
        """One read from the socket into the buffer; False at the end of input."""
        if self._lines.eof:
            return False
        data = self._sock.recv(size)
        self._lines.feed(data)  # b"": the client has finished sending
        return bool(data)

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed file.")
