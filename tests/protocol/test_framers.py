"""The sans-IO framers of the framed handlers: whole, byte by byte, with the
next request glued behind, and fuzzed: random bytes give requests or our
own limit error, never anything else."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sockserve import LineTooLong, RequestTooLarge
from sockserve.protocol import LengthPrefixFramer, LineFramer, LineSplitter


def drain(framer: LineFramer | LengthPrefixFramer) -> list[bytes]:
    out = []
    while (request := framer.next_request()) is not None:
        out.append(request)
    return out


def frames(*payloads: bytes, size: int = 4) -> bytes:
    formats = {1: ">B", 2: ">H", 4: ">I", 8: ">Q"}
    return b"".join(struct.pack(formats[size], len(p)) + p for p in payloads)


@pytest.mark.parametrize("chunk", [None, 1, 5])
def test_length_prefixed_requests_come_out_whole_however_the_input_is_cut(chunk: int | None) -> None:
    data = frames(b"hello", b"", b"x" * 300) + b"\x00\x00"  # and the start of a fourth
    framer = LengthPrefixFramer(max_request=1000)
    got = []
    for i in range(0, len(data), chunk or len(data)):
        framer.feed(data[i : i + (chunk or len(data))])
        got += drain(framer)
    assert got == [b"hello", b"", b"x" * 300]
    assert framer.buffered == 2  # what the client left unfinished


@pytest.mark.parametrize("size", [1, 2, 4, 8])
def test_every_prefix_size(size: int) -> None:
    framer = LengthPrefixFramer(max_request=200, prefix_size=size)
    framer.feed(frames(b"abc", b"de", size=size))
    assert drain(framer) == [b"abc", b"de"]


def test_an_announced_size_over_the_cap_fails_before_the_payload_is_buffered() -> None:
    framer = LengthPrefixFramer(max_request=10, client_address=("192.0.2.1", 4000))
    framer.feed(struct.pack(">I", 11))
    with pytest.raises(RequestTooLarge, match=r"request of 11 bytes from 192\.0\.2\.1:4000 over the limit of 10"):
        framer.next_request()
    assert framer.buffered == 4  # nothing of the payload was asked for


def test_the_line_framer_is_the_line_splitters_rule() -> None:
    framer = LineFramer(max_line=8)
    framer.feed(b"one\ntwo\n12345678")  # a final line of exactly max_line bytes, without newline
    assert drain(framer) == [b"one\n", b"two\n"]
    framer.feed(b"")
    assert drain(framer) == [b"12345678"]  # within the cap: it is a request
    over = LineFramer(max_line=8)
    over.feed(b"123456789")
    with pytest.raises(LineTooLong):
        over.next_request()


@given(st.binary(max_size=300), st.lists(st.integers(1, 40), max_size=30), st.integers(0, 64), st.sampled_from([1, 2]))
def test_fuzz_length_prefixed_input_gives_requests_or_our_error(
    data: bytes, cuts: list[int], cap: int, size: int
) -> None:
    whole = LengthPrefixFramer(max_request=cap, prefix_size=size)
    pieces = LengthPrefixFramer(max_request=cap, prefix_size=size)
    expected: list[bytes] | type[Exception]
    try:
        whole.feed(data)
        expected = drain(whole)
    except RequestTooLarge:
        expected = RequestTooLarge
    got: list[bytes] = []
    position = 0
    try:
        for cut in [*cuts, len(data)]:
            pieces.feed(data[position : position + cut])
            position += cut
            got += drain(pieces)
            if position >= len(data):
                break
    except RequestTooLarge:
        assert expected is RequestTooLarge
        return
    assert got == expected
    assert all(len(request) <= cap for request in got)


@given(st.binary(max_size=300), st.lists(st.integers(1, 40), max_size=30), st.integers(1, 40))
def test_fuzz_the_line_framer_gives_what_the_splitter_gives(data: bytes, cuts: list[int], cap: int) -> None:
    splitter = LineSplitter(cap)
    framer = LineFramer(cap)
    expected: list[bytes] = []
    try:
        splitter.feed(data)
        splitter.feed(b"")
        while line := splitter.next_line():
            expected.append(line)
        expect_error = False
    except LineTooLong:
        expect_error = True
    got: list[bytes] = []
    position = 0
    try:
        for cut in [*cuts, len(data)]:
            framer.feed(data[position : position + cut])
            position += cut
            got += drain(framer)
            if position >= len(data):
                break
        framer.feed(b"")
        got += drain(framer)
    except LineTooLong:
        assert expect_error
        return
    assert not expect_error
    assert got == expected
