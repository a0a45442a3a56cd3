"""TCPServer and UDPServer: binding, listening, accepting and receiving.

Beyond the stdlib, an IPv6 address such as ``("::", 0)`` or ``("::1", 8000)``
works with the plain classes: the family is taken from the address when the
class keeps the default ``AF_INET``. Binding the IPv6 wildcard ``"::"`` is
dual-stack (IPv4 clients arrive as ``::ffff:a.b.c.d``) on every platform,
instead of depending on the ``net.ipv6.bindv6only`` setting.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable

from ._base_server import BaseServer
from ._errors import DatagramTooLarge
from ._log import log_dropped

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see sockserve/__init__.py)
if TYPE_CHECKING:
    from typing import Any

    from typing_extensions import Self

    from ._framed import FramedRequestHandler


def _family_for(default_family: int, server_address: Any) -> int:
    """AF_INET6 for an IPv6 address given to a server that kept AF_INET."""
    if default_family != socket.AF_INET or not isinstance(server_address, tuple):
        return default_family
    if len(server_address) == 4:
        return socket.AF_INET6
    host = server_address[0] if server_address else None
    if isinstance(host, (bytes, bytearray)):
        host = bytes(host).decode("ascii", "replace")
    if isinstance(host, str) and ":" in host:
        return socket.AF_INET6
    return default_family


def _is_ipv6_wildcard(server_address: Any) -> bool:
    host = server_address[0] if isinstance(server_address, tuple) and server_address else None
    if not isinstance(host, str) or not host:
        return False
    import ipaddress  # here: only an IPv6 server pays for loading it

    try:
        return ipaddress.IPv6Address(host.split("%", 1)[0]) == ipaddress.IPv6Address("::")
    except ValueError:
        return False


def bind_socket(sock: socket.socket, address: Any, *, reuse_address: bool, reuse_port: bool) -> Any:
    """Bind ``sock`` the way every sockserve server does; return the real address.

    SO_REUSEPORT only for IP sockets (Linux refuses it on AF_UNIX); the IPv6
    wildcard is made dual-stack.
    """
    inet = sock.family in (socket.AF_INET, socket.AF_INET6)
    if reuse_address and hasattr(socket, "SO_REUSEADDR"):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port and inet and hasattr(socket, "SO_REUSEPORT"):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if sock.family == socket.AF_INET6 and _is_ipv6_wildcard(address):
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind(address)
    return sock.getsockname()


def receive_datagram(sock: socket.socket, max_packet_size: int) -> tuple[bytes, Any]:
    """One datagram of at most ``max_packet_size`` bytes, and its sender.

    One byte more is asked for than is allowed: a datagram that fills it was
    longer than the limit, and the kernel cut it. It is dropped, with a log
    line naming the sender (rate-limited), instead of being passed on cut.

    Raises:
        DatagramTooLarge: the datagram was longer than ``max_packet_size``.
        OSError: the receive failed (e.g. nothing to receive on a non-blocking socket).
    """
    data, client_address = sock.recvfrom(max_packet_size + 1)
    if len(data) > max_packet_size:
        error = DatagramTooLarge(max_packet_size, client_address)
        log_dropped(error)
        raise error
    return data, client_address


def open_listener(server: Any, server_address: Any, bind_and_activate: bool, *, tcp_proto: bool = False) -> None:
    """The second half of every server constructor, sync and async: take the
    family from the address, make ``server.socket``, then bind and activate it,
    closing the server if either fails. ``tcp_proto`` names IPPROTO_TCP
    explicitly on IP stream sockets (the stdlib passes 0)."""
    family = _family_for(server.address_family, server_address)
    if family != server.address_family:
        server.address_family = family
    inet_stream = server.socket_type == socket.SOCK_STREAM and family in (socket.AF_INET, socket.AF_INET6)
    proto = socket.IPPROTO_TCP if tcp_proto and inet_stream else 0
    server.socket = socket.socket(family, server.socket_type, proto)
    if bind_and_activate:
        try:
            server.server_bind()
            server.server_activate()
        except BaseException:
            server.server_close()
            raise


class TCPServer(BaseServer):
    """Base class for various socket-based server classes.

    Defaults to synchronous IP stream (i.e., TCP).

    Methods for the caller: as BaseServer, plus ``fileno()``.

    Methods that may be overridden: as BaseServer, plus ``server_bind()``.

    Class variables that may be overridden by derived classes or instances:

    - address_family (AF_INET; an IPv6 address switches the instance to AF_INET6)
    - socket_type
    - request_queue_size (only for stream sockets)
    - allow_reuse_address
    - allow_reuse_port

    Instance variables:

    - server_address (after binding: the address the kernel chose, e.g. the port for port 0)
    - RequestHandlerClass
    - socket
    """

    address_family: int = socket.AF_INET
    socket_type: int = socket.SOCK_STREAM
    # The stdlib's value, kept so the drop-in behaves the same; sockserve's own
    # production servers ask for a deeper backlog.
    request_queue_size: int = 5
    allow_reuse_address: bool = False
    allow_reuse_port: bool = False

    def __init__(
        self,
        server_address: Any,
        RequestHandlerClass: Callable[[Any, Any, Self], object] | type[FramedRequestHandler],  # noqa: N803 - stdlib name
        bind_and_activate: bool = True,
    ) -> None:
        # Named, not super(), as the stdlib does: in a user's mixture of server
        # classes, the next class in the MRO must not run here instead.
        BaseServer.__init__(self, server_address, RequestHandlerClass)
        open_listener(self, server_address, bind_and_activate)

    def server_bind(self) -> None:
        """Bind the socket; afterwards ``server_address`` is the real address."""
        self.server_address = bind_socket(
            self.socket, self.server_address, reuse_address=self.allow_reuse_address, reuse_port=self.allow_reuse_port
        )

    def server_activate(self) -> None:
        self.socket.listen(self.request_queue_size)

    def server_close(self) -> None:
        super().server_close()
        self.socket.close()

    def fileno(self) -> int:
        return self.socket.fileno()

    def get_request(self) -> tuple[Any, Any]:
        return self.socket.accept()

    def shutdown_request(self, request: Any) -> None:
        ssl = sys.modules.get("ssl")  # not loaded: no request can be a TLS socket
        if ssl is not None and isinstance(request, ssl.SSLSocket):
            from ._edge_stages import end_tls_session

            end_tls_session(request)
        try:
            # Tell the client we are done before closing, so a reply is not
            # cut off by a reset when unread input remains.
            request.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the client may have closed already; closing is all that is left
        self.close_request(request)

    def close_request(self, request: Any) -> None:
        request.close()


class UDPServer(TCPServer):
    """UDP server class: each datagram is a request ``(data, socket)``.

    A datagram longer than ``max_packet_size`` is dropped with a log line
    (``DatagramTooLarge``), where the stdlib hands the handler its first
    ``max_packet_size`` bytes as if they were the whole datagram.
    """

    allow_reuse_address = False
    socket_type = socket.SOCK_DGRAM
    max_packet_size = 8192

    def get_request(self) -> tuple[Any, Any]:
        # receive_datagram(), written out: this runs once per datagram.
        sock = self.socket
        max_packet_size = self.max_packet_size
        data, client_address = sock.recvfrom(max_packet_size + 1)
        if len(data) > max_packet_size:
            error = DatagramTooLarge(max_packet_size, client_address)
            log_dropped(error)
            raise error
        return (data, sock), client_address

    def server_activate(self) -> None:
        """Datagram sockets do not listen."""

    def shutdown_request(self, request: Any) -> None:
        self.close_request(request)

    def close_request(self, request: Any) -> None:
        """The socket is shared by all requests: nothing to close."""
