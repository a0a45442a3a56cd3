"""sockserve: a framework for network servers.

A drop-in for the stdlib's ``socketserver`` (``import sockserve as
socketserver``), made fit for production. This module is the public API: it
re-exports names from the private modules and lists them in ``__all__``; it
defines nothing itself.
"""

from __future__ import annotations

import os as _os

from ._base_server import BaseServer as BaseServer
from ._combos import ThreadingTCPServer as ThreadingTCPServer
from ._combos import ThreadingUDPServer as ThreadingUDPServer
from ._combos import ThreadingUnixDatagramServer as ThreadingUnixDatagramServer
from ._combos import ThreadingUnixStreamServer as ThreadingUnixStreamServer
from ._combos import ThreadPoolTCPServer as ThreadPoolTCPServer
from ._combos import ThreadPoolUDPServer as ThreadPoolUDPServer
from ._combos import ThreadPoolUnixDatagramServer as ThreadPoolUnixDatagramServer
from ._combos import ThreadPoolUnixStreamServer as ThreadPoolUnixStreamServer
from ._drain import DEFAULT_GRACE as DEFAULT_GRACE
from ._drain import DrainReport as DrainReport
from ._errors import ConnectionDeadlineExceeded as ConnectionDeadlineExceeded
from ._errors import ConnectionLimitReached as ConnectionLimitReached
from ._errors import DatagramTooLarge as DatagramTooLarge
from ._errors import IdleTimeoutExpired as IdleTimeoutExpired
from ._errors import LimitExceeded as LimitExceeded
from ._errors import LineTooLong as LineTooLong
from ._errors import RequestTooLarge as RequestTooLarge
from ._errors import SocketPathInUse as SocketPathInUse
from ._errors import SocketPathNotASocket as SocketPathNotASocket
from ._errors import SockserveError as SockserveError
from ._forking import ForkingMixIn as ForkingMixIn
from ._framed import FramedRequestHandler as FramedRequestHandler
from ._handlers import BaseRequestHandler as BaseRequestHandler
from ._handlers import DatagramRequestHandler as DatagramRequestHandler
from ._handlers import StreamRequestHandler as StreamRequestHandler
from ._inet_servers import TCPServer as TCPServer
from ._inet_servers import UDPServer as UDPServer
from ._limits import Limits as Limits
from ._pool import ThreadPoolMixIn as ThreadPoolMixIn
from ._serve import serve as serve
from ._threading import ThreadingMixIn as ThreadingMixIn
from ._unix_servers import UnixDatagramServer as UnixDatagramServer
from ._unix_servers import UnixStreamServer as UnixStreamServer
from ._worker_pool import WorkerPool as WorkerPool

__version__ = "0.1.0"

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
]

if hasattr(_os, "fork"):
    from ._combos import ForkingTCPServer as ForkingTCPServer
    from ._combos import ForkingUDPServer as ForkingUDPServer
    from ._combos import ForkingUnixDatagramServer as ForkingUnixDatagramServer
    from ._combos import ForkingUnixStreamServer as ForkingUnixStreamServer

    __all__ += [
        "ForkingMixIn",
        "ForkingTCPServer",
        "ForkingUDPServer",
        "ForkingUnixDatagramServer",
        "ForkingUnixStreamServer",
    ]
