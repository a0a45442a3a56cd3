"""A sans-IO parser for the PROXY protocol header, versions 1 and 2.

A proxy (HAProxy, a load balancer) that speaks the PROXY protocol sends one
header before the client's bytes, naming the client it accepted the
connection from. ``parse_proxy_header(data)`` looks at the bytes received so
far and returns one of three outcomes:

- a ``ProxyHeader``, whose ``size`` is the number of bytes it used: the bytes
  behind it (``data[header.size:]``) are the client's and are left to the
  caller;
- None: ``data`` is a prefix of a header, more bytes are needed;
- a ``ProxyHeaderError`` subclass, raised: the connection should be closed.

**Deciding early.** A v1 header starts with ``b"PROXY "``, a v2 header with
a fixed 12-byte signature; the two differ in their first byte. As soon as
the bytes received can start neither, ``NotAProxyHeader`` is raised, so a
client that is not a proxy is refused on its first bytes rather than after
107 of them. Likewise (the spec asks to abort as soon as possible) a v1
protocol other than ``TCP4 ``, ``TCP6 ``, ``UNKNOWN `` or ``UNKNOWN\r\n``,
a bare LF or a CR followed by anything but LF (outside what ``UNKNOWN``
leaves to be ignored), a v2 version or command, and for the PROXY command
a family/transport byte, are refused on the byte that breaks them.

**Caps.** A v1 line is at most 107 bytes, CRLF included (the spec's limit),
and a CRLF not found within them raises ``ProxyHeaderTooLong`` once 107 bytes
are held. A v2 header announces its length in its 15th-16th bytes (up to
16 + 65535 bytes); one over ``max_size`` raises ``ProxyHeaderTooLong`` as soon
as those 16 bytes arrive, before its body is buffered. So None is never
returned for more than ``max(107, max_size)`` bytes.

**Datagrams.** ``parse_proxy_datagram(data)`` parses a UDP (or Unix
datagram) payload: the spec puts the whole v2 header in the datagram it
prefixes, so a datagram ending inside the header is ``MalformedProxyHeader``,
and v1, which the spec defines for TCP only, is ``UnsupportedProxyHeader``.

**Addresses** take the form of the stdlib's ``client_address`` for a socket
of that family: ``(host, port)`` for IPv4, ``(host, port, 0, 0)`` for IPv6 (as
``getpeername()`` returns for an ``AF_INET6`` socket, flow info and scope id
being unknown), and for a Unix socket the path as ``str`` (``bytes`` for an
abstract-namespace name, which starts with a NUL byte, as the stdlib gives).
Hosts are in ``ipaddress``'s canonical text form. They are None when the
header carries none, and the caller should use the connection's own
endpoints: v1 ``UNKNOWN``, v2 ``LOCAL`` (a health check from the proxy
itself), v2 family ``AF_UNSPEC`` or transport UNSPEC (the spec says to ignore
the address information).

**v1 rules.** Fields are separated by single spaces; addresses must parse
with ``ipaddress`` in the family named (no IPv6 scope id; IPv4 without
leading zeros; IPv6 as ``inet_ntop`` writes it, ``::`` and dotted-quad
tails included); ports are decimal 0-65535 without leading zeros. After
``UNKNOWN`` and a space, anything up to the first CRLF is ignored.

**v2 rules.** Version 2; command LOCAL or PROXY. PROXY needs a defined family
(UNSPEC, INET, INET6, UNIX) and transport (UNSPEC, STREAM, DGRAM) and a
length that holds the family's address block (0, 12, 36 or 216 bytes).
LOCAL is accepted whatever its family byte and length, as the spec requires:
its address block is ignored, and its TLVs are read only when they can be
found (behind the block of a defined family that the length holds). The
bytes behind the address block must be whole TLVs, kept raw in ``tlvs``
except NOOP (0x04), which the spec says to ignore. Checked: CRC32C (0x03) is
4 bytes, at most one, and matches the CRC32C of the whole header with its
value zeroed; UNIQUE_ID (0x05) is at most 128 bytes; AUTHORITY (0x02) is
UTF-8 and NETNS (0x30) US-ASCII; the SSL TLV (0x20) holds its 5 fixed bytes
and whole sub-TLVs, whose text fields are US-ASCII (the CN UTF-8). Other
types, the custom range 0xE0-0xEF included, are kept without a check.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import types

from .._errors import MalformedProxyHeader, NotAProxyHeader, ProxyHeaderTooLong, UnsupportedProxyHeader

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see sockserve/__init__.py)
if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping
    from typing import Any

__all__ = [
    "DEFAULT_MAX_PROXY_HEADER",
    "PP2_TYPE_ALPN",
    "PP2_TYPE_AUTHORITY",
    "PP2_TYPE_CRC32C",
    "PP2_TYPE_MAX_CUSTOM",
    "PP2_TYPE_MIN_CUSTOM",
    "PP2_TYPE_NETNS",
    "PP2_TYPE_NOOP",
    "PP2_TYPE_SSL",
    "PP2_TYPE_UNIQUE_ID",
    "V1_MAX_LINE",
    "V2_SIGNATURE",
    "ProxyHeader",
    "ProxySSL",
    "parse_proxy_datagram",
    "parse_proxy_header",
]

V1_PREFIX = b"PROXY "
V1_MAX_LINE = 107  # the spec's worst case: "PROXY TCP6 " + two full IPv6 + two ports + CRLF
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_HEAD = 16  # signature, version/command, family/protocol, 2-byte length

# 16-byte head + 216-byte Unix address block + 3840 bytes of TLVs: room for
# ALPN, authority, a unique id (at most 128 bytes) and SSL details with a long
# CN, while a client cannot make the server buffer the 64 KiB the length field
# allows.
DEFAULT_MAX_PROXY_HEADER = 4096 + V2_HEAD

PP2_TYPE_ALPN = 0x01
PP2_TYPE_AUTHORITY = 0x02
PP2_TYPE_CRC32C = 0x03
PP2_TYPE_NOOP = 0x04
PP2_TYPE_UNIQUE_ID = 0x05
PP2_TYPE_SSL = 0x20
PP2_SUBTYPE_SSL_VERSION = 0x21
PP2_SUBTYPE_SSL_CN = 0x22
PP2_SUBTYPE_SSL_CIPHER = 0x23
PP2_SUBTYPE_SSL_SIG_ALG = 0x24
PP2_SUBTYPE_SSL_KEY_ALG = 0x25
PP2_SUBTYPE_SSL_GROUP = 0x26
PP2_SUBTYPE_SSL_SIG_SCHEME = 0x27
PP2_SUBTYPE_SSL_CLIENT_CERT = 0x28
PP2_TYPE_NETNS = 0x30
# Application-specific types (the spec's PP2_TYPE_MIN_CUSTOM..MAX_CUSTOM): never
# used by the protocol itself, kept raw in ``tlvs`` like every other type.
PP2_TYPE_MIN_CUSTOM = 0xE0
PP2_TYPE_MAX_CUSTOM = 0xEF
_UNIQUE_ID_MAX = 128  # the spec: "an opaque byte sequence of up to 128 bytes"

# v2 family nibble -> (socket family, bytes of the address block)
_V2_FAMILIES = {0: (socket.AF_UNSPEC, 0), 1: (socket.AF_INET, 12), 2: (socket.AF_INET6, 36), 3: (socket.AF_UNIX, 216)}
# v2 transport nibble -> socket type (0 for UNSPEC)
_V2_PROTOCOLS = {0: 0, 1: socket.SOCK_STREAM, 2: socket.SOCK_DGRAM}
# An IPv4 address's octets as text, by value.
_OCTETS = tuple(str(octet) for octet in range(256))


class _Frozen:
    """Slotted, immutable after ``__init__`` (no dataclasses: see tests/test_api.py).

    ``_names``: the fields, for equality and ``repr``.
    """

    __slots__ = ()
    _names: tuple[str, ...] = ()

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in self._names)

    def __repr__(self) -> str:
        fields = ", ".join(f"{n}={getattr(self, n)!r}" for n in self._names)
        return f"{type(self).__name__}({fields})"

    __hash__ = None  # type: ignore[assignment]  # tlvs is a mapping


class ProxySSL(_Frozen):
    """The SSL TLV (0x20) of a v2 header: how the client reached the proxy.

    ``client`` holds the PP2_CLIENT_* bits (0x01 SSL, 0x02 a certificate on
    this connection, 0x04 one in this session); ``verify`` is 0 when the
    client's certificate was verified. The text fields are the sub-TLVs, None
    when absent (``cn`` is UTF-8, the others US-ASCII, as the spec says);
    ``client_cert`` is the client's certificate in DER, when the proxy sends
    it; ``tlvs`` holds every sub-TLV raw.
    """

    __slots__ = (
        "cipher",
        "client",
        "client_cert",
        "cn",
        "group",
        "key_alg",
        "sig_alg",
        "sig_scheme",
        "tlvs",
        "verify",
        "version",
    )
    _names = __slots__

    client: int
    verify: int
    version: str | None
    cn: str | None
    cipher: str | None
    sig_alg: str | None
    key_alg: str | None
    group: str | None
    sig_scheme: str | None
    client_cert: bytes | None
    tlvs: Mapping[int, tuple[bytes, ...]]

    def __init__(self, client: int, verify: int, tlvs: Mapping[int, tuple[bytes, ...]]) -> None:
        init = object.__setattr__
        init(self, "client", client)
        init(self, "verify", verify)
        init(self, "tlvs", tlvs)
        init(self, "version", _text(tlvs, PP2_SUBTYPE_SSL_VERSION, "ascii", "SSL version"))
        init(self, "cn", _text(tlvs, PP2_SUBTYPE_SSL_CN, "utf-8", "SSL CN"))
        init(self, "cipher", _text(tlvs, PP2_SUBTYPE_SSL_CIPHER, "ascii", "SSL cipher"))
        init(self, "sig_alg", _text(tlvs, PP2_SUBTYPE_SSL_SIG_ALG, "ascii", "SSL signature algorithm"))
        init(self, "key_alg", _text(tlvs, PP2_SUBTYPE_SSL_KEY_ALG, "ascii", "SSL key algorithm"))
        init(self, "group", _text(tlvs, PP2_SUBTYPE_SSL_GROUP, "ascii", "SSL group"))
        init(self, "sig_scheme", _text(tlvs, PP2_SUBTYPE_SSL_SIG_SCHEME, "ascii", "SSL signature scheme"))
        cert = tlvs.get(PP2_SUBTYPE_SSL_CLIENT_CERT)
        init(self, "client_cert", cert[0] if cert else None)


class _ProxyHeaderFields:
    """``ProxyHeader``'s fields, writable: the parser fills them in and then
    makes the object a ``ProxyHeader`` (``_header()``)."""

    __slots__ = ("command", "destination", "family", "protocol", "size", "source", "tlvs", "version")

    version: int
    command: str
    family: int
    protocol: int
    source: Any
    destination: Any
    tlvs: Mapping[int, tuple[bytes, ...]]
    size: int


class ProxyHeader(_Frozen, _ProxyHeaderFields):
    """A parsed PROXY header.

    Attributes:
        version: 1 or 2.
        command: "PROXY", or "LOCAL" (v2 only: the proxy's own connection,
            e.g. a health check; addresses are None).
        family: ``socket.AF_INET``, ``AF_INET6``, ``AF_UNIX`` or ``AF_UNSPEC``
            (v1 ``UNKNOWN``, v2 UNSPEC).
        protocol: ``socket.SOCK_STREAM``, ``SOCK_DGRAM`` or 0 (unspecified;
            v1 TCP4/TCP6 is ``SOCK_STREAM``).
        source, destination: the client's and the proxy's listening address,
            as ``client_address`` would be (see the module docstring), or None.
        tlvs: v2 TLVs, type -> the values of every TLV of that type in order
            (read-only; empty for v1; NOOP TLVs, which the spec says to
            ignore, are left out).
        size: the bytes the header used; what follows is the client's.
    """

    __slots__ = ()
    _names = _ProxyHeaderFields.__slots__  # its fields, typed there

    def __init__(
        self,
        version: int,
        command: str,
        family: int,
        protocol: int,
        source: Any,
        destination: Any,
        tlvs: Mapping[int, tuple[bytes, ...]],
        size: int,
    ) -> None:
        init = object.__setattr__
        init(self, "version", version)
        init(self, "command", command)
        init(self, "family", family)
        init(self, "protocol", protocol)
        init(self, "source", source)
        init(self, "destination", destination)
        init(self, "tlvs", tlvs)
        init(self, "size", size)

    def tlv(self, type_: int) -> bytes | None:
        """The value of the first TLV of ``type_``, or None."""
        values = self.tlvs.get(type_)
        return values[0] if values else None

    @property
    def alpn(self) -> bytes | None:
        """The ALPN protocol the client negotiated with the proxy (TLV 0x01), e.g. b"h2"."""
        return self.tlv(PP2_TYPE_ALPN)

    @property
    def authority(self) -> str | None:
        """The host name the client asked for (TLV 0x02, e.g. TLS SNI)."""
        return _text(self.tlvs, PP2_TYPE_AUTHORITY, "utf-8", "authority")

    @property
    def netns(self) -> str | None:
        """The network namespace the proxy accepted the connection in (TLV 0x30)."""
        return _text(self.tlvs, PP2_TYPE_NETNS, "ascii", "network namespace")

    @property
    def unique_id(self) -> bytes | None:
        """The proxy's opaque id for this connection (TLV 0x05)."""
        return self.tlv(PP2_TYPE_UNIQUE_ID)

    @property
    def ssl(self) -> ProxySSL | None:
        """The SSL TLV (0x20) decoded, or None when absent.

        Raises:
            MalformedProxyHeader: the TLV is shorter than its 5 fixed bytes,
                its sub-TLVs are cut short or a text one is not in its
                encoding (never for a header returned by
                ``parse_proxy_header``, which checks it).
        """
        value = self.tlv(PP2_TYPE_SSL)
        return None if value is None else _parse_ssl(value)


_new_fields = _ProxyHeaderFields.__new__


def _header(
    version: int,
    command: str,
    family: int,
    protocol: int,
    source: Any,
    destination: Any,
    tlvs: Mapping[int, tuple[bytes, ...]],
    size: int,
) -> ProxyHeader:
    """``ProxyHeader(...)``, at a quarter of the cost: its constructor's eight
    ``object.__setattr__`` calls (the class refuses plain assignment) cost
    ~11 k instructions, a sizeable part of a connection's PROXY stage. Plain
    slot stores on the writable twin, then one change of class (the same
    slots, so the same layout), give the same object."""
    header = _new_fields(_ProxyHeaderFields)
    header.version = version
    header.command = command
    header.family = family
    header.protocol = protocol
    header.source = source
    header.destination = destination
    header.tlvs = tlvs
    header.size = size
    header.__class__ = ProxyHeader
    return header  # type: ignore[return-value]  # it is one now


def _text(tlvs: Mapping[int, tuple[bytes, ...]], type_: int, encoding: str, what: str) -> str | None:
    values = tlvs.get(type_)
    if not values:
        return None
    try:
        return values[0].decode(encoding)
    except UnicodeDecodeError:
        # The spec fixes the encoding; a header that breaks it is malformed,
        # rather than one whose name silently gains replacement characters.
        raise MalformedProxyHeader(f"PROXY v2 {what} TLV is not {encoding}: {values[0][:64]!r}") from None


def _parse_ssl(value: bytes) -> ProxySSL:
    if len(value) < 5:
        raise MalformedProxyHeader(f"PROXY v2 SSL TLV of {len(value)} bytes, shorter than its 5 fixed bytes")
    found: dict[int, tuple[bytes, ...]] = {}
    for type_, start, end in _tlv_spans(value, 5, "SSL sub-TLV"):
        found[type_] = (*found.get(type_, ()), value[start:end])
    return ProxySSL(value[0], int.from_bytes(value[1:5], "big"), types.MappingProxyType(found))


def _tlv_spans(data: bytes, pos: int, what: str) -> Iterator[tuple[int, int, int]]:
    """(type, start, end) of each TLV in ``data[pos:]``, which must hold whole TLVs."""
    end = len(data)
    while pos < end:
        if end - pos < 3:
            raise MalformedProxyHeader(f"PROXY v2 {what} cut short: {end - pos} bytes left, a TLV needs 3")
        type_ = data[pos]
        length = int.from_bytes(data[pos + 1 : pos + 3], "big")
        pos += 3
        if length > end - pos:
            raise MalformedProxyHeader(
                f"PROXY v2 {what} 0x{type_:02x} announces {length} bytes, only {end - pos} left in the header"
            )
        yield type_, pos, pos + length
        pos += length


def _parse_v2_tlvs(header: bytes, start: int) -> Mapping[int, tuple[bytes, ...]]:
    if start >= len(header):
        return _NO_TLVS  # the usual case: nothing behind the addresses
    found: dict[int, tuple[bytes, ...]] = {}
    crc_at = -1
    for type_, pos, end in _tlv_spans(header, start, "TLV"):
        value = header[pos:end]
        if type_ == PP2_TYPE_NOOP:  # the spec: ignored when parsed (padding)
            continue
        if type_ == PP2_TYPE_CRC32C:
            if len(value) != 4:
                raise MalformedProxyHeader(f"PROXY v2 CRC32C TLV of {len(value)} bytes, not 4")
            if crc_at >= 0:  # which field would be zeroed for the other?
                raise MalformedProxyHeader("PROXY v2 header with more than one CRC32C TLV")
            crc_at = pos
        elif type_ == PP2_TYPE_UNIQUE_ID and len(value) > _UNIQUE_ID_MAX:
            raise MalformedProxyHeader(
                f"PROXY v2 unique id TLV of {len(value)} bytes, over the spec's {_UNIQUE_ID_MAX}"
            )
        elif type_ == PP2_TYPE_SSL:
            _parse_ssl(value)  # so that ProxyHeader.ssl cannot raise later
        found[type_] = (*found.get(type_, ()), value)
    tlvs = types.MappingProxyType(found)
    # Checked here so that ProxyHeader.authority and .netns cannot raise later.
    _text(tlvs, PP2_TYPE_AUTHORITY, "utf-8", "authority")
    _text(tlvs, PP2_TYPE_NETNS, "ascii", "network namespace")
    if crc_at >= 0:
        _check_crc32c(header, crc_at)
    return tlvs


# CRC32C (Castagnoli, reflected polynomial 0x82F63B78, RFC 4960 appendix B),
# table-driven; the table is built on the first header that carries the TLV,
# so a server whose proxy sends none never pays for it.
_CRC32C_TABLE: list[int] | None = None


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


def _crc32c(data: bytes) -> int:
    global _CRC32C_TABLE
    table = _CRC32C_TABLE
    if table is None:
        # Built whole, then published in one assignment: a thread racing here
        # builds a second, equal table, never reads a half-built one.
        table = _CRC32C_TABLE = _crc32c_table()
    crc = 0xFFFFFFFF
    for byte in data:
        crc = (crc >> 8) ^ table[(crc ^ byte) & 0xFF]
    return crc ^ 0xFFFFFFFF


def _check_crc32c(header: bytes, at: int) -> None:
    """The spec's receiver rule: the checksum of the whole header with the
    4-byte CRC32C value zeroed must equal that value (big-endian, as HAProxy
    writes it)."""
    received = int.from_bytes(header[at : at + 4], "big")
    computed = _crc32c(header[:at] + b"\0\0\0\0" + header[at + 4 :])
    if computed != received:
        raise MalformedProxyHeader(
            f"PROXY v2 CRC32C mismatch: the TLV says 0x{received:08x}, the header sums to 0x{computed:08x}"
        )


def parse_proxy_header(
    data: bytes | bytearray | memoryview, max_size: int = DEFAULT_MAX_PROXY_HEADER
) -> ProxyHeader | None:
    """Parse the PROXY header at the start of ``data``: a ``ProxyHeader``, or
    None when ``data`` is a prefix of one (see the module docstring).

    ``max_size`` caps a v2 header, its 16-byte head included; it must be at
    least 16. v1 is always capped at 107 bytes.

    Raises:
        NotAProxyHeader: ``data`` can start neither version.
        ProxyHeaderTooLong: no CRLF in the first 107 bytes (v1), or a length
            field over ``max_size`` (v2).
        MalformedProxyHeader, UnsupportedProxyHeader: see their docstrings.
    """
    if max_size < V2_HEAD:
        raise ValueError(f"max_size must be at least {V2_HEAD}, got {max_size}")
    cap = V1_MAX_LINE if max_size < V1_MAX_LINE else max_size  # max() without its call
    if type(data) is not bytes or len(data) > cap:
        data = bytes(data[:cap])  # never look (or copy) past the cap
    if data[:1] == b"P" or not data:
        if data[:6] != V1_PREFIX[: len(data)]:
            raise NotAProxyHeader(f"not a PROXY header: starts with {data[:12]!r}")
        return _parse_v1(data)
    if data[:12] != V2_SIGNATURE[: len(data)]:
        raise NotAProxyHeader(f"not a PROXY header: starts with {data[:12]!r}")
    return _parse_v2(data, max_size)


def parse_proxy_datagram(
    data: bytes | bytearray | memoryview, max_size: int = DEFAULT_MAX_PROXY_HEADER
) -> tuple[ProxyHeader, bytes]:
    """Parse the PROXY v2 header at the start of a datagram: the header and
    the payload behind it.

    The spec has the sender put the whole header and the payload in one
    datagram, and the receiver parse each datagram on its own, so a datagram
    that holds only part of a header is malformed rather than "need more".
    Only v2 is defined over datagrams: v1 names TCP4 and TCP6 only.

    Raises:
        NotAProxyHeader: the datagram starts neither version.
        UnsupportedProxyHeader: a v1 header (``b"PROXY "``): it is a PROXY
            header, but of a version the spec does not define for datagrams,
            which is what this class says (not ``NotAProxyHeader``, whose
            peer is not a proxy at all); also as ``parse_proxy_header``.
        MalformedProxyHeader: the datagram ends inside the header; also as
            ``parse_proxy_header``.
        ProxyHeaderTooLong: a length field over ``max_size``.
    """
    data = bytes(data)
    if data[:1] == b"P" and data[:6] == V1_PREFIX[: len(data[:6])]:
        raise UnsupportedProxyHeader("PROXY v1 header in a datagram: the spec defines only v2 over datagrams")
    header = parse_proxy_header(data, max_size)
    if header is None:
        wanted = (
            f"{V2_HEAD}-byte head" if len(data) < V2_HEAD else f"{V2_HEAD + int.from_bytes(data[14:16], 'big')} bytes"
        )
        raise MalformedProxyHeader(
            f"PROXY v2 header cut short: the datagram holds {len(data)} bytes, the header needs its {wanted}"
        )
    return header, data[header.size :]


# What may follow "PROXY ": the spec's three protocols and their separator.
_V1_PROTOCOLS = (b"TCP4 ", b"TCP6 ", b"UNKNOWN ", b"UNKNOWN\r\n")
_V1_TCP = (b"TCP4 ", b"TCP6 ")


def _parse_v1(data: bytes) -> ProxyHeader | None:
    rest = data[6:15]
    if rest[:5] not in _V1_TCP and not any(rest[: len(p)] == p[: len(rest)] for p in _V1_PROTOCOLS):
        # (decided on the first wrong byte; the usual TCP4/TCP6 skips the search)
        raise MalformedProxyHeader(
            f"PROXY v1 protocol must be TCP4, TCP6 or UNKNOWN, then a space (or CRLF after UNKNOWN), got {rest!r}"
        )
    unknown = rest[:7] == b"UNKNOWN"
    end = data.find(b"\r\n", 0, V1_MAX_LINE)
    if end < 0:
        if not unknown:  # after "UNKNOWN " the spec ignores everything up to the CRLF, lone CR and LF included
            newline = data.find(b"\n", 0, V1_MAX_LINE)
            if newline >= 0:  # a bare LF: this line can never end in CRLF
                raise MalformedProxyHeader(f"PROXY v1 line ends in a bare LF, not CRLF: {data[: newline + 1]!r}")
            # A CR with a byte behind it that is not LF (the CRLF search failed); one
            # at 107 bytes or more is left to the length check.
            cr = data.find(b"\r", 0, V1_MAX_LINE - 1)
            if 0 <= cr < len(data) - 1:
                raise MalformedProxyHeader(f"PROXY v1 line has a bare CR, not CRLF: {data[: cr + 2]!r}")
        if len(data) >= V1_MAX_LINE:
            raise ProxyHeaderTooLong(f"PROXY v1 line with no CRLF within {V1_MAX_LINE} bytes", V1_MAX_LINE)
        return None
    size = end + 2
    if unknown:  # the spec: the rest of the line is to be ignored, and the real endpoints used
        return _header(1, "PROXY", socket.AF_UNSPEC, 0, None, None, _NO_TLVS, size)
    line = data[:end]
    if 13 in line or 10 in line:  # CR, LF (a byte's value: no buffer to take, unlike b"\r" in line)
        raise MalformedProxyHeader(f"PROXY v1 line has a bare CR or LF before its CRLF: {line!r}")
    fields = line.split(b" ")
    if len(fields) != 6:
        raise MalformedProxyHeader(f"PROXY v1 line needs 6 space-separated fields, got {len(fields)}: {line!r}")
    _, proto, src, dst, sport, dport = fields
    # Both addresses, then both ports: the error named is the first field that is wrong.
    if proto == b"TCP4":
        src_host, dst_host = _v1_ipv4(src), _v1_ipv4(dst)
        source: Any = (src_host, _v1_port(sport))
        destination: Any = (dst_host, _v1_port(dport))
        return _header(1, "PROXY", socket.AF_INET, socket.SOCK_STREAM, source, destination, _NO_TLVS, size)
    # TCP6, as the check on the first bytes left no other
    src_host, dst_host = _v1_ipv6(src), _v1_ipv6(dst)
    source, destination = (src_host, _v1_port(sport), 0, 0), (dst_host, _v1_port(dport), 0, 0)
    return _header(1, "PROXY", socket.AF_INET6, socket.SOCK_STREAM, source, destination, _NO_TLVS, size)


def _v1_ipv4(raw: bytes) -> str:
    # inet_pton takes exactly what ipaddress.IPv4Address does (four decimal
    # octets, 0-255, no leading zeros: glibc, musl and the BSDs share that
    # strictness), and an address it takes is already in canonical form: the
    # text itself, without the ~20 k instructions of an ipaddress round trip.
    try:
        text = raw.decode("ascii")
        socket.inet_pton(socket.AF_INET, text)
    except (OSError, ValueError):  # ValueError: not ASCII, or a NUL byte
        raise MalformedProxyHeader(f"PROXY v1 TCP4 address is not valid: {raw!r}") from None
    return text


def _v1_ipv6(raw: bytes) -> str:
    try:
        text = raw.decode("ascii")
        if "%" in text:  # ipaddress accepts an IPv6 scope id; the spec has none
            raise ValueError
        # ipaddress's canonical text (RFC 5952), not inet_ntop's, whose
        # dotted-quad forms differ between C libraries.
        return str(ipaddress.IPv6Address(text))
    except ValueError:
        raise MalformedProxyHeader(f"PROXY v1 TCP6 address is not valid: {raw!r}") from None


_NO_TLVS: Mapping[int, tuple[bytes, ...]] = types.MappingProxyType({})


def _v1_port(raw: bytes) -> int:
    # bytes.isdigit() is ASCII-only, unlike int(), which also takes "+1", "1_0" and other scripts' digits.
    if raw.isdigit() and (raw[0] != 0x30 or len(raw) == 1):  # isdigit() is False for b""
        port = int(raw)
        if port <= 65535:
            return port
    raise MalformedProxyHeader(f"PROXY v1 port must be 0-65535 without leading zeros, got {raw!r}")


def _parse_v2(data: bytes, max_size: int) -> ProxyHeader | None:
    if len(data) <= 12:
        return None
    # Decided on the 13th and 14th bytes, without waiting for the 16-byte head.
    version, command = data[12] >> 4, data[12] & 0x0F
    if version != 2:
        raise UnsupportedProxyHeader(f"PROXY v2 signature with version {version}, only 2 is defined")
    if command > 1:
        raise UnsupportedProxyHeader(f"PROXY v2 command 0x{command:x}, only LOCAL (0) and PROXY (1) are defined")
    if len(data) < 14:
        return None
    known = _V2_FAMILIES.get(data[13] >> 4)
    protocol = _V2_PROTOCOLS.get(data[13] & 0x0F)
    if command == 1 and (known is None or protocol is None):
        raise UnsupportedProxyHeader(f"PROXY v2 address family/protocol byte 0x{data[13]:02x} is not defined")
    if len(data) < V2_HEAD:
        return None
    size = V2_HEAD + int.from_bytes(data[14:16], "big")
    if size > max_size:
        raise ProxyHeaderTooLong(f"PROXY v2 header of {size} bytes, over the limit of {max_size} bytes", max_size)
    if len(data) < size:
        return None
    header = data[:size]
    if command == 0:
        # LOCAL: the spec says to accept it and use the real endpoints, ignoring
        # the address block and its family whatever they are. TLVs can be found
        # only behind a block of a defined family that the length holds.
        family, address_size = known or (socket.AF_UNSPEC, -1)
        if protocol is None or address_size < 0 or size - V2_HEAD < address_size:
            return _header(2, "LOCAL", family, protocol or 0, None, None, _NO_TLVS, size)
        tlvs = _parse_v2_tlvs(header, V2_HEAD + address_size)
        return _header(2, "LOCAL", family, protocol, None, None, tlvs, size)
    assert known is not None  # checked above for PROXY
    assert protocol is not None
    family, address_size = known
    if size - V2_HEAD < address_size:
        raise MalformedProxyHeader(
            f"PROXY v2 length {size - V2_HEAD} is shorter than the {address_size}-byte address block of its family"
        )
    tlvs = _parse_v2_tlvs(header, V2_HEAD + address_size)
    block = header[V2_HEAD : V2_HEAD + address_size]
    source: Any = None
    destination: Any = None
    if protocol == 0:
        pass  # transport UNSPEC: the spec says to ignore the address information
    elif family == socket.AF_INET:
        # The text ipaddress would write, from a table: ~5 k instructions for
        # both addresses and ports, against ~13 k with inet_ntop (sprintf)
        # and int.from_bytes, and ~40 k with ipaddress.
        o = _OCTETS
        a, b, c, d, e, f, g, h, sport_hi, sport_lo, dport_hi, dport_lo = block  # the 12-byte INET block
        source = (f"{o[a]}.{o[b]}.{o[c]}.{o[d]}", sport_hi << 8 | sport_lo)
        destination = (f"{o[e]}.{o[f]}.{o[g]}.{o[h]}", dport_hi << 8 | dport_lo)
    elif family == socket.AF_INET6:
        source = (str(ipaddress.IPv6Address(block[0:16])), int.from_bytes(block[32:34], "big"), 0, 0)
        destination = (str(ipaddress.IPv6Address(block[16:32])), int.from_bytes(block[34:36], "big"), 0, 0)
    elif family == socket.AF_UNIX:
        source, destination = _unix_path(block[:108]), _unix_path(block[108:])
    return _header(2, "PROXY", family, protocol, source, destination, tlvs, size)


def _unix_path(raw: bytes) -> str | bytes:
    if raw[:1] == b"\x00":  # Linux's abstract namespace: the name is bytes, as the stdlib returns it
        return b"\x00" + raw[1:].rstrip(b"\x00")
    return os.fsdecode(raw.split(b"\x00", 1)[0])
