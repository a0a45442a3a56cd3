"""The sans-IO line splitter: whole, byte by byte, with trailing data, and fuzzed."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sockserve import LineTooLong
from sockserve.protocol import LineSplitter


def lines_of(splitter: LineSplitter) -> list[bytes]:
    out = []
    while (line := splitter.next_line()) is not None and line != b"":
        out.append(line)
    return out


@pytest.mark.parametrize("chunk", [None, 1, 3])
def test_lines_come_out_whole_however_the_input_is_cut(chunk: int | None) -> None:
    data = b"one\ntwo\n\nthree\ntrailing"
    splitter = LineSplitter(max_line=16)
    pieces = [data] if chunk is None else [data[i : i + chunk] for i in range(0, len(data), chunk)]
    got = []
    for piece in pieces:
        splitter.feed(piece)
        got += lines_of(splitter)
    assert got == [b"one\n", b"two\n", b"\n", b"three\n"]
    assert splitter.buffered == len(b"trailing")  # the unterminated tail waits for more
    splitter.feed(b"")
    assert splitter.next_line() == b"trailing"  # at EOF the remainder comes out once
    assert splitter.next_line() == b""
    assert splitter.at_eof


def test_a_line_of_exactly_max_line_bytes_is_allowed() -> None:
    splitter = LineSplitter(max_line=4)
    splitter.feed(b"abc\nabcd\n")
    assert splitter.next_line() == b"abc\n"
    with pytest.raises(LineTooLong) as caught:
        splitter.next_line()
    assert caught.value.limit == 4


def test_an_endless_line_fails_without_waiting_for_its_end() -> None:
    splitter = LineSplitter(max_line=8)
    splitter.feed(b"x" * 8)
    assert splitter.next_line() is None  # could still be the last, unterminated line
    splitter.feed(b"x")
    with pytest.raises(LineTooLong, match="longer than 8 bytes"):
        splitter.next_line()


def test_multi_byte_delimiter_split_across_feeds() -> None:
    splitter = LineSplitter(max_line=32, delimiter=b"\r\n")
    for piece in (b"GET / HTTP/1.1\r", b"\nHost: x\r", b"\n"):
        splitter.feed(piece)
    assert lines_of(splitter) == [b"GET / HTTP/1.1\r\n", b"Host: x\r\n"]


def test_take_buffered_hands_over_the_rest() -> None:
    splitter = LineSplitter()
    splitter.feed(b"head\nbody bytes")
    assert splitter.next_line() == b"head\n"
    assert splitter.take_buffered() == b"body bytes"
    assert splitter.buffered == 0


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="max_line"):
        LineSplitter(max_line=0)
    with pytest.raises(ValueError, match="delimiter"):
        LineSplitter(delimiter=b"")
    splitter = LineSplitter()
    splitter.feed(b"")
    with pytest.raises(RuntimeError):
        splitter.feed(b"late")


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200), max_line=st.integers(1, 40), cuts=st.lists(st.integers(0, 200), max_size=8))
def test_fuzz_lines_or_line_too_long_and_nothing_else(data: bytes, max_line: int, cuts: list[int]) -> None:
    """Any bytes, cut anywhere: either the lines of the input come out, in
    order and unchanged, or LineTooLong; never another error, never a line
    over the cap."""
    bounds = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    splitter = LineSplitter(max_line=max_line)
    got: list[bytes] = []
    try:
        for start, end in itertools.pairwise(bounds):
            splitter.feed(data[start:end])
            got += lines_of(splitter)
        splitter.feed(b"")
        got += lines_of(splitter)
    except LineTooLong:
        assert any(len(line) > max_line for line in reference_lines(data))
        return
    assert got == reference_lines(data)


def reference_lines(data: bytes) -> list[bytes]:
    """The lines of ``data`` split after each b"\\n", the unterminated tail last."""
    parts = data.split(b"\n")
    return [p + b"\n" for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])
