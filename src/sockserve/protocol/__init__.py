"""Sans-IO protocol pieces: bytes in, results out. Nothing here touches a
socket, a clock or a logger, so each can be unit-tested and fuzzed alone.

Each name is imported from its module on first use (PEP 562), as in the top
package: a server's handlers read lines through ``lines`` and never load
``framers`` (nor, through its ``Framer`` protocol, ``typing``), nor ``proxy``
(and ``ipaddress``) unless they parse PROXY headers.
"""

from __future__ import annotations

# typing.TYPE_CHECKING without importing typing (mypy and pyright honour the name).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from .framers import DEFAULT_MAX_REQUEST as DEFAULT_MAX_REQUEST
    from .framers import Framer as Framer
    from .framers import LengthPrefixFramer as LengthPrefixFramer
    from .framers import LineFramer as LineFramer
    from .lines import DEFAULT_MAX_LINE as DEFAULT_MAX_LINE
    from .lines import LineSplitter as LineSplitter
    from .proxy import DEFAULT_MAX_PROXY_HEADER as DEFAULT_MAX_PROXY_HEADER
    from .proxy import ProxyHeader as ProxyHeader
    from .proxy import ProxySSL as ProxySSL
    from .proxy import parse_proxy_datagram as parse_proxy_datagram
    from .proxy import parse_proxy_header as parse_proxy_header

__all__ = [
    "DEFAULT_MAX_LINE",
    "DEFAULT_MAX_PROXY_HEADER",
    "DEFAULT_MAX_REQUEST",
    "Framer",
    "LengthPrefixFramer",
    "LineFramer",
    "LineSplitter",
    "ProxyHeader",
    "ProxySSL",
    "parse_proxy_datagram",
    "parse_proxy_header",
]

_MODULES = {
    "DEFAULT_MAX_REQUEST": "framers",
    "Framer": "framers",
    "LengthPrefixFramer": "framers",
    "LineFramer": "framers",
    "DEFAULT_MAX_LINE": "lines",
    "LineSplitter": "lines",
    "DEFAULT_MAX_PROXY_HEADER": "proxy",
    "ProxyHeader": "proxy",
    "ProxySSL": "proxy",
    "parse_proxy_datagram": "proxy",
    "parse_proxy_header": "proxy",
}

if not TYPE_CHECKING:  # hidden from type checkers, which then flag a misspelt name

    def __getattr__(name: str) -> object:
        """Import a public name's module on first use; later uses find the name here."""
        module = _MODULES.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(__import__(module, globals(), None, [name], 1), name)
        globals()[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(globals()) | set(__all__))
