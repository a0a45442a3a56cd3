"""Framers: bytes in, complete requests out, for the framed handlers.

A framer is sans-IO: ``feed(data)`` buffers what the client sent (``b""``
means the client finished sending) and ``next_request()`` returns the next
complete request, or None until one is complete. A request longer than the
framer's cap raises a ``LimitExceeded`` as soon as that is known, without
buffering further, so a client cannot make the server hold more than about
one cap's worth of its bytes. Write your own with the same two methods.

- ``LineFramer``: each line is a request (delimiter included), with the line
  cap and the end-of-input rule of ``LineSplitter``.
- ``LengthPrefixFramer``: each request is a payload preceded by its length, a
  big-endian unsigned integer of ``prefix_size`` bytes (the prefix is not
  part of the request).
"""

from __future__ import annotations

from typing import Any, Protocol

from .._errors import RequestTooLarge
from .lines import DEFAULT_MAX_LINE, LineSplitter

# The default cap of a length-prefixed request: 1 MiB, enough for most
# message protocols, small enough that a thousand clients cannot make the
# server hold a gigabyte of partial requests.
DEFAULT_MAX_REQUEST = 1024 * 1024


class Framer(Protocol):
    """What a framed handler's ``make_framer()`` returns."""

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Buffer bytes from the client; ``b""`` when the client finished sending."""
        ...

    def next_request(self) -> bytes | None:
        """The next complete request, or None."""
        ...

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned in a request (what the client left unfinished)."""
        ...


class LineFramer:
    """Each line, delimiter included, is a request; at most ``max_line`` bytes.

    The last line of the input, which has no delimiter, is a request too (as
    iterating over a stream handler's ``rfile`` returns it).
    """

    __slots__ = ("_lines",)

    def __init__(self, max_line: int = DEFAULT_MAX_LINE, delimiter: bytes = b"\n", *, client_address: Any = None):
        self._lines = LineSplitter(max_line, delimiter, client_address=client_address)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self._lines.feed(data)

    def next_request(self) -> bytes | None:
        lines = self._lines
        if not lines.buffer:  # the common case after the last request: nothing to scan
            return None
        return lines.next_line() or None  # b"": the input is over

    @property
    def buffered(self) -> int:
        return self._lines.buffered


class LengthPrefixFramer:
    """Requests sent as a ``prefix_size``-byte big-endian length, then that many bytes."""

    __slots__ = ("_buffer", "_client_address", "_eof", "_max_request", "_prefix_size")

    def __init__(
        self, max_request: int = DEFAULT_MAX_REQUEST, prefix_size: int = 4, *, client_address: Any = None
    ) -> None:
        if max_request < 0:
            raise ValueError(f"max_request must be 0 or more, got {max_request}")
        if prefix_size not in (1, 2, 4, 8):
            raise ValueError(f"prefix_size must be 1, 2, 4 or 8, got {prefix_size}")
        self._max_request = max_request
        self._prefix_size = prefix_size
        self._client_address = client_address
        self._buffer = bytearray()
        self._eof = False

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self._eof and data:
            raise RuntimeError("data fed after end of input")
        if not data:
            self._eof = True
        self._buffer += data

    def next_request(self) -> bytes | None:
        buffer, size = self._buffer, self._prefix_size
        if len(buffer) < size:
            return None
        length = int.from_bytes(buffer[:size], "big")
        if length > self._max_request:
            raise RequestTooLarge(length, self._max_request, self._client_address)
        end = size + length
        if len(buffer) < end:
            return None
        request = bytes(buffer[size:end])
        del buffer[:end]
        return request

    @property
    def buffered(self) -> int:
        return len(self._buffer)
