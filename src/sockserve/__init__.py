"""sockserve: a framework for network servers.

A drop-in for the stdlib's ``socketserver`` (``import sockserve as
socketserver``), made fit for production. This module is the public API: it
re-exports names from the private modules and lists them in ``__all__``; it
defines nothing itself.

Each name is imported from its module on first use (PEP 562), so ``import
sockserve`` costs about what ``import socketserver`` does, and a program pays
only for the parts it uses: a threading server does not load the worker pool.
Type checkers and editors read the imports under ``TYPE_CHECKING`` instead.
"""

from __future__ import annotations

import os as _os

# typing.TYPE_CHECKING without importing typing (mypy and pyright honour the name).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._access import AccessList as AccessList
    from ._admin import AdminServer as AdminServer
    from ._base_server import BaseServer as BaseServer
    from ._combos import ForkingTCPServer as ForkingTCPServer
    from ._combos import ForkingUDPServer as ForkingUDPServer
    from ._combos import ForkingUnixDatagramServer as ForkingUnixDatagramServer
    from ._combos import ForkingUnixStreamServer as ForkingUnixStreamServer
    from ._combos import ThreadingTCPServer as ThreadingTCPServer
    from ._combos import ThreadingUDPServer as ThreadingUDPServer
    from ._combos import ThreadingUnixDatagramServer as ThreadingUnixDatagramServer
    from ._combos import ThreadingUnixStreamServer as ThreadingUnixStreamServer
    from ._connection_info import ConnectionInfo as ConnectionInfo
    from ._drain import DEFAULT_GRACE as DEFAULT_GRACE
    from ._drain import DrainReport as DrainReport
    from ._errors import AccessDenied as AccessDenied
    from ._errors import ConnectionDeadlineExceeded as ConnectionDeadlineExceeded
    from ._errors import ConnectionLimitReached as ConnectionLimitReached
    from ._errors import DatagramTooLarge as DatagramTooLarge
    from ._errors import IdleTimeoutExpired as IdleTimeoutExpired
    from ._errors import LimitExceeded as LimitExceeded
    from ._errors import LineTooLong as LineTooLong
    from ._errors import MalformedProxyHeader as MalformedProxyHeader
    from ._errors import NotAProxyHeader as NotAProxyHeader
    from ._errors import ProxyHeaderError as ProxyHeaderError
    from ._errors import ProxyHeaderTooLong as ProxyHeaderTooLong
    from ._errors import RequestTooLarge as RequestTooLarge
    from ._errors import SocketPathInUse as SocketPathInUse
    from ._errors import SocketPathNotASocket as SocketPathNotASocket
    from ._errors import SockserveError as SockserveError
    from ._errors import UnsupportedProxyHeader as UnsupportedProxyHeader
    from ._forking import ForkingMixIn as ForkingMixIn
    from ._framed import FramedRequestHandler as FramedRequestHandler
    from ._handlers import BaseRequestHandler as BaseRequestHandler
    from ._handlers import DatagramRequestHandler as DatagramRequestHandler
    from ._handlers import StreamRequestHandler as StreamRequestHandler
    from ._health import Health as Health
    from ._inet_servers import TCPServer as TCPServer
    from ._inet_servers import UDPServer as UDPServer
    from ._limits import Limits as Limits
    from ._log_format import JsonFormatter as JsonFormatter
    from ._metrics import Metrics as Metrics
    from ._metrics import MetricsSnapshot as MetricsSnapshot
    from ._pool import ThreadPoolMixIn as ThreadPoolMixIn
    from ._pool_servers import ThreadPoolTCPServer as ThreadPoolTCPServer
    from ._pool_servers import ThreadPoolUDPServer as ThreadPoolUDPServer
    from ._pool_servers import ThreadPoolUnixDatagramServer as ThreadPoolUnixDatagramServer
    from ._pool_servers import ThreadPoolUnixStreamServer as ThreadPoolUnixStreamServer
    from ._proxy_stage import ProxyProtocol as ProxyProtocol
    from ._serve import serve as serve
    from ._serve import serve_all as serve_all
    from ._threading import ThreadingMixIn as ThreadingMixIn
    from ._tls import TLSConfig as TLSConfig
    from ._tls import TLSConfigError as TLSConfigError
    from ._tls import TLSInfo as TLSInfo
    from ._unix_servers import UnixDatagramServer as UnixDatagramServer
    from ._unix_servers import UnixStreamServer as UnixStreamServer
    from ._worker_pool import WorkerPool as WorkerPool

__version__ = "0.1.0"

# The module that defines each public name (the imports above, for run time).
_MODULES = {
    "BaseServer": "_base_server",
    "TCPServer": "_inet_servers",
    "UDPServer": "_inet_servers",
    "ThreadingUDPServer": "_combos",
    "ThreadingTCPServer": "_combos",
    "BaseRequestHandler": "_handlers",
    "StreamRequestHandler": "_handlers",
    "DatagramRequestHandler": "_handlers",
    "ThreadingMixIn": "_threading",
    "ThreadingUnixStreamServer": "_combos",
    "ThreadingUnixDatagramServer": "_combos",
    "UnixStreamServer": "_unix_servers",
    "UnixDatagramServer": "_unix_servers",
    "DEFAULT_GRACE": "_drain",
    "ConnectionDeadlineExceeded": "_errors",
    "ConnectionLimitReached": "_errors",
    "DatagramTooLarge": "_errors",
    "DrainReport": "_drain",
    "FramedRequestHandler": "_framed",
    "IdleTimeoutExpired": "_errors",
    "LimitExceeded": "_errors",
    "Limits": "_limits",
    "Metrics": "_metrics",
    "MetricsSnapshot": "_metrics",
    "LineTooLong": "_errors",
    "MalformedProxyHeader": "_errors",
    "NotAProxyHeader": "_errors",
    "ProxyHeaderError": "_errors",
    "ProxyHeaderTooLong": "_errors",
    "UnsupportedProxyHeader": "_errors",
    "RequestTooLarge": "_errors",
    "ThreadPoolMixIn": "_pool",
    "ThreadPoolTCPServer": "_pool_servers",
    "ThreadPoolUDPServer": "_pool_servers",
    "ThreadPoolUnixDatagramServer": "_pool_servers",
    "ThreadPoolUnixStreamServer": "_pool_servers",
    "WorkerPool": "_worker_pool",
    "SockserveError": "_errors",
    "serve": "_serve",
    "SocketPathInUse": "_errors",
    "SocketPathNotASocket": "_errors",
    "AccessDenied": "_errors",
    "AccessList": "_access",
    "ConnectionInfo": "_connection_info",
    "ProxyProtocol": "_proxy_stage",
    "TLSConfig": "_tls",
    "TLSConfigError": "_tls",
    "TLSInfo": "_tls",
    "AdminServer": "_admin",
    "Health": "_health",
    "JsonFormatter": "_log_format",
    "serve_all": "_serve",
}
if hasattr(_os, "fork"):
    _MODULES.update(
        ForkingMixIn="_forking",
        ForkingTCPServer="_combos",
        ForkingUDPServer="_combos",
        ForkingUnixDatagramServer="_combos",
        ForkingUnixStreamServer="_combos",
    )

# The stdlib's names first, in the stdlib's order.
__all__ = [
    "BaseServer",
    "TCPServer",
    "UDPServer",
    "ThreadingUDPServer",
    "ThreadingTCPServer",
    "BaseRequestHandler",
    "StreamRequestHandler",
    "DatagramRequestHandler",
    "ThreadingMixIn",
    "ThreadingUnixStreamServer",
    "ThreadingUnixDatagramServer",
    "UnixStreamServer",
    "UnixDatagramServer",
    # sockserve's own
    "DEFAULT_GRACE",
    "ConnectionDeadlineExceeded",
    "ConnectionLimitReached",
    "DatagramTooLarge",
    "DrainReport",
    "FramedRequestHandler",
    "IdleTimeoutExpired",
    "LimitExceeded",
    "Limits",
    "LineTooLong",
    "Metrics",
    "MetricsSnapshot",
    "MalformedProxyHeader",
    "NotAProxyHeader",
    "ProxyHeaderError",
    "ProxyHeaderTooLong",
    "RequestTooLarge",
    "ThreadPoolMixIn",
    "ThreadPoolTCPServer",
    "ThreadPoolUDPServer",
    "ThreadPoolUnixDatagramServer",
    "ThreadPoolUnixStreamServer",
    "WorkerPool",
    "SockserveError",
    "serve",
    "SocketPathInUse",
    "SocketPathNotASocket",
    "UnsupportedProxyHeader",
    "AccessDenied",
    "AccessList",
    "ConnectionInfo",
    "ProxyProtocol",
    "TLSConfig",
    "TLSConfigError",
    "TLSInfo",
    "AdminServer",
    "Health",
    "JsonFormatter",
    "serve_all",
]

if hasattr(_os, "fork"):
    __all__ += [
        "ForkingMixIn",
        "ForkingTCPServer",
        "ForkingUDPServer",
        "ForkingUnixDatagramServer",
        "ForkingUnixStreamServer",
    ]


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
