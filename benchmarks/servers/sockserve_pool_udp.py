"""sockserve.ThreadPoolUDPServer: each datagram handled on a bounded pool of reused threads."""

from _common import datagram_echo_handler, serve_socketserver, skip

if __name__ == "__main__":
    try:
        import sockserve
    except ImportError as exc:
        skip(f"sockserve is not importable: {exc}")
    if not hasattr(sockserve, "ThreadPoolUDPServer"):
        skip("sockserve has no ThreadPoolUDPServer yet")
    serve_socketserver(
        sockserve.ThreadPoolUDPServer,
        datagram_echo_handler(sockserve.BaseRequestHandler),
    )
