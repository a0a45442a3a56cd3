"""The sans-IO line splitter: whole, byte by byte, with trailing data, and fuzzed."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sockserve import LineTooLong
from sockserve.protocol import LineSplitter

from ..line_model import SEPARATORS, caps, cut_points, inputs, pieces_of


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


def test_a_final_unterminated_line_of_exactly_max_line_bytes_is_returned() -> None:
    """The documented rule: with no delimiter in the first max_line bytes the
    splitter waits for one byte more or the end; the end comes, so the line
    is within the cap."""
    splitter = LineSplitter(max_line=4)
    splitter.feed(b"abcd")
    assert splitter.next_line() is None
    splitter.feed(b"")
    assert splitter.next_line() == b"abcd"
    assert splitter.next_line() == b""


def test_a_final_unterminated_line_one_byte_over_is_refused() -> None:
    splitter = LineSplitter(max_line=4, client_address=("192.0.2.1", 5))
    splitter.feed(b"abcde")
    splitter.feed(b"")
    with pytest.raises(LineTooLong, match=r"longer than 4 bytes from 192\.0\.2\.1:5"):
        splitter.next_line()
    assert splitter.buffered == 5  # nothing consumed: raw reads can still take it


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


def test_take_serves_raw_reads_from_the_same_buffer() -> None:
    splitter = LineSplitter(max_line=8)
    splitter.feed(b"abcdef")
    assert splitter.next_line() is None  # scanned: no delimiter in "abcdef"
    assert splitter.take(2) == b"ab"
    splitter.feed(b"g\nrest")
    assert splitter.next_line() == b"cdefg\n"
    assert splitter.take(100) == b"rest"
    assert splitter.take(1) == b""


def test_another_delimiter_per_call() -> None:
    splitter = LineSplitter(max_line=8)
    splitter.feed(b"a|b\nc\r")
    assert splitter.next_line(b"|") == b"a|"
    assert splitter.next_line(b"\r\n") is None
    splitter.feed(b"\nlong line without end")
    assert splitter.next_line(b"\r\n") == b"b\nc\r\n"
    with pytest.raises(LineTooLong):
        splitter.next_line(b"|")  # the cap holds for any delimiter


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="max_line"):
        LineSplitter(max_line=0)
    with pytest.raises(ValueError, match="delimiter"):
        LineSplitter(delimiter=b"")
    splitter = LineSplitter()
    with pytest.raises(ValueError, match="delimiter"):
        splitter.next_line(b"")
    with pytest.raises(ValueError, match="negative"):
        splitter.take(-1)
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


class _Scanned(bytearray):
    """A buffer that counts the bytes find() is asked to search."""

    searched = 0

    def find(self, sub: object, start: int = 0, end: int | None = None) -> int:  # type: ignore[override]
        stop = len(self) if end is None else min(end, len(self))
        type(self).searched += max(0, stop - start)
        return super().find(sub, start, end)  # type: ignore[arg-type]


@pytest.mark.parametrize("delimiter", [b"\n", b"\r\n"])
def test_an_unfinished_line_is_searched_once(delimiter: bytes) -> None:
    """Linear: a line that comes one byte at a time is not searched again
    from its start at every byte (at most len(delimiter) - 1 bytes overlap)."""
    splitter = LineSplitter(max_line=10_000)
    _Scanned.searched = 0
    # Swap the (empty) buffer for the counting one: a test-only look inside.
    vars(LineSplitter)["buffer"].__set__(splitter, _Scanned())
    for _ in range(2000):
        splitter.feed(b"x")
        assert splitter.next_line(delimiter) is None
    assert _Scanned.searched <= 2000 * len(delimiter)


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("line"), st.sampled_from([None, *SEPARATORS])),
        st.tuples(st.just("take"), st.integers(0, 50)),
    ),
    max_size=20,
)


@settings(max_examples=300, deadline=None)
@given(data=inputs, max_line=caps, cuts=cut_points, ops=OPS)
def test_fuzz_any_cut_gives_what_the_whole_input_gives(
    data: bytes, max_line: int, cuts: list[int], ops: list[tuple[str, object]]
) -> None:
    """Lines (with any delimiter) and raw takes, mixed: fed in pieces with a
    driver that feeds more whenever the splitter needs it, the results are
    those of the splitter that had the whole input at once, errors included."""
    whole = LineSplitter(max_line)
    whole.feed(data)
    whole.feed(b"")
    cut = LineSplitter(max_line)
    pieces = iter(pieces_of(data, cuts))

    def feed_one() -> None:
        cut.feed(next(pieces, b""))

    def outcome_of(splitter: LineSplitter, op: tuple[str, object], more: bool) -> object:
        name, arg = op
        try:
            if name == "line":
                while (line := splitter.next_line(arg)) is None:  # type: ignore[arg-type]
                    assert more, "the whole input never needs more"
                    feed_one()
                return line
            assert isinstance(arg, int)
            while splitter.buffered < arg and not splitter.eof and more:
                feed_one()
            return splitter.take(arg)
        except LineTooLong:
            return LineTooLong

    for op in ops:
        assert outcome_of(cut, op, True) == outcome_of(whole, op, False)
