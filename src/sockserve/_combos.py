"""The ready-made Threading*/Forking* server classes the stdlib exports.

The Forking*Unix* pair is offered on every supported Python, not only on 3.12+
where the stdlib added it.
"""

from __future__ import annotations

import os

from ._forking import ForkingMixIn
from ._inet_servers import TCPServer, UDPServer
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


if hasattr(os, "fork"):

    class ForkingTCPServer(ForkingMixIn, TCPServer):
        """TCP server with a process per connection."""

    class ForkingUDPServer(ForkingMixIn, UDPServer):
        """UDP server with a process per datagram."""

    class ForkingUnixStreamServer(ForkingMixIn, UnixStreamServer):
        """Unix stream server with a process per connection."""

    class ForkingUnixDatagramServer(ForkingMixIn, UnixDatagramServer):
        """Unix datagram server with a process per datagram."""
