"""stdlib socketserver.ThreadingTCPServer, one thread per connection."""

import socketserver

from _common import make_line_echo_handler, serve_socketserver

if __name__ == "__main__":
    serve_socketserver(
        socketserver.ThreadingTCPServer,
        make_line_echo_handler(socketserver.StreamRequestHandler),
    )
