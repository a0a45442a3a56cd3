"""The sans-IO PROXY protocol parser: the spec's examples whole, byte by byte
and with the client's bytes behind, every error, and fuzzed."""

from __future__ import annotations

import ipaddress
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sockserve import (
    MalformedProxyHeader,
    NotAProxyHeader,
    ProxyHeaderError,
    ProxyHeaderTooLong,
    UnsupportedProxyHeader,
)
from sockserve.protocol import DEFAULT_MAX_PROXY_HEADER, ProxyHeader, parse_proxy_header
from sockserve.protocol.proxy import V2_SIGNATURE

# A small encoder, written from the spec, independent of the parser.


def tlv(type_: int, value: bytes) -> bytes:
    return bytes([type_]) + len(value).to_bytes(2, "big") + value


def v2(command: int, fam: int, block: bytes, tlvs: bytes = b"", *, version: int = 2) -> bytes:
    body = block + tlvs
    return V2_SIGNATURE + bytes([version << 4 | command, fam]) + len(body).to_bytes(2, "big") + body


def inet4_block(src: str, dst: str, sport: int, dport: int) -> bytes:
    return (
        ipaddress.IPv4Address(src).packed
        + ipaddress.IPv4Address(dst).packed
        + sport.to_bytes(2, "big")
        + dport.to_bytes(2, "big")
    )


def inet6_block(src: str, dst: str, sport: int, dport: int) -> bytes:
    return (
        ipaddress.IPv6Address(src).packed
        + ipaddress.IPv6Address(dst).packed
        + sport.to_bytes(2, "big")
        + dport.to_bytes(2, "big")
    )


def unix_block(src: bytes, dst: bytes) -> bytes:
    return src.ljust(108, b"\0") + dst.ljust(108, b"\0")


SSL_VALUE = (
    bytes([0x07])  # PP2_CLIENT_SSL | CERT_CONN | CERT_SESS
    + (0).to_bytes(4, "big")
    + tlv(0x21, b"TLSv1.3")
    + tlv(0x22, b"client.example")
    + tlv(0x23, b"TLS_AES_128_GCM_SHA256")
    + tlv(0x24, b"SHA256")
    + tlv(0x25, b"RSA2048")
)

EXAMPLES = {
    "v1 TCP4": (
        b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n",
        {
            "version": 1,
            "command": "PROXY",
            "family": socket.AF_INET,
            "source": ("192.168.0.1", 56324),
            "destination": ("192.168.0.11", 443),
        },
    ),
    "v1 TCP6": (
        b"PROXY TCP6 2001:db8::1 ::1 65535 0\r\n",
        {
            "version": 1,
            "family": socket.AF_INET6,
            "source": ("2001:db8::1", 65535, 0, 0),
            "destination": ("::1", 0, 0, 0),
        },
    ),
    "v1 UNKNOWN": (
        b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n",
        {"version": 1, "family": socket.AF_UNSPEC, "source": None, "destination": None},
    ),
    "v1 UNKNOWN bare": (b"PROXY UNKNOWN\r\n", {"version": 1, "family": socket.AF_UNSPEC, "source": None}),
    "v2 PROXY IPv4": (
        v2(1, 0x11, inet4_block("10.0.0.1", "10.0.0.2", 1234, 80)),
        {
            "version": 2,
            "command": "PROXY",
            "family": socket.AF_INET,
            "protocol": socket.SOCK_STREAM,
            "source": ("10.0.0.1", 1234),
            "destination": ("10.0.0.2", 80),
        },
    ),
    "v2 PROXY IPv6 UDP": (
        v2(1, 0x22, inet6_block("2001:db8::5", "::1", 53, 5353)),
        {
            "family": socket.AF_INET6,
            "protocol": socket.SOCK_DGRAM,
            "source": ("2001:db8::5", 53, 0, 0),
            "destination": ("::1", 5353, 0, 0),
        },
    ),
    "v2 PROXY Unix": (
        v2(1, 0x31, unix_block(b"/run/client.sock", b"\0abstract")),
        {"family": socket.AF_UNIX, "source": "/run/client.sock", "destination": b"\0abstract"},
    ),
    "v2 LOCAL": (
        v2(0, 0x00, b""),
        {
            "version": 2,
            "command": "LOCAL",
            "family": socket.AF_UNSPEC,
            "protocol": 0,
            "source": None,
            "destination": None,
        },
    ),
    "v2 LOCAL with an address": (
        v2(0, 0x11, inet4_block("1.2.3.4", "5.6.7.8", 1, 2)),
        {"command": "LOCAL", "family": socket.AF_INET, "source": None, "destination": None},
    ),
    "v2 PROXY UNSPEC": (v2(1, 0x00, b""), {"command": "PROXY", "family": socket.AF_UNSPEC, "source": None}),
    "v2 with TLVs": (
        v2(
            1,
            0x11,
            inet4_block("203.0.113.7", "198.51.100.1", 50000, 443),
            tlv(0x01, b"h2") + tlv(0x02, b"example.com") + tlv(0x05, b"id-42") + tlv(0x20, SSL_VALUE) + tlv(0x04, b""),
        ),
        {
            "source": ("203.0.113.7", 50000),
            "alpn": b"h2",
            "authority": "example.com",
            "unique_id": b"id-42",
        },
    ),
}


def check(header: ProxyHeader | None, raw: bytes, expected: dict[str, object]) -> None:
    assert header is not None
    assert header.size == len(raw)
    for name, value in expected.items():
        assert getattr(header, name) == value, name


@pytest.mark.parametrize("name", EXAMPLES)
def test_the_examples_parse_whole_byte_by_byte_and_with_bytes_behind(name: str) -> None:
    raw, expected = EXAMPLES[name]
    check(parse_proxy_header(raw), raw, expected)
    for cut in range(len(raw)):
        assert parse_proxy_header(raw[:cut]) is None, cut  # every prefix asks for more
    glued = raw + b"GET / HTTP/1.1\r\n\r\n"
    header = parse_proxy_header(bytearray(glued))
    check(header, raw, expected)
    assert header is not None
    assert glued[header.size :] == b"GET / HTTP/1.1\r\n\r\n"


def test_the_ssl_tlv_and_its_sub_tlvs_are_decoded() -> None:
    raw = v2(1, 0x11, inet4_block("1.1.1.1", "2.2.2.2", 1, 2), tlv(0x20, SSL_VALUE) + tlv(0x01, b"a") + tlv(0x01, b"b"))
    header = parse_proxy_header(raw)
    assert header is not None
    ssl = header.ssl
    assert ssl is not None
    assert (ssl.client, ssl.verify) == (7, 0)
    assert (ssl.version, ssl.cn, ssl.cipher, ssl.sig_alg, ssl.key_alg) == (
        "TLSv1.3",
        "client.example",
        "TLS_AES_128_GCM_SHA256",
        "SHA256",
        "RSA2048",
    )
    assert header.tlvs[0x01] == (b"a", b"b")  # repeated types keep every value, in order
    assert header.alpn == b"a"
    assert header.authority is None
    assert parse_proxy_header(v2(0, 0, b"")).ssl is None  # type: ignore[union-attr]


def test_a_header_is_immutable() -> None:
    header = parse_proxy_header(EXAMPLES["v1 TCP4"][0])
    assert header is not None
    with pytest.raises(AttributeError):
        header.size = 0  # type: ignore[misc]
    with pytest.raises(TypeError):
        header.tlvs[1] = (b"x",)  # type: ignore[index]
    assert header == parse_proxy_header(EXAMPLES["v1 TCP4"][0])
    assert "source=('192.168.0.1', 56324)" in repr(header)


V4 = inet4_block("1.2.3.4", "5.6.7.8", 1, 2)

ERRORS = [
    (b"GET / HTTP/1.1\r\n", NotAProxyHeader, r"not a PROXY header: starts with b'GET / HTTP/1'"),
    (b"\x16\x03\x01", NotAProxyHeader, "not a PROXY header"),  # a TLS ClientHello, refused on its first byte
    (b"PROXX", NotAProxyHeader, "not a PROXY header"),
    (b"\r\n\r\n\x00\r\nQUIX", NotAProxyHeader, "not a PROXY header"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 " + b"1" * 100, ProxyHeaderTooLong, "no CRLF within 107 bytes"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", MalformedProxyHeader, "bare LF"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", MalformedProxyHeader, "needs 6 space-separated fields, got 5"),
    (b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", MalformedProxyHeader, "needs 6"),
    (b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", MalformedProxyHeader, "must be TCP4, TCP6 or UNKNOWN, got b'UDP4'"),
    (b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n", MalformedProxyHeader, r"TCP4 address is not valid: b'1.2.3.256'"),
    (b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", MalformedProxyHeader, "address is not valid"),
    (b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", MalformedProxyHeader, "TCP4 address is not valid"),
    (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", MalformedProxyHeader, "TCP6 address is not valid"),
    (b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", MalformedProxyHeader, "TCP6 address is not valid"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", MalformedProxyHeader, "port must be 0-65535.*b'65536'"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 080 2\r\n", MalformedProxyHeader, "without leading zeros, got b'080'"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n", MalformedProxyHeader, "port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 \xd9\xa1 2\r\n", MalformedProxyHeader, "port"),
    (v2(1, 0x11, V4, version=1), UnsupportedProxyHeader, "version 1, only 2 is defined"),
    (v2(2, 0x11, V4), UnsupportedProxyHeader, "command 0x2"),
    (v2(1, 0x41, V4), UnsupportedProxyHeader, "family/protocol byte 0x41"),
    (v2(1, 0x13, V4), UnsupportedProxyHeader, "family/protocol byte 0x13"),
    (v2(1, 0x21, V4), MalformedProxyHeader, "length 12 is shorter than the 36-byte address block"),
    (v2(1, 0x11, V4, b"\x01\x00"), MalformedProxyHeader, "TLV cut short: 2 bytes left"),
    (v2(1, 0x11, V4, b"\x01\x00\x05abc"), MalformedProxyHeader, "TLV 0x01 announces 5 bytes, only 3 left"),
    (v2(1, 0x11, V4, tlv(0x20, b"\x01\x00\x00")), MalformedProxyHeader, "SSL TLV of 3 bytes"),
    (v2(1, 0x11, V4, tlv(0x20, b"\x01\x00\x00\x00\x00\x22\x00")), MalformedProxyHeader, "SSL sub-TLV cut short"),
    (V2_SIGNATURE + b"\x21\x11\xff\xff", ProxyHeaderTooLong, "header of 65551 bytes, over the limit of 4112"),
]


@pytest.mark.parametrize(("raw", "error", "message"), ERRORS, ids=[e[2][:40] for e in ERRORS])
def test_each_error_says_what_is_wrong(raw: bytes, error: type[ProxyHeaderError], message: str) -> None:
    with pytest.raises(error, match=message) as caught:
        parse_proxy_header(raw)
    assert isinstance(caught.value, ProxyHeaderError)
    assert isinstance(caught.value, ValueError)


def test_a_v2_header_over_the_cap_is_refused_on_its_16_bytes() -> None:
    raw = v2(1, 0x11, V4, tlv(0xE0, b"x" * 100))
    assert parse_proxy_header(raw, max_size=len(raw)) is not None
    with pytest.raises(ProxyHeaderTooLong, match=f"over the limit of {len(raw) - 1} bytes") as caught:
        parse_proxy_header(raw[:16], max_size=len(raw) - 1)
    assert caught.value.limit == len(raw) - 1
    with pytest.raises(ValueError, match="max_size must be at least 16"):
        parse_proxy_header(raw, max_size=15)


def test_a_v1_line_of_exactly_107_bytes_is_allowed() -> None:
    head = b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n"
    assert len(head) == 104
    line = b"PROXY UNKNOWN " + b"x" * (107 - 16) + b"\r\n"
    assert len(line) == 107
    assert parse_proxy_header(head + b"tail") is not None
    header = parse_proxy_header(line + b"tail")
    assert header is not None
    assert header.size == 107
    with pytest.raises(ProxyHeaderTooLong):
        parse_proxy_header(b"PROXY UNKNOWN " + b"x" * (108 - 16) + b"\r\n")


# Fuzzing: any bytes, and generated valid headers.


def noisy(prefix: bytes) -> st.SearchStrategy[bytes]:
    return st.binary(max_size=200).map(lambda tail: prefix + tail)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=300),
        noisy(b"PROXY "),
        noisy(b"PROXY TCP4 "),
        noisy(b"PROXY TCP6 "),
        noisy(V2_SIGNATURE),
        noisy(V2_SIGNATURE + b"\x21"),
        noisy(V2_SIGNATURE + b"\x21\x11\x00"),
        # Long enough to hold more than the cap, so a parser that waited past it would be caught.
        st.binary(min_size=120, max_size=200).map(lambda tail: V2_SIGNATURE + b"\x21\x11\x00" + tail),
        st.binary(min_size=120, max_size=200).map(lambda tail: b"PROXY " + tail),
    ),
    st.sampled_from([16, 120, DEFAULT_MAX_PROXY_HEADER]),
)
def test_any_bytes_parse_ask_for_more_or_raise_a_proxy_header_error(data: bytes, max_size: int) -> None:
    try:
        header = parse_proxy_header(data, max_size)
    except ProxyHeaderError:
        return
    if header is None:
        assert len(data) < max(107, max_size)  # never "need more" past the cap
    else:
        assert 0 < header.size <= len(data)
        assert header.size <= max(107, max_size)
        assert parse_proxy_header(data[: header.size], max_size) == header  # what follows does not change it


ports = st.integers(0, 65535)
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
tlvs = st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=40)), max_size=5)


@st.composite
def valid_headers(draw: st.DrawFn) -> tuple[bytes, dict[str, object]]:
    kind = draw(st.sampled_from(["v1-4", "v1-6", "v1-unknown", "v2-4", "v2-6", "v2-unix", "v2-local"]))
    sport, dport = draw(ports), draw(ports)
    if kind == "v1-4":
        src, dst = draw(ipv4), draw(ipv4)
        return f"PROXY TCP4 {src} {dst} {sport} {dport}\r\n".encode(), {"source": (src, sport)}
    if kind == "v1-6":
        src, dst = draw(ipv6), draw(ipv6)
        return f"PROXY TCP6 {src} {dst} {sport} {dport}\r\n".encode(), {"destination": (dst, dport, 0, 0)}
    if kind == "v1-unknown":
        junk = draw(st.binary(max_size=80).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")))
        rest = b" " + junk if draw(st.booleans()) else b""  # the spec: anything after "UNKNOWN " is ignored
        return b"PROXY UNKNOWN" + rest + b"\r\n", {"source": None}
    pairs = [(t, v) for t, v in draw(tlvs) if t != 0x20]  # the SSL TLV has a structure of its own
    if draw(st.booleans()):
        pairs.append((0x20, bytes([draw(st.integers(0, 7))]) + b"\0\0\0\0" + tlv(0x22, draw(st.binary(max_size=20)))))
    encoded = b"".join(tlv(t, v) for t, v in pairs)
    expected_tlvs: dict[int, tuple[bytes, ...]] = {}
    for t, v in pairs:
        expected_tlvs[t] = (*expected_tlvs.get(t, ()), v)
    if kind == "v2-4":
        src, dst = draw(ipv4), draw(ipv4)
        raw = v2(1, 0x11, inet4_block(src, dst, sport, dport), encoded)
        return raw, {"source": (src, sport), "destination": (dst, dport), "tlvs": expected_tlvs}
    if kind == "v2-6":
        src, dst = draw(ipv6), draw(ipv6)
        raw = v2(1, 0x21, inet6_block(src, dst, sport, dport), encoded)
        return raw, {"source": (src, sport, 0, 0), "tlvs": expected_tlvs}
    if kind == "v2-unix":
        path = "/" + draw(st.text("abc/._-", max_size=50))
        raw = v2(1, 0x31, unix_block(path.encode(), b"/srv.sock"), encoded)
        return raw, {"source": path, "destination": "/srv.sock", "tlvs": expected_tlvs}
    return v2(0, 0x00, b"", encoded), {"command": "LOCAL", "source": None, "tlvs": expected_tlvs}


@settings(max_examples=150, deadline=None)
@given(valid_headers(), st.binary(max_size=20))
def test_valid_headers_round_trip_whole_split_anywhere_and_with_bytes_behind(
    case: tuple[bytes, dict[str, object]], trailing: bytes
) -> None:
    raw, expected = case
    check(parse_proxy_header(raw), raw, expected)
    check(parse_proxy_header(raw + trailing), raw, expected)
    for cut in range(len(raw)):
        assert parse_proxy_header(raw[:cut]) is None
