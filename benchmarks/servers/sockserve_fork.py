"""sockserve.ForkingTCPServer with sockserve.StreamRequestHandler, one process per connection.

The drop-in for ``stdlib_fork``, with the same defaults (max_children = 40,
request_queue_size = 5), so the two compare the cost of the drop-in itself.
"""

from _common import make_line_echo_handler, serve_socketserver, skip

if __name__ == "__main__":
    try:
        import sockserve
    except ImportError as exc:
        skip(f"sockserve is not importable: {exc}")
    serve_socketserver(
        sockserve.ForkingTCPServer,
        make_line_echo_handler(sockserve.StreamRequestHandler),
    )
