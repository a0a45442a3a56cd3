"""The stdlib's ready-made server classes: the Threading*/Forking* ones.
sockserve's ThreadPool* ones are in ``_pool_servers``, so that these do not
load the worker pool.

The Forking*Unix* pair is offered on every supported Python, not only on 3.12+
where the stdlib added it.
"""

from __future__ import annotations

import os

from ._forking import ForkingMixIn
from ._inet_servers import TCPServer, UDPServer
from ._threading import ThreadingMixIn
from ._unix_servers import UnixDatagramServer, UnixStreamServer

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see sockserve/__init__.py)
if TYPE_CHECKING:  # at run time, through __getattr__ below
    from ._pool_servers import ThreadPoolTCPServer as ThreadPoolTCPServer
    from ._pool_servers import ThreadPoolUDPServer as ThreadPoolUDPServer
    from ._pool_servers import ThreadPoolUnixDatagramServer as ThreadPoolUnixDatagramServer
    from ._pool_servers import ThreadPoolUnixStreamServer as ThreadPoolUnixStreamServer


class ThreadingTCPServer(ThreadingMixIn, TCPServer):
    """TCP server with a thread per connection."""


class ThreadingUDPServer(ThreadingMixIn, UDPServer):
    """UDP server with a thread per datagram."""


class ThreadingUnixStreamServer(ThreadingMixIn, UnixStreamServer):
    """Unix stream server with a thread per connection."""


class ThreadingUnixDatagramServer(ThreadingMixIn, UnixDatagramServer):
    """Unix datagram server with a thread per datagram."""


if hasattr(os, "fork"):

    class ForkingTCPServer(ForkingMixIn, TCPServer):
        """TCP server with a process per connection."""

    class ForkingUDPServer(ForkingMixIn, UDPServer):
        """UDP server with a process per datagram."""

    class ForkingUnixStreamServer(ForkingMixIn, UnixStreamServer):
        """Unix stream server with a process per connection."""

    class ForkingUnixDatagramServer(ForkingMixIn, UnixDatagramServer):
        """Unix datagram server with a process per datagram."""


def __getattr__(name: str) -> object:
    """The ThreadPool* names, for code that still imports them from here."""
    if name.startswith("ThreadPool"):
        from . import _pool_servers

        return getattr(_pool_servers, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
