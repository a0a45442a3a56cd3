"""Graceful stop under every model: what is in flight finishes, new
connections are refused, stragglers are cut when the grace period ends, and
the log says which of those happened."""

from __future__ import annotations

from ..helpers import wait_until
from .client import closed_by_server, connect, refused, talk
from .kinds import InProcess, Kind, Options, Running


def test_a_request_in_flight_finishes_while_new_connections_are_refused(server_kind: Kind, short_tmp: str) -> None:
    if server_kind.framed:
        _framed_request_in_flight_finishes(server_kind, short_tmp)
        return
    with server_kind.start(short_tmp, Options(grace=10)) as server, connect(server.address) as client:
        assert talk(client, b"first\n") == b"first\n"  # in flight: mid-conversation
        join = server.stop_in_background()
        server.logs.wait_for(r"draining .*: 1 connection\(s\) in flight, grace 10s")
        assert refused(server.address)
        assert talk(client, b"second\n") == b"second\n"  # still served to the end
        client.close()
        report = join()
        if report is not None:
            assert (report.in_flight, report.forced) == (1, 0)
        server.logs.wait_for(r"drained .*: every connection finished")
        assert not server.logs.lines("grace period")


def test_the_grace_period_cuts_what_remains(server_kind: Kind, short_tmp: str) -> None:
    with server_kind.start(short_tmp, Options(grace=0.3)) as server, connect(server.address) as stuck:
        if server_kind.framed:  # a request in flight that outlives the grace period
            assert talk(stuck, b"sleep 2\n") == b"entered\n"
        else:  # a handler waiting for a line that never comes
            assert talk(stuck, b"first line only\n") == b"first line only\n"
        report = server.stop()
        assert closed_by_server(stuck) == b""
        if report is not None:
            assert (report.in_flight, report.forced) == (1, 1)
        server.logs.wait_for(
            r"WARNING drain of .*: grace period \(0.3s\) over, closed 1 connection\(s\) still in flight"
        )
        assert not server.logs.lines("went away"), "the server cut it: the client did not go away"


def test_force_stop_ends_the_grace_period_early_and_says_so(server_kind: Kind, short_tmp: str) -> None:
    with server_kind.start(short_tmp, Options(grace=None)) as server, connect(server.address) as client:
        if server_kind.framed:
            assert talk(client, b"sleep 2\n") == b"entered\n"
        else:
            assert talk(client, b"first\n") == b"first\n"
        join = server.stop_in_background()
        server.logs.wait_for(r"draining .*grace unbounded")
        server.force_stop()
        assert closed_by_server(client) == b""
        report = join()
        if report is not None:
            assert report.forced == 1
        server.logs.wait_for(r"WARNING stop of .* forced")
        assert not server.logs.lines("grace period"), "the grace period was not over: it was ended"


def test_stop_twice_drains_once(server_kind: Kind, short_tmp: str) -> None:
    with server_kind.start(short_tmp, Options(grace=10)) as server, connect(server.address) as client:
        assert talk(client, b"hello\n") == b"hello\n"
        join = server.stop_in_background()
        server.logs.wait_for("draining")
        client.close()
        first = join()
        second = server.stop()
        assert first == second
        assert len(server.logs.lines("draining")) == 1
        assert len(server.logs.lines("drained")) == 1


def _framed_request_in_flight_finishes(server_kind: Kind, short_tmp: str) -> None:
    """For a framed handler, in flight is a request being handled: it finishes,
    its reply is sent, and then the connection is closed."""
    with server_kind.start(short_tmp, Options(grace=10)) as server, connect(server.address) as client:
        assert talk(client, b"sleep 1\n") == b"entered\n"
        join = server.stop_in_background()
        server.logs.wait_for(r"draining .*: 1 connection\(s\) in flight, grace 10s")
        assert refused(server.address)
        assert closed_by_server(client) == b"done\n"  # the reply, then the close
        report = join()
        if report is not None:
            assert (report.in_flight, report.forced) == (1, 0)
        server.logs.wait_for(r"drained .*: every connection finished")


def test_a_client_accepted_before_the_drain_that_speaks_after_it_is_served(server_kind: Kind, short_tmp: str) -> None:
    """Accepting a connection promises its client a handler: a request sent
    just as the drain begins (a prefork worker recycling, a rolling restart)
    must not be lost, even where waiting clients hold no thread."""
    with server_kind.start(short_tmp, Options(grace=10)) as server, connect(server.address) as late:
        _until_accepted(server_kind, server)
        join = server.stop_in_background()
        server.logs.wait_for(r"draining ")
        assert talk(late, b"late\n") == b"late\n"
        if server_kind.framed:
            assert closed_by_server(late) == b""  # its one request done, the connection ends
        late.close()
        report = join()
        if report is not None:
            assert report.forced == 0
        server.logs.wait_for(r"drained .*: every connection finished")


def _until_accepted(server_kind: Kind, server: Running) -> None:
    """Until the server has accepted the connection just made, which has sent nothing."""
    if server_kind.concurrent:
        # Connections are accepted in the order they came: once a later one is
        # answered, the earlier one has been accepted too.
        with connect(server.address) as probe:
            assert talk(probe, b"probe\n") == b"probe\n"
        return
    assert isinstance(server, InProcess), "a kind that serves one connection at a time runs in this process"
    assert wait_until(lambda: server.server._in_flight_count() == 1)
