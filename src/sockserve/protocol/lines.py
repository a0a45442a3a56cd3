"""A bounded line splitter: feed bytes, take complete lines.

Contract: ``feed(data)`` only buffers (``feed(b"")`` means end of input);
``next_line()`` returns a complete line including its delimiter, the
unterminated remainder once at end of input, ``b""`` when the input is over,
or None when more data is needed. A line that has not ended within
``max_line`` bytes raises ``LineTooLong`` as soon as that is known, without
buffering further. Scanning is linear: the buffer remembers how far it has
searched, so bytes are never searched twice.
"""

from __future__ import annotations

from .._errors import LineTooLong

# 64 KiB: as long as the longest header lines that HTTP servers accept by
# default (Apache 8 KiB per field, nginx large buffers 8 KiB, h11 16 KiB for a
# whole head), with room to spare for line protocols that carry payloads.
DEFAULT_MAX_LINE = 64 * 1024


class LineSplitter:
    """Splits a byte stream into lines of at most ``max_line`` bytes (delimiter included)."""

    __slots__ = ("_buffer", "_delimiter", "_eof", "_max_line", "_scanned")

    def __init__(self, max_line: int = DEFAULT_MAX_LINE, delimiter: bytes = b"\n") -> None:
        if max_line < 1:
            raise ValueError(f"max_line must be at least 1, got {max_line}")
        if not delimiter:
            raise ValueError("delimiter must not be empty")
        self._max_line = max_line
        self._delimiter = delimiter
        self._buffer = bytearray()
        self._scanned = 0  # bytes of _buffer known to hold no delimiter
        self._eof = False

    @property
    def max_line(self) -> int:
        return self._max_line

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned."""
        return len(self._buffer)

    @property
    def at_eof(self) -> bool:
        """True once end of input was fed and every byte has been returned."""
        return self._eof and not self._buffer

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self._eof and data:
            raise RuntimeError("data fed after end of input")
        if not data:
            self._eof = True
            return
        self._buffer += data

    def next_line(self) -> bytes | None:
        """The next complete line, the remainder at EOF, b"" when done, or None."""
        # A delimiter found here ends within max_line bytes: find() only
        # reports matches that lie wholly before its end argument.
        start = max(0, self._scanned - len(self._delimiter) + 1)
        end = self._buffer.find(self._delimiter, start, self._max_line)
        if end >= 0:
            cut = end + len(self._delimiter)
            line = bytes(self._buffer[:cut])
            del self._buffer[:cut]
            self._scanned = 0
            return line
        if len(self._buffer) > self._max_line:
            raise LineTooLong(self._max_line)  # no delimiter within the cap, and more bytes came
        if self._eof:
            line = bytes(self._buffer)
            self._buffer.clear()
            self._scanned = 0
            return line
        self._scanned = len(self._buffer)
        return None

    def take_buffered(self) -> bytes:
        """Remove and return everything buffered (e.g. to switch to raw reads)."""
        data = bytes(self._buffer)
        self._buffer.clear()
        self._scanned = 0
        return data
