"""Client-side helpers for the matrix: every read is bounded."""

from __future__ import annotations

import select
import socket
import struct
from typing import Any

from ..helpers import connect, recv_line

TIMEOUT = 10.0


def talk(sock: socket.socket, line: bytes) -> bytes:
    """Send one line, return the reply line."""
    sock.sendall(line)
    return recv_line(sock)


def send_if_open(sock: socket.socket, data: bytes) -> None:
    """Send, unless the server has closed the connection already (it may, at once)."""
    try:
        sock.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass


def closed_by_server(sock: socket.socket, timeout: float = TIMEOUT) -> bytes:
    """Read until the server closes (a reset counts as closed); what it sent."""
    sock.settimeout(timeout)
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


def silent_for(sock: socket.socket, seconds: float) -> bool:
    """True if nothing arrives on ``sock`` for ``seconds``: a negative check,
    used only where the opposite (a reply) would come at once."""
    return not select.select([sock], [], [], seconds)[0]


def reset(sock: socket.socket) -> None:
    """Close with a reset (SO_LINGER 0), as a client that crashes does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def refused(address: Any) -> bool:
    """True if a new connection to ``address`` is refused."""
    try:
        connect(address, timeout=TIMEOUT).close()
    except (ConnectionRefusedError, FileNotFoundError):
        return True
    return False


__all__ = ["closed_by_server", "connect", "recv_line", "refused", "reset", "send_if_open", "silent_for", "talk"]
