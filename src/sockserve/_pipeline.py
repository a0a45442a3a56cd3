"""One connection's walk through a synchronous server, after it was
accepted (``_accept``) and admitted (``_server_core``): stages -> handler ->
release.

What is admitted becomes a ``Job``, which a
concurrency model runs where it runs handlers (on the loop's thread, a
thread, a pool worker, a child process): ``Job.run(target)`` drives the
connection's stages with the blocking driver, calls ``target`` (the model's
stdlib hook, such as ``process_request_thread``) with the connection as the
stages left it, and releases the admission ticket however that ends. The
release is wrapped around the model's work by this module, never left to a
hook that a subclass may override.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Sequence

from ._access_log import TCP_INFO_OPT, TCP_INFO_SIZE, let_go
from ._admission import Admission, Ticket
from ._errors import ConnectionDeadlineExceeded
from ._log import format_address, log_limit, log_stage_failed

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see sockserve/__init__.py)
if TYPE_CHECKING:
    from typing import Any, Protocol, final

    from ._access_log import HeldSocket
    from ._connection_info import ProxiedConnections
    from ._stages import Prepared
else:
    Protocol = object  # the protocol here is for type checkers; at run time, a plain class

    def final(cls: type) -> type:
        """typing.final, for type checkers only: it does nothing at run time."""
        return cls


_local = threading.local()


def _stages_module() -> Any:
    """``_stages``, imported on first use (a server without stages never
    loads it) and kept: an import statement per connection costs ~9 k
    instructions even when the module is loaded."""
    global _STAGES
    if _STAGES is None:
        from . import _stages

        _STAGES = _stages
    return _STAGES


_STAGES: Any = None


def current_job() -> Job | None:
    """The job whose handler runs on this thread, if any."""
    job: Job | None = getattr(_local, "job", None)
    return job


def set_current_job(job: Job | None) -> Job | None:
    """Make ``job`` this thread's current job; returns the one it replaces."""
    previous: Job | None = getattr(_local, "job", None)
    _local.job = job
    return previous


def abort_request(request: Any) -> bool:
    """Cut a stream request from another thread; False if it is not a stream.

    shutdown(), not close(): closing a descriptor another thread is blocked on
    could let a new connection reuse the number under that thread's feet.
    """
    if not isinstance(request, socket.socket):
        return False
    try:
        # The plain socket's shutdown, also for a TLS socket: SSLSocket's own
        # drops its SSL object, from under a handler thread that is using it.
        socket.socket.shutdown(request, socket.SHUT_RDWR)
    except OSError:
        pass  # already closed or reset by the client: it is ending anyway
    return True


@final
class CutRequest:
    """A ticket's ``abort`` for a stream request: ``abort_request()`` on the
    job's socket, which a TLS handshake may replace (``Job.replace_request``)."""

    __slots__ = ("request",)

    def __init__(self, request: socket.socket) -> None:
        self.request = request

    def __call__(self, reason: BaseException) -> None:
        abort_request(self.request)


class JobHost(Protocol):
    """What a job needs of its server: the stdlib hook that closes a request,
    the registry of the PROXY headers its stages read, and whether its
    connections' bytes are read from TCP_INFO (``ServerCore._know_edge``)."""

    _tcp_bytes: bool
    _stream_end: bool

    def shutdown_request(self, request: Any) -> None: ...
    def _proxied_connections(self) -> ProxiedConnections: ...


@final
class Job:
    """One admitted request, from dispatch to release: what a concurrency model runs.

    ``ticket`` is None for a request the server did not admit itself (a
    program that calls ``process_request()`` directly): then there is
    nothing to release.
    """

    __slots__ = ("admission", "client_address", "host", "request", "stages", "ticket")

    def __init__(
        self,
        host: JobHost,
        admission: Admission | None,
        ticket: Ticket | None,
        request: Any,
        client_address: Any,
        stages: Sequence[Any] = (),  # byte-stage factories, then the TLS handshake if any (_stages.split_tls)
    ) -> None:
        self.host = host
        self.admission = admission
        self.ticket = ticket
        self.request = request
        self.client_address = client_address
        self.stages = stages
        if ticket is not None and isinstance(request, socket.socket):
            ticket.abort = CutRequest(request)

    def run(self, target: Callable[[Any, Any], object]) -> None:
        """Run the stages, then ``target(request, client_address)``; release the ticket at the end.

        ``target`` is one request (a connection, or a datagram) for the
        metrics; a stream connection's socket is held open through the
        close ``target`` makes, to read how it ended (``_access_log.hold``
        and ``let_go``, inline here: this is the threads' and the pool's
        path, where each Python call is a share of a connection's cost)."""
        previous = set_current_job(self)
        held: socket.socket | None = None
        refs: HeldSocket  # the same socket, seen for the references it counts (see HeldSocket)
        ticket = self.ticket
        try:
            if not self.stages or self.prepare():
                if ticket is not None and self.host._stream_end:
                    request = self.request
                    if isinstance(request, socket.socket):
                        held = request
                        refs = request  # type: ignore[assignment]
                        refs._io_refs += 1  # hold(), inline
                target(self.request, self.client_address)
        finally:
            set_current_job(previous)
            if held is not None:
                if self.host._tcp_bytes:  # let_go(), inline
                    try:
                        ticket.tcp_info = held.getsockopt(socket.IPPROTO_TCP, TCP_INFO_OPT, TCP_INFO_SIZE)  # type: ignore[union-attr]
                    except OSError:
                        pass
                    refs = held  # type: ignore[assignment]
                    refs._io_refs -= 1
                    if refs._closed:
                        refs._real_close()
                else:
                    let_go(held, ticket, False)  # type: ignore[arg-type]  # held only with a ticket
            self.release()

    def prepare(self) -> bool:
        """Run the stages that are left, on this thread; False if they closed the connection.

        The TLS handshake, if the server has TLS, comes last: it replaces
        ``request`` with the TLS socket the handler will use.
        """
        if not self.stages:
            return True
        # Imported here: a server without stages (most) never loads them.
        stages_module = _stages_module()
        StageFailed, run_blocking = stages_module.StageFailed, stages_module.run_blocking  # noqa: N806 - a class
        split_tls, stages_timeout = stages_module.split_tls, stages_module.stages_timeout

        stages, self.stages = self.stages, ()
        deadline = time.monotonic() + stages_timeout(stages)
        if self.ticket is not None and self.ticket.deadline is not None:
            deadline = min(deadline, self.ticket.deadline)
        byte_stages, tls = split_tls(stages)
        if byte_stages:
            try:
                prepared = run_blocking(self.request, byte_stages, self.client_address, deadline)
            except (StageFailed, OSError) as exc:
                log_stage_failed(exc, self.client_address)
                self.stages_failed(exc)
                self.host.shutdown_request(self.request)
                return False
            self.client_address = prepared.client_address
            if "proxy" in prepared.info:
                self.host._proxied_connections().add(
                    self.request, prepared.info["peer_address"], prepared.info["proxy"]
                )
        if tls is not None:
            try:
                tls_socket = tls.run_blocking(self.request, deadline, self.client_address)
            except (StageFailed, OSError) as exc:  # logged by the handshake
                self.stages_failed(exc)
                self.host.shutdown_request(self.request)  # detached: closes nothing, as a user's hook may expect
                return False
            self.replace_request(tls_socket)
        return True

    def prepare_if_ready(self) -> bool | None:
        """Run the byte stages (a PROXY header) now if what the client sent
        already completes them: True once they are done (the TLS handshake,
        if any, is left for ``prepare()``), False if they closed the
        connection, None if more bytes are needed (nothing was consumed:
        call again when the socket is readable, or leave it to ``prepare()``).

        For the forking model, whose child would otherwise read the header:
        run in the parent, they let the per-IP limit count the real client
        (a child's admission is a copy nobody else sees).
        """
        from ._stages import StageFailed, run_available, split_tls

        byte_stages, tls = split_tls(self.stages)
        if not byte_stages:
            return True
        try:
            prepared = run_available(self.request, byte_stages, self.client_address)
        except (StageFailed, OSError) as exc:
            log_stage_failed(exc, self.client_address)
            self.stages_failed(exc)
            self.host.shutdown_request(self.request)
            return False
        if prepared is None:
            return None
        self.stages = () if tls is None else (tls,)
        self._prepared(prepared)
        return True

    def stages_failed(self, exc: BaseException) -> None:
        """The stages closed the connection: why, for its release (the
        client went away, or a stage refused it)."""
        ticket = self.ticket
        if ticket is not None and ticket.closed_by is None:
            ticket.closed_by = "client" if isinstance(exc, ConnectionError) else "refused"

    def _prepared(self, prepared: Prepared) -> None:
        """The byte stages are done: the client they named, and their PROXY header for the handler."""
        self.client_address = prepared.client_address
        if "proxy" in prepared.info:
            self.host._proxied_connections().add(self.request, prepared.info["peer_address"], prepared.info["proxy"])

    def replace_request(self, request: Any) -> None:
        """A TLS handshake replaced the request's socket: cuts and lookups follow it."""
        proxied = getattr(self.host, "_proxied", None)
        if proxied is not None:
            proxied.move(self.request, request)
        self.request = request
        ticket = self.ticket
        if ticket is not None and isinstance(ticket.abort, CutRequest):  # a model's own cut stays
            ticket.abort.request = request

    def release(self) -> None:
        if self.ticket is not None and self.admission is not None:
            self.admission.release(self.ticket)
        proxied = getattr(self.host, "_proxied", None)
        if proxied is not None:
            proxied.discard(self.request)

    def start_deadline_in_child(self) -> None:
        """In a forked child: cut this connection at its deadline, as the
        parent's watchdog would (its threads did not survive the fork)."""
        ticket = self.ticket
        if ticket is None or ticket.deadline is None or ticket.abort is None:
            return
        limit = ticket.deadline - ticket.admitted_at
        request, peer = self.request, self.client_address

        def cut_at_deadline() -> None:
            # The line first: once the socket is cut, the handler ends and
            # the child exits at once, this thread with it.
            exc = ConnectionDeadlineExceeded(limit, peer)
            log_limit(exc)
            ticket.aborted = exc  # why it ended, for the child's metrics and access line
            ticket.closed_by = "server"
            abort_request(request)

        timer = threading.Timer(max(0.0, ticket.deadline - time.monotonic()), cut_at_deadline)
        timer.name = f"sockserve deadline {format_address(peer)}"
        # A daemon: the child ends with os._exit() once its request is done,
        # whether or not the deadline came.
        timer.daemon = True
        timer.start()
