"""The line-echo servers of issue 9's edge-stage benchmark (``benchmarks/edge.py``),
each plain, behind PROXY, or with TLS::

    python3 benchmarks/servers/edge_echo.py HOST:PORT KIND [--proxy] [--tls CERTFILE KEYFILE] [--nodelay]

KIND: sockserve_thread, sockserve_pool, sockserve_aio_streams,
sockserve_aio_streams_uvloop (the servers of the same names in the registry,
with ``server.proxy_protocol = sockserve.ProxyProtocol(trusted=[127.0.0.1/32])``
for ``--proxy`` and ``server.tls = sockserve.TLSConfig(certfile, keyfile)``
for ``--tls``), or the baselines asyncio_streams, asyncio_protocol,
uvloop_streams, uvloop_protocol (``--tls``: the loop's own TLS,
``start_server(ssl=...)`` / ``create_server(ssl=...)``, with the context
sockserve would build: the stdlib's ``create_default_context(CLIENT_AUTH)``,
TLS 1.2 at least, the same certificate). The baselines have no PROXY
support: their "HAProxy-less" row is the plain one.

``--nodelay`` (sockserve_thread, sockserve_pool only) sets ``TCP_NODELAY``
on the listening socket, which Linux copies to every accepted socket, as
asyncio and uvloop set it on theirs: a diagnosis row. Without it a TLS 1.3
server's two session tickets leave in two small writes, and Nagle holds the
second until the client's delayed ACK (~40 ms on Linux) releases it.
"""

from __future__ import annotations

import socket
import ssl
import sys
from typing import Any

from _common import listen_address, make_line_echo_handler, ready, run_asyncio, skip, wait_for_stop_signal

SOCKSERVE_KINDS = ("sockserve_thread", "sockserve_pool", "sockserve_aio_streams", "sockserve_aio_streams_uvloop")
LOOP_KINDS = ("asyncio_streams", "asyncio_protocol", "uvloop_streams", "uvloop_protocol")
TRUSTED = ["127.0.0.1/32"]


def parse_options() -> tuple[str, bool, tuple[str, str] | None, bool]:
    args = sys.argv[2:]
    if not args or args[0] not in SOCKSERVE_KINDS + LOOP_KINDS:
        raise SystemExit(f"usage: {sys.argv[0]} HOST:PORT {{{','.join(SOCKSERVE_KINDS + LOOP_KINDS)}}} [options]")
    tls = None
    if "--tls" in args:
        i = args.index("--tls")
        tls = (args[i + 1], args[i + 2])
    return args[0], "--proxy" in args, tls, "--nodelay" in args


def nodelay_bind(base: type) -> Any:
    def server_bind(self: Any) -> None:
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        getattr(base, "server_bind")(self)  # noqa: B009 (the class is known at run time only)

    return server_bind


def edge_attrs(sockserve: Any, proxy: bool, tls: tuple[str, str] | None) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    if proxy:
        attrs["proxy_protocol"] = sockserve.ProxyProtocol(trusted=TRUSTED)
    if tls is not None:
        attrs["tls"] = sockserve.TLSConfig(certfile=tls[0], keyfile=tls[1])
    return attrs


def serve_sockserve(kind: str, proxy: bool, tls: tuple[str, str] | None, nodelay: bool) -> None:
    try:
        import sockserve
    except ImportError as exc:
        skip(f"sockserve is not importable: {exc}")
    if not hasattr(sockserve, "TLSConfig"):
        skip("sockserve has no TLSConfig / ProxyProtocol yet")
    attrs = edge_attrs(sockserve, proxy, tls)
    if kind in ("sockserve_thread", "sockserve_pool"):
        from _common import serve_socketserver, with_family

        family, _ = listen_address()
        base = sockserve.ThreadingTCPServer if kind == "sockserve_thread" else sockserve.ThreadPoolTCPServer
        if nodelay:
            attrs["server_bind"] = nodelay_bind(base)
        serve_socketserver(with_family(base, family, **attrs), make_line_echo_handler(sockserve.StreamRequestHandler))
        return
    import sockserve_aio_streams

    def make_server(aio: Any, address: Any) -> Any:
        server = sockserve_aio_streams.make_stream_server(aio, address)
        for name, value in attrs.items():
            setattr(server, name, value)
        return server

    sockserve_aio_streams.run(make_server, "uvloop" if kind.endswith("_uvloop") else "asyncio")


def server_context(tls: tuple[str, str]) -> ssl.SSLContext:
    """What sockserve.TLSConfig builds, without its SNI callback: the stdlib's defaults, TLS 1.2+."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(tls[0], tls[1])
    return context


def serve_loop(kind: str, tls: tuple[str, str] | None) -> None:
    import asyncio

    import asyncio_protocol
    import asyncio_streams

    context = server_context(tls) if tls is not None else None

    async def serve(family: socket.AddressFamily, address: tuple[str, int]) -> None:
        if kind.endswith("_streams"):
            server = await asyncio.start_server(
                asyncio_streams.handle, address[0], address[1], family=family, ssl=context
            )
        else:
            loop = asyncio.get_running_loop()
            server = await loop.create_server(
                asyncio_protocol.LineEcho, address[0], address[1], family=family, ssl=context
            )
        ready(server.sockets[0].getsockname()[1])
        await wait_for_stop_signal()
        server.close()
        await server.wait_closed()

    run_asyncio(serve, use_uvloop=kind.startswith("uvloop"))


if __name__ == "__main__":
    kind, proxy, tls, nodelay = parse_options()
    if nodelay and kind not in ("sockserve_thread", "sockserve_pool"):
        raise SystemExit(f"--nodelay is for sockserve_thread and sockserve_pool ({kind} sets TCP_NODELAY itself)")
    if kind in SOCKSERVE_KINDS:
        serve_sockserve(kind, proxy, tls, nodelay)
    elif proxy:
        raise SystemExit(f"{kind} has no PROXY protocol support: run it without --proxy")
    else:
        serve_loop(kind, tls)
