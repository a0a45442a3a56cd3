"""Unix-domain servers and the lifecycle of their socket file.

The stdlib leaves the socket file behind on close and then refuses to bind the
same path again (EADDRINUSE) until someone deletes it by hand. Here:

* a path on which a live server answers is refused (``SocketPathInUse``);
* a stale socket file, whose server is gone, is replaced;
* a path that is not a socket is never touched (``SocketPathNotASocket``);
* ``server_close()`` removes the socket file, but only the one this server
  bound, in the process that bound it (a forked child never removes its
  parent's file, and a file that was replaced meanwhile is left alone).

Abstract-namespace addresses (a leading NUL byte, Linux) have no file and skip
all of this.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat

from ._errors import SocketPathInUse, SocketPathNotASocket
from ._inet_servers import TCPServer, UDPServer
from ._log import logger

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see sockserve/__init__.py)
if TYPE_CHECKING:
    from typing import Any


def _has_file(path: Any) -> bool:
    """False for abstract-namespace and unnamed (autobind) addresses."""
    if isinstance(path, (bytes, bytearray, memoryview)):
        raw = bytes(path)
        return bool(raw) and not raw.startswith(b"\0")
    if isinstance(path, (str, os.PathLike)):
        text = os.fsdecode(path)
        return bool(text) and not text.startswith("\0")
    return False


def _clear_stale_socket_file(path: Any, socket_type: int) -> None:
    """Remove ``path`` if it is a socket nobody serves; raise if it is live or no socket."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise SocketPathNotASocket(path)
    probe = socket.socket(socket.AF_UNIX, socket_type)
    try:
        # Non-blocking: a live server with a full backlog answers EAGAIN at
        # once instead of making us wait; that still means "live".
        probe.setblocking(False)
        probe.connect(os.fsdecode(path))
    except ConnectionRefusedError:
        logger.info("replacing stale Unix socket file %r", os.fsdecode(path))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    except FileNotFoundError:
        return  # removed by someone else meanwhile: the path is free
    except OSError as exc:
        # EAGAIN: a live listener whose backlog is full. EPROTOTYPE: a live
        # socket of the other type. Either way, someone owns it.
        raise SocketPathInUse(path) from exc
    finally:
        probe.close()
    raise SocketPathInUse(path)


class _SocketFileOwner:
    """Mixed into the Unix servers: claims the path before binding, removes the file on close.

    It does not bind or close anything itself: each Unix server class names
    the base whose ``server_bind``/``server_close`` it extends, as the stdlib's
    Unix classes simply are ``TCPServer``'s. Reaching them through ``super()``
    would let a user's mixture of classes (``class S(UnixStreamServer,
    http.server.HTTPServer)``, as asyncio's own tests write) run another
    class's method in their place.
    """

    server_address: Any
    socket: socket.socket
    _socket_file: tuple[Any, int, int, int] | None = None  # (path, pid, st_dev, st_ino)

    def _claim_socket_path(self) -> None:
        """Before binding: make sure the path is free, replacing a stale socket file."""
        if _has_file(self.server_address):
            _clear_stale_socket_file(self.server_address, self.socket.type)

    def _own_socket_file(self, path: Any) -> None:
        """After binding: remember which file is ours, and in which process."""
        if _has_file(path):
            st = os.stat(path)
            self._socket_file = (path, os.getpid(), st.st_dev, st.st_ino)

    def _remove_socket_file(self) -> None:
        owned, self._socket_file = self._socket_file, None
        if owned is None:
            return
        path, pid, dev, ino = owned
        if pid != os.getpid():
            return  # a forked child: the file belongs to the parent
        try:
            st = os.lstat(path)
            if (st.st_dev, st.st_ino) == (dev, ino):
                os.unlink(path)
        except FileNotFoundError:
            pass  # already removed (by the user, or a test's clean-up): nothing to do
        except OSError as exc:
            # A process that dropped its privileges after binding (``--user``)
            # may not write the directory it bound in. The server is closed all
            # the same: a stop must not end in a traceback (nor a prefork
            # supervisor's with its workers unreaped) for a file left behind,
            # which the next bind replaces as a stale socket anyway.
            logger.warning("could not remove the socket file %r: %s", os.fsdecode(path), exc.strerror or exc)


class UnixStreamServer(_SocketFileOwner, TCPServer):
    """Stream server on a Unix-domain socket (a path, or an abstract name)."""

    address_family = socket.AF_UNIX

    def server_bind(self) -> None:
        path = self.server_address
        self._claim_socket_path()
        TCPServer.server_bind(self)
        self._own_socket_file(path)

    def server_close(self) -> None:
        TCPServer.server_close(self)
        self._remove_socket_file()


class UnixDatagramServer(_SocketFileOwner, UDPServer):
    """Datagram server on a Unix-domain socket (a path, or an abstract name)."""

    address_family = socket.AF_UNIX

    def server_bind(self) -> None:
        path = self.server_address
        self._claim_socket_path()
        UDPServer.server_bind(self)
        self._own_socket_file(path)

    def server_close(self) -> None:
        UDPServer.server_close(self)
        self._remove_socket_file()
