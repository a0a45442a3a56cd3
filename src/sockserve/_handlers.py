"""The request handlers: one instance per request, which does the protocol.

``BaseRequestHandler`` runs ``setup()``, ``handle()`` and ``finish()`` from its
constructor, as the stdlib's does, so existing handlers work unchanged.
"""

from __future__ import annotations

import io
import socket
from typing import TYPE_CHECKING, Any, ClassVar

from ._errors import LineTooLong

if TYPE_CHECKING:
    from typing_extensions import Buffer

    from ._base_server import BaseServer


class BaseRequestHandler:
    """Base class for request handler classes.

    The constructor sets ``request``, ``client_address`` and ``server``, then
    calls ``setup()``, ``handle()`` and, even if ``handle()`` raised,
    ``finish()``. Override ``handle()`` to implement a protocol.
    """

    request: Any
    client_address: Any
    server: BaseServer

    def __init__(self, request: Any, client_address: Any, server: BaseServer) -> None:
        self.request = request
        self.client_address = client_address
        self.server = server
        self.setup()
        try:
            self.handle()
        finally:
            self.finish()

    def setup(self) -> None:
        """Prepare for handle(). May be overridden."""

    def handle(self) -> None:
        """Do the work of the request. Override this."""

    def finish(self) -> None:
        """Clean up what setup() made. May be overridden."""


class _SocketWriter(io.BufferedIOBase):
    """A write-only file on a socket, without buffering: ``write()`` sends
    everything before returning (``sendall`` retries after signals)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def writable(self) -> bool:
        return True

    def write(self, b: Buffer, /) -> int:
        self._sock.sendall(b)
        with memoryview(b) as view:
            return view.nbytes

    def fileno(self) -> int:
        return self._sock.fileno()


class _LineCappedReader(io.BufferedIOBase):
    """Wraps ``rfile`` so that no line longer than ``max_line`` is ever buffered whole."""

    def __init__(self, inner: Any, max_line: int, client_address: Any) -> None:
        self._inner = inner
        self._max_line = max_line
        self._client_address = client_address

    def readable(self) -> bool:
        return True

    def readline(self, size: int | None = -1, /) -> bytes:
        if size is not None and 0 <= size < self._max_line:
            return bytes(self._inner.readline(size))  # the caller's own bound is tighter
        line = bytes(self._inner.readline(self._max_line))
        if len(line) == self._max_line and not line.endswith(b"\n"):
            raise LineTooLong(self._max_line, self._client_address)
        return line

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line

    def read(self, size: int | None = -1, /) -> bytes:
        return bytes(self._inner.read(size))

    def read1(self, size: int = -1, /) -> bytes:
        return bytes(self._inner.read1(size))

    def readinto(self, buffer: Any, /) -> int:
        return int(self._inner.readinto(buffer))

    def peek(self, size: int = 0, /) -> bytes:
        return bytes(self._inner.peek(size))

    def fileno(self) -> int:
        return int(self._inner.fileno())

    def close(self) -> None:
        self._inner.close()
        super().close()


class StreamRequestHandler(BaseRequestHandler):
    """Handler for stream sockets: ``rfile`` and ``wfile`` are binary files.

    Class variables that may be overridden:

    - rbufsize: buffer size of rfile (-1: the default buffer size)
    - wbufsize: buffer size of wfile (0: unbuffered, every write is sent at once)
    - timeout: socket timeout in seconds for the connection (None: none)
    - disable_nagle_algorithm: set TCP_NODELAY on the connection
    - max_line: sockserve's own. When set, ``rfile.readline()`` (and iterating
      over ``rfile``) raises ``LineTooLong`` instead of returning a line longer
      than this many bytes, newline included; None (the default) reads lines
      of any length, as the stdlib does.

    When ``timeout`` is None, the server's ``limits.idle_timeout`` applies.
    """

    rbufsize: ClassVar[int] = -1
    wbufsize: ClassVar[int] = 0
    timeout: ClassVar[float | None] = None
    disable_nagle_algorithm: ClassVar[bool] = False
    max_line: ClassVar[int | None] = None

    connection: Any
    rfile: io.BufferedIOBase
    wfile: io.BufferedIOBase

    def setup(self) -> None:
        self.connection = self.request
        timeout = self.timeout if self.timeout is not None else self.server.limits.idle_timeout
        if timeout is not None:
            self.connection.settimeout(timeout)
        if self.disable_nagle_algorithm:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        self.rfile = self.connection.makefile("rb", self.rbufsize)
        if self.max_line is not None:
            self.rfile = _LineCappedReader(self.rfile, self.max_line, self.client_address)
        if self.wbufsize == 0:
            self.wfile = _SocketWriter(self.connection)
        else:
            self.wfile = self.connection.makefile("wb", self.wbufsize)

    def finish(self) -> None:
        if not self.wfile.closed:
            try:
                self.wfile.flush()
            except OSError:
                pass  # the client is gone (e.g. ECONNABORTED): nobody left to deliver to
        self.wfile.close()
        self.rfile.close()


class DatagramRequestHandler(BaseRequestHandler):
    """Handler for datagram sockets: ``rfile`` reads the packet, and what is
    written to ``wfile`` is sent back to the client as one datagram by
    ``finish()`` (an empty one if nothing was written, as the stdlib does)."""

    packet: bytes
    socket: socket.socket
    rfile: io.BufferedIOBase
    wfile: io.BufferedIOBase

    def setup(self) -> None:
        self.packet, self.socket = self.request
        self.rfile = io.BytesIO(self.packet)
        self.wfile = io.BytesIO()

    def finish(self) -> None:
        assert isinstance(self.wfile, io.BytesIO)
        self.socket.sendto(self.wfile.getvalue(), self.client_address)
