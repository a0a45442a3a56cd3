"""The sans-IO PROXY protocol parser: the spec's examples whole, byte by byte
and with the client's bytes behind, every error, and fuzzed."""

from __future__ import annotations

import ipaddress
import socket
import subprocess
import sys

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
from sockserve.protocol import DEFAULT_MAX_PROXY_HEADER, ProxyHeader, parse_proxy_datagram, parse_proxy_header
from sockserve.protocol.proxy import V2_SIGNATURE

# A small encoder, written from the spec, independent of the parser.


def tlv(type_: int, value: bytes) -> bytes:
    return bytes([type_]) + len(value).to_bytes(2, "big") + value


def v2(command: int, fam: int, block: bytes, tlvs: bytes = b"", *, version: int = 2) -> bytes:
    body = block + tlvs
    return V2_SIGNATURE + bytes([version << 4 | command, fam]) + len(body).to_bytes(2, "big") + body


def crc32c(data: bytes) -> int:
    """Bitwise CRC32C (Castagnoli, reflected 0x82F63B78), no table: independent of the parser's."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    return crc ^ 0xFFFFFFFF


def with_crc32c(command: int, fam: int, block: bytes, before: bytes = b"", after: bytes = b"") -> bytes:
    """A v2 header whose CRC32C TLV (between ``before`` and ``after``) is filled in as the spec's sender does."""
    raw = v2(command, fam, block, before + tlv(0x03, b"\0\0\0\0") + after)
    at = len(raw) - len(after) - 4
    return raw[:at] + crc32c(raw).to_bytes(4, "big") + raw[at + 4 :]


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

V4_BLOCK = inet4_block("1.2.3.4", "5.6.7.8", 1, 2)

EXAMPLES: dict[str, tuple[bytes, dict[str, object]]] = {
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
    # The spec: after UNKNOWN the receiver must ignore anything up to the CRLF, lone LF and CR included.
    "v1 UNKNOWN with a lone LF and CR": (
        b"PROXY UNKNOWN a\nb\rc\n\r\r\r\n",
        {"version": 1, "family": socket.AF_UNSPEC, "source": None},
    ),
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
    # The spec: LOCAL is accepted and its address block ignored, "including the family", whatever it is.
    "v2 LOCAL with an undefined family": (
        v2(0, 0x41, b"xyz"),  # a defined nibble is still reported: transport 1, STREAM
        {"command": "LOCAL", "family": socket.AF_UNSPEC, "protocol": socket.SOCK_STREAM, "source": None, "tlvs": {}},
    ),
    "v2 LOCAL with an undefined transport": (
        v2(0, 0x1F, V4_BLOCK),
        {"command": "LOCAL", "family": socket.AF_INET, "protocol": 0, "source": None, "tlvs": {}},
    ),
    "v2 LOCAL with a length short of its family's block": (
        v2(0, 0x21, b""),
        {"command": "LOCAL", "family": socket.AF_INET6, "protocol": socket.SOCK_STREAM, "source": None},
    ),
    "v2 LOCAL with TLVs": (
        v2(0, 0x00, b"", tlv(0x05, b"hc-1")),
        {"command": "LOCAL", "source": None, "tlvs": {0x05: (b"hc-1",)}},
    ),
    "v2 PROXY UNSPEC": (v2(1, 0x00, b""), {"command": "PROXY", "family": socket.AF_UNSPEC, "source": None}),
    # Transport UNSPEC: "the receiver should ignore address information".
    "v2 PROXY transport UNSPEC": (
        v2(1, 0x10, V4_BLOCK),
        {"command": "PROXY", "family": socket.AF_INET, "protocol": 0, "source": None, "destination": None},
    ),
    "v2 with a CRC32C": (
        with_crc32c(1, 0x11, V4_BLOCK, tlv(0x01, b"h2"), tlv(0x05, b"id-1")),
        {"source": ("1.2.3.4", 1), "alpn": b"h2", "unique_id": b"id-1"},
    ),
    "v2 LOCAL with a CRC32C": (with_crc32c(0, 0x00, b""), {"command": "LOCAL"}),
    # Captured from HAProxy 2.6.12 (server ... send-proxy-v2 proxy-v2-options crc32c,unique-id,ssl
    # check check-send-proxy): a health check, LOCAL with TLVs right behind the head, and a client.
    "HAProxy health check": (
        b"\r\n\r\n\x00\r\nQUIT\n \x00\x00\x0f\x03\x00\x04\x88\x9d\xa1\xdf \x00\x05\x00\x00\x00\x00\x00",
        {"command": "LOCAL", "source": None, "tlvs": {0x03: (b"\x88\x9d\xa1\xdf",), 0x20: (b"\0" * 5,)}},
    ),
    "HAProxy client": (
        b"\r\n\r\n\x00\r\nQUIT\n!\x11\x00#\x7f\x00\x00\x01\x7f\x00\x00\x01\xcf\x12\x96\xad"
        b"\x03\x00\x04\x889\xa3v\x05\x00\x05abc-1 \x00\x05\x00\x00\x00\x00\x00",
        {"source": ("127.0.0.1", 53010), "destination": ("127.0.0.1", 38573), "unique_id": b"abc-1"},
    ),
    "v2 with TLVs": (
        v2(
            1,
            0x11,
            inet4_block("203.0.113.7", "198.51.100.1", 50000, 443),
            tlv(0x01, b"h2")
            + tlv(0x02, "bücher.example".encode())
            + tlv(0x04, b"")
            + tlv(0x05, b"i" * 128)  # the spec's longest unique id
            + tlv(0x20, SSL_VALUE)
            + tlv(0x04, b"\xff" * 5)  # NOOP: padding, to be ignored
            + tlv(0x30, b"blue")
            + tlv(0xE7, b"\x01vpc-123"),  # the custom range: kept raw
        ),
        {
            "source": ("203.0.113.7", 50000),
            "alpn": b"h2",
            "authority": "bücher.example",
            "unique_id": b"i" * 128,
            "netns": "blue",
            "tlvs": {
                0x01: (b"h2",),
                0x02: ("bücher.example".encode(),),
                0x05: (b"i" * 128,),
                0x20: (SSL_VALUE,),
                0x30: (b"blue",),
                0xE7: (b"\x01vpc-123",),
            },
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
        header.size = 0
    with pytest.raises(TypeError):
        header.tlvs[1] = (b"x",)  # type: ignore[index]
    assert header == parse_proxy_header(EXAMPLES["v1 TCP4"][0])
    assert "source=('192.168.0.1', 56324)" in repr(header)


V4 = V4_BLOCK
SSL_FIXED = b"\x01\0\0\0\0"

ERRORS = [
    (b"GET / HTTP/1.1\r\n", NotAProxyHeader, r"not a PROXY header: starts with b'GET / HTTP/1'"),
    (b"\x16\x03\x01", NotAProxyHeader, "not a PROXY header"),  # a TLS ClientHello, refused on its first byte
    (b"PROXX", NotAProxyHeader, "not a PROXY header"),
    (b"\r\n\r\n\x00\r\nQUIX", NotAProxyHeader, "not a PROXY header"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 " + b"1" * 100, ProxyHeaderTooLong, "no CRLF within 107 bytes"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", MalformedProxyHeader, "bare LF"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", MalformedProxyHeader, "needs 6 space-separated fields, got 5"),
    (b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", MalformedProxyHeader, "needs 6"),
    (b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", MalformedProxyHeader, "must be TCP4, TCP6 or UNKNOWN.*got b'UDP4 1.2.'"),
    # Refused on the first wrong byte, without waiting for a CRLF (the spec: abort as soon as possible).
    (b"PROXY UD", MalformedProxyHeader, "must be TCP4, TCP6 or UNKNOWN"),
    (b"PROXY TCP4\t", MalformedProxyHeader, "must be TCP4, TCP6 or UNKNOWN"),
    (b"PROXY UNKNOWNX", MalformedProxyHeader, "must be TCP4, TCP6 or UNKNOWN"),
    (b"PROXY UNKNOWN\n", MalformedProxyHeader, "must be TCP4, TCP6 or UNKNOWN"),
    (b"PROXY UNKNOWN\rx\r\n", MalformedProxyHeader, "must be TCP4, TCP6 or UNKNOWN"),
    (b"PROXY TCP4 1.2.3.4\rx", MalformedProxyHeader, "bare CR"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r\n", MalformedProxyHeader, "bare CR or LF before its CRLF"),
    (b"PROXY TCP6 ::1\n::1 1 2\r\n", MalformedProxyHeader, "bare CR or LF before its CRLF"),
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
    # Decided on the 13th/14th byte, not the 16th.
    (V2_SIGNATURE + b"\x11", UnsupportedProxyHeader, "version 1, only 2 is defined"),
    (V2_SIGNATURE + b"\x2f", UnsupportedProxyHeader, "command 0xf"),
    (V2_SIGNATURE + b"\x21\x41", UnsupportedProxyHeader, "family/protocol byte 0x41"),
    (v2(1, 0x21, V4), MalformedProxyHeader, "length 12 is shorter than the 36-byte address block"),
    (v2(1, 0x11, V4, b"\x01\x00"), MalformedProxyHeader, "TLV cut short: 2 bytes left"),
    (v2(1, 0x11, V4, b"\x01\x00\x05abc"), MalformedProxyHeader, "TLV 0x01 announces 5 bytes, only 3 left"),
    (v2(1, 0x11, V4, tlv(0x20, b"\x01\x00\x00")), MalformedProxyHeader, "SSL TLV of 3 bytes"),
    (v2(1, 0x11, V4, tlv(0x20, b"\x01\x00\x00\x00\x00\x22\x00")), MalformedProxyHeader, "SSL sub-TLV cut short"),
    (v2(0, 0x00, b"", b"\x01\x00"), MalformedProxyHeader, "TLV cut short"),  # LOCAL's TLVs are still TLVs
    (v2(1, 0x11, V4, tlv(0x05, b"u" * 129)), MalformedProxyHeader, "unique id TLV of 129 bytes, over the spec's 128"),
    (v2(1, 0x11, V4, tlv(0x02, b"\xff.example")), MalformedProxyHeader, r"authority TLV is not utf-8: b'\\xff"),
    (v2(1, 0x11, V4, tlv(0x30, b"ns\xc3\xa9")), MalformedProxyHeader, "network namespace TLV is not ascii"),
    (
        v2(1, 0x11, V4, tlv(0x20, SSL_FIXED + tlv(0x23, b"\xc3\xa9"))),
        MalformedProxyHeader,
        "SSL cipher TLV is not ascii",
    ),
    (v2(1, 0x11, V4, tlv(0x20, SSL_FIXED + tlv(0x22, b"\xff"))), MalformedProxyHeader, "SSL CN TLV is not utf-8"),
    (v2(1, 0x11, V4, tlv(0x03, b"abc")), MalformedProxyHeader, "CRC32C TLV of 3 bytes, not 4"),
    (
        with_crc32c(1, 0x11, V4, after=tlv(0x03, b"\0\0\0\0")),
        MalformedProxyHeader,
        "more than one CRC32C TLV",
    ),
    (with_crc32c(1, 0x11, V4)[:-1] + b"\0", MalformedProxyHeader, "CRC32C mismatch: the TLV says 0x.*00, the header"),
    (v2(1, 0x11, V4, tlv(0x03, crc32c(v2(1, 0x11, V4)).to_bytes(4, "big"))), MalformedProxyHeader, "CRC32C mismatch"),
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


def test_the_ssl_tlv_decodes_the_newer_sub_tlvs() -> None:
    value = (
        SSL_FIXED
        + tlv(0x21, b"TLSv1.3")
        + tlv(0x26, b"X25519")
        + tlv(0x27, b"rsa_pss_rsae_sha256")
        + tlv(0x28, b"\x30\x82DER")
        + tlv(0xE0, b"?")  # a sub-type the spec does not define: kept raw
    )
    header = parse_proxy_header(v2(1, 0x11, V4, tlv(0x20, value)))
    assert header is not None
    ssl = header.ssl
    assert ssl is not None
    assert (ssl.group, ssl.sig_scheme, ssl.client_cert) == ("X25519", "rsa_pss_rsae_sha256", b"\x30\x82DER")
    assert ssl.tlvs[0xE0] == (b"?",)
    assert ssl.cn is None


# CRC32C (TLV 0x03): the spec's receiver zeroes the field and sums the whole header.


def test_the_test_crc32c_is_crc32c() -> None:
    assert crc32c(b"123456789") == 0xE3069283  # the standard check value
    assert crc32c(b"") == 0


def test_a_crc32c_that_matches_is_accepted_and_kept() -> None:
    raw = with_crc32c(1, 0x21, inet6_block("2001:db8::1", "::1", 5, 6), tlv(0x02, b"a.example"), tlv(0xE1, b"x"))
    header = parse_proxy_header(raw)
    assert header is not None
    assert header.tlv(0x03) == raw[-8:-4]
    assert header.source == ("2001:db8::1", 5, 0, 0)


def test_any_changed_byte_of_a_checksummed_header_is_refused() -> None:
    raw = with_crc32c(1, 0x11, V4, tlv(0x01, b"h2"), tlv(0x05, b"id"))
    assert parse_proxy_datagram(raw)[0].size == len(raw)
    crc_type_at = 16 + len(V4) + len(tlv(0x01, b"h2"))
    assert raw[crc_type_at] == 0x03
    for at in range(len(raw)):
        if at == crc_type_at:
            continue  # another type makes it another TLV, with no checksum to check: the spec's limit
        for flip in (0x01, 0x80):
            changed = raw[:at] + bytes([raw[at] ^ flip]) + raw[at + 1 :]
            # Whole (a datagram), so a changed length cannot just ask for more.
            with pytest.raises(ProxyHeaderError):
                parse_proxy_datagram(changed)


def test_the_crc32c_table_is_built_on_the_first_header_that_needs_it() -> None:
    code = f"""
import sockserve.protocol.proxy as proxy
assert proxy.parse_proxy_header({v2(1, 0x11, V4)!r}) is not None
assert proxy._CRC32C_TABLE is None, "built without a CRC32C TLV"
assert proxy.parse_proxy_header({with_crc32c(1, 0x11, V4)!r}) is not None
assert len(proxy._CRC32C_TABLE) == 256
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr


# Datagrams: the whole header in one datagram, v2 only.


def test_a_datagram_gives_its_header_and_its_payload() -> None:
    raw = v2(1, 0x12, inet4_block("192.0.2.1", "192.0.2.2", 5353, 53))
    header, payload = parse_proxy_datagram(bytearray(raw + b"\x00query"))
    assert header.source == ("192.0.2.1", 5353)
    assert header.protocol == socket.SOCK_DGRAM
    assert payload == b"\x00query"
    assert parse_proxy_datagram(memoryview(raw)) == (header, b"")
    assert parse_proxy_datagram(with_crc32c(0, 0x00, b"") + b"ping")[1] == b"ping"


def test_a_datagram_ending_inside_its_header_is_malformed_not_incomplete() -> None:
    raw = v2(1, 0x12, V4, tlv(0x01, b"h3"))
    for cut in range(len(raw)):
        with pytest.raises(MalformedProxyHeader, match=f"cut short: the datagram holds {cut} bytes"):
            parse_proxy_datagram(raw[:cut])
    with pytest.raises(MalformedProxyHeader, match=f"needs its {len(raw)} bytes"):
        parse_proxy_datagram(raw[:-1])
    with pytest.raises(MalformedProxyHeader, match="needs its 16-byte head"):
        parse_proxy_datagram(raw[:15])


@pytest.mark.parametrize("raw", [b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\nDATA", b"PROXY UNKNOWN\r\n", b"PROX", b"P"])
def test_a_v1_header_in_a_datagram_is_unsupported(raw: bytes) -> None:
    with pytest.raises(UnsupportedProxyHeader, match="spec defines only v2 over datagrams"):
        parse_proxy_datagram(raw)


def test_a_datagram_keeps_the_other_errors() -> None:
    with pytest.raises(NotAProxyHeader):
        parse_proxy_datagram(b"\x00\x01query")
    with pytest.raises(NotAProxyHeader):
        parse_proxy_datagram(b"PRXY")
    with pytest.raises(ProxyHeaderTooLong, match="over the limit of 40"):
        parse_proxy_datagram(v2(1, 0x12, V4, tlv(0xE0, b"x" * 40)), max_size=40)
    with pytest.raises(UnsupportedProxyHeader, match="family/protocol byte 0x52"):
        parse_proxy_datagram(v2(1, 0x52, V4))


# Fuzzing: any bytes, and generated valid headers.


def noisy(prefix: bytes) -> st.SearchStrategy[bytes]:
    return st.binary(max_size=200).map(lambda tail: prefix + tail)


ANY_BYTES = st.one_of(
    st.binary(max_size=300),
    noisy(b"PROXY "),
    noisy(b"PROXY TCP4 "),
    noisy(b"PROXY TCP6 "),
    noisy(b"PROXY UNKNOWN "),
    noisy(V2_SIGNATURE),
    noisy(V2_SIGNATURE + b"\x21"),
    noisy(V2_SIGNATURE + b"\x20"),
    noisy(V2_SIGNATURE + b"\x21\x11\x00"),
    # Long enough to hold more than the cap, so a parser that waited past it would be caught.
    st.binary(min_size=120, max_size=200).map(lambda tail: V2_SIGNATURE + b"\x21\x11\x00" + tail),
    st.binary(min_size=120, max_size=200).map(lambda tail: b"PROXY " + tail),
)
MAX_SIZES = st.sampled_from([16, 120, DEFAULT_MAX_PROXY_HEADER])
FIRST_REQUEST = b"GET / HTTP/1.1\r\nHost: example\r\n\r\n"


def outcome(data: bytes, max_size: int) -> ProxyHeader | type[ProxyHeaderError] | None:
    try:
        return parse_proxy_header(data, max_size)
    except ProxyHeaderError as error:  # any other exception fails the test
        return type(error)


@settings(max_examples=300, deadline=None)
@given(ANY_BYTES, MAX_SIZES)
def test_any_bytes_parse_ask_for_more_or_raise_a_proxy_header_error(data: bytes, max_size: int) -> None:
    whole = outcome(data, max_size)
    if whole is None:
        assert len(data) < max(107, max_size)  # never "need more" past the cap
    elif isinstance(whole, ProxyHeader):
        assert 0 < whole.size <= len(data)
        assert whole.size <= max(107, max_size)
        assert outcome(data[: whole.size], max_size) == whole  # what follows does not change it
        assert outcome(data[: whole.size] + FIRST_REQUEST, max_size) == whole


@settings(max_examples=200, deadline=None)
@given(ANY_BYTES, MAX_SIZES)
def test_any_bytes_fed_byte_by_byte_reach_one_outcome_and_keep_it(data: bytes, max_size: int) -> None:
    # As a server feeds them: each prefix asks for more until one gives a header
    # or an error, which every longer prefix then repeats.
    settled: ProxyHeader | type[ProxyHeaderError] | None = None
    for cut in range(len(data) + 1):
        now = outcome(data[:cut], max_size)
        if settled is None:
            settled = now
        else:
            assert now == settled, cut
    assert settled == outcome(data, max_size)


@settings(max_examples=300, deadline=None)
@given(ANY_BYTES, MAX_SIZES)
def test_any_datagram_gives_a_header_and_its_payload_or_raises_a_proxy_header_error(data: bytes, max_size: int) -> None:
    try:
        header, payload = parse_proxy_datagram(data, max_size)
    except ProxyHeaderError:
        if data[:1] != b"P":  # v1 is refused outright; otherwise the stream parser agrees it is no header
            assert not isinstance(outcome(data, max_size), ProxyHeader)
        return
    assert header == parse_proxy_header(data, max_size)
    assert header.version == 2
    assert payload == data[header.size :]


ports = st.integers(0, 65535)
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
# Types the parser checks are drawn apart below; these are kept as they come.
plain_types = st.integers(0, 255).filter(lambda t: t not in (0x02, 0x03, 0x04, 0x05, 0x20, 0x30))
tlvs = st.lists(
    st.one_of(
        st.tuples(plain_types, st.binary(max_size=40)),
        st.tuples(st.just(0x02), st.text(max_size=20).map(str.encode)),  # AUTHORITY: UTF-8
        st.tuples(st.just(0x04), st.binary(max_size=10)),  # NOOP: ignored
        st.tuples(st.just(0x05), st.binary(max_size=128)),  # UNIQUE_ID: at most 128 bytes
        st.tuples(st.just(0x30), st.text(st.characters(max_codepoint=127), max_size=10).map(str.encode)),
        st.tuples(st.integers(0xE0, 0xEF), st.binary(max_size=10)),  # the custom range
    ),
    max_size=5,
)


@st.composite
def valid_headers(draw: st.DrawFn) -> tuple[bytes, dict[str, object]]:
    kind = draw(st.sampled_from(["v1-4", "v1-6", "v1-unknown", "v2-4", "v2-6", "v2-unix", "v2-local", "v2-local-any"]))
    sport, dport = draw(ports), draw(ports)
    if kind == "v1-4":
        src, dst = draw(ipv4), draw(ipv4)
        return f"PROXY TCP4 {src} {dst} {sport} {dport}\r\n".encode(), {"source": (src, sport)}
    if kind == "v1-6":
        src, dst = draw(ipv6), draw(ipv6)
        return f"PROXY TCP6 {src} {dst} {sport} {dport}\r\n".encode(), {"destination": (dst, dport, 0, 0)}
    if kind == "v1-unknown":
        # The spec: anything after "UNKNOWN " up to the first CRLF is ignored, lone CRs and LFs included.
        junk = draw(st.binary(max_size=90).filter(lambda b: b"\r\n" not in b and not b.endswith(b"\r")))
        rest = b" " + junk if draw(st.booleans()) else b""
        return b"PROXY UNKNOWN" + rest + b"\r\n", {"source": None}
    if kind == "v2-local-any":
        # LOCAL with a family byte or a length no address block fits: accepted, everything ignored.
        fam = draw(st.integers(0, 255).filter(lambda f: f >> 4 > 3 or f & 15 > 2))
        return v2(0, fam, draw(st.binary(max_size=60))), {"command": "LOCAL", "source": None, "tlvs": {}}
    pairs = draw(tlvs)
    if draw(st.booleans()):
        cn = draw(st.text(max_size=20)).encode()
        pairs.append((0x20, bytes([draw(st.integers(0, 7))]) + b"\0\0\0\0" + tlv(0x22, cn)))
    encoded = b"".join(tlv(t, v) for t, v in pairs)
    expected_tlvs: dict[int, tuple[bytes, ...]] = {}
    for t, v in pairs:
        if t != 0x04:
            expected_tlvs[t] = (*expected_tlvs.get(t, ()), v)
    checksum = draw(st.booleans())
    if kind == "v2-4":
        src, dst = draw(ipv4), draw(ipv4)
        command, fam, block = 1, 0x11, inet4_block(src, dst, sport, dport)
        expected: dict[str, object] = {"source": (src, sport), "destination": (dst, dport)}
    elif kind == "v2-6":
        src, dst = draw(ipv6), draw(ipv6)
        command, fam, block = 1, 0x21, inet6_block(src, dst, sport, dport)
        expected = {"source": (src, sport, 0, 0)}
    elif kind == "v2-unix":
        path = "/" + draw(st.text("abc/._-", max_size=50))
        command, fam, block = 1, 0x31, unix_block(path.encode(), b"/srv.sock")
        expected = {"source": path, "destination": "/srv.sock"}
    else:
        command, fam, block = 0, 0x00, b""
        expected = {"command": "LOCAL", "source": None}
    if checksum:
        raw = with_crc32c(command, fam, block, after=encoded)
        expected_tlvs = {0x03: (raw[-len(encoded) - 4 : len(raw) - len(encoded)],), **expected_tlvs}
    else:
        raw = v2(command, fam, block, encoded)
    return raw, {**expected, "tlvs": expected_tlvs}


@settings(max_examples=200, deadline=None)
@given(valid_headers(), st.binary(max_size=20))
def test_valid_headers_round_trip_whole_split_anywhere_and_with_bytes_behind(
    case: tuple[bytes, dict[str, object]], trailing: bytes
) -> None:
    raw, expected = case
    check(parse_proxy_header(raw), raw, expected)
    check(parse_proxy_header(raw + trailing), raw, expected)
    check(parse_proxy_header(raw + FIRST_REQUEST), raw, expected)
    for cut in range(len(raw)):
        assert parse_proxy_header(raw[:cut]) is None
    if raw.startswith(V2_SIGNATURE):
        header, payload = parse_proxy_datagram(raw + trailing)
        check(header, raw, expected)
        assert payload == trailing
    else:
        with pytest.raises(UnsupportedProxyHeader):
            parse_proxy_datagram(raw + trailing)


# Text near an IPv4 address: numbers with and without leading zeros, 3 to 5
# of them, and the characters around them. The parser checks v1 addresses
# with inet_pton, not ipaddress: it must take exactly what ipaddress takes,
# and give back ipaddress's canonical text.
octets = st.one_of(st.integers(0, 300).map(str), st.from_regex(r"0[0-9]{1,3}", fullmatch=True), st.just(""))
ipv4_like = st.one_of(
    st.lists(octets, min_size=3, max_size=5).map(".".join),
    st.text(alphabet="0123456789.:abcdef%x+-_\t\x00\u0661\uff11", max_size=17),
    ipv4.flatmap(
        lambda address: st.sampled_from([address, address + ".", "." + address, address + "\x00", "0" + address])
    ),
)


@settings(max_examples=500, deadline=None)
@given(ipv4_like)
def test_a_v1_tcp4_address_is_taken_exactly_when_ipaddress_takes_it(text: str) -> None:
    raw = f"PROXY TCP4 127.0.0.1 {text} 1 2\r\n".encode()
    try:
        expected = str(ipaddress.IPv4Address(text))
    except ValueError:
        with pytest.raises(MalformedProxyHeader, match="TCP4 address is not valid"):
            parse_proxy_header(raw)
        return
    header = parse_proxy_header(raw)
    assert header is not None
    assert header.destination == (expected, 2)
    assert header.destination[0] == text  # an address it takes is already canonical


def test_proxy_protocol_trusts_answers_alike_from_memory_and_past_its_bound() -> None:
    # trusts() remembers its answers per peer host (a bounded memory that starts
    # afresh when full): asked again, and after hundreds of other hosts, it
    # must answer as the networks say.
    from sockserve import ProxyProtocol

    proxy = ProxyProtocol(trusted=["10.0.0.0/8", "2001:db8::/32"])
    peers = [(f"10.1.{i // 200}.{i % 200}", 1000 + i) for i in range(300)]
    peers += [(f"11.1.{i // 200}.{i % 200}", 1000 + i) for i in range(300)]
    peers += [("::ffff:10.0.0.1", 1, 0, 0), ("2001:db8::1", 1, 0, 0), ("fe80::1%lo", 1, 0, 0), ("not an ip", 1)]
    for _ in range(2):
        for peer in peers:
            for _ in range(2):  # computed, then remembered (or computed again past the bound)
                assert proxy.trusts(peer) is (peer[0].startswith(("10.", "::ffff:10.", "2001:db8:"))), peer
    assert proxy.trusts("/run/proxy.sock") is False  # a Unix peer, trust_unix unset
    assert ProxyProtocol(trust_unix=True).trusts("") is True
    assert ProxyProtocol(trust_unix=True).trusts(("", 0)) is False  # a tuple whose host is no IP: no Unix peer
