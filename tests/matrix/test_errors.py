"""Errors under every model: one line each, naming the client, and the
server goes on; a line says what happened, never what usually happens."""

from __future__ import annotations

import sockserve

from .client import closed_by_server, connect, reset, talk
from .kinds import Kind, Options


def test_a_handler_error_is_one_line_and_the_server_goes_on(server_kind: Kind, short_tmp: str) -> None:
    with server_kind.start(short_tmp) as server:
        with connect(server.address) as client:
            assert talk(client, b"fine\n") == b"fine\n"
            client.sendall(b"boom\n")
            assert closed_by_server(client) == b""
        server.logs.wait_for(r"ERROR exception while handling a request from ")
        assert len(server.logs.lines("ERROR")) == 1
        assert "RuntimeError: boom" in server.logs.text()  # with its traceback
        with connect(server.address) as next_client:
            assert talk(next_client, b"next\n") == b"next\n"


def test_a_client_that_resets_mid_request_is_one_info_line(server_kind: Kind, short_tmp: str) -> None:
    with server_kind.start(short_tmp) as server:
        client = connect(server.address)
        assert talk(client, b"hello\n") == b"hello\n"
        client.sendall(b"x" * 100_000)  # the handler is busy replying to this when the client resets
        reset(client)
        with connect(server.address) as next_client:
            assert talk(next_client, b"next\n") == b"next\n"
        assert not server.logs.lines("ERROR"), "a client that resets is not a server error"


def test_a_connection_the_server_cut_is_not_a_client_that_went_away(server_kind: Kind, short_tmp: str) -> None:
    options = Options(limits=sockserve.Limits(connection_timeout=0.3))
    with server_kind.start(short_tmp, options) as server:
        with connect(server.address) as client:
            assert talk(client, b"hello\n") == b"hello\n"
            assert closed_by_server(client) == b""
        server.logs.wait_for(r"connection deadline \(0.3s\) exceeded")
        with connect(server.address) as next_client:  # the cut connection's handler has ended by now
            assert talk(next_client, b"next\n") == b"next\n"
        assert not server.logs.lines("went away"), server.logs.text()
        assert not server.logs.lines("ERROR"), server.logs.text()
