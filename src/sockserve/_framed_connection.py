"""The connection behind a framed handler (``_framed``): its stages and TLS
handshake, in the reactor; its reading and writing, in the reactor or on the
worker that holds it; its requests, one at a time, on workers; and its end.

With TLS, the handshake is the last stage (``_edge_stages``), stepped by the
reactor without blocking, so a client that stalls it holds no worker; after
it the connection reads and writes through the non-blocking
``ssl.SSLSocket``. Three things differ from a plain socket there: an SSL
call that cannot go on says so with ``SSLWantReadError`` or
``SSLWantWriteError``, and either may come from either direction (a
renegotiation, a TLS 1.3 key update), so what a read or a write waits for
is kept per direction (``_read_wait``, ``_flush_wait``); decrypted bytes can
stay in the SSL object, where epoll does not see them, so a read takes them
all (``pending()``) before the connection waits again; and OpenSSL forbids
two threads in one SSL object at once, so every SSL call on the connection
is made under ``_lock`` (each is non-blocking: the lock is never held
across a wait).
"""

from __future__ import annotations

import collections
import select
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from ._access_log import tcp_bytes
from ._errors import ConnectionDeadlineExceeded, IdleTimeoutExpired, LimitExceeded
from ._framed import FramedRequestHandler
from ._limits import limits_of
from ._log import log_limit, log_stage_failed
from ._pipeline import set_current_job
from ._reactor import READABLE, WRITABLE
from ._stages import StageFailed, StageRunner, consume, peek, split_tls, stages_timeout

if TYPE_CHECKING:
    import ssl

    from ._admission import Ticket
    from ._connection_info import ConnectionInfo
    from ._pipeline import Job
    from ._reactor import Reactor, Timer
    from ._stages import SocketStage
    from .protocol.framers import Framer

# Requests framed and not yet handled, per connection, before reading pauses:
# a client that pipelines faster than the handler answers waits in the kernel.
MAX_PENDING_REQUESTS = 16

# Requests of one connection a worker handles in a row before the other
# connections waiting for a worker get theirs.
TURN_REQUESTS = 8

# How long a worker that has answered a request waits for the client's next
# one before it gives the connection back to the reactor, when no other
# connection waits for a worker: a client in a request-reply exchange sends
# its next request a round trip after the reply (tens of microseconds on a
# local network), and catching it here saves two thread hand-overs.
LINGER_SECONDS = 0.002

# Requests a worker may take by lingering in one turn: past that the
# connection goes back to the reactor even when nobody seems to wait, so no
# client keeps a worker for itself while the reactor, one thread among the
# workers, has yet to see the others.
LINGER_REQUESTS = 64

# A connection's requests are added to the metrics by this many at a time
# while it lasts (the rest when it ends): see FramedConnection._count_requests.
REQUESTS_BATCH = 64

# Bytes read from a connection at a time, into the reading thread's own buffer.
READ_SIZE = 64 * 1024

_thread_buffers = threading.local()


def _read_buffer() -> memoryview:
    """This thread's read buffer (the reactor's or a worker's), kept for the thread's life."""
    buffer: memoryview | None = getattr(_thread_buffers, "buffer", None)
    if buffer is None:
        buffer = _thread_buffers.buffer = memoryview(bytearray(READ_SIZE))
    return buffer


class FramedHost(Protocol):
    """What a framed connection needs of the pool it runs on."""

    def queue_work(self, work: Callable[[], object]) -> None: ...
    def others_waiting(self) -> bool: ...
    def handle_error(self, request: Any, client_address: Any, ticket: Any = None) -> None: ...
    def connection_ended(self, connection: FramedConnection) -> None: ...


class FramedConnection:
    """One connection of a framed handler: its reading and writing, its
    requests on workers, and its end.

    Who reads: the reactor, while no worker holds the connection; the worker
    that holds it, during its turn (the reactor is not armed for reading
    then). Interest is one-shot (see ``_reactor``): whoever changes what the
    connection waits for re-arms it, under ``_lock``, which guards everything
    the reactor and the workers share, and every SSL call (see the module's
    docstring). The stages and the TLS handshake run on the reactor's
    thread only: no worker takes the connection before they are done.
    """

    __slots__ = (
        "_busy",
        "_deadline_timer",
        "_discard",
        "_ending",
        "_fd",
        "_finished",
        "_flush_wait",
        "_framed_any",
        "_framer",
        "_idle_timer",
        "_last_read",
        "_last_request",
        "_lock",
        "_notes",
        "_outbox",
        "_outbox_size",
        "_paused",
        "_poller",
        "_prepare_by",
        "_read_first",
        "_read_wait",
        "_registered",
        "_released",
        "_requests",
        "_stages",
        "_stages_timer",
        "_started",
        "_tcp_bytes",
        "_ticket_abort",
        "_tls",
        "_tls_socket",
        "aborted",
        "closed",
        "handler",
        "host",
        "job",
        "limits",
        "reactor",
        "sock",
    )

    def __init__(
        self,
        host: FramedHost,
        reactor: Reactor,
        job: Job,
        handler_class: type[FramedRequestHandler],
        server: Any,
        stages: Sequence[Any],
    ) -> None:
        self.host = host
        self.reactor = reactor
        self.job = job
        self.sock: socket.socket = job.request
        self._fd = self.sock.fileno()
        self.limits = limits_of(server)
        # Read as it ends, where something wants them (the access log, or
        # count_bytes): why it closed, and its TCP_INFO.
        self._tcp_bytes: bool = getattr(server, "_tcp_bytes", False)
        self._notes: bool = job.admission is not None and job.admission.settle_all
        self.handler = handler_class(job.client_address, server, self)
        byte_stages, self._tls = split_tls(stages) if stages else ((), None)
        self._stages = StageRunner(byte_stages, job.client_address) if byte_stages else None
        self._tls_socket: ssl.SSLSocket | None = None  # once the handshake began: reads and writes go through it
        self._framer: Framer | None = None if stages else self.handler.make_framer()
        # What the next read and the next write wait for: the socket's own
        # direction, unless an SSL call asked for the other one (a handshake
        # step waits for either; see the module's docstring).
        self._read_wait = READABLE
        self._flush_wait = WRITABLE
        # The stages (the TLS handshake among them) have a deadline of their
        # own, from admission: the connection's, if that comes first.
        self._prepare_by = 0.0
        if stages:
            self._prepare_by = time.monotonic() + stages_timeout(stages)
            ticket = job.ticket
            if ticket is not None and ticket.deadline is not None:
                self._prepare_by = min(self._prepare_by, ticket.deadline)
        self._stages_timer: Timer | None = None
        self._lock = threading.Lock()
        self._requests: collections.deque[bytes] = collections.deque()
        self._outbox: collections.deque[bytes] = collections.deque()
        self._outbox_size = 0
        self._busy = False  # a worker holds it, or it waits for one
        self._started = False  # setup() ran
        self._finished = False  # finish() ran
        self._ending = False  # nothing more is read: it ends once its work and replies are done
        self._framed_any = False  # a complete request has come
        self._read_first = False  # the worker's turn begins with a read (the reactor saw bytes)
        self._registered = False  # in the reactor's epoll (start(), or _join() after a first turn at accept)
        self._last_request = False  # draining: it ends once its next request is framed
        self._discard = False  # and what is framed but not handled is dropped (an error, a cut, close())
        self._paused = False  # reading paused: too much waits (requests, or replies the client does not read)
        self._last_read = time.monotonic()
        self._idle_timer: Timer | None = None
        self._deadline_timer: Timer | None = None
        self._released = False
        self._poller: select.poll | None = None  # a worker's, to wait for the next request in its turn
        self.aborted: BaseException | None = None
        self.closed = False
        self._ticket_abort: Callable[[BaseException], object] | None = None
        if job.ticket is not None:
            job.ticket.abort = self._ticket_abort = lambda reason: reactor.call_soon(lambda: self.abort(reason))

    # -- arming --------------------------------------------------------------------

    def _arm_locked(self) -> None:
        """Arm the connection for what it waits for now (the caller holds ``_lock``)."""
        if self.closed or not self._registered:
            return  # not in the reactor yet (a first turn at accept): _join() arms it
        events = 0
        if not self._busy and not self._ending and not self._paused:
            events |= self._read_wait
        if self._outbox:
            events |= self._flush_wait
        try:
            self.reactor.arm(self._fd, events)
        except (OSError, ValueError):
            pass  # the reactor closed (the server is closing): nothing waits for events any more

    def _arm(self) -> None:
        with self._lock:
            self._arm_locked()

    # -- on the reactor's thread ----------------------------------------------------

    def start(self) -> None:
        """Take the connection into the reactor."""
        self._registered = True
        try:
            self.sock.setblocking(False)
            self.reactor.register(self._fd, READABLE, self._on_events)
        except (OSError, ValueError):
            self._close_now()
            return
        self._start_idle_timer()
        self.start_deadline_timer()
        if self._framer is None:  # stages to run first
            self._stages_timer = self.reactor.call_later(
                max(0.0, self._prepare_by - time.monotonic()), self._stages_expired
            )

    def _join(self) -> None:
        """A connection whose first turn a worker took at accept
        (``take_first_turn``) lives on after it: into the reactor, armed for
        what it waits for now. Asked once per turn that ends outside the
        reactor: a drain or a cut may give it a second such turn before the
        first asking is answered."""
        with self._lock:
            if self.closed:
                return  # cut meanwhile, and closed by whoever cut it
            first = not self._registered
            self._registered = True
        if first:
            try:
                self.reactor.register(self._fd, 0, self._on_events)
            except (OSError, ValueError):
                self._close_now()
                return
            self._start_idle_timer()
        self.after_work()

    def _start_idle_timer(self) -> None:
        idle = self.limits.idle_timeout
        if idle is not None:
            self._idle_timer = self.reactor.call_later(idle, self._check_idle)

    def start_deadline_timer(self) -> None:
        """Cut the connection at its deadline, if it has one (on the reactor's thread)."""
        ticket = self.job.ticket
        if ticket is None or ticket.deadline is None:
            return
        with self._lock:  # a worker may close it meanwhile (a first turn): then no timer outlives it
            if self.closed:
                return
            self._deadline_timer = self.reactor.call_later(
                max(0.0, ticket.deadline - time.monotonic()), self._deadline_passed
            )

    def _on_events(self, events: int) -> None:
        if self.closed:
            return
        # READABLE also stands for a hang-up or an error (see _reactor): it
        # always calls for a read, whatever the read waited for.
        if events & (WRITABLE | self._flush_wait):
            self._flush()
        if events & (READABLE | self._read_wait) and not self._busy and not self.closed:
            if self._framer is None:
                self._prepare()
            elif self._hand_over_to_read():
                return
            else:
                self._read(_read_buffer())
        self._schedule()
        self._arm()

    def _hand_over_to_read(self) -> bool:
        """A connection between requests has bytes: a worker reads them, frames
        and handles them in one turn. The reactor then does no system call
        for the request (no read, no re-arming: the event disarmed the
        connection), so it seldom lets go of the interpreter, and one
        thread does the work of a request from its first byte to its reply.
        False where the reactor reads itself: the stages are not done, or
        requests are already queued."""
        with self._lock:
            if self._framer is None or self._requests or self._outbox or self._ending or self._busy:
                return False
            self._busy = True
            self._read_first = True
        self.host.queue_work(self.work)
        return True

    def _read(self, buffer: memoryview) -> bool:
        """Read what the client has sent, without waiting (the socket is
        non-blocking), on whichever thread holds the connection, into the
        framer (the stages are done: ``_prepare``). True if something came
        (bytes, or the end)."""
        if self._tls_socket is not None:
            return self._read_tls(buffer)
        try:
            count = self.sock.recv_into(buffer)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            self._vanished()
            return True
        self._last_read = time.monotonic()
        self._frame(bytes(buffer[:count]), count == 0)
        return True

    def _read_tls(self, buffer: memoryview) -> bool:
        """``_read()`` through TLS: under ``_lock``, and every decrypted byte
        the SSL object holds, which epoll would never report (``pending()``)."""
        from ssl import SSLWantReadError, SSLWantWriteError

        tls = self._tls_socket
        assert tls is not None
        chunks: list[bytes] = []
        end = vanished = False
        with self._lock:
            self._read_wait = READABLE
            try:
                while True:
                    count = tls.recv_into(buffer)
                    if count == 0:
                        end = True  # close_notify, or the client closed without it
                        break
                    chunks.append(bytes(buffer[:count]))
                    if not tls.pending():
                        break
            except SSLWantReadError:
                pass
            except SSLWantWriteError:
                # OpenSSL must write before it reads on (an answer to a key
                # update, a renegotiation): the next read waits for the socket
                # to take it, not for more bytes.
                self._read_wait = WRITABLE
            except OSError:  # ssl.SSLError is one: a bad record, or a reset
                vanished = True
        if vanished:
            self._vanished()
            return True
        if not chunks and not end:
            return False
        self._last_read = time.monotonic()
        if chunks:
            self._frame(chunks[0] if len(chunks) == 1 else b"".join(chunks), False)
        if end:
            self._frame(b"", True)
        return True

    def _frame(self, data: bytes, end_of_input: bool) -> None:
        """Feed the framer (on whichever thread holds the connection) and queue the requests."""
        framer = self._framer
        assert framer is not None
        framer.feed(b"" if end_of_input else data)
        if end_of_input:
            if self._notes:
                self._closing_for("client")
            with self._lock:
                self._ending = True  # what the client sent is handled, then the connection ends
        self._take_requests()

    # -- the stages and the TLS handshake, on the reactor's thread -------------------

    def _prepare(self) -> None:
        """Take the stages (a PROXY header), then the TLS handshake, as far as
        they go without waiting; once both are done, the handler's framer
        takes the bytes that follow."""
        if self._stages is not None and not self._run_stages():
            return
        if self._tls is not None and not self._shake_hands():
            return
        if self._stages_timer is not None:
            self._stages_timer.cancel()
            self._stages_timer = None
        # What the client sent behind the stages is still in the socket (the
        # stages peek, and the handshake reads record by record): the next
        # readiness hands it to a worker, as for any request.
        self._framer = self.handler.make_framer()

    def _run_stages(self) -> bool:
        """Feed the byte stages what the client sent; True once they are done.

        Bytes are peeked, and only the stages' own are consumed: what follows
        them (the first record of a TLS handshake, a request) stays in the
        socket for whoever reads it next."""
        runner = self._stages
        assert runner is not None
        sock = self.sock
        try:
            data = peek(sock)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            data = b""  # reset: to the stages, the client finished sending
        self._last_read = time.monotonic()
        step = runner.feed(data)
        if step.send:
            self.send(step.send)
        try:
            consume(sock, step.consumed)
        except OSError:
            step.failed = step.failed or "the client went away during the stages"
        if step.failed is not None:
            log_stage_failed(runner.failure(step.failed), runner.prepared.client_address)
            self._close_now()
            return False
        if not step.done:
            return False
        self._stages = None
        prepared = runner.prepared
        self.job.client_address = self.handler.client_address = prepared.client_address
        if "proxy" in prepared.info:  # for the handler's connection_info
            self.job.host._proxied_connections().add(sock, prepared.info["peer_address"], prepared.info["proxy"])
        return True

    def _shake_hands(self) -> bool:
        """Step the TLS handshake as far as it goes without waiting; True once
        it is done. A failure is logged once (``failed()``, which counts it) and
        closes the connection, as a failed stage does."""
        tls = self._tls
        assert tls is not None
        tls_socket = self._tls_socket
        try:
            if tls_socket is None:
                if self._outbox:  # a stage's reply the client has not taken: it cannot go out under TLS
                    raise ConnectionResetError("the client did not read what the stages sent")
                tls_socket = self._start_tls(tls)
                if tls_socket is None:
                    return False  # cut meanwhile
            self._last_read = time.monotonic()
            wanted = tls.step(tls_socket)
        except OSError as exc:  # ssl.SSLError is one
            tls.failed(exc, self.job.client_address)
            self._close_now()
            return False
        if wanted:
            self._read_wait = READABLE if wanted == select.POLLIN else WRITABLE
            return False
        self._tls = None
        self._read_wait = READABLE
        return True

    def _start_tls(self, tls: SocketStage) -> ssl.SSLSocket | None:
        """Wrap the socket for the handshake: from now on the connection
        reads, writes and closes through TLS. None if a cut came meanwhile."""
        tls_socket: ssl.SSLSocket = tls.start(self.sock)  # the plain socket is detached
        self.sock = self._tls_socket = tls_socket
        ticket = self.job.ticket
        self.job.replace_request(tls_socket)  # the PROXY header's entry follows the new socket
        # This connection is cut on the reactor's thread (abort()), never by a
        # shutdown from whichever thread cuts, which would race the reactor's
        # or a worker's SSL call: replace_request() leaves that cut in place.
        # A cut that came while the socket was being wrapped is honoured here.
        if ticket is not None and ticket.aborted is not None:
            self.abort(ticket.aborted)
            return None
        return tls_socket

    def _stages_expired(self) -> None:
        """The stages' deadline passed before they (or the handshake) were done: close."""
        self._stages_timer = None
        if self.closed or self._framer is not None:
            return
        client = self.job.client_address
        if self._stages is None and self._tls is not None:
            self._tls.failed(TimeoutError(), client)  # logged and counted as a failed handshake
        else:
            log_stage_failed(StageFailed("the connection's stages did not finish in time", client), client)
        self._close_now()

    def _take_requests(self) -> None:
        """Move complete requests from the framer to the queue, up to its cap;
        the others wait in the framer (reading pauses meanwhile)."""
        framer = self._framer
        if framer is None or self._discard:
            return
        room = MAX_PENDING_REQUESTS - len(self._requests)
        taken: list[bytes] = []
        try:
            while len(taken) < room:
                request = framer.next_request()
                if request is None:
                    break
                taken.append(request)
        except LimitExceeded as exc:
            log_limit(exc, self.job.client_address)
            if self._notes or isinstance(exc, IdleTimeoutExpired):
                self._closing_for("idle_timeout" if isinstance(exc, IdleTimeoutExpired) else "limit")
            self._stop_and_discard()
        except Exception:
            self.host.handle_error(self.sock, self.job.client_address, self.job.ticket)  # a framer's bug
            self._stop_and_discard()
        with self._lock:
            if taken and not self._discard:
                self._requests.extend(taken)
                self._framed_any = True
                if self._last_request:
                    self._ending = True
            if len(self._requests) >= MAX_PENDING_REQUESTS:
                self._paused = True

    def _stop_and_discard(self) -> None:
        with self._lock:
            self._discard_locked(replies=False)

    def _discard_locked(self, *, replies: bool) -> None:
        """Read nothing more and drop the requests not handled yet, and, with
        ``replies``, the replies not sent yet (the caller holds ``_lock``)."""
        self._discard = True
        self._ending = True
        self._requests.clear()
        if replies:
            self._outbox.clear()
            self._outbox_size = 0

    def _schedule(self) -> None:
        """Decide what the connection does next: hand it to a worker (a request
        to handle, or finish() to run), close it (it is ending and nothing is
        left to do or send), or wait (for bytes, a worker, or its replies to
        leave). On the reactor's thread."""
        self._maybe_resume()
        with self._lock:
            if self._busy:
                return
            if self._request_due() or self._finish_due():
                self._busy = True
                action = "work"
            elif self.closed or (self._ending and (not self._outbox or self.aborted is not None)):
                action = "close"
            else:
                return
        if action == "work":
            self.host.queue_work(self.work)
        else:
            self._close_now()

    def _request_due(self) -> bool:
        # No request starts while its replies would pile up on top of unread ones.
        return (
            bool(self._requests)
            and self.aborted is None
            and not self.closed
            and self._outbox_size <= self.handler.write_limit
        )

    def _finish_due(self) -> bool:
        return self._ending and not self._requests and self._started and not self._finished

    def _maybe_resume(self) -> None:
        """The backlog went down: take the requests the framer holds, and read again if there is room."""
        with self._lock:
            if not self._paused or self._busy or self.closed:
                return
            if len(self._requests) >= MAX_PENDING_REQUESTS // 2 or self._outbox_size > self.handler.write_limit:
                return
        self._take_requests()
        with self._lock:
            if len(self._requests) < MAX_PENDING_REQUESTS and self._outbox_size <= self.handler.write_limit:
                self._paused = False

    def _flush(self) -> None:
        if self._tls_socket is not None:
            self._flush_tls()
            return
        error: OSError | None = None
        with self._lock:
            while self._outbox:
                chunk = self._outbox[0]
                try:
                    sent = self.sock.send(chunk, socket.MSG_DONTWAIT)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:
                    error = exc
                    break
                self._outbox_size -= sent
                if sent < len(chunk):
                    self._outbox[0] = chunk[sent:]
                    break
                self._outbox.popleft()
        if error is not None:
            self._vanished()

    def _flush_tls(self) -> None:
        """``_flush()`` through TLS. A write that would block is retried with
        the same bytes, as OpenSSL requires: the chunk stays first in the
        outbox until it has all gone."""
        from ssl import SSLWantReadError, SSLWantWriteError

        tls = self._tls_socket
        assert tls is not None
        error = False
        with self._lock:
            while self._outbox:
                chunk = self._outbox[0]
                try:
                    sent = tls.send(chunk)
                except SSLWantWriteError:
                    self._flush_wait = WRITABLE
                    break
                except SSLWantReadError:  # OpenSSL must read first (a renegotiation)
                    self._flush_wait = READABLE
                    break
                except OSError:
                    error = True
                    break
                self._flush_wait = WRITABLE
                self._outbox_size -= sent
                if sent < len(chunk):
                    self._outbox[0] = chunk[sent:]
                    break
                self._outbox.popleft()
        if error:
            self._vanished()

    def after_work(self) -> None:
        """A worker's turn ended with something for the reactor to do."""
        self._schedule()
        self._arm()

    def _check_idle(self) -> None:
        self._idle_timer = None
        idle = self.limits.idle_timeout
        if self.closed or idle is None:
            return
        with self._lock:
            waiting = not self._busy and not self._requests and not self._outbox and not self._ending
        left = self._last_read + idle - time.monotonic()
        if not waiting or left > 0:
            self._idle_timer = self.reactor.call_later(max(left, 0.01), self._check_idle)
            return
        log_limit(IdleTimeoutExpired(idle, self.job.client_address))
        self._closing_for("idle_timeout")
        with self._lock:
            self._ending = True
        self._schedule()
        self._arm()

    def _deadline_passed(self) -> None:
        self._deadline_timer = None
        ticket = self.job.ticket
        if ticket is None or ticket.deadline is None or self.closed:
            return
        exc = ConnectionDeadlineExceeded(ticket.deadline - ticket.admitted_at, self.job.client_address)
        log_limit(exc)  # first: the cut ends the connection
        ticket.cut(exc)

    def drain(self) -> None:
        """The server stops: the request in flight and the replies queued
        finish, then the connection ends. One between requests reads nothing
        more; one that has sent nothing yet, or part of a request, may still
        complete that request (within the grace period): accepting the
        connection promised its client that much, and a client that sent its
        request just as the drain began must not lose it."""
        if self._notes:
            self._closing_for("drain")
        with self._lock:
            framer = self._framer
            if self._framed_any and (framer is None or framer.buffered == 0):
                self._ending = True
            else:
                self._last_request = True
        self._schedule()
        self._arm()

    def abort(self, reason: BaseException) -> None:
        """Cut the connection now (a limit, the end of a grace period): what
        is queued is dropped; finish() still runs if setup() did, as a classic
        handler's does."""
        if self.aborted is not None or self.closed:
            return
        with self._lock:
            self.aborted = reason
            self._discard_locked(replies=True)
        try:
            # A worker reading or sending on it now fails at once. The
            # socket's own shutdown(), not an SSLSocket's, which drops its
            # SSL object under whoever is in an SSL call.
            socket.socket.shutdown(self.sock, socket.SHUT_RDWR)
        except OSError:
            pass
        self._schedule()
        self._arm()

    def _vanished(self) -> None:
        """The client reset the connection: nothing more can be read or written."""
        if self._notes:
            self._closing_for("client")
        with self._lock:
            self._discard_locked(replies=True)

    def _close_now(self) -> None:
        """Close the socket (once), and count the connection out once no worker holds it."""
        with self._lock:
            first = not self.closed
            self.closed = True
            busy = self._busy
        if first:
            if self._registered:
                self.reactor.unregister(self._fd)
            for timer in (self._idle_timer, self._deadline_timer, self._stages_timer):
                if timer is not None:
                    timer.cancel()
            if self._framer is None and self._notes:
                self._closing_for("refused")  # its stages failed, or did not finish in time
            if self._tcp_bytes:
                self._read_bytes()
            if self._tls_socket is not None:
                with self._lock:  # no other SSL call at once
                    self._close_tls(self._tls_socket)
            else:
                if self.aborted is None:
                    try:
                        self.sock.shutdown(socket.SHUT_WR)  # the replies end cleanly, even with input unread
                    except OSError:
                        pass
                self.sock.close()
        if not busy:
            self._count_out()

    def _close_tls(self, tls: ssl.SSLSocket) -> None:
        """Close through TLS (the caller holds ``_lock``): a session whose
        handshake was done ends with a close_notify, as far as the socket
        takes it without waiting, so the client can tell the end of the
        replies from a cut."""
        if self.aborted is None:
            if self._tls is None:
                try:
                    tls.unwrap()  # sends close_notify; the client's answer is not waited for
                except (OSError, ValueError):
                    pass
            try:
                tls.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        tls.close()

    def closed_without_reactor(self) -> None:
        """The reactor is gone (the server closed): close and count out from here."""
        with self._lock:
            first = not self.closed
            self.closed = True
        if first:
            if self._tcp_bytes:
                self._read_bytes()
            self.sock.close()
        self._count_out()

    def _closing_for(self, why: str) -> None:
        """Why the connection ends, for its release (the first reason stays).
        Only a timeout counts; the other reasons are for the access log, and
        are noted only while it is on (``_notes``): a reason sends the
        release down its slower path."""
        ticket = self.job.ticket
        if ticket is not None and ticket.closed_by is None:
            ticket.closed_by = why

    def _read_bytes(self) -> None:
        """Its bytes, from TCP_INFO, onto its ticket, just before it closes."""
        ticket = self.job.ticket
        if self._tcp_bytes and ticket is not None:
            tcp_bytes(self.sock, ticket)

    def _count_out(self) -> None:
        with self._lock:
            if self._released:
                return
            self._released = True
        ticket = self.job.ticket
        if ticket is not None and ticket.requests > ticket.counted:
            self._count_requests(ticket)  # the rest of its requests
        if self.job.ticket is not None:
            self.job.ticket.abort = None
        self._ticket_abort = None
        self.host.connection_ended(self)

    # -- on the serve loop's thread, then on a worker --------------------------------

    def take_first_turn(self) -> None:
        """On the serve loop's thread, before anyone else sees the connection:
        the client's first bytes are there already, so a worker takes the
        connection's first turn (``first_turn()``, queued by the caller)
        without it passing through the reactor first. The reactor has to
        wake and win the interpreter before it can hand a connection on
        (the latency traced in issue 11); and a connection that ends within
        the turn (connection per request) then never involves the reactor at
        all, where it took two wake-ups of it before (start, then close)."""
        self._busy = True
        self._read_first = True

    def first_turn(self) -> None:
        try:
            self.sock.setblocking(False)
        except OSError:
            pass  # closed meanwhile (cut): the turn's first read reports it
        self.work()

    # -- on a worker ---------------------------------------------------------------

    def work(self) -> None:
        """A worker's turn: the queued requests (the first time, after
        setup()), then, while nobody else waits for a worker, the client's
        next requests as they come (``LINGER_SECONDS``, ``LINGER_REQUESTS``),
        then finish() if the connection ends.

        The turn ends without a word to the reactor unless the reactor has
        something to do (reading paused, the connection ending or cut): the
        worker re-arms the connection itself. In a request-reply exchange a
        request then costs no thread hand-over at all.
        """
        # The loop below is the framed pool's hot path: one pass per request
        # in a request-reply exchange. It is written flat (conditions inline,
        # methods looked up once) because each Python call here is a
        # measurable share of a request's cost (docs/benchmarks.md).
        previous = set_current_job(self.job)
        handled = 0
        try:
            lock = self._lock
            requests = self._requests
            handle_request = self.handler.handle_request
            write_limit = self.handler.write_limit
            others_waiting = self.host.others_waiting
            buffer = _read_buffer()
            if self._read_first:
                self._read_first = False
                self._read(buffer)
            while True:
                with lock:  # _request_due(), inline
                    due = requests and self.aborted is None and not self.closed and self._outbox_size <= write_limit
                    request = requests.popleft() if due else None
                if request is not None:
                    if not self._started:
                        self._run_request(request)  # setup() first
                    else:
                        try:
                            handle_request(request)
                        except Exception:
                            self.host.handle_error(self.sock, self.job.client_address, self.job.ticket)
                            self._stop_and_discard()  # the end of this turn tells the reactor
                    handled += 1
                    if handled >= TURN_REQUESTS and others_waiting():
                        break  # the others' turn
                    continue
                if handled < LINGER_REQUESTS and self._may_linger(others_waiting) and self._read_in_turn(buffer):
                    continue
                break
            with lock:
                finish = self._finish_due()
                if finish:
                    self._finished = True
            if finish:
                self._run_hook(self.handler.finish)
        finally:
            set_current_job(previous)
            if handled:
                # On the ticket, for the access log and its release; in the
                # metrics by REQUESTS_BATCH while it lasts (inline: a turn is
                # often one request, and a call is a share of it).
                ticket = self.job.ticket
                if ticket is not None:
                    ticket.requests += handled
                    if ticket.requests - ticket.counted >= REQUESTS_BATCH:
                        self._count_requests(ticket)
            self._end_turn()

    def _count_requests(self, ticket: Ticket) -> None:
        """Count the requests on the ticket so far for the metrics: every
        ``REQUESTS_BATCH`` requests, so that a long-lived connection's show
        while it lasts, without a lock (one turn is often one request: a
        lock per turn cost 2% of a request on pingpong_1x64), and the rest
        as it ends."""
        admission = self.job.admission
        if admission is not None:
            requests = ticket.requests
            admission.request_counts.append(requests - ticket.counted)  # atomic; its fold() adds them up
            ticket.counted = requests

    def _end_turn(self) -> None:
        if not self._registered:
            self._end_first_turn()
            return
        with self._lock:
            requeue = self._request_due()
            if not requeue:
                self._busy = False
                notify = self._paused or self._ending or self.aborted is not None or self.closed
                if not notify:
                    self._arm_locked()  # back to the reactor, without waking it
        if requeue:
            self.host.queue_work(self.work)
        elif notify and not self.reactor.call_soon(self.after_work):
            self.closed_without_reactor()  # the server closed meanwhile: nobody else will

    def _end_first_turn(self) -> None:
        """The end of a turn of a connection the reactor has not seen yet
        (``take_first_turn``): the worker closes one that is done (as
        ``_schedule()`` would: it ended, and nothing is left to send); any
        other goes into the reactor (``_join``), for its next requests,
        its replies, its idle timeout."""
        joined = False
        with self._lock:
            # finish() may have come due since the turn looked (a drain):
            # another turn runs it, as the reactor would have queued one.
            requeue = self._request_due() or self._finish_due()
            if not requeue:
                self._busy = False
                done = self.closed or (self._ending and (not self._outbox or self.aborted is not None))
                if not done and not self._paused and not self._ending and self.limits.idle_timeout is None:
                    # Waiting only for the client (or for its replies to
                    # leave): registered from here, as _end_turn() arms, so
                    # a running reactor is not woken for it. An idle timer
                    # is the reactor's to start: then _join() does it all.
                    self._registered = True
                    events = READABLE | (WRITABLE if self._outbox else 0)
                    try:
                        joined = self.reactor.register_running(self._fd, events, self._on_events)
                    except (OSError, ValueError):
                        joined = False  # closed meanwhile: _join() finds out
                    self._registered = joined
        if requeue:
            self.host.queue_work(self.work)
        elif done:
            self._close_now()
        elif joined:
            return
        elif not self.reactor.call_soon(self._join):
            self.closed_without_reactor()  # the server closed meanwhile: nobody else will

    def _may_linger(self, others_waiting: Callable[[], bool]) -> bool:
        with self._lock:
            quiet = not self._ending and not self._discard and self.aborted is None and not self._paused
            quiet = quiet and self._outbox_size <= self.handler.write_limit and self._framer is not None
        return quiet and not others_waiting()

    def _read_in_turn(self, buffer: memoryview) -> bool:
        """Read the client's next bytes on this worker, waiting up to
        ``LINGER_SECONDS`` for them; True if something came (requests, or the end)."""
        poller = self._poller
        if poller is None:
            poller = self._poller = select.poll()
            poller.register(self._fd, select.POLLIN)
        # Wait first: right after a reply, the next request has not come yet,
        # and a read that fails costs an exception.
        if not poller.poll(LINGER_SECONDS * 1000.0):
            return False
        return self._read(buffer)

    def _run_request(self, request: bytes) -> None:
        if not self._started:
            self._started = True
            if not self._run_hook(self.handler.setup):
                return
        self._run_hook(self.handler.handle_request, request)

    def _run_hook(self, hook: Callable[..., object], *args: Any) -> bool:
        try:
            hook(*args)
        except Exception:
            self.host.handle_error(self.sock, self.job.client_address, self.job.ticket)
            self._stop_and_discard()  # the end of this turn tells the reactor
            return False
        return True

    # -- from the handler, on a worker ----------------------------------------------

    def send(self, data: bytes) -> None:
        with self._lock:
            if self.closed or self.aborted is not None:
                raise ConnectionAbortedError(f"the connection is closed ({self.aborted or 'ended'})")
            if not self._outbox:
                tls = self._tls_socket
                if tls is not None:
                    sent = self._send_tls(tls, data)
                else:
                    try:
                        sent = self.sock.send(data, socket.MSG_DONTWAIT)
                    except (BlockingIOError, InterruptedError):
                        sent = 0
                if sent == len(data):
                    return
                data = data[sent:]
            self._outbox.append(data)
            self._outbox_size += len(data)
            if self._outbox_size > self.handler.write_limit:
                self._paused = True
            if len(self._outbox) == 1:
                self._arm_locked()  # the reactor writes the rest when the socket takes it

    def _send_tls(self, tls: ssl.SSLSocket, data: bytes) -> int:
        """Send through TLS what the socket takes now (the caller holds
        ``_lock``): all of ``data``, or nothing, and then the outbox keeps it
        for ``_flush_tls`` to write again as it is.

        Raises:
            ConnectionError: the TLS session failed.
        """
        from ssl import SSLError, SSLWantReadError, SSLWantWriteError

        if not data:
            return 0  # OpenSSL refuses an empty write
        try:
            sent = tls.send(data)
        except SSLWantWriteError:
            return 0
        except SSLWantReadError:  # OpenSSL must read first (a renegotiation)
            self._flush_wait = READABLE
            return 0
        except SSLError as exc:
            raise ConnectionResetError(f"the TLS session failed ({exc})") from exc
        self._flush_wait = WRITABLE
        return sent

    def close_after_sending(self) -> None:
        self._stop_and_discard()  # the end of this turn tells the reactor

    def connection_info(self) -> ConnectionInfo:
        """What the handler's ``connection_info`` answers: the real client,
        the PROXY header the stages read, and the TLS session (under
        ``_lock``: reading it asks the SSL object)."""
        from ._connection_info import connection_info

        with self._lock:
            return connection_info(self.handler.server, self.sock, self.job.client_address)
