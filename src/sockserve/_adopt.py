"""Serve a socket someone else bound: a server made around an inherited
listening socket (systemd's socket activation, a reloader's parent) instead
of one it binds itself.

The server is made as the stdlib lets one be made without binding
(``bind_and_activate=False``), and its own fresh socket is swapped for the
inherited one before anything is done with it. So ``server_bind()`` and
``server_activate()`` never run: nothing is bound or listened on again (the
backlog stays the one the manager chose), no option is changed, and a Unix
server never claims the path, so it never treats a live socket file as stale
at start and never unlinks it on ``server_close()`` (the file is the
manager's, which keeps listening on it).

Two exceptions, both what an event loop cannot do without. An async server's
socket is made non-blocking, as its ``server_activate()`` would make it. And
where an async stream server lets the loop accept (``aio/_loop.py``:
``accept_with_loop``), asyncio and uvloop both call ``listen()`` on the
socket when they start serving, which only sets the backlog; sockserve then
puts back ``request_queue_size``. So that what is put back is the manager's
backlog (``Backlog=``), ``request_queue_size`` is set from the socket: a TCP
socket's kernel reports it (``TCP_INFO``); a Unix socket's does not, and keeps
the class's (4096 for the async servers, systemd's own default).

The server owns the socket object it is given: ``server_close()`` closes
that descriptor (the manager keeps its own copy).
"""

from __future__ import annotations

import socket
import sys

from ._socket_activation import SocketActivationError, _kind_label

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see sockserve/__init__.py)
if TYPE_CHECKING:
    from typing import Any, TypeVar

    _S = TypeVar("_S")

__all__ = ["adopt"]

_IP = (socket.AF_INET, socket.AF_INET6)
_TCP_LISTEN = 10  # tcpi_state of a listening socket (include/net/tcp_states.h)


def adopt(server_class: type[_S], sock: socket.socket, handler_class: Any, **options: Any) -> _S:
    """A ``server_class`` serving ``handler_class`` on ``sock``, an already
    bound (and, for a stream socket, listening) socket, which it never binds
    or listens on again; ``server_address`` is the socket's own address.

    ``options`` are server attributes set before it is returned (``limits``,
    ``tls``, ``pool_max_workers``...); a name the class does not have is a
    ``TypeError``, as a misspelt keyword argument would be.

    Works for every sockserve server class, synchronous (sequential, thread,
    pool, framed, fork) or async, TCP, UDP or Unix, and for the user's
    subclasses of them that keep the stdlib's constructor.

    Raises:
        SocketActivationError: (a ``ValueError``) ``sock`` does not fit the
            class: another family (an IP class given a Unix socket, or the
            reverse) or type (stream or datagram), a stream socket that is
            not listening, a datagram socket that is not bound, or a closed
            socket.
    """
    address = _check_fits(server_class, sock)
    for name in options:
        if not hasattr(server_class, name):
            raise TypeError(f"adopt(): {server_class.__name__} has no option {name!r}")
    server: Any = server_class(address, handler_class, bind_and_activate=False)  # type: ignore[call-arg]
    made = getattr(server, "socket", None)
    server.socket = sock
    if made is not None and made is not sock:
        made.close()
    if sock.family != server.address_family:
        # An IPv6 socket given to a class that kept AF_INET (ListenStream=9000
        # gives a dual-stack IPv6 socket): the instance says what it serves,
        # as a server bound to an IPv6 address does.
        server.address_family = sock.family
    server.server_address = address
    backlog = _tcp_backlog(sock)
    if backlog is not None:
        server.request_queue_size = backlog
    aio_server = sys.modules.get("sockserve.aio._server")  # an async class has loaded it
    if aio_server is not None and isinstance(server, aio_server.AsyncBaseServer):
        sock.setblocking(False)  # what its server_activate() does beyond listen(): the loop needs it
    for name, value in options.items():
        setattr(server, name, value)
    return server  # type: ignore[no-any-return]


def _check_fits(server_class: type[Any], sock: socket.socket) -> Any:
    """The socket's address, once it is known to fit ``server_class``."""
    name = server_class.__name__
    if sock.fileno() < 0:
        raise SocketActivationError(f"cannot serve {name} on a closed socket")
    family = getattr(server_class, "address_family", socket.AF_INET)
    kind = getattr(server_class, "socket_type", socket.SOCK_STREAM)
    same_family = sock.family == family or (sock.family in _IP and family in _IP)
    if not same_family or sock.type != kind:
        raise SocketActivationError(
            f"{name} serves {_kind_label(family, kind)} sockets, "
            f"not a {_kind_label(sock.family, sock.type)} socket (fd {sock.fileno()})"
        )
    address = sock.getsockname()
    if kind == socket.SOCK_STREAM:
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            raise SocketActivationError(
                f"{name} needs a listening socket: fd {sock.fileno()} is a stream socket that is not listening "
                "(a connected socket, as Accept=yes passes, or one never given listen())"
            )
    elif not _is_bound(address):
        raise SocketActivationError(f"{name} needs a bound socket: datagram socket fd {sock.fileno()} has no address")
    return address


def _tcp_backlog(sock: socket.socket) -> int | None:
    """The backlog a listening TCP socket was given, or None where the kernel
    does not say. Linux's TCP_INFO reports a listener's ``sk_max_ack_backlog``
    in ``tcpi_sacked`` (and its queue in ``tcpi_unacked``)."""
    if sock.family not in _IP or sock.type != socket.SOCK_STREAM or not hasattr(socket, "TCP_INFO"):
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 32)
    except OSError:
        return None
    if len(info) < 32 or info[0] != _TCP_LISTEN:
        return None
    return int.from_bytes(info[28:32], sys.byteorder)


def _is_bound(address: Any) -> bool:
    if isinstance(address, tuple):
        return len(address) >= 2 and address[1] != 0
    return bool(address)  # a Unix socket: '' (or b'') until bound
