"""How a socket address is written in messages: one format everywhere, in log
lines and in exceptions alike. Imports nothing of sockserve's, so every
module may use it."""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see sockserve/__init__.py)
if TYPE_CHECKING:
    from typing import Any


def format_address(address: Any) -> str:
    """Render a socket address: ``host:port``, ``[v6]:port``, a Unix path, or ``@name`` (abstract)."""
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        if isinstance(host, str) and ":" in host:
            return f"[{host}]:{port}"
        return f"{host}:{port}"
    if isinstance(address, bytes):
        address = address.decode("utf-8", "backslashreplace")
    if address == "" or address is None:
        return "<unnamed>"
    if isinstance(address, str) and address[:1] == "\0":
        return "@" + address[1:]  # an abstract Unix name, as the unix:@NAME bind syntax writes it
    return str(address)
