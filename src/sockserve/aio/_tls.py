"""TLS on the async servers: the event loop's own (asyncio's ``sslproto``,
or uvloop's), given the accepted socket once the byte stages are done, with
the handshake bounded by what is left of the stages' deadline."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .._admission import Ticket
    from .._stages import SocketStage


async def connect_tls(
    loop: asyncio.AbstractEventLoop,
    sock: socket.socket,
    protocol_factory: Callable[[], asyncio.BaseProtocol],
    tls: SocketStage,
    deadline: float,
    client_address: Any,
    ticket: Ticket | None = None,
) -> asyncio.Transport | None:
    """Hand ``sock`` to the loop's TLS as a server; the transport once the
    handshake is done, or None if it failed (logged and counted, once: the
    loops themselves log nothing for a failed server handshake unless in
    debug mode).

    ``ticket``: the connection's bytes are wanted (the access log,
    count_bytes). Both loops' TLS tell the handler that the connection was
    lost a turn after their transport closed the socket (asyncio's and
    uvloop's ``sslproto`` call it soon, and the socket is gone then), where
    a plain transport tells it before: so the ticket keeps a duplicate of
    the descriptor (``Ticket.probe``), which holds the connection open
    until its release reads its TCP_INFO and closes it
    (``_access_log.settle``). One more descriptor per TLS connection, only
    while bytes are wanted."""
    if ticket is not None:
        try:
            ticket.probe = sock.dup()
        except OSError:
            pass  # out of descriptors: no bytes for this one
    remaining = deadline - loop.time()
    try:
        if remaining <= 0:
            raise TimeoutError
        transport, _ = await loop.connect_accepted_socket(
            protocol_factory, sock, ssl=tls.context(), ssl_handshake_timeout=remaining
        )
    except (OSError, asyncio.TimeoutError) as exc:  # ssl.SSLError is an OSError
        # The loops abort a handshake that runs out of time with
        # ConnectionAbortedError, which otherwise means the client left.
        timed_out = isinstance(exc, (TimeoutError, asyncio.TimeoutError)) or loop.time() >= deadline
        tls.failed(TimeoutError() if timed_out else exc, client_address)
        sock.close()  # a no-op if the loop closed it
        return None
    return transport
