"""A bounded line splitter: feed bytes, take complete lines (or raw bytes).

The one line-reading core of sockserve: the synchronous handler's capped
``rfile`` and the async stream reader are thin drivers around it.

Contract: ``feed(data)`` only buffers (``feed(b"")`` means end of input);
``next_line()`` returns a complete line including its delimiter, the
unterminated remainder once at end of input, ``b""`` when the input is over,
or None when more data is needed; ``take(n)`` returns raw bytes from the same
buffer.

**The cap.** A line may be at most ``max_line`` bytes, delimiter included. A
delimiter is searched for only within the first ``max_line`` bytes. With no
delimiter there, the splitter cannot yet tell a line that is too long from a
final, unterminated line that is within the cap; so it decides as soon as it
holds ``max_line + 1`` bytes of the line (``LineTooLong``, without waiting for
the line to end) or the input ends (the remainder is returned: a final line of
exactly ``max_line`` bytes is within the cap). Nothing is consumed when
``LineTooLong`` is raised.

Scanning is linear: the buffer remembers how far it has searched for the
delimiter in use, so while one delimiter is used no byte is searched twice.
"""

from __future__ import annotations

from .._errors import LineTooLong

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see sockserve/__init__.py)
if TYPE_CHECKING:
    from typing import Any, Final

# 64 KiB: as long as the longest header lines that HTTP servers accept by
# default (Apache 8 KiB per field, nginx large buffers 8 KiB, h11 16 KiB for a
# whole head), with room to spare for line protocols that carry payloads.
DEFAULT_MAX_LINE = 64 * 1024


class LineSplitter:
    """Splits a byte stream into lines of at most ``max_line`` bytes (delimiter included).

    ``client_address``, if given, is named in ``LineTooLong``'s message.

    Attributes:
        buffer: the bytes received and not yet returned. A driver may look at
            it (to skip a call when it is empty, or to search it for a bounded
            ``readline(size)``); only the splitter's methods change it.
    """

    __slots__ = ("_client_address", "_delimiter", "_eof", "_max_line", "_scanned", "_scanned_for", "buffer")

    def __init__(
        self, max_line: int = DEFAULT_MAX_LINE, delimiter: bytes = b"\n", *, client_address: Any = None
    ) -> None:
        if max_line < 1:
            raise ValueError(f"max_line must be at least 1, got {max_line}")
        if not delimiter:
            raise ValueError("delimiter must not be empty")
        self._max_line = max_line
        self._delimiter = delimiter
        self._client_address = client_address
        self.buffer: Final = bytearray()
        self._scanned = 0  # bytes at the start of buffer known to hold no _scanned_for
        self._scanned_for = delimiter
        self._eof = False

    @property
    def max_line(self) -> int:
        return self._max_line

    @property
    def delimiter(self) -> bytes:
        return self._delimiter

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned."""
        return len(self.buffer)

    @property
    def eof(self) -> bool:
        """True once end of input was fed (bytes may still be buffered)."""
        return self._eof

    @property
    def at_eof(self) -> bool:
        """True once end of input was fed and every byte has been returned."""
        return self._eof and not self.buffer

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Buffer ``data``; ``b""`` means the input has ended."""
        if not data:
            self._eof = True
            return
        if self._eof:
            raise RuntimeError("data fed after end of input")
        buffer = self.buffer
        buffer += data

    def next_line(self, delimiter: bytes | None = None) -> bytes | None:
        """The next complete line, the remainder at EOF, b"" when done, or None.

        ``delimiter`` ends this line instead of the splitter's own (a
        ``readuntil(separator)``); the cap and the rule are the same.

        Raises:
            LineTooLong: no delimiter within the first ``max_line`` bytes,
                and more than ``max_line`` bytes are buffered.
        """
        buffer = self.buffer
        if delimiter is None:
            delimiter = self._delimiter
        elif not delimiter:
            raise ValueError("delimiter must not be empty")
        if delimiter == self._scanned_for:
            start = self._scanned - len(delimiter) + 1  # a delimiter may straddle the scanned end
        else:
            self._scanned_for = delimiter
            start = 0
        # A delimiter found here ends within max_line bytes: find() only
        # reports matches that lie wholly before its end argument.
        found = buffer.find(delimiter, start if start > 0 else 0, self._max_line)
        if found >= 0:
            cut = found + len(delimiter)
            if cut == len(buffer):  # the usual case: the buffer holds one whole line
                line = bytes(buffer)
                buffer.clear()
            else:
                line = bytes(buffer[:cut])
                del buffer[:cut]
            self._scanned = 0
            return line
        if len(buffer) > self._max_line:
            raise LineTooLong(self._max_line, self._client_address)  # no delimiter within the cap, and more came
        if self._eof:
            line = bytes(buffer)
            buffer.clear()
            self._scanned = 0
            return line
        self._scanned = len(buffer)
        return None

    def take(self, n: int) -> bytes:
        """Remove and return up to ``n`` bytes from the front of the buffer
        (raw reads, served from the same bytes as the lines)."""
        if n < 0:
            raise ValueError(f"n must not be negative, got {n}")
        buffer = self.buffer
        if n >= len(buffer):
            data = bytes(buffer)
            buffer.clear()
            self._scanned = 0
            return data
        data = bytes(buffer[:n])
        del buffer[:n]
        # What was searched and held no delimiter still holds none.
        self._scanned = self._scanned - n if self._scanned > n else 0
        return data

    def take_buffered(self) -> bytes:
        """Remove and return everything buffered (e.g. to switch to raw reads)."""
        return self.take(len(self.buffer))
