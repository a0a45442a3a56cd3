"""Framed handlers: a thread for each request, not for each connection.

A ``FramedRequestHandler`` is served by the bounded pool (``ThreadPool*``
servers pick this mode from the handler's class). The pool's reactor reads
every connection without blocking and feeds a sans-IO framer
(``sockserve.protocol``); only a complete request is handed to a worker,
which runs the handler's ordinary blocking code. Between requests a
connection holds no thread, so clients that trickle bytes, or keep idle
connections open, cost a buffer and a selector entry each, not a worker.

A connection's work, in order, on workers: ``setup()`` before its first
request, ``handle_request(request)`` for each request, one at a time and in
the order they came, and ``finish()`` after its last. Replies sent with
``send()`` are written by the worker at once when the socket takes them,
otherwise by the reactor, without blocking; a client that does not read its
replies stops being read (backpressure). Limits, stages and drain apply as
to every connection (see docs/pipeline.md).

This module is the handler a user subclasses; ``_framed_connection`` is the
connection that drives it.
"""

from __future__ import annotations

from ._limits import limits_of
from .protocol.lines import DEFAULT_MAX_LINE

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see sockserve/__init__.py)
if TYPE_CHECKING:
    from typing import Any, ClassVar, Protocol

    from typing_extensions import Buffer

    from ._connection_info import ConnectionInfo
    from .protocol.framers import Framer
else:
    Protocol = object  # the protocol here is for type checkers; at run time, a plain class


class FramedRequestHandler:
    """Handler for the pool's framed mode: one instance per connection.

    Unlike the stdlib's handlers, the constructor does no work: the server
    calls ``setup()``, then ``handle_request(request)`` for each complete
    request, then ``finish()``, each on a pool worker, where blocking code is
    fine. ``self.send(data)`` queues a reply and ``self.close()`` closes the
    connection once the replies are sent. An exception in a hook is reported
    by ``server.handle_error()`` and closes the connection.

    Class variables that may be overridden:

    - max_line: the line cap of the default framer; None takes the server's
      ``limits.max_line``, else 64 KiB.
    - write_limit: bytes of replies waiting to be sent before the connection
      stops being read (64 KiB).

    Override ``make_framer()`` for another framing (``LengthPrefixFramer``,
    or your own: ``feed(data)`` and ``next_request()``).
    """

    max_line: ClassVar[int | None] = None
    write_limit: ClassVar[int] = 64 * 1024

    def __init__(self, client_address: Any, server: Any, connection: Outbox) -> None:
        self.client_address = client_address
        self.server = server
        self._outbox = connection

    def make_framer(self) -> Framer:
        """The framer of this connection: lines of at most ``max_line`` bytes by default."""
        # Imported here: every server loads this module (to tell a framed handler
        # from a stdlib one), and one that frames nothing should not load framers.
        from .protocol.framers import LineFramer

        max_line = self.max_line or limits_of(self.server).max_line or DEFAULT_MAX_LINE
        return LineFramer(max_line, client_address=self.client_address)

    def setup(self) -> None:
        """Called before the first request. May be overridden."""

    def handle_request(self, request: bytes) -> None:
        """Handle one complete request. Override this."""
        raise NotImplementedError(f"{type(self).__name__} must define handle_request()")

    def finish(self) -> None:
        """Called after the last request (if setup() was called). May be overridden."""

    def send(self, data: Buffer) -> None:
        """Send ``data`` to the client: now if the socket takes it, otherwise
        queued and written by the server's reactor, in order.

        Raises:
            ConnectionError: the connection is closed (the client went away, or the server cut it).
        """
        self._outbox.send(bytes(data))

    def close(self) -> None:
        """Close the connection once the replies sent so far are written;
        requests not yet handled are dropped."""
        self._outbox.close_after_sending()

    @property
    def connection_info(self) -> ConnectionInfo:
        """What is known of this connection beyond ``client_address``: the
        socket's peer (a proxy), the PROXY header, the TLS session."""
        return self._outbox.connection_info()


def is_framed_handler(handler_class: object) -> bool:
    """True for a FramedRequestHandler subclass (a server's RequestHandlerClass may be any callable)."""
    return isinstance(handler_class, type) and issubclass(handler_class, FramedRequestHandler)


class Outbox(Protocol):
    """What a framed handler's ``send()`` and ``close()`` talk to."""

    def send(self, data: bytes) -> None: ...
    def close_after_sending(self) -> None: ...
    def connection_info(self) -> ConnectionInfo: ...
