"""Datagrams read by the event loop's own datagram endpoint
(``loop.create_datagram_endpoint``): uvloop receives in C and calls Python
once per datagram, as it does for a bare ``asyncio.DatagramProtocol``.

``DatagramEndpoint`` is what the server sees: ``resume()``, ``pause()`` and
``close()``. The transport reads a duplicate of the server's socket, so
pausing can close the transport (uvloop's datagram transport, and asyncio's
before 3.11, cannot pause reading) while the server's socket, and the
datagrams waiting in it, stay; the handlers in flight reply through it.

Oversized datagrams: asyncio reads a datagram into a 256 KiB buffer, uvloop
into 256,000 bytes, and neither says whether it cut one. A datagram longer
than ``max_packet_size`` therefore arrives longer than it, cut or not, as long
as ``max_packet_size`` is below ``LOOP_RECV_BUFFER``; the server reads the
socket itself (``receive_datagram``) when it is not.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, cast

from .._errors import DatagramTooLarge
from .._log import log_dropped, logger

# The smaller of the buffers asyncio (256 * 1024) and uvloop (256,000) receive into.
LOOP_RECV_BUFFER = 256_000


class DatagramTarget(Protocol):
    """Where the datagrams go: the callback handler itself, or a function of the server's."""

    def datagram_received(self, data: bytes, client_address: Any) -> None: ...


class Pausable(Protocol):
    """A datagram transport that can pause reading (asyncio's since 3.11;
    typeshed does not say so for DatagramTransport)."""

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...


class DatagramReceiver(asyncio.DatagramProtocol):
    """The protocol of one endpoint transport: drops oversized datagrams,
    counts the others for the server's metrics (every datagram passes here,
    admitted or not: the admission's ``datagrams``, which its ``fold()``
    counts in), gives them to the target, and
    reports what the target raised to the server's ``handle_error()``
    (uvloop would close the transport).

    Without an endpoint, the server's own read loop calls it the same way."""

    def __init__(self, server: Any, target: DatagramTarget, endpoint: DatagramEndpoint | None = None) -> None:
        self.endpoint = endpoint
        self.target = target
        self.max_packet_size: int = server.max_packet_size
        self.handle_error = server._handler_error  # handle_error(), counted
        self.admission = server._admission()
        self.sock: socket.socket = server.socket
        self.transport: asyncio.DatagramTransport | None = None
        # Bound once (until connection_lost): the transport then finds it in
        # the instance instead of making a bound method for every datagram.
        self.datagram_received = self.datagram_received  # type: ignore[method-assign]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        # The one frame sockserve adds per datagram: keep it short.
        if len(data) > self.max_packet_size:
            log_dropped(DatagramTooLarge(self.max_packet_size, addr))
            return
        # On the loop's thread, the only writer of these: no lock.
        admission = self.admission
        admission.datagrams += 1
        admission.datagram_bytes += len(data)
        try:
            self.target.datagram_received(data, addr)
        except Exception:
            self.handle_error((data, self.sock), addr)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # 3.11's selector transport is no DatagramTransport
        if self.endpoint is not None:
            self.endpoint.attached(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.__dict__.pop("datagram_received", None)  # the bound method's cycle
        if self.endpoint is not None:
            self.endpoint.detached(self)

    def error_received(self, exc: Exception) -> None:
        if self.endpoint is not None:
            self.endpoint.on_error(exc)


class DatagramEndpoint:
    """The loop's datagram transport over the server's socket, opened, paused
    and closed on the server's word."""

    def __init__(
        self,
        server: Any,
        sock: socket.socket,
        loop: asyncio.AbstractEventLoop,
        make_receiver: Callable[[DatagramEndpoint], DatagramReceiver],
        on_transport: Callable[[asyncio.DatagramTransport | None], None],
        on_error: Callable[[Exception], None],
    ) -> None:
        self.server = server
        self.sock = sock
        self.loop = loop
        self.make_receiver = make_receiver
        self.on_transport = on_transport  # told of every change of transport (None: none open)
        self.on_error = on_error  # error_received(): an ICMP error for an earlier reply
        self.receiver: DatagramReceiver | None = None  # the one whose transport is open
        self._opening: asyncio.Task[None] | None = None
        self._reading = False
        self._closed = False

    @property
    def transport(self) -> asyncio.DatagramTransport | None:
        return None if self.receiver is None else self.receiver.transport

    def resume(self) -> None:
        """Read datagrams (opening a transport first if none is open)."""
        self._reading = True
        if self._closed:
            return
        transport = self.transport
        if transport is not None:
            if _can_pause(transport):
                cast(Pausable, transport).resume_reading()
        elif self._opening is None:
            self._opening = self.loop.create_task(self._open())

    def pause(self) -> None:
        """Stop reading; what arrives waits in the socket."""
        self._reading = False
        transport = self.transport
        if transport is not None:
            if _can_pause(transport):
                cast(Pausable, transport).pause_reading()
            else:
                self._drop()

    def close(self) -> None:
        """Stop for good (the server's own socket is the server's to close)."""
        self._closed = True
        self._reading = False
        if self._opening is not None:
            self._opening.cancel()
            self._opening = None
        self._drop()

    async def _open(self) -> None:
        dup = self.sock.dup()
        try:
            await self.loop.create_datagram_endpoint(lambda: self.make_receiver(self), sock=dup)
        except asyncio.CancelledError:
            dup.close()
            raise
        except Exception as exc:
            dup.close()
            logger.error("cannot read datagrams on %s: %s", self.sock, exc)
        finally:
            if self._opening is asyncio.current_task():
                self._opening = None

    def attached(self, receiver: DatagramReceiver) -> None:
        transport = receiver.transport
        assert transport is not None
        if self._closed or self.receiver is not None or not (self._reading or _can_pause(transport)):
            transport.close()  # asked to stop while it was being opened
            return
        self.receiver = receiver
        if not self._reading:
            cast(Pausable, transport).pause_reading()
        self.on_transport(transport)

    def detached(self, receiver: DatagramReceiver) -> None:
        if self.receiver is receiver:
            # It closed of itself, after an error the loop reported: not
            # reopened, which could spin on an error that persists.
            self.receiver = None
            self.on_transport(None)
            if not self._closed:
                logger.error("datagram transport on %s closed by the event loop", self.sock)

    def _drop(self) -> None:
        receiver, self.receiver = self.receiver, None
        if receiver is not None and receiver.transport is not None:
            self.on_transport(None)
            receiver.transport.close()


def _can_pause(transport: asyncio.BaseTransport) -> bool:
    # asyncio's selector datagram transport pauses since 3.11 (before, it has
    # only ReadTransport's, which raises NotImplementedError); uvloop's has none.
    method = getattr(type(transport), "pause_reading", None)
    return method is not None and method is not asyncio.ReadTransport.pause_reading


class DatagramServer(Protocol):
    """What the datagram handlers and their task runner use of ``AsyncUDPServer``.

    Typed here rather than by importing ``AsyncUDPServer`` from ``_servers``:
    that module imports the handlers, and the import would close a cycle,
    even one only the type checker follows."""

    RequestHandlerClass: Any
    server_address: Any
    socket: socket.socket
    _reply_sendto: Callable[[Any, Any], object]

    def handle_error(self, request: Any, client_address: Any) -> None: ...
    def _handler_error(self, request: Any, client_address: Any, ticket: Any = None) -> None: ...
    def _send_now(self, data: bytes | bytearray | memoryview, client_address: Any) -> None: ...
    def _log_send_error(self, exc: Exception) -> None: ...
    def _start_handler_task(
        self, coro: Coroutine[Any, Any, None], client_address: Any
    ) -> asyncio.Task[None] | None: ...
