"""The synchronous handler's rfile: capped by the handler's ``max_line`` or the
server's ``limits.max_line``, fuzzed against the line splitter through a fake
socket and a real socketpair; and the handlers with no sockserve server."""

from __future__ import annotations

import io
import socket
import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import sockserve
from sockserve._rfile import CappedReader
from sockserve.testing import running_server

from .helpers import TIMEOUT, connect, recv_all
from .line_model import Model, caps, cut_points, inputs, outcome, pieces_of, size_for, sizes


class FakeSocket:
    """Gives ``pieces`` one ``recv()`` at a time (a piece longer than asked is
    cut), then b"": a client that sent them and closed."""

    def __init__(self, pieces: list[bytes]) -> None:
        self._pieces = list(pieces)

    def recv(self, size: int) -> bytes:
        assert size > 0
        if not self._pieces:
            return b""
        piece = self._pieces.pop(0)
        if len(piece) > size:
            self._pieces.insert(0, piece[size:])
        return piece[:size]

    def fileno(self) -> int:
        return -1


@contextmanager
def socket_pair_sending(pieces: list[bytes]) -> Iterator[socket.socket]:
    """The reading end of a real socketpair; the other end sent ``pieces``
    (one send each, small enough for the socket buffer) and shut down."""
    reading, sending = socket.socketpair()
    try:
        reading.settimeout(TIMEOUT)
        for piece in pieces:
            sending.sendall(piece)
        sending.shutdown(socket.SHUT_WR)
        yield reading
    finally:
        reading.close()
        sending.close()


SYNC_OPS = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(["readline", "next", "read_all", "peek"]), st.just(0)),
        st.tuples(st.sampled_from(["readline_size", "read", "read1", "readinto"]), sizes),
    ),
    max_size=15,
)


def check_against_model(rfile: Any, model: Model, max_line: int, ops: list[tuple[str, int | str]]) -> None:
    """Run ``ops`` on the real reader and the model: same results, same errors.
    Then read both to the end."""
    for name, size in ops:
        n = size_for(size, max_line)
        if name == "readline":
            assert outcome(rfile.readline) == outcome(model.readline)
        elif name == "readline_size":
            if 0 <= n < max_line:
                assert outcome(rfile.readline, n) == outcome(model.readline_within, n)
            else:
                assert outcome(rfile.readline, n) == outcome(model.readline)
        elif name == "next":
            assert outcome(next, rfile) == outcome(model.next_or_stop)
        elif name == "read":
            assert outcome(rfile.read, n) == outcome(model.take, len(model.rest) if n < 0 else n)
        elif name == "read_all":
            assert rfile.read() == model.take(len(model.rest))
        elif name == "readinto":
            buffer = bytearray(max(n, 0))
            count = rfile.readinto(buffer)
            assert bytes(buffer[:count]) == model.take(len(buffer))
        elif name in ("read1", "peek"):
            # How much comes depends on how the input was cut; what comes does not.
            got = rfile.read1(n) if name == "read1" else rfile.peek()
            rest = model.rest
            assert rest.startswith(got)
            assert got or not rest or n == 0
            if name == "read1":
                assert n < 0 or len(got) <= n
                model.take(len(got))
    while True:  # lines to the end, or to a line too long; then the rest raw
        line = outcome(rfile.readline)
        assert line == outcome(model.readline)
        if line[0] != "ok" or not line[1]:
            break
    assert rfile.read() == model.take(len(model.rest))


@settings(max_examples=400, deadline=None)
@given(data=inputs, max_line=caps, cuts=cut_points, ops=SYNC_OPS, bufsize=st.sampled_from([-1, 0, 1, 5, 64]))
@example(data=b"abcd", max_line=4, cuts=[], ops=[("readline", 0)], bufsize=-1)  # a last line of exactly max_line
@example(data=b"abcde", max_line=4, cuts=[], ops=[("readline", 0)], bufsize=-1)  # one byte over
@example(data=b"ab\ncd", max_line=3, cuts=[1, 3, 4], ops=[("next", 0)] * 3, bufsize=0)
def test_fuzz_capped_rfile_on_a_fake_socket(
    data: bytes, max_line: int, cuts: list[int], ops: list[tuple[str, int | str]], bufsize: int
) -> None:
    rfile = CappedReader(FakeSocket(pieces_of(data, cuts)), max_line, bufsize=bufsize)  # type: ignore[arg-type]
    check_against_model(rfile, Model(data, max_line), max_line, ops)


@settings(max_examples=100, deadline=None)
@given(data=inputs, max_line=caps, cuts=cut_points, ops=SYNC_OPS, bufsize=st.sampled_from([-1, 0, 3]))
def test_fuzz_capped_rfile_on_a_socketpair(
    data: bytes, max_line: int, cuts: list[int], ops: list[tuple[str, int | str]], bufsize: int
) -> None:
    with socket_pair_sending(pieces_of(data, cuts)) as sock:
        rfile = CappedReader(sock, max_line, bufsize=bufsize)
        check_against_model(rfile, Model(data, max_line), max_line, ops)


def test_unbuffered_capped_rfile_reads_no_byte_past_the_line() -> None:
    """rbufsize = 0 keeps the stdlib's promise: what follows the line stays in the socket."""
    with socket_pair_sending([b"first\nsecond\n"]) as sock:
        rfile = CappedReader(sock, 16, bufsize=0)
        assert rfile.readline() == b"first\n"
        assert sock.recv(100) == b"second\n"


def test_capped_rfile_is_a_file() -> None:
    with socket_pair_sending([b"one\ntwo\n"]) as sock:
        rfile = CappedReader(sock, 16)
        assert rfile.readable()
        assert rfile.fileno() == sock.fileno()
        assert rfile.readlines() == [b"one\n", b"two\n"]
        rfile.close()
        assert rfile.closed
        with pytest.raises(ValueError, match="closed"):
            rfile.readline()
        assert sock.fileno() != -1  # closing the file leaves the socket to its owner


# -- with servers --------------------------------------------------------------


class LineEcho(sockserve.StreamRequestHandler):
    """Echoes lines; a line too long is answered with its limit."""

    def handle(self) -> None:
        try:
            for line in self.rfile:
                self.wfile.write(line)
        except sockserve.LineTooLong as exc:
            self.wfile.write(b"too long: %d\n" % exc.limit)


def capped_server(handler: type = LineEcho, **limits: Any) -> Any:
    server = sockserve.TCPServer(("127.0.0.1", 0), handler)
    server.limits = sockserve.Limits(**limits)
    return running_server(server)


def exchange(address: Any, payload: bytes) -> bytes:
    with connect(address) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        return recv_all(sock)


def test_limits_max_line_caps_a_sync_server() -> None:
    with capped_server(max_line=16) as server:
        assert exchange(server.server_address, b"short\n" + b"x" * 100 + b"\n") == b"short\ntoo long: 16\n"


@pytest.mark.parametrize(("sent", "answer"), [(b"x" * 16, b"x" * 16), (b"x" * 17, b"too long: 16\n")])
def test_a_last_line_of_exactly_max_line_bytes_is_within_the_cap(sent: bytes, answer: bytes) -> None:
    with capped_server(max_line=16) as server:
        assert exchange(server.server_address, sent) == answer


def test_the_handlers_max_line_takes_precedence_over_the_servers() -> None:
    class Wider(LineEcho):
        max_line = 32

    with capped_server(Wider, max_line=8) as server:
        assert exchange(server.server_address, b"x" * 20 + b"\n" + b"y" * 40 + b"\n") == b"x" * 20 + b"\ntoo long: 32\n"


def test_the_handlers_timeout_takes_precedence_over_idle_timeout() -> None:
    seen: list[float | None] = []

    class Patient(sockserve.StreamRequestHandler):
        timeout = 7.0

        def handle(self) -> None:
            seen.append(self.connection.gettimeout())

    class Default(sockserve.StreamRequestHandler):
        def handle(self) -> None:
            seen.append(self.connection.gettimeout())

    for handler in (Patient, Default):
        with capped_server(handler, idle_timeout=3.0) as server:
            exchange(server.server_address, b"")
    assert seen == [7.0, 3.0]


def test_with_no_cap_rfile_is_the_stdlibs_own() -> None:
    kinds: list[tuple[type, type]] = []

    class Look(sockserve.StreamRequestHandler):
        def handle(self) -> None:
            kinds.append((type(self.rfile), type(self.rfile.raw)))  # type: ignore[attr-defined]
            self.wfile.write(self.rfile.readline())

    with capped_server(Look) as server:
        long_line = b"z" * 100_000 + b"\n"
        assert exchange(server.server_address, long_line) == long_line  # no cap at all, as in the stdlib
    assert kinds == [(io.BufferedReader, socket.SocketIO)]


# -- with no sockserve server ------------------------------------------------------

HANDLER_BASES = pytest.mark.parametrize(
    "base", [socketserver.StreamRequestHandler, sockserve.StreamRequestHandler], ids=["stdlib", "sockserve"]
)


@HANDLER_BASES
def test_handler_with_server_none_on_a_socketpair(base: type) -> None:
    """How handler unit tests are written (the stdlib's own http.server tests
    do it): sockserve's handler behaves as the stdlib's."""
    seen: list[object] = []

    class Echo(base):  # type: ignore[misc,valid-type]
        def handle(self) -> None:
            seen.append((type(self.rfile), self.connection.gettimeout()))
            for line in self.rfile:
                self.wfile.write(line.upper())

    served, client = socket.socketpair()
    with served, client:
        client.settimeout(TIMEOUT)
        client.sendall(b"one\n" + b"two" * 10_000 + b"\n")
        client.shutdown(socket.SHUT_WR)
        Echo(served, ("client", 0), None)
        served.close()  # what a server's shutdown_request() would do
        assert recv_all(client) == b"ONE\n" + b"TWO" * 10_000 + b"\n"
    assert seen == [(io.BufferedReader, None)]


def test_a_capped_handler_with_server_none() -> None:
    class Capped(LineEcho):
        max_line = 8

    served, client = socket.socketpair()
    with served, client:
        client.settimeout(TIMEOUT)
        client.sendall(b"ok\n" + b"x" * 9)
        client.shutdown(socket.SHUT_WR)
        Capped(served, ("client", 0), None)
        served.close()
        assert recv_all(client) == b"ok\ntoo long: 8\n"


@pytest.mark.parametrize(
    "base", [socketserver.DatagramRequestHandler, sockserve.DatagramRequestHandler], ids=["stdlib", "sockserve"]
)
def test_datagram_handler_with_server_none(base: type) -> None:
    class Upper(base):  # type: ignore[misc,valid-type]
        def handle(self) -> None:
            self.wfile.write(self.rfile.read().upper())

    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as served,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client,
    ):
        served.bind(("127.0.0.1", 0))
        client.bind(("127.0.0.1", 0))
        client.settimeout(TIMEOUT)
        Upper((b"ping", served), client.getsockname(), None)
        assert client.recv(100) == b"PING"


@pytest.mark.parametrize("max_line", [None, 8])
def test_a_sockserve_handler_under_the_stdlib_tcpserver(max_line: int | None) -> None:
    class Echo(LineEcho):
        pass

    Echo.max_line = max_line
    server = socketserver.TCPServer(("127.0.0.1", 0), Echo)
    server.timeout = TIMEOUT  # handle_request() gives up after this if no client came
    with server:
        thread = threading.Thread(target=server.handle_request)
        thread.start()
        try:
            answer = exchange(server.server_address, b"hello\n" + b"x" * 20 + b"\n")
        finally:
            thread.join(TIMEOUT)
    assert not thread.is_alive()
    assert answer == (b"hello\n" + b"x" * 20 + b"\n" if max_line is None else b"hello\ntoo long: 8\n")
