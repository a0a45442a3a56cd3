"""stdlib socketserver.ForkingTCPServer, one process per connection.

Stdlib defaults are kept on purpose (max_children = 40, request_queue_size = 5):
this is what a user of the stdlib gets.
"""

import socketserver

from _common import make_line_echo_handler, serve_socketserver

if __name__ == "__main__":
    serve_socketserver(
        socketserver.ForkingTCPServer,
        make_line_echo_handler(socketserver.StreamRequestHandler),
    )
