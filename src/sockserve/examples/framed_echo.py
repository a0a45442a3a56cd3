"""A framed echo server: the pool's workers handle complete lines, not
connections, so a thousand idle or slow clients hold no thread.

A ``FramedRequestHandler`` served by a ``ThreadPool*`` server: the server's
reactor reads every connection without blocking, and a worker runs
``handle_request()`` for each complete line, with plain blocking code.
"""

from __future__ import annotations

import socket
import threading

import sockserve


class FramedEchoRequestHandler(sockserve.FramedRequestHandler):
    def handle_request(self, request: bytes) -> None:
        # One complete line, newline included; this runs on a pool worker.
        self.send(f"{threading.current_thread().name}: ".encode() + request)


class FramedEchoServer(sockserve.ThreadPoolTCPServer):
    pool_max_workers = 4  # four threads serve any number of connections


def main() -> None:
    with FramedEchoServer(("127.0.0.1", 0), FramedEchoRequestHandler) as server:
        thread = threading.Thread(target=server.serve_forever, name="server loop")
        thread.start()
        clients = [socket.create_connection(server.server_address, timeout=10) for _ in range(8)]
        print(f"{len(clients)} connections open, served by at most {server.pool_max_workers} worker threads")
        for number, client in enumerate(clients):
            client.sendall(b"line %d\n" % number)
        for client in clients:
            print(f"Received: {client.recv(1024).decode().split(': ')[1]!r}")
            client.close()
        server.shutdown()
        thread.join()


if __name__ == "__main__":
    main()
