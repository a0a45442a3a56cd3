"""Why a listening socket could not be bound, in plain words: one line for
``sockserve echo`` and ``sockserve serve`` alike."""

from __future__ import annotations

import errno
import os
import socket
from typing import Any

from ._errors import SocketPathInUse, SocketPathNotASocket


def why_bind_failed(kind: str, address: Any, exc: OSError) -> str:
    """The cause of a failed bind in plain words; the OS's own words when we
    have nothing clearer to say."""
    if isinstance(exc, SocketPathInUse):
        return "another server is live on this path"
    if isinstance(exc, SocketPathNotASocket):
        return "the path exists and is not a socket (sockserve never replaces such a file)"
    if isinstance(exc, socket.gaierror):
        return f"the host name does not resolve ({exc.strerror})"
    if exc.errno == errno.EADDRINUSE:
        return "the address is already in use"
    if exc.errno == errno.EADDRNOTAVAIL:
        return "no network interface on this machine has this address"
    if exc.errno == errno.EACCES:
        if kind == "tcp" and 0 < address[1] < 1024:
            return "permission denied (ports below 1024 usually need root or CAP_NET_BIND_SERVICE)"
        return "permission denied"
    if kind == "unix" and exc.errno == errno.ENOENT:
        # Checked rather than assumed: ENOENT could also come from the path
        # vanishing right after the bind.
        directory = os.path.dirname(address) or "."
        if not os.path.isdir(directory):
            return f"the directory {directory} does not exist"
    if kind == "unix" and exc.errno == errno.ENOTDIR:
        return "a part of the path is not a directory"
    # An OSError without an errno: CPython's "AF_UNIX path too long".
    return exc.strerror or str(exc)
