"""What every sockserve server has, synchronous or async: its limits, its
edge options (PROXY protocol, access list, TLS), the admission step of each
connection and the stages that follow it, ``max_requests``, and the shutdown
handshake. Written once here; ``BaseServer`` and ``AsyncBaseServer`` add the
loop that runs on them.
"""

from __future__ import annotations

import socket
import sys
import threading
from collections.abc import Sequence

from ._access_log import TCP_INFO_AVAILABLE, count_error, log_refused_access
from ._admission import Admission, Refusal, Ticket
from ._limits import NO_LIMITS, Limits, limits_of
from ._log import format_address, log_refused, logger
from ._metrics import Metrics
from ._shutdown import ShutdownHandshake

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see sockserve/__init__.py)
if TYPE_CHECKING:
    import ssl
    from collections.abc import Mapping
    from typing import Any

    from ._access import AccessList
    from ._connection_info import ProxiedConnections
    from ._proxy_stage import ProxyProtocol
    from ._stages import StageFactory
    from ._tls import TLSConfig, TLSContextSource


def _edge_stages_module() -> Any:
    """``_edge_stages``, imported on first use (it loads ``ssl``): an import
    statement run per connection costs ~8 k instructions even when the module
    is loaded, so the module is kept here after the first."""
    global _EDGE_STAGES
    if _EDGE_STAGES is None:
        from . import _edge_stages

        _EDGE_STAGES = _edge_stages
    return _EDGE_STAGES


_EDGE_STAGES: Any = None


class ServerCore:
    """Limits, admission, max_requests and the shutdown handshake of one server."""

    # Connection caps and timeouts (none by default, as in the stdlib). Set on
    # a subclass or an instance before serving.
    limits: Limits = NO_LIMITS
    # Stop accepting after this many requests were admitted (a prefork worker
    # is recycled this way); the serve loop then returns as after shutdown().
    max_requests: int | None = None
    # The edge of the server, each a stage of every connection's life under
    # every model (None: off). Set on a subclass or an instance before serving.
    # PROXY protocol headers, believed only from the proxies it trusts:
    proxy_protocol: ProxyProtocol | None = None
    # Which clients are served, by their real address (after a PROXY header):
    access_list: AccessList | None = None
    # TLS: an ssl.SSLContext, or a TLSConfig from which one is built (and
    # rebuilt when its files change, on SIGHUP, or on reload_tls()):
    tls: ssl.SSLContext | TLSConfig | None = None
    # One INFO line per connection (per datagram) on the ``sockserve.access``
    # logger when it ends: client, duration, bytes, why it closed. Read when
    # serving starts.
    access_log: bool = False
    # Count each TCP connection's bytes in the metrics (bytes_received,
    # bytes_sent), from one getsockopt(TCP_INFO) as it closes; on with the
    # access log, which prints them. Off by default: reading them cost 6-9%
    # of a connect-per-request connection (docs, "Metrics"). Read when
    # serving starts.
    count_bytes: bool = False
    # The server counts each datagram as it comes (accepted, a request, its
    # bytes), not at admission: the async datagram servers, whose fastest
    # paths admit nothing.
    _counts_datagrams_on_receipt = False
    # The server's counters and gauges (``_metrics``): made with the server;
    # another may be set before serving (a prefork worker's shared slot).
    metrics: Metrics
    server_address: Any

    if TYPE_CHECKING:  # the stdlib hooks, supplied by the servers

        def verify_request(self, request: Any, client_address: Any) -> bool: ...
        def handle_error(self, request: Any, client_address: Any) -> None: ...

    def _start_core(self) -> None:
        """Called by the servers' constructors (which, like the stdlib's, call no super().__init__)."""
        self._handshake = ShutdownHandshake()
        self._admission_lock = threading.Lock()
        self._admission_book: Admission | None = None
        self._max_requests_done = False
        self._proxied: ProxiedConnections | None = None  # made when a first PROXY header is read
        self._tls_source_made: tuple[object, TLSContextSource] | None = None  # (self.tls, its source)
        self._edge_known = False  # see _know_edge()
        self._tcp_bytes = False  # see _know_edge()
        self._stream_end = False  # see _know_edge()
        self._datagram_bytes = False  # see _know_edge()
        self.metrics = Metrics()

    def _admission(self) -> Admission:
        """The connections admitted; made on first use, with the limits then in force."""
        admission = self._admission_book
        if admission is None:
            with self._admission_lock:
                if self._admission_book is None:
                    admission = Admission(self.limits, on_free=self._capacity_freed, metrics=self.metrics)
                    self._report_through(admission)
                    if self._counts_datagrams_on_receipt:
                        admission.accepted_unit = admission.request_unit = 0
                    self._admission_book = admission
                admission = self._admission_book
        return admission

    def _report_through(self, admission: Admission) -> None:
        """The access log and count_bytes as they are now, for ``admission``:
        with either, every release takes the path that settles it."""
        admission.access_log = bool(self.access_log)
        admission.settle_all = admission.access_log or bool(self.count_bytes)

    def _know_edge(self) -> None:
        """Read the edge options once (when serving starts, or at the first
        request), into instance flags the per-request paths test: reading
        three class attributes through the instance for every request cost
        ~200 instructions each on Python 3.11. The options are documented as
        set before serving; a new ``serve_forever()`` reads them again."""
        proxy, access, tls = self.proxy_protocol, self.access_list, self.tls
        datagrams = getattr(self, "socket_type", None) == socket.SOCK_DGRAM
        if tls is not None and datagrams:
            raise ValueError(f"{type(self).__name__}: tls needs a stream socket (DTLS is not supported)")
        self._vets_peers = proxy is not None or access is not None
        self._edge_stages_on = not datagrams and (proxy is not None or tls is not None)
        self._datagram_proxy = datagrams and proxy is not None
        # The metrics and the access log as they are now, for the admission
        # that counts with them.
        admission = self._admission_book
        if admission is not None:
            admission.use_metrics(self.metrics)
            self._report_through(admission)
        # How a stream connection ended (its bytes, who closed first) is
        # read as it closes, only where something wants it: the access log,
        # or count_bytes (it costs 6-9% of a connection: see docs, "Metrics").
        # A TCP connection's from one getsockopt(TCP_INFO); a classic
        # handler's socket is held open through its own close for that
        # (Job.run: _access_log.hold), and a Unix one's is peeked.
        wanted = bool(self.access_log) or bool(self.count_bytes)
        family = getattr(self, "address_family", None)
        self._tcp_bytes = (
            wanted
            and TCP_INFO_AVAILABLE
            and not datagrams
            and family in (socket.AF_INET, getattr(socket, "AF_INET6", None))
        )
        self._stream_end = wanted and not datagrams
        # A synchronous datagram server's payload bytes, likewise.
        self._datagram_bytes = wanted and datagrams
        self._edge_known = True

    def _capacity_freed(self) -> None:
        """Called (from any thread) when a release takes the server below
        max_connections: the loop wakes and accepts again."""

    def _admit(self, request: Any, client_address: Any) -> Ticket | None:
        """The admit step: the admission policy, then ``verify_request()``.

        A ticket, or None when the request must be dropped (the caller closes
        it). A refusal is logged (rate-limited) and counted; an exception in
        ``verify_request()`` goes to ``handle_error()`` instead of escaping
        the serve loop.
        """
        admission = self._admission_book
        if admission is None:
            admission = self._admission()
        if not self._edge_known:
            self._know_edge()
        if not self._vets_peers:
            verdict = admission.admit(client_address)
        elif self.access_list is not None and not self._access_permits(client_address, admission):
            return None
        elif self.proxy_protocol is not None and self.proxy_protocol.trusts(client_address):
            verdict = admission.admit(client_address, per_client=False)  # the PROXY header names the client
        else:
            verdict = admission.admit(client_address)
        if isinstance(verdict, Refusal):
            log_refused(verdict.error)
            if admission.access_log:
                log_refused_access(client_address)
            return None
        try:
            verified = self.verify_request(request, client_address)
        except Exception:
            self._handler_error(request, client_address, verdict)
            verified = False
        except BaseException:
            admission.release(verdict)
            raise
        if not verified:
            verdict.closed_by = "verify_request"
            admission.release(verdict)
            return None
        # The ticket's own number: exact even while other threads admit (a datagram pool's workers).
        if self.max_requests is not None and verdict.number >= self.max_requests and not self._max_requests_done:
            self._max_requests_done = True
            logger.info(
                "%s: %d requests admitted (max_requests): no more accepted",
                format_address(self.server_address),
                verdict.number,
            )
            self._handshake.request()
        return verdict

    def _access_permits(self, peer: Any, admission: Admission) -> bool:
        """The access list's verdict on a new connection's peer, logged and
        counted when it refuses. A trusted proxy's connections are judged
        later, by the client its PROXY header names (``_check_real_client``)."""
        access = self.access_list
        if access is None or access.permits(peer):
            return True
        proxy = self.proxy_protocol
        if proxy is not None and proxy.trusts(peer):
            return True
        from ._errors import AccessDenied

        admission.metrics.refuse("access_list")
        log_refused(AccessDenied(peer))
        if admission.access_log:
            log_refused_access(peer)
        return False

    def _check_real_client(self, ticket: Ticket | None, client_address: Any) -> str | None:
        """A PROXY header named the real client: the access list and the
        per-IP limit judge it now. None if it may be served, else why not."""
        admission = self._admission()
        access = self.access_list
        if access is not None and not access.permits(client_address):
            admission.metrics.refuse("access_list")
            return f"its PROXY header names {format_address(client_address)}, denied by the access list"
        if ticket is not None:
            refusal = admission.readdress(ticket, client_address)
            if refusal is not None:
                return str(refusal.error)
        return None

    def _stage_factories(self, ticket: Ticket | None = None) -> Sequence[StageFactory]:
        """The stages a connection goes through between admission and its
        handler, in order: the PROXY header, then the TLS handshake."""
        if not self._edge_known:
            self._know_edge()
        if not self._edge_stages_on:
            return ()
        stages: Sequence[StageFactory] = _edge_stages_module().edge_stages(self, self.proxy_protocol, ticket)
        return stages

    def _tls_source(self) -> TLSContextSource | None:
        """Where each connection's TLS context comes from (made on first use)."""
        tls = self.tls
        if tls is None:
            return None
        made = self._tls_source_made
        if made is None or made[0] is not tls:  # first use, or the user set another
            from ._tls import TLSContextSource

            with self._admission_lock:
                made = self._tls_source_made
                if made is None or made[0] is not tls:
                    made = self._tls_source_made = (tls, TLSContextSource(tls))
        return made[1]

    def reload_tls(self) -> bool:
        """Build the TLS context again from its files (a ``TLSConfig``'s), for
        the connections accepted from now on; those in flight keep theirs.
        False, with a log line saying why, if the new files are unusable:
        the server then keeps the certificates it had."""
        source = self._tls_source()
        return source is not None and source.reload()

    def _proxied_connections(self) -> ProxiedConnections:
        """The PROXY headers of the connections in flight (``_connection_info``)."""
        proxied = self._proxied
        if proxied is None:
            from ._connection_info import ProxiedConnections

            with self._admission_lock:
                if self._proxied is None:
                    self._proxied = ProxiedConnections()
                proxied = self._proxied
        return proxied

    def _count_refused(self, reason: str) -> None:
        self._admission().metrics.refuse(reason)

    @property
    def refused(self) -> Mapping[str, int]:
        """How many connections were refused before their handler, by reason
        (``max_connections``, ``max_connections_per_ip``, ``access_list``,
        ``proxy_header``, ``tls_handshake``, ``emfile``, ``timeout``): those
        that happened. A copy, read from ``metrics``, which has them all."""
        admission = self._admission_book
        if admission is not None:
            return admission.refused
        return {reason: n for reason, n in self.metrics.snapshot().refused.items() if n}

    def _count_drain(self, seconds: float) -> None:
        """A graceful stop ended after ``seconds``: in the metrics, with every
        connection that ended (another process reading them, a prefork
        supervisor, sees them all now)."""
        admission = self._admission_book
        if admission is None:
            self.metrics.drained(seconds)
        else:
            admission.fold()
            admission.metrics.drained(seconds)

    def _current_ticket(self) -> Ticket | None:
        """The ticket of the request whose handler runs on this thread (the
        synchronous servers know it)."""
        return None

    def _handler_error(self, request: Any, client_address: Any, ticket: Ticket | None = None) -> None:
        """Give the exception being handled to ``handle_error()``, counted
        first (``_access_log.count_error``): every model reports its
        handlers' errors through here, so one that ``handle_error()``
        overrides without calling ``super()`` is counted all the same."""
        if ticket is None:
            ticket = self._current_ticket()
        admission = self._admission_book
        count_error(
            self.metrics if admission is None else admission.metrics,
            ticket,
            sys.exc_info()[1],
            limits_of(self).idle_timeout,
            getattr(self, "socket_type", None) == socket.SOCK_DGRAM,
        )
        self.handle_error(request, client_address)

    @property
    def max_requests_reached(self) -> bool:
        """True once ``max_requests`` requests were admitted and the server stopped accepting."""
        return self._max_requests_done

    def _in_flight_count(self) -> int:
        admission = self._admission_book
        return 0 if admission is None else len(admission)
