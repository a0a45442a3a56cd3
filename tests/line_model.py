"""What a line reader must give, for the fuzz tests of the real readers: a
``LineSplitter`` fed the whole input at once, then EOF. Plus the Hypothesis
strategies those tests share (inputs, cuts, caps, operations)."""

from __future__ import annotations

import io
import itertools
from typing import Any

from hypothesis import strategies as st

from sockserve import LineTooLong
from sockserve.protocol import LineSplitter

SEPARATORS = [b"\n", b"|", b"\r\n", b"ab"]

# Inputs that hold delimiters often: random bytes, and words of a small
# alphabet that is mostly delimiters and separators.
inputs = st.one_of(
    st.binary(max_size=200),
    st.lists(st.sampled_from([b"a", b"b", b"x", b"\n", b"|", b"\r", b"\r\n", b"xxxxxxxx"]), max_size=80).map(b"".join),
)
caps = st.integers(1, 40)
cut_points = st.lists(st.integers(0, 400), max_size=12)
# A read size: a number, or one relative to the cap (where off-by-ones live).
sizes = st.one_of(st.integers(-1, 50), st.sampled_from(["cap-1", "cap", "cap+1"]))


def size_for(size: int | str, max_line: int) -> int:
    if isinstance(size, int):
        return size
    return max_line + {"cap-1": -1, "cap": 0, "cap+1": 1}[size]


def pieces_of(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at ``cuts`` (those within it), every piece non-empty."""
    bounds = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    return [data[a:b] for a, b in itertools.pairwise(bounds) if b > a]


class Model:
    """The reference: a splitter that has the whole input."""

    def __init__(self, data: bytes, max_line: int) -> None:
        self.lines = LineSplitter(max_line)
        self.lines.feed(data)
        self.lines.feed(b"")

    @property
    def rest(self) -> bytes:
        return bytes(self.lines.buffer)

    def readline(self) -> bytes:
        line = self.lines.next_line()
        assert line is not None  # the model has seen EOF: never "need more"
        return line

    def next_or_stop(self) -> bytes:
        """Iteration: the next line, StopIteration at the end."""
        line = self.readline()
        if not line:
            raise StopIteration
        return line

    def readuntil(self, separator: bytes) -> bytes:
        line = self.lines.next_line(separator)
        assert line is not None
        return line

    def readline_within(self, size: int) -> bytes:
        """The stdlib's ``readline(size)``, on what is left."""
        line = io.BytesIO(self.rest).readline(size)
        self.lines.take(len(line))
        return line

    def take(self, n: int) -> bytes:
        return self.lines.take(n)


def outcome(call: Any, *args: Any) -> tuple[Any, ...]:
    """What ``call(*args)`` gave, as a value that compares: the bytes, or the error."""
    import asyncio

    try:
        return ("ok", call(*args))
    except LineTooLong as exc:
        return ("LineTooLong", exc.limit)
    except asyncio.IncompleteReadError as exc:
        return ("incomplete", exc.partial, exc.expected)
    except (StopIteration, StopAsyncIteration):
        return ("stop",)
    except OSError as exc:
        return ("error", type(exc).__name__)
