"""An echo server that logs every hook, showing the order in which the
framework calls them: server_activate at start; then, per request,
verify_request, process_request, finish_request, the handler's __init__,
setup, handle, finish, and close_request."""

from __future__ import annotations

import logging
import socket
import sys
import threading
from typing import Any

import sockserve


class EchoRequestHandler(sockserve.BaseRequestHandler):
    def __init__(self, request: Any, client_address: Any, server: sockserve.BaseServer) -> None:
        self.logger = logging.getLogger("EchoRequestHandler")
        self.logger.debug("__init__")
        super().__init__(request, client_address, server)

    def setup(self) -> None:
        self.logger.debug("setup")
        super().setup()

    def handle(self) -> None:
        self.logger.debug("handle")
        data = self.request.recv(1024)
        self.logger.debug("recv()->%r", data)
        self.request.sendall(data)

    def finish(self) -> None:
        self.logger.debug("finish")
        super().finish()


class EchoServer(sockserve.TCPServer):
    def __init__(self, server_address: tuple[str, int], handler_class: type = EchoRequestHandler) -> None:
        self.logger = logging.getLogger("EchoServer")
        self.logger.debug("__init__")
        super().__init__(server_address, handler_class)

    def server_activate(self) -> None:
        self.logger.debug("server_activate")
        super().server_activate()

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        self.logger.debug("waiting for requests")
        super().serve_forever(poll_interval)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        self.logger.debug("verify_request(%s)", client_address)
        return super().verify_request(request, client_address)

    def process_request(self, request: Any, client_address: Any) -> None:
        self.logger.debug("process_request(%s)", client_address)
        super().process_request(request, client_address)

    def finish_request(self, request: Any, client_address: Any) -> None:
        self.logger.debug("finish_request(%s)", client_address)
        super().finish_request(request, client_address)

    def close_request(self, request: Any) -> None:
        self.logger.debug("close_request")
        super().close_request(request)

    def server_close(self) -> None:
        self.logger.debug("server_close")
        super().server_close()


def main() -> None:
    with EchoServer(("127.0.0.1", 0)) as server:  # port 0: the kernel picks a free port
        host, port = server.server_address[:2]
        thread = threading.Thread(target=server.serve_forever, name="server")
        thread.start()

        logger = logging.getLogger("client")
        logger.info("server on %s:%s", host, port)
        logger.debug("connecting to server")
        with socket.create_connection((host, port), timeout=10) as sock:
            message = b"Hello, world"
            logger.debug("sending data: %r", message)
            sock.sendall(message)
            logger.debug("waiting for response")
            response = sock.recv(1024)
            logger.debug("response from server: %r", response)
        server.shutdown()
        thread.join()
    logger.debug("done")


if __name__ == "__main__":
    logging.basicConfig(level=logging.DEBUG, format="%(name)s: %(message)s", stream=sys.stdout)
    main()
