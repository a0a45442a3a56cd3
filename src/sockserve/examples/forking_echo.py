"""A forking echo server: ForkingMixIn handles each request in a child
process, and the reply carries the child's process id.

Unlike the original, the server loop runs in the main thread and the client in
a second one: forking a process while other threads run is discouraged
(Python 3.12 warns about it), and the loop is what forks.
"""

from __future__ import annotations

import os
import socket
import threading

import sockserve


class ForkingEchoRequestHandler(sockserve.BaseRequestHandler):
    def handle(self) -> None:
        data = self.request.recv(1024)
        self.request.sendall(f"{os.getpid()}: ".encode() + data)


class ForkingEchoServer(sockserve.ForkingMixIn, sockserve.TCPServer):
    pass


def main() -> None:
    with ForkingEchoServer(("127.0.0.1", 0), ForkingEchoRequestHandler) as server:
        print(f"Server loop running in process: {os.getpid()}")

        def client() -> None:
            try:
                with socket.create_connection(server.server_address, timeout=10) as sock:
                    message = b"Hello, world"
                    print(f"Sending : {message.decode()!r}")
                    sock.sendall(message)
                    print(f"Received: {sock.recv(1024).decode()!r}")
            finally:
                server.shutdown()

        thread = threading.Thread(target=client, name="client")
        thread.start()
        server.serve_forever()
        thread.join()
    # server_close() (leaving the with block) waited for the child: no zombie is left.


if __name__ == "__main__":
    main()
