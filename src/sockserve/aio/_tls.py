"""TLS on the async servers: the event loop's own (asyncio's ``sslproto``,
or uvloop's), given the accepted socket once the byte stages are done, with
the handshake bounded by what is left of the stages' deadline."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .._stages import SocketStage


async def connect_tls(
    loop: asyncio.AbstractEventLoop,
    sock: socket.socket,
    protocol_factory: Callable[[], asyncio.BaseProtocol],
    tls: SocketStage,
    deadline: float,
    client_address: Any,
) -> asyncio.Transport | None:
    """Hand ``sock`` to the loop's TLS as a server; the transport once the
    handshake is done, or None if it failed (logged and counted, once: the
    loops themselves log nothing for a failed server handshake unless in
    debug mode)."""
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
