"""The ``sockserve`` logger and how addresses appear in its messages.

The library only emits records; configuring handlers is the application's job
(the CLI does it for its own commands).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

logger = logging.getLogger("sockserve")


def format_address(address: Any) -> str:
    """Render a socket address for a log line: ``host:port``, ``[v6]:port`` or a path."""
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        if isinstance(host, str) and ":" in host:
            return f"[{host}]:{port}"
        return f"{host}:{port}"
    if isinstance(address, bytes):
        return address.decode("utf-8", "backslashreplace") or "<unnamed>"
    if address == "" or address is None:
        return "<unnamed>"
    return str(address)


def report_request_error(client_address: Any, idle_timeout: float | None) -> None:
    """What the servers' default ``handle_error()`` does, sync and async alike.

    Called inside an ``except`` block. A client that reset or closed the
    connection mid-request: one info line. A limit that fired
    (``LimitExceeded``, or a read that outlived ``idle_timeout``): one warning
    line naming the limit and the client. Anything else: an error with traceback.
    """
    from ._errors import IdleTimeoutExpired, LimitExceeded  # late: _errors imports this module

    exc = sys.exc_info()[1]
    if isinstance(exc, (ConnectionResetError, ConnectionAbortedError, BrokenPipeError)):
        # The client vanished mid-request: routine on a busy server, not a bug here.
        logger.info("client %s went away mid-request: %s", format_address(client_address), exc)
    elif isinstance(exc, LimitExceeded):
        logger.warning("%s: closing the connection", exc)
    elif isinstance(exc, TimeoutError) and idle_timeout is not None:
        logger.warning("%s: closing the connection", IdleTimeoutExpired(idle_timeout, client_address))
    else:
        logger.error("exception while handling a request from %s", format_address(client_address), exc_info=True)
