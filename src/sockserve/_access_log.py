"""The end of a connection: why it closed, its bytes, its line in the access
log, and its counting in the metrics (``settle``, called by the admission's
release, exactly once per connection under every model).

The models write what they learn on the connection's ticket as they go
(``Ticket.requests``, ``received``, ``sent``, ``closed_by``); a TCP
connection's bytes come from one ``getsockopt(TCP_INFO)`` just before its
socket closes (``tcp_bytes``), which needs no wrapper around the socket and
costs nothing per request.
"""

from __future__ import annotations

import socket
import struct
import time

from ._errors import ConnectionDeadlineExceeded, IdleTimeoutExpired, LimitExceeded
from ._log import format_address
from ._metrics import HANDLER_ERRORS, Metrics

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see sockserve/__init__.py)
if TYPE_CHECKING:
    import logging
    from typing import Any, Protocol

    from ._ticket import Ticket

    class HeldSocket(Protocol):
        """What ``hold()`` and ``let_go()`` use of a ``socket.socket``: the count of
        references ``makefile()`` keeps (``close()`` waits for them) and the close
        it then defers, in CPython's ``socket.py`` (3.10-3.13). Named here, in one
        place, since typeshed does not declare them."""

        _io_refs: int
        _closed: bool

        def _real_close(self) -> None: ...


ACCESS_LOGGER = "sockserve.access"

# struct tcp_info (linux/tcp.h), the fields read here and their offsets:
# tcpi_state (u8, 0), tcpi_bytes_acked and tcpi_bytes_received (u64, 120 and
# 128; Linux 4.1), tcpi_notsent_bytes (u32, 144; 4.6), tcpi_bytes_sent and
# tcpi_bytes_retrans (u64, 200 and 208; 4.19). Checked against a known
# transfer in tests/test_access_log.py.
_TCP_INFO = struct.Struct("=B119xQQ8xI52xQQ")
_TCP_INFO_OLD = struct.Struct("=B119xQQ")  # before 4.19: no bytes_sent
_TCP_INFO_SIZE = TCP_INFO_SIZE = _TCP_INFO.size
_IPPROTO_TCP = getattr(socket, "IPPROTO_TCP", 6)
_TCP_INFO_OPT = TCP_INFO_OPT = getattr(socket, "TCP_INFO", 11)  # Linux only (TCP_INFO_AVAILABLE)
# TCP states (include/net/tcp_states.h) in which the client's FIN has come:
# CLOSE_WAIT, LAST_ACK, CLOSING, and CLOSE after LAST_ACK (or after a reset,
# when the FIN may not have come: see tcp_bytes()). The FIN takes one
# sequence number, which tcpi_bytes_received counts as a byte.
_TCP_CLOSE = 7
_CLIENT_CLOSED = frozenset({_TCP_CLOSE, 8, 9, 11})

TCP_INFO_AVAILABLE = hasattr(socket, "TCP_INFO")


def tcp_bytes(sock: Any, ticket: Ticket) -> None:
    """Take a TCP connection's ``TCP_INFO`` onto ``ticket`` before its socket
    closes; ``read_tcp_info()`` makes its counts of it later, off the
    connection's way out. Nothing is taken if the socket cannot say (closed,
    not TCP, None: uvloop's TLS transports)."""
    try:
        ticket.tcp_info = sock.getsockopt(_IPPROTO_TCP, _TCP_INFO_OPT, _TCP_INFO_SIZE)
    except (OSError, TypeError, ValueError, AttributeError):
        pass


def read_tcp_info(ticket: Ticket) -> None:
    """A connection's bytes (and, from its state, whether the client closed
    first), from the ``TCP_INFO`` that ``tcp_bytes()`` took.

    ``bytes_received`` is what the kernel received in order (read by the
    handler or not), less the FIN; ``bytes_sent`` what the server wrote that
    TCP has sent or still holds (sent, less retransmissions, plus not yet
    sent). Both count what is on the wire: with TLS, its records. A
    connection reset before the client's FIN may be counted one byte short.
    """
    info, ticket.tcp_info = ticket.tcp_info, None
    if info is None:
        return
    if len(info) >= _TCP_INFO_SIZE:
        state, _acked, received, notsent, sent, retrans = _TCP_INFO.unpack_from(info)
        ticket.sent = sent - retrans + notsent
    elif len(info) >= _TCP_INFO_OLD.size:
        state, _acked, received = _TCP_INFO_OLD.unpack_from(info)
    else:
        return
    if state in _CLIENT_CLOSED:
        received -= 1 if received else 0
        if ticket.closed_by is None:
            ticket.closed_by = "client"
    ticket.received = received


def hold(sock: socket.socket) -> socket.socket:
    """Keep ``sock``'s descriptor open through a ``close()`` until ``let_go()``,
    so that how its connection ended can still be read after the handler
    and the stdlib's ``shutdown_request()`` closed it: the reference
    ``makefile()`` takes (``socket._io_refs``), for which ``close()`` waits,
    as it waits for an open ``rfile``. Only on the thread that then calls
    ``let_go()``."""
    held: HeldSocket = sock  # type: ignore[assignment]  # see HeldSocket
    held._io_refs += 1
    return sock


def let_go(sock: socket.socket, ticket: Ticket, tcp: bool) -> None:
    """Take how ``sock``'s connection ended onto ``ticket`` (``tcp``: its
    TCP_INFO; else whether the client had finished sending), then drop the
    reference ``hold()`` took: the descriptor closes now if the handler
    closed it. (``Job.run`` does the same inline: it is the pool's and the
    threads' path, where a call is a share of a connection's cost.)"""
    if tcp:
        tcp_bytes(sock, ticket)
    elif ticket.closed_by is None and client_finished(sock):
        ticket.closed_by = "client"
    held: HeldSocket = sock  # type: ignore[assignment]  # see HeldSocket
    held._io_refs -= 1  # socket._decref_socketios(), inline
    if held._closed:
        held._real_close()


def client_finished(sock: socket.socket) -> bool:
    """True if the client has finished sending (its end of input is next
    in the socket): one non-blocking peek, for sockets without TCP_INFO."""
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except OSError:  # nothing waiting (EAGAIN), or the socket is gone
        return False


def closed_by(ticket: Ticket) -> str:
    """Why the connection ended: a cut by the server first (its deadline, the
    end of a drain, a limit), then what the model saw (``ticket.closed_by``:
    the client closed or vanished, an idle timeout, a handler's error),
    else the server (its handler returned)."""
    aborted = ticket.aborted
    if aborted is not None:
        return cut_reason(aborted)
    return ticket.closed_by or "server"


def cut_reason(reason: BaseException) -> str:
    """``closed_by`` for a connection the server cut for ``reason``."""
    if isinstance(reason, ConnectionDeadlineExceeded):
        return "connection_timeout"
    if isinstance(reason, IdleTimeoutExpired):
        return "idle_timeout"
    if isinstance(reason, LimitExceeded):
        return "limit"
    if isinstance(reason, ConnectionAbortedError):
        return "drain"  # _drain.force_reason(): the grace period ran out, or the stop was forced
    return "server"


_VANISHED = (ConnectionResetError, ConnectionAbortedError, BrokenPipeError)


def error_closed_by(
    exc: BaseException | None, idle_timeout: float | None, cut: BaseException | None, datagram: bool
) -> str:
    """``closed_by`` for an exception that reached ``handle_error()``, sorted
    as ``_log.report_request_error`` sorts it for its log line: only
    "error" (a bug: logged with its traceback) counts as a handler error."""
    if cut is not None and isinstance(exc, OSError):
        return cut_reason(cut)
    if isinstance(exc, IdleTimeoutExpired):
        return "idle_timeout"
    if isinstance(exc, LimitExceeded):
        return "limit"
    if isinstance(exc, TimeoutError) and idle_timeout is not None and not datagram:
        return "idle_timeout"
    if datagram and isinstance(exc, ConnectionRefusedError):
        return "client"
    if isinstance(exc, _VANISHED) and not datagram:
        return "client"
    return "error"


def count_error(
    metrics: Metrics,
    ticket: Ticket | None,
    exc: BaseException | None,
    idle_timeout: float | None,
    datagram: bool,
) -> None:
    """An exception reached ``handle_error()``: count it if it is a handler's
    error, and note why its connection ends (the first reason stays)."""
    why = error_closed_by(exc, idle_timeout, None if ticket is None else ticket.aborted, datagram)
    if why == "error":
        metrics.add(HANDLER_ERRORS)
    if ticket is not None and ticket.closed_by is None:
        ticket.closed_by = why


def settle(ticket: Ticket, metrics: Metrics, access_log: bool, request_unit: int = 1) -> str:
    """Why a released connection ended (returned): its timeout counted, its
    access line written (with ``request_unit`` requests unless the model
    counted them, or it ended before its handler). Its other counts are
    the admission's (``Admission._settle``, ``fold``). A ticket another
    process settles (a forked child's, in its parent) says nothing here."""
    if not ticket.report:
        return ""
    probe = ticket.probe
    if probe is not None:
        # The transport closed its socket before it told the handler (async
        # TLS): the duplicate kept the connection open until now, to be read.
        ticket.probe = None
        if ticket.tcp_info is None:
            tcp_bytes(probe, ticket)
        probe.close()
    if ticket.tcp_info is not None:
        read_tcp_info(ticket)
    why = closed_by(ticket)
    if why == "idle_timeout" or why == "connection_timeout":
        metrics.refuse("timeout")
    if access_log:
        requests = ticket.requests
        if not requests and why != "refused" and why != "verify_request":
            requests = request_unit
        log_access(ticket, why, requests)
    return why


def settle_here(ticket: Ticket, metrics: Metrics, access_log: bool) -> None:
    """``settle`` and what ``Admission.fold`` would count, at once, in a
    process whose admission does not release the connection (a forked
    child: its parent counts it in and out)."""
    settle(ticket, metrics, access_log)
    metrics.add_many(requests=ticket.requests - ticket.counted, received=ticket.received or 0, sent=ticket.sent or 0)


_logger: logging.Logger | None = None


def log_access(ticket: Ticket, why: str, requests: int, now: float | None = None) -> None:
    """One INFO line for a connection that ended, with its fields also as
    the record's extras (for a JSON formatter). Not rate-limited: it is the
    access log, which the program turned on."""
    global _logger
    logger = _logger
    if logger is None:
        import logging

        logger = _logger = logging.getLogger(ACCESS_LOGGER)
    if not logger.isEnabledFor(20):
        return
    duration = (time.monotonic() if now is None else now) - ticket.admitted_at
    _write(logger, format_address(ticket.peer), why, requests, ticket.received, ticket.sent, duration)


def log_refused_access(peer: Any) -> None:
    """The access line of a connection refused at admission (a limit, the
    access list): it has no ticket, was never served, and its line says
    ``closed_by=refused`` like one whose stages failed, so the access log
    has one line per connection the server accepted, refused ones included."""
    global _logger
    logger = _logger
    if logger is None:
        import logging

        logger = _logger = logging.getLogger(ACCESS_LOGGER)
    if logger.isEnabledFor(20):
        _write(logger, format_address(peer), "refused", 0, None, None, 0.0)


def _write(
    logger: logging.Logger,
    client: str,
    why: str,
    requests: int,
    received: int | None,
    sent: int | None,
    duration: float,
) -> None:
    logger.info(
        "%s requests=%d bytes_received=%s bytes_sent=%s duration=%.6fs closed_by=%s",
        client,
        requests,
        "-" if received is None else received,
        "-" if sent is None else sent,
        duration,
        why,
        extra={
            "client": client,
            "requests": requests,
            "duration": duration,
            "bytes_received": received,
            "bytes_sent": sent,
            "closed_by": why,
        },
    )
