"""The echo server again, without the logging: a plain TCPServer and a
handler that only overrides handle()."""

from __future__ import annotations

import socket
import threading

import sockserve


class EchoRequestHandler(sockserve.BaseRequestHandler):
    def handle(self) -> None:
        data = self.request.recv(1024)
        self.request.sendall(data)


def main() -> None:
    with sockserve.TCPServer(("127.0.0.1", 0), EchoRequestHandler) as server:
        thread = threading.Thread(target=server.serve_forever)
        thread.start()
        with socket.create_connection(server.server_address, timeout=10) as sock:
            message = b"Hello, world"
            print(f"Sending : {message.decode()!r}")
            sock.sendall(message)
            print(f"Received: {sock.recv(1024).decode()!r}")
        server.shutdown()
        thread.join()


if __name__ == "__main__":
    main()
