"""The async TCP, UDP and Unix servers: binding (as the synchronous servers
bind, IPv6 and the Unix socket file included), accepting connections and
receiving datagrams on the event loop."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from .._accept import ACCEPT_BATCH
from .._inet_servers import bind_socket, open_listener
from .._log import format_address, logger
from .._unix_servers import _SocketFileOwner
from ._callback import CallbackConnection, IdleCallbackConnection, connect_callback, route_loop_exceptions
from ._connection import StreamConnection, run_stream
from ._handlers import AsyncDatagramRequestHandler, AsyncProtocolHandler, AsyncStreamRequestHandler, run_handler
from ._server import AsyncBaseServer


class _BoundServer(AsyncBaseServer):
    """Makes the socket and binds it, as the synchronous TCPServer does."""

    address_family: int = socket.AF_INET
    socket_type: int = socket.SOCK_STREAM
    allow_reuse_address: bool = False
    allow_reuse_port: bool = False
    handler_bases: tuple[type[Any], ...] = ()

    def __init__(
        self,
        server_address: Any,
        RequestHandlerClass: type[Any],  # noqa: N803 - stdlib name
        bind_and_activate: bool = True,
    ) -> None:
        super().__init__(server_address, RequestHandlerClass)
        if not (isinstance(RequestHandlerClass, type) and issubclass(RequestHandlerClass, self.handler_bases)):
            names = " or ".join(base.__name__ for base in self.handler_bases)
            raise TypeError(f"{type(self).__name__} needs a subclass of {names}, got {RequestHandlerClass!r}")
        # IPPROTO_TCP, not 0: accepted sockets inherit it, and asyncio turns
        # Nagle off only on sockets that say they are TCP (uvloop always does).
        open_listener(self, server_address, bind_and_activate, tcp_proto=True)

    def server_bind(self) -> None:
        """Bind the socket; afterwards ``server_address`` is the real address."""
        inet = self.address_family in (socket.AF_INET, socket.AF_INET6)
        self.server_address = bind_socket(
            self.socket,
            self.server_address,
            reuse_address=self.allow_reuse_address and inet,
            reuse_port=self.allow_reuse_port,
        )


class AsyncTCPServer(_BoundServer):
    """A TCP server on an event loop.

    ``RequestHandlerClass`` is an ``AsyncStreamRequestHandler`` subclass (a
    task per connection, ``async def handle()``) or an ``AsyncProtocolHandler``
    subclass (callbacks, no task). The socket is bound and listening when the
    constructor returns, before any event loop exists, so the server can be
    made before a fork and served in each child.

    Class variables that may be overridden by subclasses or instances:
    ``address_family`` (AF_INET; an IPv6 address switches the instance to
    AF_INET6, and ``"::"`` is dual-stack), ``socket_type``,
    ``request_queue_size`` (4096, capped by the kernel's somaxconn: an event
    loop serves thousands of connections), ``allow_reuse_address`` (True, as
    asyncio's servers do), ``allow_reuse_port``.
    """

    request_queue_size: int = 4096
    allow_reuse_address: bool = True
    handler_bases = (AsyncStreamRequestHandler, AsyncProtocolHandler)

    def server_activate(self) -> None:
        self.socket.listen(self.request_queue_size)
        self.socket.setblocking(False)

    def _on_readable(self) -> None:
        """Accept what is waiting, up to ACCEPT_BATCH per wake-up."""
        listener = self.socket
        backoff = self._accept_backoff
        for _ in range(ACCEPT_BATCH):
            try:
                sock, client_address = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if backoff.failed(exc, self.server_address):
                    self._back_off()
                return
            if backoff.failures:
                backoff.succeeded(self.server_address)
            self._start_connection(sock, client_address)
            if not self._accepting:
                return  # at capacity, or stopped

    def _start_connection(self, sock: socket.socket, client_address: Any) -> None:
        handler_class = self.RequestHandlerClass
        conn: StreamConnection | CallbackConnection
        if issubclass(handler_class, AsyncStreamRequestHandler):
            conn = StreamConnection(self, sock, client_address)
        else:
            try:
                idle = self._get_tracker().limits.idle_timeout
                if idle is None:
                    conn = CallbackConnection(self, sock, client_address, handler_class)
                else:
                    conn = IdleCallbackConnection(self, sock, client_address, handler_class, idle)
            except Exception:
                self.handle_error(sock, client_address)  # the handler's constructor raised
                sock.close()
                return
        if not self._admit(conn, sock):
            sock.close()
            if isinstance(conn, IdleCallbackConnection):
                conn.cancel_idle_timer()
            return
        conn.timer = self._deadline_timer(conn)
        if isinstance(conn, StreamConnection):
            conn.task = self._spawn(run_stream(conn, handler_class))
        else:
            conn.task = self._spawn(connect_callback(conn))

    def _on_serve(self, loop: asyncio.AbstractEventLoop) -> None:
        if issubclass(self.RequestHandlerClass, AsyncProtocolHandler):
            route_loop_exceptions(loop)


class AsyncUDPServer(_BoundServer):
    """A UDP server on an event loop: each datagram runs an
    ``AsyncDatagramRequestHandler`` in a task of its own.

    ``verify_request(request, client_address)`` gets ``request = (packet,
    socket)``, as the synchronous server's does. The limits count handlers in
    flight: at ``max_connections`` the socket is not read (datagrams wait in
    the kernel's buffer); beyond ``max_connections_per_ip`` a datagram is
    dropped with a log line; ``connection_timeout`` bounds one handler's run.
    """

    socket_type: int = socket.SOCK_DGRAM
    max_packet_size: int = 8192
    handler_bases = (AsyncDatagramRequestHandler,)

    def server_activate(self) -> None:
        """Datagram sockets do not listen."""
        self.socket.setblocking(False)

    def _on_readable(self) -> None:
        """Receive what is waiting, up to ACCEPT_BATCH datagrams per wake-up."""
        sock = self.socket
        for _ in range(ACCEPT_BATCH):
            try:
                packet, client_address = sock.recvfrom(self.max_packet_size)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # e.g. ECONNREFUSED: an ICMP error about an earlier reply.
                logger.debug("receive on %s failed: %s", format_address(self.server_address), exc)
                return
            datagram = Datagram(self, packet, client_address)
            if not self._admit(datagram, (packet, sock)):
                continue
            datagram.timer = self._deadline_timer(datagram)
            datagram.task = self._spawn(datagram.run())
            if not self._accepting:
                return


class Datagram:
    """One datagram in flight: its handler's task."""

    __slots__ = ("aborted", "client_address", "packet", "server", "task", "timer")

    def __init__(self, server: AsyncUDPServer, packet: bytes, client_address: Any) -> None:
        self.server = server
        self.packet = packet
        self.client_address = client_address
        self.task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.aborted: BaseException | None = None

    def abort(self, exc: BaseException) -> None:
        if self.aborted is None:
            self.aborted = exc
            if self.task is not None:
                self.task.cancel()

    async def run(self) -> None:
        server = self.server
        handler_class: type[AsyncDatagramRequestHandler] = server.RequestHandlerClass
        try:
            handler = handler_class(self.packet, self.client_address, server, server.socket)
            await run_handler(handler)
        except asyncio.CancelledError:
            if self.aborted is None:
                raise
        except Exception:
            server.handle_error((self.packet, server.socket), self.client_address)
        finally:
            if self.timer is not None:
                self.timer.cancel()
            server._release(self)


class AsyncUnixStreamServer(_SocketFileOwner, AsyncTCPServer):
    """Stream server on a Unix-domain socket (a path, or an abstract name).

    The socket file is handled as the synchronous ``UnixStreamServer`` does
    (same code): a live server's path is refused, a stale file replaced, a
    non-socket never touched, and the file removed by ``server_close()``.
    """

    address_family = socket.AF_UNIX


class AsyncUnixDatagramServer(_SocketFileOwner, AsyncUDPServer):
    """Datagram server on a Unix-domain socket (a path, or an abstract name).

    A client that wants replies binds its socket to an address of its own.
    """

    address_family = socket.AF_UNIX
