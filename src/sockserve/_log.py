"""The ``sockserve`` logger and how addresses appear in its messages.

The library only emits records; configuring handlers is the application's job
(the CLI does it for its own commands).
"""

from __future__ import annotations

import logging
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
