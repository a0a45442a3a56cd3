"""sockserve's ready-made ThreadPool* server classes.

Apart from the stdlib's Threading*/Forking* ones (``_combos``), so that a
program using those does not load the worker pool, its reactor and the framed
connection it never runs.
"""

from __future__ import annotations

from ._inet_servers import TCPServer, UDPServer
from ._pool import ThreadPoolMixIn
from ._unix_servers import UnixDatagramServer, UnixStreamServer


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
