"""An echo server behind a load balancer: the PROXY protocol and an access list.

A proxy such as HAProxy (``send-proxy``) or nginx (``proxy_protocol on``)
accepts the client's connection and opens its own to the server, so the
server's peer is the proxy. It sends one PROXY header first, naming the
client. The server believes it only from the proxies it trusts; then the
handler, the per-IP limit and the access list all see the real client.

Here the test client plays the proxy: it connects from 127.0.0.1 (trusted)
and sends the header itself.
"""

from __future__ import annotations

import socket
import threading

import sockserve


class WhoAmIHandler(sockserve.StreamRequestHandler):
    def handle(self) -> None:
        line = self.rfile.readline()
        info = self.connection_info
        host, port = self.client_address[:2]
        self.wfile.write(f"{host}:{port} via {info.peer_address[0]} said {line.decode().strip()}\n".encode())


def main() -> None:
    with sockserve.ThreadingTCPServer(("127.0.0.1", 0), WhoAmIHandler) as server:
        server.proxy_protocol = sockserve.ProxyProtocol(trusted=["127.0.0.1/32"])
        server.access_list = sockserve.AccessList(deny=["198.51.100.0/24"])
        thread = threading.Thread(target=server.serve_forever, name="server loop")
        thread.start()
        for client_host in ("203.0.113.7", "198.51.100.9"):
            with socket.create_connection(server.server_address, timeout=10) as proxy:
                proxy.sendall(f"PROXY TCP4 {client_host} 192.0.2.1 40000 443\r\n".encode() + b"hello\n")
                reply = proxy.recv(1024).decode().strip()
                print(f"{client_host}: {reply or 'closed (denied by the access list)'}")
        print(f"refused: {dict(server.refused)}")
        server.shutdown()
        thread.join()


if __name__ == "__main__":
    main()
