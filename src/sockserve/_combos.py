"""The ready-made server classes: the stdlib's Threading*/Forking* ones, and
sockserve's ThreadPool* ones.

The Forking*Unix* pair is offered on every supported Python, not only on 3.12+
where the stdlib added it.
"""

from __future__ import annotations

import os

from ._forking import ForkingMixIn
from ._inet_servers import TCPServer, UDPServer
from ._pool import ThreadPoolMixIn
from ._threading import ThreadingMixIn
from ._unix_servers import UnixDatagramServer, UnixStreamServer


class ThreadingTCPServer(ThreadingMixIn, TCPServer):
    """TCP server with a thread per connection."""


class ThreadingUDPServer(ThreadingMixIn, UDPServer):
    """UDP server with a thread per datagram."""


class ThreadingUnixStreamServer(ThreadingMixIn, UnixStreamServer):
    """Unix stream server with a thread per connection."""


class ThreadingUnixDatagramServer(ThreadingMixIn, UnixDatagramServer):
    """Unix datagram server with a thread per datagram."""


class ThreadPoolTCPServer(ThreadPoolMixIn, TCPServer):
    """TCP server with a bounded pool of reused threads.

    Unlike the drop-in names, it sets ``allow_reuse_address``: a restarted
    server binds its port again at once, while its last connections are in
    TIME_WAIT. (Never on UDP, where SO_REUSEADDR lets two servers share a
    port without a word.)
    """

    allow_reuse_address = True


class ThreadPoolUDPServer(ThreadPoolMixIn, UDPServer):
    """UDP server with a bounded pool of reused threads."""


class ThreadPoolUnixStreamServer(ThreadPoolMixIn, UnixStreamServer):
    """Unix stream server with a bounded pool of reused threads."""

    allow_reuse_address = True  # as ThreadPoolTCPServer (the kernel ignores it on Unix sockets)


class ThreadPoolUnixDatagramServer(ThreadPoolMixIn, UnixDatagramServer):
    """Unix datagram server with a bounded pool of reused threads."""


if hasattr(os, "fork"):

    class ForkingTCPServer(ForkingMixIn, TCPServer):
        """TCP server with a process per connection."""

    class ForkingUDPServer(ForkingMixIn, UDPServer):
        """UDP server with a process per datagram."""

    class ForkingUnixStreamServer(ForkingMixIn, UnixStreamServer):
        """Unix stream server with a process per connection."""

    class ForkingUnixDatagramServer(ForkingMixIn, UnixDatagramServer):
        """Unix datagram server with a process per datagram."""
