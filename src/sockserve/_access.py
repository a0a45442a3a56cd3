"""Access lists: which client addresses a server serves, decided before any
handler runs, on the client's real address (after a PROXY header, when the
server honours them).

``AccessList(allow=[...], deny=[...])`` takes CIDRs (``"10.0.0.0/8"``,
``"2001:db8::/32"``) or single addresses. A deny entry wins over an allow
entry; an empty allow list allows everyone the deny list does not name. An
IPv4 client that reached an IPv6 socket (``::ffff:a.b.c.d``, a dual-stack
listener) is compared as ``a.b.c.d``, so one IPv4 rule covers it on both
kinds of listener. A client with no IP address (a Unix socket's peer, unless
a PROXY header named one) is not an address the lists can speak of: it is
allowed.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from ._frozen import FrozenValue

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see sockserve/__init__.py)
if TYPE_CHECKING:
    from typing import Any

    Network = ipaddress.IPv4Network | ipaddress.IPv6Network
    IP = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_networks(entries: Iterable[Any], what: str) -> tuple[Network, ...]:
    """CIDRs or addresses (strings or ``ipaddress`` objects) as networks.

    Raises:
        ValueError: an entry is not a network, naming it and ``what`` list it was in.
    """
    if isinstance(entries, (str, bytes)):
        raise TypeError(f"{what} must be a list of networks, not a single string: [{entries!r}]")
    networks = []
    for entry in entries:
        try:
            network = ipaddress.ip_network(entry, strict=False)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{what}: {entry!r} is not an IP network ({exc})") from None
        if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96:
            # A rule written for an IPv4-mapped block means its IPv4 clients.
            mapped = network.network_address.ipv4_mapped
            if mapped is not None:
                network = ipaddress.ip_network(f"{mapped}/{network.prefixlen - 96}")
        networks.append(network)
    return tuple(networks)


def client_ip(client_address: Any) -> IP | None:
    """The IP address in a ``client_address``, IPv4-mapped IPv6 as IPv4; None
    for an address that has none (a Unix socket's peer)."""
    if not isinstance(client_address, tuple) or not client_address or not isinstance(client_address[0], str):
        return None
    host = client_address[0].split("%", 1)[0]  # an IPv6 scope id is not part of the address
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def in_networks(ip: IP, networks: tuple[Network, ...]) -> bool:
    return any(ip.version == network.version and ip in network for network in networks)


class AccessList(FrozenValue):
    """Which clients a server serves, by address.

    Attributes:
        allow: networks whose clients are served; empty: every client the
            deny list does not name.
        deny: networks whose clients are closed at once (a deny entry wins
            over an allow entry).

    A frozen value, like ``Limits``: equal and hashable by its fields.
    """

    __slots__ = ("allow", "deny")
    _fields = ("allow", "deny")

    allow: tuple[Network, ...]
    deny: tuple[Network, ...]

    def __init__(self, allow: Iterable[Any] = (), deny: Iterable[Any] = ()) -> None:
        self._freeze(parse_networks(allow, "allow"), parse_networks(deny, "deny"))

    def permits(self, client_address: Any) -> bool:
        """True if the client at ``client_address`` may be served."""
        ip = client_ip(client_address)
        if ip is None:
            return True
        if in_networks(ip, self.deny):
            return False
        return not self.allow or in_networks(ip, self.allow)
