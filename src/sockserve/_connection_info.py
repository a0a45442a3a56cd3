"""What a handler may know about its connection beyond ``client_address``:
who the socket's peer is (a proxy, when there is one), the PROXY header that
named the client, and the TLS session. Handlers read it as
``self.connection_info``.

The synchronous servers keep the part only a stage knows (the PROXY header)
in a registry keyed by the request, from the end of the stages to the
connection's release; the TLS part is read from the socket itself when
asked for. A handler run without a sockserve server (a unit test, the
stdlib's servers) still gets an answer: its own address, no header.
"""

from __future__ import annotations

import sys
import threading

from ._frozen import FrozenValue

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see sockserve/__init__.py)
if TYPE_CHECKING:
    from typing import Any

    from ._tls import TLSInfo
    from .protocol.proxy import ProxyHeader


class ConnectionInfo(FrozenValue):
    """What is known about a handler's connection.

    Attributes:
        client_address: the client's address: the one a PROXY header named,
            else the socket's peer (as the handler's ``client_address``).
        peer_address: the socket's peer: the proxy, when there is one.
        proxy: the PROXY header (``sockserve.protocol.ProxyHeader``: its
            TLVs, ALPN, authority, SSL details), or None.
        tls: the TLS session (``sockserve.TLSInfo``: version, cipher, server
            name, client certificate, ALPN), or None for a plain connection.
    """

    __slots__ = ("client_address", "peer_address", "proxy", "tls")
    _fields = ("client_address", "peer_address", "proxy", "tls")

    client_address: Any
    peer_address: Any
    proxy: ProxyHeader | None
    tls: TLSInfo | None

    def __init__(
        self,
        client_address: Any,
        peer_address: Any = None,
        proxy: ProxyHeader | None = None,
        tls: TLSInfo | None = None,
    ) -> None:
        self._freeze(client_address, client_address if peer_address is None else peer_address, proxy, tls)


def tls_info_of(transport_or_socket: Any) -> TLSInfo | None:
    """The TLS session of an ``ssl.SSLSocket`` or ``ssl.SSLObject``, else None."""
    ssl = sys.modules.get("ssl")  # not loaded: nothing can be a TLS socket, and a plain server need not load it
    if ssl is None or not isinstance(transport_or_socket, (ssl.SSLSocket, ssl.SSLObject)):
        return None
    from ._tls import tls_info

    return tls_info(transport_or_socket)


class ProxiedConnections:
    """The PROXY headers of a synchronous server's connections in flight, by request."""

    __slots__ = ("_by_request", "_lock")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_request: dict[int, tuple[Any, Any, ProxyHeader | None]] = {}

    def add(self, request: Any, peer_address: Any, header: ProxyHeader | None) -> None:
        with self._lock:
            self._by_request[id(request)] = (request, peer_address, header)

    def discard(self, request: Any) -> None:
        with self._lock:
            entry = self._by_request.get(id(request))
            if entry is not None and entry[0] is request:
                del self._by_request[id(request)]

    def move(self, old: Any, new: Any) -> bool:
        """``old`` became ``new`` (a TLS socket): its entry follows. False if it had none."""
        with self._lock:
            entry = self._by_request.get(id(old))
            if entry is None or entry[0] is not old:
                return False
            del self._by_request[id(old)]
            self._by_request[id(new)] = (new, entry[1], entry[2])
            return True

    def info(self, request: Any, client_address: Any) -> ConnectionInfo:
        entry = self._by_request.get(id(request))
        peer, header = (entry[1], entry[2]) if entry is not None and entry[0] is request else (None, None)
        return ConnectionInfo(client_address, peer, header, tls_info_of(request))


def connection_info(server: Any, request: Any, client_address: Any) -> ConnectionInfo:
    """What a synchronous handler's ``connection_info`` answers."""
    proxied: ProxiedConnections | None = getattr(server, "_proxied", None)
    if isinstance(proxied, ProxiedConnections):
        return proxied.info(request, client_address)
    return ConnectionInfo(client_address, None, None, tls_info_of(request))
