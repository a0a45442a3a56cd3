"""The callback datagram handler: one instance per server, called by the loop's
datagram transport for each datagram, with no task per datagram."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._datagram import DatagramServer


class AsyncDatagramProtocolHandler:
    """A callback handler for datagrams, in the style of ``asyncio.DatagramProtocol``.

    The datagram counterpart of ``AsyncProtocolHandler``: no task runs per
    datagram. The server makes one instance when it starts serving
    (``server`` is set) and calls ``datagram_received(data, client_address)``
    for each datagram, straight from the loop's datagram transport;
    ``sendto(data, client_address)`` sends one back (the transport's own
    ``sendto`` while it reads; it never blocks: what the socket cannot take at
    once is buffered by the transport, or, while the server is not reading,
    dropped as UDP may drop it).

    A datagram longer than the server's ``max_packet_size`` is dropped with a
    log line before the handler sees it; ``verify_request()`` and
    ``max_requests`` apply to each datagram. An exception raised by
    ``datagram_received`` goes to ``server.handle_error((data, socket),
    client_address)``, and the server goes on.

    Work that must outlive the callback (a database query, a thread) runs in
    ``start_task(coro, client_address)``: a task that the server counts as a
    datagram in flight, so a graceful stop waits for it, ``max_connections``
    and ``connection_timeout`` bound it, and its exception goes to
    ``handle_error()``.
    """

    def __init__(self, server: DatagramServer) -> None:
        self.server = server

    def datagram_received(self, data: bytes, client_address: Any) -> None:
        """A datagram from ``client_address``. Override this."""

    def sendto(self, data: bytes | bytearray | memoryview, client_address: Any) -> None:
        """Send ``data`` to ``client_address`` as one datagram, without waiting.
        Replaced by the transport's own ``sendto`` while the server reads."""
        self.server._send_now(data, client_address)

    def error_received(self, exc: Exception) -> None:
        """The socket reported an error, usually an ICMP "port unreachable"
        for an earlier reply (the client's socket is gone). May be overridden;
        logged at debug level by default."""
        self.server._log_send_error(exc)

    def start_task(self, coro: Coroutine[Any, Any, None], client_address: Any) -> asyncio.Task[None] | None:
        """Run ``coro`` in a task counted as a datagram in flight from
        ``client_address``; None (and ``coro`` closed) if the server's limits
        refuse it, which is logged."""
        return self.server._start_handler_task(coro, client_address)
