"""A TLS echo server, with its certificate reloaded without a restart.

``server.tls`` takes a ``sockserve.TLSConfig`` (certificate and key files:
TLS 1.2 and newer, the stdlib's secure defaults) or an ``ssl.SSLContext``.
The handshake runs after the connection is accepted, under a deadline, and
the handler's ``request`` is an ``ssl.SSLSocket``. ``server.reload_tls()``
(or SIGHUP under ``sockserve.serve()``, or a change to the files) gives
new connections the new certificate; open ones keep theirs.

The example makes two throwaway self-signed certificates with the
``openssl`` command, as a user would for a test.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading

import sockserve


class TLSEchoHandler(sockserve.StreamRequestHandler):
    def handle(self) -> None:
        tls = self.connection_info.tls
        assert tls is not None  # the server has TLS: every connection does
        self.wfile.write(f"{tls.version} {tls.server_name}: ".encode() + self.rfile.readline())


def make_certificate(directory: str, name: str) -> str:
    """A self-signed certificate and its key, in one PEM file; its path."""
    path = os.path.join(directory, f"{name}.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-days", "1", "-subj", f"/CN={name}", "-addext", f"subjectAltName=DNS:{name}",
         "-keyout", path, "-out", path],
        check=True, capture_output=True,
    )  # fmt: skip
    return path


def talk(address: tuple[str, int], cafile: str) -> str:
    context = ssl.create_default_context(cafile=cafile)
    with (
        socket.create_connection(address, timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as client,
    ):
        client.sendall(b"hello\n")
        return client.recv(1024).decode().strip()


def main() -> None:
    if shutil.which("openssl") is None:
        sys.exit("this example makes its certificates with the openssl command: install it (apt-get install openssl)")
    with tempfile.TemporaryDirectory() as directory:
        live = os.path.join(directory, "server.pem")
        first = make_certificate(directory, "localhost")
        shutil.copy(first, live)
        with sockserve.ThreadingTCPServer(("127.0.0.1", 0), TLSEchoHandler) as server:
            server.tls = sockserve.TLSConfig(certfile=live)
            thread = threading.Thread(target=server.serve_forever, name="server loop")
            thread.start()
            address = server.server_address[:2]
            print(f"first certificate:  {talk(address, first)}")
            second = make_certificate(directory, "localhost")  # a renewed certificate
            shutil.copy(second, live)
            print(f"reloaded: {server.reload_tls()}")
            print(f"second certificate: {talk(address, second)}")
            server.shutdown()
            thread.join()


if __name__ == "__main__":
    main()
