"""A threaded echo server: ThreadingMixIn runs each request in a thread of its
own, and the reply names it."""

from __future__ import annotations

import socket
import threading

import sockserve


class ThreadedEchoRequestHandler(sockserve.BaseRequestHandler):
    def handle(self) -> None:
        data = self.request.recv(1024)
        self.request.sendall(f"{threading.current_thread().name}: ".encode() + data)


class ThreadedEchoServer(sockserve.ThreadingMixIn, sockserve.TCPServer):
    pass


def main() -> None:
    with ThreadedEchoServer(("127.0.0.1", 0), ThreadedEchoRequestHandler) as server:
        thread = threading.Thread(target=server.serve_forever, name="server loop")
        thread.start()
        print(f"Server loop running in thread: {thread.name}")
        with socket.create_connection(server.server_address, timeout=10) as sock:
            message = b"Hello, world"
            print(f"Sending : {message.decode()!r}")
            sock.sendall(message)
            print(f"Received: {sock.recv(1024).decode()!r}")
        server.shutdown()
        thread.join()


if __name__ == "__main__":
    main()
