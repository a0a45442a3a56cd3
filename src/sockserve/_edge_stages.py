"""The server's edge options as stages of every connection: the PROXY
header (``_proxy_stage``), then the TLS handshake.

The PROXY stage is a sans-IO ``Stage`` like any other: every driver feeds it
bytes. The TLS handshake is the last stage and is different in kind: it does
not end with the connection as it was, but with a new one (the handler reads
and writes through TLS). So each driver runs it its own way, with the tools
its model has:

- the blocking driver (sequential, a thread, a forked child): a handshake
  on the connection's own thread, under the stages' deadline
  (``TLSHandshake.run_blocking``);
- the pool's reactor: a non-blocking handshake stepped on readiness
  (``TLSHandshake.start`` and ``step``), so a client that stalls it holds no
  worker;
- asyncio: the loop's own TLS (``loop.connect_accepted_socket(ssl=...)``),
  with ``TLSHandshake.context()`` and ``timeout``.

Where a model has a loop, the sketch this departs from called for
``ssl.SSLObject`` over memory buffers. A non-blocking ``ssl.SSLSocket`` gives
the same property (no thread waits on a stalled handshake), and then hands
the handler a real ``ssl.SSLSocket``: ``makefile()``, ``getpeercert()`` and
the stdlib's ``StreamRequestHandler`` work on it as they do on any TLS
socket, where an ``SSLObject`` would need a socket imitation of our own.
"""

from __future__ import annotations

import select
import socket
import ssl
import time

from ._log import log_tls_failed
from ._stages import StageFailed

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see sockserve/__init__.py)
if TYPE_CHECKING:
    from typing import Any, Protocol

    from ._admission import Ticket
    from ._proxy_stage import ProxyProtocol
    from ._stages import Stage
    from ._tls import TLSContextSource

    class EdgeHost(Protocol):
        """What the edge stages need of their server (``ServerCore``)."""

        def _check_real_client(self, ticket: Ticket | None, client_address: Any) -> str | None: ...
        def _count_refused(self, reason: str) -> None: ...
        def _tls_source(self) -> TLSContextSource | None: ...


# What a client that vanished mid-handshake looks like: not the server's
# problem, and not worth a warning (a TCP health check connects and closes).
_VANISHED = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionResetError, BrokenPipeError, ConnectionAbortedError)


class ProxyStageFactory:
    """Makes each connection's PROXY stage, tied to its server and ticket:
    the real client a header names is vetted by the access list and the
    per-IP limit (``ServerCore._check_real_client``)."""

    __slots__ = ("_config", "_server", "_ticket", "timeout")

    def __init__(self, config: ProxyProtocol, server: EdgeHost, ticket: Ticket | None) -> None:
        self._config = config
        self._server = server
        self._ticket = ticket
        self.timeout = config.timeout

    def __call__(self, client_address: Any) -> Stage:
        return self._config.stage(client_address, self._check, self._bad_header)

    def _check(self, client_address: Any) -> str | None:
        return self._server._check_real_client(self._ticket, client_address)

    def _bad_header(self) -> None:
        self._server._count_refused("proxy_header")


class TLSHandshake:
    """The TLS handshake, the last of a connection's stages (see the module docstring)."""

    __slots__ = ("_server", "source", "timeout")
    replaces_socket = True  # what the drivers look for (``_stages.split_tls``)

    def __init__(self, source: TLSContextSource, timeout: float, server: EdgeHost) -> None:
        self.source = source
        self.timeout = timeout
        self._server = server

    def context(self) -> ssl.SSLContext:
        """The context for a new connection (the latest, if the files changed)."""
        return self.source.context()

    def run_blocking(self, sock: socket.socket, deadline: float, client_address: Any) -> ssl.SSLSocket:
        """Handshake on ``sock`` before ``deadline`` (monotonic); the TLS socket,
        with ``sock``'s timeout. ``sock`` is detached either way: on failure
        the TLS socket is closed.

        Raises:
            StageFailed: the handshake failed or ran out of time.
            OSError: the client went away.
        """
        timeout = sock.gettimeout()
        try:
            tls = self._wrap(sock)
        except OSError as exc:
            raise self.failed(exc, client_address) from exc
        try:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            tls.settimeout(remaining)
            tls.do_handshake()
            tls.settimeout(timeout)
        except BaseException as exc:
            tls.close()
            raise self.failed(exc, client_address) from exc
        return tls

    def start(self, sock: socket.socket) -> ssl.SSLSocket:
        """Begin a non-blocking handshake on ``sock`` (detached from now on); step it with ``step()``.

        Raises:
            OSError: the client is gone already (``sock`` is left as it was: the caller closes it).
        """
        sock.setblocking(False)
        return self._wrap(sock)

    def _wrap(self, sock: socket.socket) -> ssl.SSLSocket:
        """``sock`` as a server-side TLS socket, its handshake not begun.

        A client that reset the connection before the handshake (a TCP
        health check does) is refused here, with ``sock`` still whole:
        ``wrap_socket()`` would find it unconnected, probe it with a
        ``recv()`` that raises, and lose the new socket and its descriptor
        to the garbage collector (cpython#113280, fixed in 3.13).
        """
        sock.getpeername()  # raises OSError (ENOTCONN) for a connection already reset
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            # TLS writes in records, several per flight (TLS 1.3 sends its two
            # session tickets as two writes after the handshake): with Nagle's
            # algorithm the second waits for the client's ACK of the first, a
            # delayed ACK away. Measured: 40 ms more per connection on the
            # thread and pool servers (benchmarks/edge.py), which the event
            # loops, setting TCP_NODELAY themselves, did not pay.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            return self.context().wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        except OSError as exc:
            _close_dropped_tls_socket(exc)  # the reset came between the check above and the wrap's own
            raise

    @staticmethod
    def step(tls: ssl.SSLSocket) -> int:
        """Take the handshake as far as it goes without blocking: 0 once it is
        done, else the poll event it waits for (POLLIN or POLLOUT).

        Raises:
            ssl.SSLError, OSError: the handshake failed (see ``failed()``).
        """
        try:
            tls.do_handshake()
        except ssl.SSLWantReadError:
            return select.POLLIN
        except ssl.SSLWantWriteError:
            return select.POLLOUT
        return 0

    def failed(self, exc: BaseException, client_address: Any) -> BaseException:
        """The error a driver reports for a handshake that ended with ``exc``:
        logged once here (rate-limited) and counted."""
        self._server._count_refused("tls_handshake")
        if isinstance(exc, _VANISHED) or (
            isinstance(exc, OSError) and not isinstance(exc, (ssl.SSLError, TimeoutError))
        ):
            error: BaseException = ConnectionResetError(f"the client went away during the TLS handshake ({exc})")
            log_tls_failed(error, client_address, vanished=True)
            return error
        if isinstance(exc, TimeoutError):
            reason = f"the TLS handshake did not finish within {self.timeout:g}s"
        elif isinstance(exc, ssl.SSLError):
            reason = f"TLS handshake failed: {exc.reason or exc}"
        else:
            reason = f"TLS handshake failed: {exc!r}"
        log_tls_failed(StageFailed(reason, client_address), client_address, vanished=False)
        return StageFailed(reason, client_address)


def _close_dropped_tls_socket(exc: BaseException) -> None:
    """Close the ``SSLSocket`` that ``wrap_socket()`` made and dropped when it
    raised (cpython#113280): it owns the connection's descriptor, which would
    otherwise stay open until the garbage collector breaks the exception's
    reference cycle. It is the ``self`` of ``SSLSocket._create``'s frame."""
    traceback = exc.__traceback__
    while traceback is not None:
        frame = traceback.tb_frame
        dropped = frame.f_locals.get("self") if frame.f_code.co_name == "_create" else None
        if isinstance(dropped, ssl.SSLSocket):
            dropped.close()
            return
        traceback = traceback.tb_next


def end_tls_session(tls: ssl.SSLSocket) -> None:
    """Send the TLS close_notify alert, so the client can tell the end of the
    session from a truncation (OpenSSL 3 clients report "unexpected eof"
    without it). Without waiting for the client's own alert, which could
    take forever: the socket is made non-blocking first, and the SSL
    layer's "want read" for the client's answer ends the attempt."""
    try:
        tls.setblocking(False)
        tls.unwrap()
    except (OSError, ValueError):  # ssl.SSLError is an OSError; ValueError: the socket is closed
        pass


def edge_stages(server: EdgeHost, proxy: ProxyProtocol | None, ticket: Ticket | None) -> tuple[Any, ...]:
    """The stages ``server``'s options call for, for the connection holding ``ticket``."""
    stages: list[Any] = []
    if proxy is not None:
        stages.append(ProxyStageFactory(proxy, server, ticket))
    source = server._tls_source()
    if source is not None:
        stages.append(TLSHandshake(source, source.handshake_timeout, server))
    return tuple(stages)
