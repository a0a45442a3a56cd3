"""The PROXY protocol as a stage of the connection pipeline (``_stages``):
a proxy in front of the server (HAProxy, nginx, a cloud load balancer) sends
one header naming the client it accepted the connection from, and from then
on the server treats that client as the connection's ``client_address``.

Only peers the server trusts may say who the client is: a header from any
other peer is refused, since honouring it would let any client claim any
address (and walk past per-IP limits and access lists). The parsing is the
sans-IO ``protocol.proxy``; this module decides what a header means for a
connection.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from ._access import client_ip, in_networks, parse_networks
from ._errors import NotAProxyHeader, ProxyHeaderError
from ._frozen import FrozenValue
from ._limits import check_seconds
from ._stages import Done, NeedMore, Outcome, Reject
from .protocol.proxy import DEFAULT_MAX_PROXY_HEADER, V1_PREFIX, V2_SIGNATURE, parse_proxy_header

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see sockserve/__init__.py)
if TYPE_CHECKING:
    from typing import Any

    from ._access import Network
    from ._stages import Stage

    # Called with the real client's address once a header named it: None if the
    # connection may go on, or why it may not (an access list, a per-IP limit).
    CheckAddress = Callable[[Any], str | None]

# How long a trusted proxy may take to send its header, by default. A proxy
# sends it with its first bytes, at once: this bounds only a stalled one.
DEFAULT_PROXY_TIMEOUT = 5.0

# Peer hosts whose trust ``ProxyProtocol.trusts()`` remembers. A server's
# peers are its few proxies and, when direct clients reach it too, those
# clients: past this many hosts the memory starts afresh, so a flood of
# addresses costs what it did without it and holds no more than this.
_TRUST_MEMORY = 256


class ProxyProtocol(FrozenValue):
    """Honour PROXY protocol headers (v1 and v2) from trusted proxies.

    Attributes:
        trusted: the networks (CIDRs or addresses) of the proxies whose
            headers are believed. A Unix socket's peer is trusted when
            ``trust_unix`` is set (a proxy on the same host, behind the
            socket file's permissions).
        required: a trusted peer must send a header: a connection from one
            without a header is closed. False: a trusted peer that sends no
            header is served as itself (a proxy and direct clients on the
            same network).
        timeout: seconds a trusted peer may take to send its header.
        max_size: the longest v2 header accepted, in bytes (v1 is capped at
            107 bytes by the protocol).
        trust_unix: headers arriving on a Unix socket are believed.

    A connection from a peer that is not trusted is served as itself; if it
    starts with a PROXY header anyway it is closed (a proxy that should
    have been listed in ``trusted``, or a client trying to pass for another).
    """

    __slots__ = ("_trusted_hosts", "max_size", "required", "timeout", "trust_unix", "trusted")
    _fields = ("trusted", "required", "timeout", "max_size", "trust_unix")

    trusted: tuple[Network, ...]
    required: bool
    timeout: float
    max_size: int
    trust_unix: bool
    _trusted_hosts: dict[str, bool]

    def __init__(
        self,
        trusted: Iterable[Any] = (),
        required: bool = True,
        timeout: float = DEFAULT_PROXY_TIMEOUT,
        max_size: int = DEFAULT_MAX_PROXY_HEADER,
        trust_unix: bool = False,
    ) -> None:
        timeout = check_seconds("timeout", timeout)  # bounded: it becomes a wait (epoll's limit)
        if max_size < 16:
            raise ValueError(f"max_size must be at least 16 (a v2 header's fixed part), got {max_size!r}")
        self._freeze(
            parse_networks(trusted, "trusted"), bool(required), float(timeout), int(max_size), bool(trust_unix)
        )
        # Host -> trusted, for trusts(): not a field (equality, hash, repr and
        # pickling ignore it). Asked at admission and again for the stage, per
        # connection, always of the same few proxies: an ``ipaddress`` parse
        # and a walk of the networks each time cost ~30 k instructions, a
        # dict lookup a few hundred. The networks never change, so neither do
        # the answers.
        object.__setattr__(self, "_trusted_hosts", {})

    def trusts(self, peer: Any) -> bool:
        """True if ``peer`` (a socket's peer address) may send a header."""
        if type(peer) is tuple and peer and type(host := peer[0]) is str:
            known = self._trusted_hosts
            trusted = known.get(host)
            if trusted is None:
                trusted = self._trusts(peer)
                if len(known) >= _TRUST_MEMORY:
                    known.clear()  # threads racing here at worst forget or recompute an answer
                known[host] = trusted
            return trusted
        return self._trusts(peer)

    def _trusts(self, peer: Any) -> bool:
        ip = client_ip(peer)
        if ip is None:
            return self.trust_unix and not (isinstance(peer, tuple) and peer)
        return in_networks(ip, self.trusted)

    def stage(
        self, peer: Any, check: CheckAddress | None = None, on_bad_header: Callable[[], object] | None = None
    ) -> Stage:
        """The stage for a connection from ``peer``. ``check`` vets the real
        client a header names; ``on_bad_header`` is told of each connection
        closed for its header (to count them)."""
        if self.trusts(peer):
            return ProxyHeaderStage(self, peer, check, on_bad_header)
        return UntrustedPeerStage(peer, on_bad_header)


class ProxyHeaderStage:
    """Read a trusted proxy's header: the real client becomes the connection's address."""

    __slots__ = ("_buffer", "_check", "_config", "_on_bad_header", "_peer")

    def __init__(
        self, config: ProxyProtocol, peer: Any, check: CheckAddress | None, on_bad_header: Callable[[], object] | None
    ) -> None:
        self._config = config
        self._peer = peer
        self._check = check
        self._on_bad_header = on_bad_header
        self._buffer = b""

    def _bad_header(self, reason: str) -> Reject:
        if self._on_bad_header is not None:
            self._on_bad_header()
        return Reject(reason)

    def feed(self, data: bytes) -> Outcome:
        if not data:
            return self._bad_header("the proxy closed the connection before its PROXY header")
        buffered = self._buffer + data if self._buffer else data
        try:
            header = parse_proxy_header(buffered, self._config.max_size)
        except NotAProxyHeader as exc:
            if not self._config.required and not self._buffer:
                return Done(rest=data)  # a trusted peer speaking for itself
            return self._bad_header(f"expected a PROXY header from a trusted proxy: {exc}")
        except ProxyHeaderError as exc:
            return self._bad_header(f"bad PROXY header: {exc}")
        if header is None:
            self._buffer = buffered
            return NeedMore()
        # LOCAL (the proxy's own health check) and UNKNOWN name no client:
        # the connection is the proxy's, as the protocol says.
        client = header.source if header.command == "PROXY" and header.source is not None else self._peer
        if client != self._peer and self._check is not None:
            refused = self._check(client)
            if refused is not None:
                return Reject(refused)
        rest = buffered[header.size :]
        return Done(rest=rest, client_address=client, info={"proxy": header, "peer_address": self._peer})


class UntrustedPeerStage:
    """A peer that may not send a header: served as itself, unless it starts with one.

    Decided on the first bytes the peer sends. A header split so that its
    first piece is shorter than its signature is not recognised: the bytes
    then reach the handler as the client's own, which is harmless (the
    header is not believed either way); recognising the usual case closes
    a misconfigured proxy's connections with a line that says why.
    """

    __slots__ = ("_on_bad_header", "_peer")

    def __init__(self, peer: Any, on_bad_header: Callable[[], object] | None) -> None:
        self._peer = peer
        self._on_bad_header = on_bad_header

    def feed(self, data: bytes) -> Outcome:
        if data.startswith(V1_PREFIX) or data.startswith(V2_SIGNATURE):
            if self._on_bad_header is not None:
                self._on_bad_header()
            return Reject("a PROXY header from a peer that is not trusted (ProxyProtocol.trusted)")
        return Done(rest=data)
