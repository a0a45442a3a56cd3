"""The PROXY protocol on datagram servers (UDP, Unix datagrams), sync and async.

There is no connection to carry one header for many datagrams: the spec
has a proxy put a v2 header in every datagram it forwards. So the header is
read per datagram, before the datagram is admitted, and the limits, the
access list and the handler all see the client it names. The stream side's
rules hold (``_proxy_stage``): a header is believed only from a trusted
peer, required from one unless ``required=False``, and a datagram from any
other peer that starts with a v2 signature is dropped (v1 is not defined
over datagrams, so a datagram starting ``PROXY`` from an untrusted peer is
just its bytes). Every drop is one budgeted log line and is counted in
``server.refused["proxy_header"]``.

Replies must go back through the proxy, which maps them to its client's
flow: the handler replies to ``client_address`` (the real client), and
what sends it turns that address into the proxy's. The synchronous handler
gets a socket stand-in (``ProxiedSocket``) bound to its one datagram; the
async side routes through ``ProxyRoutes``: the datagram's binding in a
context variable (exact for the handler's task and whatever it starts),
then a bounded map of the clients last seen (for a reply sent from
elsewhere, as a callback handler's queue consumer would).
"""

from __future__ import annotations

import collections
import contextvars

from ._errors import NotAProxyHeader, ProxyHeaderError
from ._log import log_datagram_dropped
from .protocol.proxy import V2_SIGNATURE, parse_proxy_datagram

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see sockserve/__init__.py)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from ._proxy_stage import ProxyProtocol
    from ._server_core import ServerCore
    from .protocol.proxy import ProxyHeader

# How many real clients the async side remembers the proxy of, for replies
# sent outside the datagram's own context. About 300 bytes each.
MAX_ROUTES = 4096


def read_datagram_header(
    server: ServerCore, proxy: ProxyProtocol, data: bytes, peer: Any
) -> tuple[bytes, Any, ProxyHeader | None] | None:
    """What a datagram from ``peer`` carries: its payload, the client it is
    from, and the PROXY header that said so (None: served as ``peer``'s own
    bytes). None when it must be dropped: logged (budgeted) and counted."""
    if not proxy.trusts(peer):
        if data.startswith(V2_SIGNATURE):
            _dropped(server, peer, "a PROXY header from a peer that is not trusted (ProxyProtocol.trusted)")
            return None
        return data, peer, None
    try:
        header, payload = parse_proxy_datagram(data, proxy.max_size)
    except NotAProxyHeader as exc:
        if not proxy.required:
            return data, peer, None  # a trusted peer speaking for itself
        _dropped(server, peer, f"expected a PROXY header from a trusted proxy: {exc}")
        return None
    except ProxyHeaderError as exc:
        _dropped(server, peer, f"bad PROXY header: {exc}")
        return None
    # LOCAL (the proxy's own health check) and UNSPEC name no client: the
    # datagram is the proxy's, as the protocol says.
    client = header.source if header.command == "PROXY" and header.source is not None else peer
    if client != peer and server.access_list is not None and proxy.trusts(client):
        # The admit step takes a trusted address for a proxy whose client is
        # judged after its header (``_access_permits``): this one is a
        # client already, so the access list judges it here.
        refused = server._check_real_client(None, client)
        if refused is not None:
            log_datagram_dropped(client, refused)
            return None
    return payload, client, header


def _dropped(server: ServerCore, peer: Any, reason: str) -> None:
    server._count_refused("proxy_header")
    log_datagram_dropped(peer, reason)


class ProxiedSocket:
    """The server's socket as the synchronous handler of one datagram from
    behind a proxy sees it: ``sendto()`` to the datagram's real client goes
    to the proxy it came through (the stdlib's ``DatagramRequestHandler``
    replies with ``socket.sendto(data, client_address)``). Any other address,
    and everything else, is the real socket's."""

    __slots__ = ("_socket", "client_address", "proxy_address")

    def __init__(self, sock: Any, client_address: Any, proxy_address: Any) -> None:
        self._socket = sock
        self.client_address = client_address
        self.proxy_address = proxy_address

    def sendto(self, data: Any, *flags_and_address: Any) -> int:
        """``sendto(data, address)`` or ``sendto(data, flags, address)``, as ``socket.sendto``."""
        *flags, address = flags_and_address
        if address == self.client_address:
            address = self.proxy_address
        sent: int = self._socket.sendto(data, *flags, address)
        return sent

    def __getattr__(self, name: str) -> Any:
        return getattr(self._socket, name)

    def __repr__(self) -> str:
        return f"<ProxiedSocket {self._socket!r} client={self.client_address!r} via {self.proxy_address!r}>"


# The datagram whose handler (or callback) runs in this context, from behind
# a proxy: (real client, proxy, header). A task started from there copies it.
_current_route: contextvars.ContextVar[tuple[Any, Any, ProxyHeader] | None] = contextvars.ContextVar(
    "sockserve_proxy_route", default=None
)


def current_route() -> tuple[Any, Any, ProxyHeader] | None:
    """(real client, proxy, header) of the proxied datagram handled in this context, if any."""
    return _current_route.get()


class ProxyRoutes:
    """An async datagram server's PROXY protocol while it serves: each
    datagram's header read (``read``), and where replies to real clients
    go: to the proxy each came through (see the module docstring)."""

    __slots__ = ("_proxy", "_recent", "_server")

    def __init__(self, server: ServerCore, proxy: ProxyProtocol) -> None:
        self._server = server
        self._proxy = proxy
        self._recent: collections.OrderedDict[Any, Any] = collections.OrderedDict()

    def read(self, data: bytes, peer: Any) -> tuple[bytes, Any, ProxyHeader | None] | None:
        """``read_datagram_header()`` for this server."""
        return read_datagram_header(self._server, self._proxy, data, peer)

    def enter(self, client_address: Any, proxy_address: Any, header: ProxyHeader) -> contextvars.Token[Any]:
        """A datagram from ``client_address`` via ``proxy_address`` is handled
        in this context from now on (``leave()`` with the token, unless the
        context is a task's own, which ends with it)."""
        recent = self._recent
        recent[client_address] = proxy_address
        recent.move_to_end(client_address)
        if len(recent) > MAX_ROUTES:
            recent.popitem(last=False)
        return _current_route.set((client_address, proxy_address, header))

    @staticmethod
    def leave(token: contextvars.Token[Any]) -> None:
        _current_route.reset(token)

    def address_for(self, address: Any) -> Any:
        """Where a datagram meant for ``address`` is sent."""
        route = _current_route.get()
        if route is not None and address == route[0]:
            return route[1]
        return self._recent.get(address, address)

    def sender(self, send: Callable[[Any, Any], object]) -> Callable[[Any, Any], object]:
        """``send(data, address)`` with the address routed."""
        address_for = self.address_for

        def sendto(data: Any, address: Any) -> object:
            return send(data, address_for(address))

        return sendto
