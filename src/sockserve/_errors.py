"""Every exception sockserve raises, in one place.

The tree::

    SockserveError                          base of everything below
    ├── SocketPathInUse (OSError)           a Unix socket path has a live server on it
    ├── SocketPathNotASocket (OSError)      a Unix socket path exists and is not a socket
    ├── DatagramTooLarge (OSError)          a datagram over max_packet_size, dropped
    └── LimitExceeded                       a limit that protects the server fired
        ├── ConnectionLimitReached          too many connections (from one client)
        ├── LineTooLong (ValueError)        a line longer than the reader's cap
        ├── RequestTooLarge (ValueError)    a framed request over its framer's cap
        ├── IdleTimeoutExpired (TimeoutError)     the client sent nothing for too long
        └── ConnectionDeadlineExceeded (TimeoutError)  the connection lasted too long in all
    └── ProxyHeaderError (ValueError)       a PROXY protocol header that cannot be accepted
        ├── NotAProxyHeader                 the first bytes can start neither v1 nor v2
        ├── ProxyHeaderTooLong              a v1 line over 107 bytes, a v2 header over the cap
        ├── MalformedProxyHeader            a bad v1 field, a v2 address block or TLV cut short
        └── UnsupportedProxyHeader          a v2 version, command, family or protocol not in the spec

Each class subclasses what callers of the stdlib already catch (``OSError`` for
bind failures), so code written for ``socketserver`` keeps working, and says in
its message which path or limit was involved.
"""

from __future__ import annotations

import errno
import os

from ._address import format_address

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see sockserve/__init__.py)
if TYPE_CHECKING:
    from typing import Any

__all__ = ["SocketPathInUse", "SocketPathNotASocket", "SockserveError"]


class SockserveError(Exception):
    """Base class of every exception raised by sockserve itself."""


class SocketPathInUse(SockserveError, OSError):
    """Raised at bind time when another live server owns the Unix socket path.

    The stdlib raises a bare ``OSError(EADDRINUSE)`` both for a live server and
    for a stale socket file left by a dead one; sockserve replaces stale files
    and raises this only when a server really answers on the path.
    """

    def __init__(self, path: str | bytes | os.PathLike[str] | os.PathLike[bytes]) -> None:
        super().__init__(
            errno.EADDRINUSE,
            f"another server is live on Unix socket {os.fsdecode(path)!r}; refusing to take it over",
            os.fsdecode(path),
        )


class SocketPathNotASocket(SockserveError, OSError):
    """Raised at bind time when the Unix socket path exists but is not a socket.

    sockserve never deletes such a path: it may be a user's file.
    """

    def __init__(self, path: str | bytes | os.PathLike[str] | os.PathLike[bytes]) -> None:
        super().__init__(
            errno.EEXIST,
            f"{os.fsdecode(path)!r} exists and is not a socket; refusing to replace it",
            os.fsdecode(path),
        )


class DatagramTooLarge(SockserveError, OSError):
    """A datagram longer than the server's ``max_packet_size`` arrived; the
    kernel cut it, and sockserve dropped it rather than pass it on cut.
    ``limit`` is the size allowed, ``client_address`` the sender."""

    def __init__(self, limit: int, client_address: Any = None) -> None:
        super().__init__(
            errno.EMSGSIZE, f"datagram{_client(client_address)} dropped: longer than max_packet_size={limit} bytes"
        )
        self.limit = limit
        self.client_address = client_address

    def __str__(self) -> str:
        return str(self.strerror)  # the sentence alone, without OSError's "[Errno 90]"


def _client(client_address: Any) -> str:
    return "" if client_address is None else f" from {format_address(client_address)}"


class LimitExceeded(SockserveError):
    """A limit that protects the server fired. ``limit`` is its value and
    ``client_address`` the client it fired for (None when not known)."""

    def __init__(self, message: str, limit: float, client_address: Any = None) -> None:
        super().__init__(message)
        self.limit = limit
        self.client_address = client_address


class ConnectionLimitReached(LimitExceeded):
    """A new connection was refused: the server, or this client's address,
    already has ``limit`` connections open."""

    def __init__(self, limit: int, client_address: Any = None, *, per_ip: bool = False) -> None:
        scope = "max_connections_per_ip" if per_ip else "max_connections"
        super().__init__(f"connection refused{_client(client_address)}: {scope}={limit} reached", limit, client_address)
        self.per_ip = per_ip


class LineTooLong(LimitExceeded, ValueError):
    """A line did not end within ``limit`` bytes. The reader does not buffer
    past the limit, so an endless line cannot exhaust memory."""

    def __init__(self, limit: int, client_address: Any = None) -> None:
        super().__init__(f"line longer than {limit} bytes{_client(client_address)}", limit, client_address)


class RequestTooLarge(LimitExceeded, ValueError):
    """A framed request announced ``size`` bytes, over the framer's cap ``limit``.
    Nothing of it is buffered past its header."""

    def __init__(self, size: int, limit: int, client_address: Any = None) -> None:
        super().__init__(
            f"request of {size} bytes{_client(client_address)} over the limit of {limit} bytes", limit, client_address
        )
        self.size = size


class IdleTimeoutExpired(LimitExceeded, TimeoutError):
    """The client sent nothing for ``limit`` seconds while the handler waited for it."""

    def __init__(self, limit: float, client_address: Any = None) -> None:
        super().__init__(f"idle timeout ({limit:g}s) expired{_client(client_address)}", limit, client_address)


class ConnectionDeadlineExceeded(LimitExceeded, TimeoutError):
    """The connection was open for longer than ``limit`` seconds in all."""

    def __init__(self, limit: float, client_address: Any = None) -> None:
        super().__init__(f"connection deadline ({limit:g}s) exceeded{_client(client_address)}", limit, client_address)


class ProxyHeaderError(SockserveError, ValueError):
    """A PROXY protocol header (``sockserve.protocol.proxy``) that cannot be
    accepted; the message says which rule it broke. The connection should be
    closed: what follows the header cannot be trusted."""


class NotAProxyHeader(ProxyHeaderError):
    """The first bytes can become neither a v1 nor a v2 header: the peer is
    not a proxy (decided at once, without waiting for a whole header)."""


class ProxyHeaderTooLong(ProxyHeaderError):
    """A v1 line with no CRLF within 107 bytes, or a v2 header whose length
    field announces more than the parser's ``max_size`` (``limit``)."""

    def __init__(self, message: str, limit: int) -> None:
        super().__init__(message)
        self.limit = limit


class MalformedProxyHeader(ProxyHeaderError):
    """A header that breaks the spec's syntax: a bad v1 field, a v2 address
    block shorter than its family needs, a TLV cut short."""


class UnsupportedProxyHeader(ProxyHeaderError):
    """A v2 header with a version, command, address family or transport
    protocol that the spec does not define."""


class AccessDenied(SockserveError):
    """A client that the server's ``AccessList`` does not allow: its
    connection is closed before any handler runs."""

    def __init__(self, client_address: Any = None) -> None:
        super().__init__(f"connection{_client(client_address)} denied by the access list")
        self.client_address = client_address
