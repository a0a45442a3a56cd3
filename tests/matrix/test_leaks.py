"""No slot, ticket, descriptor, thread or child outlives its connection,
however the connection ends and whatever the subclass overrides. (The
autouse ``no_leaks`` fixture checks descriptors, threads and children.)"""

from __future__ import annotations

import sockserve

from .client import closed_by_server, connect, reset, talk
from .kinds import Kind, Options


def test_legal_close_overrides_leak_no_slot(server_kind: Kind, short_tmp: str) -> None:
    # close_request() and shutdown_request() overridden without super(), as
    # stdlib code may: the server must still count every connection out.
    options = Options(limits=sockserve.Limits(max_connections=2), no_super_close=True, grace=3)
    with server_kind.start(short_tmp, options) as server:
        for number in range(5):
            with connect(server.address) as client:
                assert talk(client, b"%d\n" % number) == b"%d\n" % number
            settled = server.settle()
        report = server.stop()
        if report is not None:
            assert (report.in_flight, report.forced) == (0, 0)
        if settled:
            assert not server.logs.lines("draining"), "finished connections were still counted in flight"


def test_connections_ended_every_way_leave_nothing_behind(server_kind: Kind, short_tmp: str) -> None:
    with server_kind.start(short_tmp, Options(grace=3)) as server:
        for _ in range(3):
            with connect(server.address) as client:  # an orderly end
                assert talk(client, b"bye\n") == b"bye\n"
            client = connect(server.address)  # a reset
            assert talk(client, b"reset\n") == b"reset\n"
            reset(client)
            with connect(server.address) as client:  # a half-close: the client stops sending
                client.sendall(b"half\n")
                client.shutdown(1)
                assert closed_by_server(client) == b"half\n"
            with connect(server.address) as client:  # gone in the middle of a line
                client.sendall(b"no newline")
            with connect(server.address) as client:  # the handler raises
                client.sendall(b"boom\n")
                assert closed_by_server(client) == b""
        with connect(server.address) as client:
            assert talk(client, b"still serving\n") == b"still serving\n"
        settled = server.settle()
        report = server.stop()
        if report is not None:
            assert (report.in_flight, report.forced) == (0, 0)
        if settled:
            assert not server.logs.lines("draining")
