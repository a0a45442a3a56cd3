"""The request handlers: one instance per request, which does the protocol.

``BaseRequestHandler`` runs ``setup()``, ``handle()`` and ``finish()`` from its
constructor, as the stdlib's does, so existing handlers work unchanged. They
work with any server, or none: the limits of a sockserve server apply, and
with ``server=None`` (a handler unit test) or a stdlib ``socketserver`` server
they behave exactly as the stdlib's handlers do.
"""

from __future__ import annotations

import io
import socket

from ._limits import limits_of
from ._rfile import CappedReader

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see sockserve/__init__.py)
if TYPE_CHECKING:
    from typing import Any, ClassVar

    from typing_extensions import Buffer

    from ._base_server import BaseServer
    from ._connection_info import ConnectionInfo


class BaseRequestHandler:
    """Base class for request handler classes.

    The constructor sets ``request``, ``client_address`` and ``server``, then
    calls ``setup()``, ``handle()`` and, even if ``handle()`` raised,
    ``finish()``. Override ``handle()`` to implement a protocol.
    """

    request: Any
    client_address: Any
    server: BaseServer
    # True for a protocol in which the server speaks first (an SMTP or FTP
    # banner, a greeting): the thread pool then runs the handler as soon as
    # the connection is admitted (and has passed its stages), instead of
    # waiting, without a thread, for the client's first byte, which such a
    # client never sends before the greeting. Read once per server, on its
    # handler class; the other models run every handler at once anyway. A
    # sockserve name: a handler built on the stdlib's classes may set it too.
    speaks_first: ClassVar[bool] = False

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

    @property
    def connection_info(self) -> ConnectionInfo:
        """What is known of this connection beyond ``client_address``: the
        socket's peer (a proxy), the PROXY header, the TLS session."""
        from ._connection_info import connection_info

        return connection_info(self.server, self.request, self.client_address)


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


class StreamRequestHandler(BaseRequestHandler):
    """Handler for stream sockets: ``rfile`` and ``wfile`` are binary files.

    Class variables that may be overridden:

    - rbufsize: buffer size of rfile (-1: the default buffer size)
    - wbufsize: buffer size of wfile (0: unbuffered, every write is sent at once)
    - timeout: socket timeout in seconds for the connection (None: the
      server's ``limits.idle_timeout``, if it has one; else none)
    - disable_nagle_algorithm: set TCP_NODELAY on the connection
    - max_line: sockserve's own. The longest line, b"\\n" included, that
      ``rfile.readline()`` (and iterating over ``rfile``) returns; a longer one
      raises ``LineTooLong``. None (the default): the server's
      ``limits.max_line``, if it has one; else no cap, as in the stdlib.

    With no cap in force, ``rfile`` is exactly the stdlib's
    (``connection.makefile("rb", rbufsize)``). With a cap, it is a
    ``CappedReader`` on the connection, whose rule is
    ``sockserve.protocol.LineSplitter``'s: it holds at most ``max_line + 1``
    bytes of an unfinished line before deciding, so a line is refused as soon
    as ``max_line + 1`` bytes of it have come without b"\\n", and a final
    line without b"\\n" is returned if it is within the cap (one of exactly
    ``max_line`` bytes included).
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
        limits = limits_of(self.server)  # none without a sockserve server: the stdlib's behaviour
        timeout = self.timeout if self.timeout is not None else limits.idle_timeout
        if timeout is not None:
            self.connection.settimeout(timeout)
        if self.disable_nagle_algorithm:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        max_line = self.max_line if self.max_line is not None else limits.max_line
        if max_line is None:
            self.rfile = self.connection.makefile("rb", self.rbufsize)
        else:
            self.rfile = CappedReader(self.connection, max_line, self.client_address, self.rbufsize)
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
