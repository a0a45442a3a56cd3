"""A ticket: one admitted connection (or datagram), from its admission to its
release. Its own module so that what reads a ticket (the access log, the
models) need not import the admission that hands them out."""

from __future__ import annotations

from collections.abc import Callable, Hashable

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see sockserve/__init__.py)
if TYPE_CHECKING:
    from typing import Any, final
else:

    def final(cls: type) -> type:
        """typing.final, for type checkers only: it does nothing at run time."""
        return cls


@final
class Ticket:
    """One admitted connection (or datagram), from admission to release.

    Attributes:
        peer: the client's address.
        admitted_at: ``time.monotonic()`` at admission.
        deadline: when ``connection_timeout`` ends it (monotonic), or None.
        abort: set by the model running the connection: cuts it from any
            thread (its handler's reads end, its writes fail). None while
            nothing can cut it (a datagram, or a forked child's connection,
            which the child cuts itself).
        aborted: why the server cut it, once it did (so that the error the
            handler then sees is not reported as the client's doing).
        number: 1 for the first ticket its admission gave, 2 for the next...
        closed_by: why it ended, where the model knows (the client closed,
            an idle timeout, a handler's error...); None: the release works
            it out (``_access_log.closed_by``).
        requests: requests a model counts itself (the framed pool's); the
            others' connection is one request (``Admission.request_unit``).
        counted: of ``requests``, those already counted (a slot: the framed
            pool reads it after every turn).

    Set only where a model has them (class defaults otherwise: a ticket
    pays for no store it does not need): ``received`` and ``sent`` (bytes, None:
    not known), ``tcp_info`` (the raw TCP_INFO read as its socket closed,
    parsed when it is counted: ``_access_log.read_tcp_info``), ``probe`` (a
    duplicate descriptor of the socket to read it from, where the transport
    closes its own first: an async TLS connection's), ``report``
    (False where another process settles it: a forked child's parent).
    """

    __slots__ = (
        "__dict__",  # the rarely set fields below; made on first use only
        "abort",
        "aborted",
        "admitted_at",
        "closed_by",
        "counted",
        "deadline",
        "key",
        "number",
        "peer",
        "released",
        "requests",
    )

    received: int | None = None
    sent: int | None = None
    tcp_info: bytes | None = None
    probe: Any = None  # a duplicate of a TLS connection's socket: see aio/_tls.py
    report = True

    def __init__(self, peer: Any, key: Hashable, admitted_at: float, deadline: float | None, number: int = 0) -> None:
        self.number = number
        self.peer = peer
        self.key = key
        self.admitted_at = admitted_at
        self.deadline = deadline
        self.abort: Callable[[BaseException], object] | None = None
        self.aborted: BaseException | None = None
        self.released = False
        self.closed_by: str | None = None
        self.requests = 0
        self.counted = 0

    def cut(self, reason: BaseException) -> bool:
        """Cut the connection for ``reason`` (once); False if nothing can cut it now."""
        if self.aborted is not None or self.abort is None:
            return False
        self.aborted = reason
        if self.closed_by is None:
            # Something to say: its release takes the slower path, which
            # reads why from ``aborted`` (_access_log.closed_by).
            self.closed_by = "server"
        self.abort(reason)
        return True
