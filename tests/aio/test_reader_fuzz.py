"""The async stream reader, fuzzed against the line splitter: random inputs,
cut anywhere, delivered through a fake transport at random moments (so that
a read sometimes waits for the bytes and sometimes finds them buffered, and
the inlined ``data_received`` fast path and the general path both run),
random caps and read limits, and each way an input can end. Every read gives
what the splitter that had the whole input gives, errors included."""

from __future__ import annotations

import asyncio
import errno
from typing import Any
from unittest import mock

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sockserve import aio
from sockserve.aio import _fastpaths
from sockserve.aio._reader import AsyncStreamReader, new_reader

from ..line_model import SEPARATORS, Model, caps, cut_points, inputs, outcome, pieces_of, size_for, sizes

ENDS = {
    "eof": None,  # the client shut down its side; the connection is lost later
    "lost": None,
    "reset": ConnectionResetError(errno.ECONNRESET, "reset"),  # counts as a plain end for reads
    "error": OSError(errno.EIO, "fatal"),  # a read that needs more than came raises it
}


class FakeTransport:
    """Hands ``pieces`` to the reader from plain loop callbacks, as a real
    transport does, ``gaps[i]`` turns of the loop apart; never while reading
    is paused; then ends the input as ``end`` says."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, reader: AsyncStreamReader, pieces: list[bytes], gaps: list[int], end: str
    ) -> None:
        self._loop = loop
        self._reader = reader
        self._pieces = pieces
        self._gaps = gaps or [0]
        self._end = end
        self._next = 0
        self._stalled = False
        self.paused = False
        self.lost = False

    def start(self) -> None:
        self._reader.connection_made(self)  # type: ignore[arg-type]
        self._loop.call_soon(self._step)

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False
        if self._stalled:
            self._stalled = False
            self._loop.call_soon(self._step)

    def lose(self, exc: BaseException | None = None) -> None:
        if not self.lost:
            self.lost = True
            self._reader.connection_lost(exc)  # type: ignore[arg-type]

    def check(self) -> None:
        """Between callbacks (a look inside the reader): a line read waits
        only while no line can be cut from what is buffered; reading is
        paused only while more than half the read limit is buffered, and
        never while a read waits for bytes (it would wait forever)."""
        reader = self._reader
        buffer = reader._lines.buffer
        waiting = reader._waiter is not None and not reader._waiter.done()
        if waiting and reader._line_mode:
            assert not reader._eof
            assert buffer.find(b"\n", 0, reader.max_line) < 0
            assert len(buffer) <= reader.max_line
        if self.paused and not self.lost:
            assert len(buffer) > reader._read_limit // 2
            assert not waiting, "a read waits while reading is paused"

    def _step(self) -> None:
        self.check()
        if self.paused:
            self._stalled = True  # resume_reading() goes on
            return
        index = self._next
        self._next += 1
        gap = self._gaps[index % len(self._gaps)]
        # Scheduling the next step before or after this delivery decides
        # whether other callbacks are due when the reader completes a wait:
        # asyncio's fast path resumes the handler inside the callback only
        # when none are.
        if gap % 2:
            self._after(gap // 2)
        if index < len(self._pieces):
            self._deliver(self._pieces[index])
        elif index == len(self._pieces):
            if self._end == "eof":
                self._reader.eof_received()
            else:
                self.lose(ENDS[self._end])
            return
        if not gap % 2:
            self._after(gap // 2)

    def _after(self, turns: int) -> None:
        self.check()
        if turns:
            self._loop.call_soon(self._after, turns - 1)
        else:
            self._loop.call_soon(self._step)

    def _deliver(self, piece: bytes) -> None:
        reader = self._reader
        if isinstance(reader, asyncio.BufferedProtocol):
            buffer = reader.get_buffer(len(piece))
            buffer[: len(piece)] = piece
            reader.buffer_updated(len(piece))
        else:
            reader.data_received(piece)


class Expect:
    """What the reader must give: the model, plus the rule for an input that
    ended with an error (a read that needs more than came raises it)."""

    def __init__(self, model: Model, fatal: bool) -> None:
        self.model = model
        self.fatal = fatal

    def _failed(self) -> None:
        raise OSError(errno.EIO, "fatal")

    def readline(self) -> bytes:
        line = self.model.readline()
        if self.fatal and not line.endswith(b"\n"):
            self._failed()
        return line

    def anext(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopAsyncIteration
        return line

    def readuntil(self, separator: bytes) -> bytes:
        line = self.model.readuntil(separator)
        if line.endswith(separator):
            return line
        if self.fatal:
            self._failed()
        raise asyncio.IncompleteReadError(line, None)

    def readexactly(self, n: int) -> bytes:
        if len(self.model.rest) >= n:
            return self.model.take(n)
        if self.fatal:
            self._failed()
        raise asyncio.IncompleteReadError(self.model.take(len(self.model.rest)), n)

    def read_all(self) -> bytes:
        if self.fatal:
            self._failed()
        return self.model.take(len(self.model.rest))


async def outcome_of(call: Any, *args: Any) -> tuple[Any, ...]:
    """``outcome()`` for a read that is awaited."""
    try:
        result = await call(*args)
    except BaseException as exc:  # compared as a value, by outcome()
        error = exc
    else:
        return ("ok", result)
    return outcome(_raise, error)


def _raise(exc: BaseException) -> None:
    raise exc


async def check_reads(
    reader: AsyncStreamReader, expect: Expect, max_line: int, ops: list[tuple[str, Any]], check: Any
) -> None:
    for name, arg in ops:
        check()
        if name == "readline":
            assert await outcome_of(reader.readline) == outcome(expect.readline)
        elif name == "anext":
            assert await outcome_of(reader.__anext__) == outcome(expect.anext)
        elif name == "readuntil":
            assert await outcome_of(reader.readuntil, arg) == outcome(expect.readuntil, arg)
        elif name == "readexactly":
            n = max(size_for(arg, max_line), 0)
            assert await outcome_of(reader.readexactly, n) == outcome(expect.readexactly, n)
        elif name == "read_all":
            assert await outcome_of(reader.read) == outcome(expect.read_all)
        elif name == "read":
            # Up to n bytes, as many as have come: how many depends on the
            # timing; which ones does not.
            n = size_for(arg, max_line)
            got = await outcome_of(reader.read, n)
            rest = expect.model.rest
            if got[0] == "ok":
                data = got[1]
                assert rest.startswith(data)
                assert data or not rest or n == 0
                assert n < 0 or len(data) <= n
                assert n >= 0 or not expect.fatal
                expect.model.take(len(data))
            else:
                assert got == ("error", "OSError")
                assert expect.fatal
                assert n < 0 or not rest
    while True:  # lines to the end, or to a line too long; then the rest raw
        check()
        line = await outcome_of(reader.readline)
        assert line == outcome(expect.readline)
        if line[0] != "ok" or not line[1]:
            break
    assert await outcome_of(reader.read) == outcome(expect.read_all)


ASYNC_OPS = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(["readline", "anext", "read_all"]), st.just(0)),
        st.tuples(st.sampled_from(["read", "readexactly"]), sizes),
        st.tuples(st.just("readuntil"), st.sampled_from(SEPARATORS)),
    ),
    max_size=15,
)

SETUPS = [("asyncio", True), ("asyncio", False), ("uvloop", False)]


@pytest.mark.parametrize(("loop_name", "fast_paths"), SETUPS, ids=["asyncio-fast", "asyncio-plain", "uvloop"])
@settings(max_examples=250, deadline=None)
@given(
    data=inputs,
    max_line=caps,
    cuts=cut_points,
    gaps=st.lists(st.integers(0, 5), max_size=6),
    end=st.sampled_from(sorted(ENDS)),
    read_limit=st.sampled_from([1, 3, 16, 64 * 1024]),
    ops=ASYNC_OPS,
)
@example(data=b"abcd", max_line=4, cuts=[], gaps=[], end="eof", read_limit=65536, ops=[("readline", 0)])
@example(data=b"abcde", max_line=4, cuts=[], gaps=[], end="eof", read_limit=65536, ops=[("readline", 0)])
@example(data=b"abcd", max_line=4, cuts=[], gaps=[], end="eof", read_limit=65536, ops=[("readuntil", b"\n")])
def test_fuzz_the_async_reader_gives_what_the_splitter_gives(
    loop_name: str,
    fast_paths: bool,
    data: bytes,
    max_line: int,
    cuts: list[int],
    gaps: list[int],
    end: str,
    read_limit: int,
    ops: list[tuple[str, Any]],
) -> None:
    if loop_name == "uvloop" and not aio.uvloop_available():
        pytest.skip("uvloop is not installed")
    loop = aio.new_event_loop(loop_name)  # type: ignore[arg-type]
    try:
        with mock.patch.object(_fastpaths, "ENABLED", fast_paths):
            reader = new_reader(loop, ("fuzz", 1), max_line=max_line, read_limit=read_limit)
        transport = FakeTransport(loop, reader, pieces_of(data, cuts), gaps, end)
        expect = Expect(Model(data, max_line), fatal=end == "error")

        async def session() -> None:
            transport.start()
            await check_reads(reader, expect, max_line, ops, transport.check)
            transport.lose()
            await reader.closed

        loop.run_until_complete(asyncio.wait_for(session(), 5))
    finally:
        loop.close()
