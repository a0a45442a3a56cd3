"""Where the workers listen, taken from the server class, and the socket that
holds the port in SO_REUSEPORT mode.

The family and socket type come from the server class (``address_family``,
``socket_type``, with the servers' own rule that an IPv6 address switches a
class that kept AF_INET to AF_INET6), never from the address text.
"""

from __future__ import annotations

import dataclasses
import socket
from typing import Any

from .._inet_servers import _family_for, bind_socket
from .._log import format_address

_INET = (socket.AF_INET, socket.AF_INET6)


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """The family, socket type and address the server class will use."""

    family: int
    socket_type: int
    address: Any

    @classmethod
    def of(cls, server_class: type[Any], address: Any) -> Endpoint:
        # A class that names neither has TCPServer's defaults, as a subclass would.
        family = getattr(server_class, "address_family", socket.AF_INET)
        socket_type = getattr(server_class, "socket_type", socket.SOCK_STREAM)
        return cls(_family_for(family, address), socket_type, address)

    @property
    def is_stream(self) -> bool:
        return self.socket_type == socket.SOCK_STREAM


def check_reuse_port(endpoint: Endpoint) -> None:
    """Raise ValueError if SO_REUSEPORT mode cannot serve ``endpoint``."""
    where = format_address(endpoint.address)
    if endpoint.family == getattr(socket, "AF_UNIX", None):
        raise ValueError(
            f"reuse_port=True cannot serve the Unix socket {where!r}: a Unix socket address is bound by "
            "exactly one socket (SO_REUSEPORT exists only for TCP and UDP), so the workers cannot each bind "
            "their own; leave reuse_port False and the workers share the supervisor's socket"
        )
    if endpoint.family not in _INET:
        raise ValueError(f"reuse_port=True needs an IPv4 or IPv6 server, not address family {endpoint.family!r}")
    if endpoint.socket_type not in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        raise ValueError(f"reuse_port=True needs a stream or datagram server, not socket type {endpoint.socket_type!r}")
    if not hasattr(socket, "SO_REUSEPORT"):
        raise ValueError("reuse_port=True needs SO_REUSEPORT, which this platform does not have")


def reserve(endpoint: Endpoint) -> tuple[socket.socket, Any]:
    """Bind a socket that holds the port for the workers; returns it and the
    bound address (the real port when ``endpoint`` asked for port 0).

    It has SO_REUSEPORT, so the workers (same user) can bind beside it, and it
    must receive nothing of the traffic while it holds the port:

    * TCP: bound, never listening. The kernel routes connections only to
      listening sockets, so none reaches it (with no worker listening, a
      client is refused). No SO_REUSEADDR: on Linux two sockets that both have
      it may bind the same port as long as neither listens, so another
      program with SO_REUSEADDR could bind, and then listen, beside it.
    * UDP: a bound UDP socket in the group gets its share of the datagrams,
      which nobody would read. So it is also ``connect()``ed to its own
      address: the kernel delivers a datagram to a connected UDP socket only
      from its peer, and leaves connected sockets out when it spreads
      datagrams over a SO_REUSEPORT group. No client can send from that
      address (the port is ours), so it receives nothing, and it still makes
      a bind without SO_REUSEPORT fail with EADDRINUSE, with or without
      SO_REUSEADDR (checked on Linux 6.18; the tests check both). One limit:
      connecting narrows a wildcard socket to the local address that reaches
      the peer (its family's loopback here). So for a wildcard address, while
      no worker is bound (before the first one starts, or in a crash loop),
      the reservation holds the wildcard and loopback but not the port on
      other specific local addresses; once one worker is bound, its wildcard
      socket holds them all.
    """
    sock = socket.socket(endpoint.family, endpoint.socket_type)
    try:
        bound = bind_socket(sock, endpoint.address, reuse_address=False, reuse_port=True)
        if endpoint.socket_type == socket.SOCK_DGRAM:
            sock.connect(_self_address(bound))
    except BaseException:
        sock.close()
        raise
    return sock, bound


def _self_address(bound: Any) -> Any:
    """The address a reservation connects to: its own (as getsockname() gives
    it), with a wildcard host replaced by loopback (connecting to the wildcard
    means loopback anyway on Linux; saying so keeps it portable)."""
    if bound[0] == "0.0.0.0":
        return ("127.0.0.1", *bound[1:])
    if bound[0] == "::":
        return ("::1", *bound[1:])
    return bound
