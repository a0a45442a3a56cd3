"""sockserve.UDPServer, synchronous (datagrams handled in turn), the
drop-in for the stdlib's UDPServer and the floor of ThreadPoolUDPServer."""

from _common import datagram_echo_handler, serve_socketserver, skip

if __name__ == "__main__":
    try:
        import sockserve
    except ImportError as exc:
        skip(f"sockserve is not importable: {exc}")
    serve_socketserver(
        sockserve.UDPServer,
        datagram_echo_handler(sockserve.BaseRequestHandler),
    )
