"""The TLS handshake stage's own edges, on real loopback sockets."""

from __future__ import annotations

import gc
import os
import select
import socket
import ssl
import struct
from collections.abc import Iterator

import pytest

from sockserve._edge_stages import _close_dropped_tls_socket

from .tls_certs import Pki


@pytest.fixture
def no_gc() -> Iterator[None]:
    """The garbage collector off: a descriptor freed only by it would look closed by us."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def reset_connection() -> socket.socket:
    """The server's end of a connection its client reset before sending anything."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname(), timeout=10)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close() sends RST
        server_end, _ = listener.accept()
        client.close()
    server_end.settimeout(10)
    poller = select.poll()
    poller.register(server_end, select.POLLIN | select.POLLERR | select.POLLHUP)
    assert poller.poll(10_000), "the reset did not arrive"
    return server_end


def test_the_socket_a_failed_wrap_drops_is_closed(no_gc: None) -> None:
    """wrap_socket() of a connection reset before its handshake raises and
    drops the SSLSocket it made, which owns the descriptor (cpython#113280,
    fixed in 3.13): the stage closes it, instead of leaving it to the garbage
    collector (on every HAProxy TCP check that raced the stage's check)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    Pki().server.configure_cert(context)
    sock = reset_connection()
    fd = sock.fileno()
    try:
        context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
    except OSError as exc:
        _close_dropped_tls_socket(exc)
    else:
        sock.close()
        pytest.skip("this Python's wrap_socket() does not raise for a reset connection")
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(fd)  # closed: nothing was opened since that could have taken its number
