"""The stage slot between admission and the handler (where a PROXY header
will be read and a TLS handshake run), under every model: a toy stage that
reads a ``HELLO <name>`` line and makes ``<name>`` the client's address."""

from __future__ import annotations

import sockserve

from .client import closed_by_server, connect, recv_line, silent_for, talk
from .kinds import Kind, Options


def test_the_stage_sets_the_client_address_and_the_bytes_behind_it_reach_the_handler(
    server_kind: Kind, short_tmp: str
) -> None:
    with server_kind.start(short_tmp, Options(stages=True)) as server, connect(server.address) as client:
        client.sendall(b"HELLO alice\nwhoami\nglued\n")  # the first request glued behind the stage's line
        reply = b""
        while not reply.endswith(b"glued\n") and len(reply) < 100:
            reply += client.recv(100) or b"<closed>"
        assert reply == b"alice:1\nglued\n"
        assert talk(client, b"later\n") == b"later\n"


def test_the_stage_gets_its_bytes_in_pieces(server_kind: Kind, short_tmp: str) -> None:
    with server_kind.start(short_tmp, Options(stages=True)) as server, connect(server.address) as client:
        client.sendall(b"HEL")
        assert silent_for(client, 0.05)
        client.sendall(b"LO bob")
        assert silent_for(client, 0.05)
        client.sendall(b"\nwhoami\n")
        assert recv_line(client) == b"bob:1\n"


def test_a_rejected_connection_is_closed_with_one_line(server_kind: Kind, short_tmp: str) -> None:
    with server_kind.start(short_tmp, Options(stages=True)) as server:
        with connect(server.address) as client:
            client.sendall(b"GET / HTTP/1.1\nwhoami\n")
            assert closed_by_server(client) == b""
        server.logs.wait_for(r"WARNING closing the connection from .*: bad HELLO line")
        assert not server.logs.lines("ERROR")
        with connect(server.address) as next_client:
            client_ok = talk(next_client, b"HELLO carol\nwhoami\n")
            assert client_ok == b"carol:1\n"


def test_a_stalled_stage_is_cut_at_the_connection_deadline(server_kind: Kind, short_tmp: str) -> None:
    options = Options(stages=True, limits=sockserve.Limits(connection_timeout=0.3))
    with server_kind.start(short_tmp, options) as server:
        with connect(server.address) as staller:
            staller.sendall(b"HELLO")  # ... and never the rest
            assert closed_by_server(staller) == b""
        # The stages' deadline and the connection's are the same moment: either may fire first.
        server.logs.wait_for(r"stages did not finish in time|connection deadline \(0.3s\) exceeded")
        with connect(server.address) as next_client:
            assert talk(next_client, b"HELLO dave\nwhoami\n") == b"dave:1\n"
