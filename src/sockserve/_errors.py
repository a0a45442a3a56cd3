"""Every exception sockserve raises, in one place.

The tree::

    SockserveError                      base of everything below
    ├── SocketPathInUse (OSError)       a Unix socket path has a live server on it
    └── SocketPathNotASocket (OSError)  a Unix socket path exists and is not a socket

Each class subclasses what callers of the stdlib already catch (``OSError`` for
bind failures), so code written for ``socketserver`` keeps working, and says in
its message which path or limit was involved.
"""

from __future__ import annotations

import errno
import os

__all__ = ["SocketPathInUse", "SocketPathNotASocket", "SockserveError"]


class SockserveError(Exception):
    """Base class of every exception raised by sockserve itself."""


class SocketPathInUse(SockserveError, OSError):
    """Raised at bind time when another live server owns the Unix socket path.

    The stdlib raises a bare ``OSError(EADDRINUSE)`` both for a live server and
    for a stale socket file left by a dead one; sockserve replaces stale files
    and raises this only when a server really answers on the path.
    """

    def __init__(self, path: str | bytes | os.PathLike[str] | os.PathLike[bytes]) -> None:
        super().__init__(
            errno.EADDRINUSE,
            f"another server is live on Unix socket {os.fsdecode(path)!r}; refusing to take it over",
            os.fsdecode(path),
        )


class SocketPathNotASocket(SockserveError, OSError):
    """Raised at bind time when the Unix socket path exists but is not a socket.

    sockserve never deletes such a path: it may be a user's file.
    """

    def __init__(self, path: str | bytes | os.PathLike[str] | os.PathLike[bytes]) -> None:
        super().__init__(
            errno.EEXIST,
            f"{os.fsdecode(path)!r} exists and is not a socket; refusing to replace it",
            os.fsdecode(path),
        )
