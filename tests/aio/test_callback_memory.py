"""What a held callback connection keeps (issue 11: at most 1.5x a raw
``asyncio.Protocol``'s memory per connection): the connection object has
no ``__dict__``, and neither it nor its ticket keeps a bound method of its
own, beyond the handler's ``data_received`` that the transport calls."""

from __future__ import annotations

import gc
import threading
import types
from typing import Any

import pytest

import sockserve
from sockserve import aio

from ..helpers import connect, recv_line

TIMEOUT = 10.0


class Inspecting(aio.AsyncProtocolHandler):
    """Looks at its own connection from the loop's thread, then echoes."""

    seen: dict[str, Any]
    ready: threading.Event

    def connection_made(self) -> None:
        conn = self.transport.get_protocol()
        ticket = conn.ticket  # type: ignore[attr-defined]
        referents = gc.get_referents(conn) + gc.get_referents(ticket)
        type(self).seen = {
            "has_dict": hasattr(conn, "__dict__"),
            # (the server's _release_ticket is one for all its connections)
            "methods": [r for r in referents if isinstance(r, types.MethodType) and r.__self__ is not self.server],
            "data_received": conn.data_received,  # type: ignore[attr-defined]
        }
        type(self).ready.set()

    def data_received(self, data: bytes) -> None:
        self.write(data)


@pytest.mark.parametrize("idle_timeout", [None, 30.0], ids=["plain", "idle_timeout"])
def test_a_held_callback_connection_keeps_no_dict_and_no_bound_method_of_its_own(
    loop_kind: str, idle_timeout: float | None
) -> None:
    class Handler(Inspecting):
        ready = threading.Event()

    server = aio.AsyncTCPServer(("127.0.0.1", 0), Handler)
    server.event_loop = loop_kind
    server.limits = sockserve.Limits(idle_timeout=idle_timeout)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        with connect(server.server_address) as sock:
            sock.sendall(b"hello\n")
            assert recv_line(sock) == b"hello\n"
            assert Handler.ready.wait(TIMEOUT)
    finally:
        server.shutdown()
        thread.join(TIMEOUT)
        server.server_close()
    assert not thread.is_alive()
    seen = Handler.seen
    assert not seen["has_dict"]
    # the one bound method: what the transport calls for each chunk
    assert seen["methods"] == [seen["data_received"]]
