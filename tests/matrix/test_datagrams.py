"""Datagram servers under every model that serves UDP: echo, errors in
datagram words, oversized datagrams, and the drain of a handler in flight."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator

import pytest

from .kinds import Kind, Options

TIMEOUT = 10.0


@pytest.fixture
def udp_client() -> Iterator[socket.socket]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(TIMEOUT)
        yield sock


def test_datagrams_are_answered(datagram_kind: Kind, short_tmp: str, udp_client: socket.socket) -> None:
    with datagram_kind.start(short_tmp) as server:
        for packet in (b"one", b"two", b"whoami"):
            udp_client.sendto(packet, server.address)
            reply = udp_client.recvfrom(100)[0]
            assert reply == (b"127.0.0.1:%d" % udp_client.getsockname()[1] if packet == b"whoami" else packet)


def test_a_handler_error_speaks_of_a_datagram(datagram_kind: Kind, short_tmp: str, udp_client: socket.socket) -> None:
    with datagram_kind.start(short_tmp) as server:
        udp_client.sendto(b"boom", server.address)
        server.logs.wait_for(r"ERROR exception while handling a datagram from 127\.0\.0\.1:")
        if not datagram_kind.is_async:
            # The stdlib's finish() replies even after handle() raised: an empty datagram.
            assert udp_client.recvfrom(100)[0] == b""
        udp_client.sendto(b"fine", server.address)
        assert udp_client.recvfrom(100)[0] == b"fine"
        assert not server.logs.lines(r"^(INFO|WARNING|ERROR) .*(request|connection)")


def test_an_oversized_datagram_is_dropped_with_a_line(
    datagram_kind: Kind, short_tmp: str, udp_client: socket.socket
) -> None:
    with datagram_kind.start(short_tmp) as server:
        udp_client.sendto(b"x" * 9000, server.address)  # over max_packet_size (8192)
        server.logs.wait_for(r"WARNING datagram from 127\.0\.0\.1:\d+ dropped: longer than max_packet_size=8192")
        udp_client.sendto(b"y" * 8192, server.address)  # exactly the limit: served whole
        assert udp_client.recvfrom(10000)[0] == b"y" * 8192


def test_a_datagram_in_flight_is_answered_before_the_stop_ends(
    datagram_kind: Kind, short_tmp: str, udp_client: socket.socket
) -> None:
    gate = os.path.join(short_tmp, "gate")
    os.mkfifo(gate)
    with datagram_kind.start(short_tmp, Options(grace=10)) as server:
        udp_client.sendto(b"hold " + gate.encode(), server.address)
        assert udp_client.recvfrom(100)[0] == b"entered"
        join = server.stop_in_background()
        server.logs.wait_for(r"draining .*: 1 datagram\(s\) in flight")
        opener = threading.Thread(target=lambda: open(gate, "wb").close())
        opener.start()
        assert udp_client.recvfrom(100)[0].startswith(b"hold ")
        opener.join(TIMEOUT)
        report = join()
        assert report is not None
        assert (report.in_flight, report.forced) == (1, 0)
        server.logs.wait_for(r"drained .*: every datagram finished")
