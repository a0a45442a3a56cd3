"""stdlib socketserver.UDPServer, synchronous (datagrams handled in turn)."""

import socketserver

from _common import datagram_echo_handler, serve_socketserver

if __name__ == "__main__":
    serve_socketserver(
        socketserver.UDPServer,
        datagram_echo_handler(socketserver.BaseRequestHandler),
    )
