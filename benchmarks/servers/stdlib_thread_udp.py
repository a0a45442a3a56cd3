"""stdlib socketserver.ThreadingUDPServer, one thread per datagram."""

import socketserver

from _common import datagram_echo_handler, serve_socketserver

if __name__ == "__main__":
    serve_socketserver(
        socketserver.ThreadingUDPServer,
        datagram_echo_handler(socketserver.BaseRequestHandler),
    )
