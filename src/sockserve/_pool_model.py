"""The pool as a concurrency model: workers for handlers, and a reactor where
stream connections wait without a worker.

- A classic handler's connection waits in the reactor until it has sent its
  first byte (and passed its stages, run here without blocking); then it
  waits for a worker, which runs the handler to the end, as before. One
  whose first bytes are there when it is accepted (and has no stages) goes
  to the workers at once. A connection that sends nothing never takes a
  thread.
- A framed handler's connection lives in the reactor, and a worker takes it
  only for one complete request at a time (``_framed_connection``). One
  whose first bytes are there when it is accepted (and has no stages) has
  its first turn on a worker at once, and enters the reactor only if it
  lives on after that turn: a connection per request never wakes it.

The serve loop stops accepting when more connections are ready than there
are workers: then overload waits in the kernel's backlog, not in memory.

A datagram pool has no reactor, and while ``serve_forever()`` runs, its
serve loop does not receive either: the idle workers do
(``DatagramReceivers``). They wait on one epoll in which the socket is
armed one-shot, so the kernel wakes one of them per datagram; that worker
takes it through the server's own hooks (``get_request()``,
``verify_request()``, ``process_request()``, in the stdlib's order, on
that worker rather than on the serve loop's thread), arms the socket again
for the next idle worker, and runs the handler itself. A
datagram costs the one wake-up the stdlib's sequential loop pays too;
handing each from the serve loop to a worker cost a second wake-up and a
lock-and-condition exchange on both sides. A handler that blocks keeps only
its own worker: the others go on receiving, and another worker is called in
whenever none is left waiting, up to ``pool_max_workers``; beyond that,
datagrams wait in the socket's buffer, as connections wait in the backlog.

Weighed and left: workers blocked in ``recvfrom()`` on the shared socket
would need no epoll, but nothing could wake them for a stop short of
sending the socket datagrams of its own (and under load the buffer drops
those); leader/followers (the receiver promotes a follower before it
handles) pays a wake-up per datagram for the promotion, the cost removed
here; handling inline on the serve loop while no worker is busy stops all
receiving as soon as that handler blocks. ``handle_request()`` keeps the
hand-over to a worker.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._framed import is_framed_handler
from ._framed_connection import FramedConnection
from ._log import format_address, log_stage_failed, logger
from ._model import TicketModel
from ._reactor import READABLE
from ._stages import StageFailed, StageRunner, consume, peek, split_tls, stages_timeout
from ._wakeup import Waker

if TYPE_CHECKING:
    import ssl

    from ._admission import Admission, Ticket
    from ._pipeline import Job
    from ._reactor import Reactor, Timer
    from ._worker_pool import WorkerPool


def _first_byte_in(sock: socket.socket) -> bool:
    """True if a handler reading ``sock`` now would not wait: bytes are
    there, or the client finished or failed (the handler sees which)."""
    try:
        sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        pass  # reset or closed: the handler's first read reports it
    return True


# Longer than any receive and admission takes; see DatagramReceivers.stop().
_HAND_ON_WAIT = 1.0


class DatagramReceivers:
    """The idle workers of a datagram pool, each waiting to receive the next
    datagram and handle it (see the module's docstring).

    One receiver at a time holds the token, from its wake-up until it has
    taken its datagram; it arms the socket again only after letting the
    token go, so a receiver woken by that arming never finds the token
    taken by the one that armed. Whoever finds it taken goes back to
    waiting: the holder arms the socket again when it is done.
    """

    def __init__(self, server: Any, pool: WorkerPool, admission: Admission) -> None:
        self.server = server
        self.pool = pool
        self.admission = admission
        self.active = False  # a serve loop runs, and its datagrams are the receivers'
        self._serving_thread: int | None = None  # the loop that started them
        self._token = threading.Lock()
        self.holder: int | None = None  # the thread that holds the token
        # One entry per receiver waiting for a datagram: append() and pop()
        # are atomic, which a count would need a lock for, twice a datagram.
        self._idle: list[None] = []
        self._paused = False  # at max_connections: nobody receives until a release
        self._epoll: select.epoll | None = None
        self._stop: Waker | None = None  # readable (level-triggered: it wakes every receiver) once they must stop
        self._fd = -1

    def start(self) -> None:
        """On the serve loop's thread, once it serves: the workers receive from now on."""
        epoll, stop = self._epoll, self._stop
        if epoll is None or stop is None:
            epoll, stop = self._epoll, self._stop = select.epoll(), Waker()
            epoll.register(stop.fileno(), select.EPOLLIN)
            self._fd = self.server.fileno()
            epoll.register(self._fd, 0)
        stop.drain()
        self._serving_thread = threading.get_ident()
        self.active = True
        self._paused = False
        self._arm()
        self._call_receiver()

    def stop(self, serving_thread: int | None = None) -> None:
        """The serve loop ended (or the server closes): nobody receives any
        more. Returns once no receiver is taking a datagram."""
        if not self.active or serving_thread not in (None, self._serving_thread):
            return
        self.active = False
        if self._stop is not None:
            self._stop.wake()
        # Wait for a receiver taking its datagram to hand on, so that none is
        # taken once the loop has ended; bounded, in case that receiver's own
        # hook (verify_request) is what stops the loop, and waits for it.
        if self._token.acquire(timeout=_HAND_ON_WAIT):
            self._token.release()

    def close(self) -> None:
        """After the pool's workers were joined."""
        if self._epoll is not None:
            self._epoll.close()
        if self._stop is not None:
            self._stop.close()

    def hand_on(self) -> None:
        """The holder (``holder``, a thread's ident) has its datagram: the
        next one is another receiver's. The token first, then the arming
        (see the class docstring). Armed whether or not receiving may go on
        (a stop, max_requests, max_connections): the receiver it wakes looks."""
        self.holder = None
        self._token.release()
        self._arm()

    def capacity_freed(self) -> None:
        """A release took the server below max_connections: receive again."""
        if self._paused and self.active:
            self._paused = False
            self._arm()

    def _arm(self) -> None:
        epoll = self._epoll
        if epoll is not None:
            try:
                epoll.modify(self._fd, select.EPOLLIN | select.EPOLLONESHOT)
            except (OSError, ValueError):
                pass  # the server closed its socket: there is nothing more to receive

    def _may_receive(self) -> bool:
        """With the token: may a datagram be taken now? If not, the socket
        stays disarmed until a release (``capacity_freed``) or the next
        serve loop (``start``) arms it."""
        handshake = self.server._handshake
        if not self.active or not handshake.serving or handshake.requested:
            return False  # stopping, or the loop has not started or has ended
        if self.admission.at_capacity():
            # Paused first, then looked again: a release in between re-arms.
            self._paused = True
            if self.admission.at_capacity():
                return False
            self._paused = False
        return True

    def _call_receiver(self) -> None:
        """One more worker waits for datagrams, if the pool has one."""
        try:
            self.pool.try_submit(self._receive)
        except RuntimeError:
            pass  # the pool is shut down: the server is closing

    def _receive(self) -> None:
        """A worker's loop as a receiver: wait, take a datagram, handle it, again."""
        epoll = self._epoll
        assert epoll is not None
        token, idle = self._token, self._idle
        receive = self.server._handle_request_noblock
        keep = max(1, self.pool.min_workers)
        me = threading.get_ident()
        while True:
            if not self.active or len(idle) >= keep:
                return  # enough others wait: this worker goes back to the pool
            idle.append(None)
            try:
                epoll.poll(-1, 1)
            finally:
                idle.pop()
            if not self.active:
                return
            if not token.acquire(False):
                continue  # another receiver is taking a datagram; it arms again when done
            self.holder = me
            took = False
            try:
                if self._may_receive():
                    took = True
                    if not idle:
                        self._call_receiver()  # so that one waits while this one handles
                    receive()
            except Exception:
                # A bug in a hook (get_request() raising more than OSError):
                # the stdlib's loop would die of it; here the others go on.
                logger.exception("%s: receiving a datagram failed", format_address(self.server.server_address))
            finally:
                if self.holder == me:  # no process_request() of ours handed on
                    if took:
                        self.hand_on()
                    else:  # declined: the socket stays disarmed (see _may_receive)
                        self.holder = None
                        token.release()


class PoolModel(TicketModel):
    """Workers and, for stream servers, a reactor."""

    def __init__(self, admission: Admission, pool: WorkerPool, reactor: Reactor | None, server: Any) -> None:
        super().__init__(admission)
        self.pool = pool
        self.reactor = reactor
        self.server = server
        self.framed = is_framed_handler(server.RequestHandlerClass)
        # A classic handler that greets its client first
        # (BaseRequestHandler.speaks_first) goes to a worker at once: waiting
        # for the client's first byte would wait for ever.
        self.speaks_first = not self.framed and bool(getattr(server.RequestHandlerClass, "speaks_first", False))
        if self.framed:
            admission.request_unit = 0  # a framed connection counts its requests (FramedConnection)
        # The reactor's thread cuts a framed connection at its deadline itself.
        self.cuts_own_deadlines = self.framed
        # Framed connections: added by the reactor's thread (or by the serve
        # loop's, for a first turn at accept), discarded by whoever ends them.
        self._connections: set[FramedConnection] = set()
        self._waiting: dict[socket.socket, Job] = {}  # classic: waiting for a first byte; reactor's thread only
        self._draining = False
        self._held_first_turns: list[FramedConnection] | None = None  # see hold_first_turns()
        streams = getattr(server, "socket_type", socket.SOCK_STREAM) == socket.SOCK_STREAM
        self.receivers = None if streams else DatagramReceivers(server, pool, admission)

    # -- ConcurrencyModel ------------------------------------------------------------------

    def at_capacity(self) -> bool:
        receivers = self.receivers
        if receivers is not None:
            # Asked by the serve loop at each turn, once it serves: from then
            # on the workers receive, and the loop does not watch the socket.
            if not receivers.active:
                receivers.start()
            return True
        return self.pool.waiting() >= self.pool.max_workers

    def wait(self, timeout: float | None, ignore: Ticket | None = None) -> bool:
        if self.reactor is not None and not self._draining:
            self._draining = True
            self.reactor.call_soon(self._drain)
        return super().wait(timeout, ignore)

    def close(self) -> None:
        if self.reactor is not None:
            self.reactor.close(last=self._abort_all)
        if self.receivers is not None:
            self.receivers.stop()
        self.pool.shutdown()
        if self.receivers is not None:
            self.receivers.close()

    # -- FramedHost ------------------------------------------------------------------------

    def queue_work(self, work: Callable[[], object]) -> None:
        self.pool.queue(work)

    def others_waiting(self) -> bool:
        return self.pool.any_waiting()

    def handle_error(self, request: Any, client_address: Any, ticket: Ticket | None = None) -> None:
        self.server._handler_error(request, client_address, ticket)  # handle_error(), counted

    def connection_ended(self, connection: FramedConnection) -> None:
        self._connections.discard(connection)  # (a set: safe from a worker after the reactor closed)
        connection.job.release()

    # -- taking connections ----------------------------------------------------------------

    def adopt(self, job: Job, target: Callable[[Any, Any], object]) -> None:
        """A stream connection admitted by the serve loop: into the reactor."""
        reactor = self.reactor
        assert reactor is not None
        if self.framed:
            connection = FramedConnection(self, reactor, job, self.server.RequestHandlerClass, self.server, job.stages)
            if not job.stages and _first_byte_in(job.request):
                self._first_turn_framed(connection)
                return
            job.stages = ()
            if not reactor.call_soon(lambda: self._start_framed(connection)):
                connection.closed_without_reactor()  # the server closed meanwhile
        elif not job.stages and (self.speaks_first or _first_byte_in(job.request)):
            # The handler speaks first, or the client has sent already (98% of connect_20's connections
            # at accept): straight to a worker, with no detour through the
            # reactor's thread, which has to be woken and win the GIL
            # before it passes the connection on (the waits of up to 39 ms
            # that made the pool's p99, traced in issue 11).
            self.pool.queue(job.run, target)
        elif not reactor.call_soon(lambda: self._wait_first_byte(job, target)):
            self.server.shutdown_request(job.request)
            job.release()

    def _first_turn_framed(self, connection: FramedConnection) -> None:
        """A framed connection whose client has sent already: a worker takes
        its first turn at once, and the reactor sees it only if it lives on
        after that turn (``FramedConnection.take_first_turn``)."""
        reactor = self.reactor
        assert reactor is not None
        connection.take_first_turn()
        # In the set before a drain or a close can look (both do on the
        # reactor's thread): they reach it during its first turn too.
        self._connections.add(connection)
        if connection.job.ticket is not None and connection.job.ticket.deadline is not None:
            reactor.call_soon(connection.start_deadline_timer)
        if self._draining:  # a drain began before the set had it: it may have missed it
            reactor.call_soon(connection.drain)
        held = self._held_first_turns
        if held is not None:
            held.append(connection)
        else:
            self.pool.queue(connection.first_turn)

    def hold_first_turns(self) -> None:
        """The serve loop takes the connections waiting: their first turns
        (``_first_turn_framed``) go to the workers once it has taken them all
        (``release_first_turns``). A worker woken while the loop still
        accepts preempts it on a busy core and then waits for the
        interpreter the loop holds: measured on connect_20, 2.4 involuntary
        switches of the loop per connection, and ~20% more CPU time per
        connection, against the reactor's batched hand-overs."""
        self._held_first_turns = []

    def release_first_turns(self) -> None:
        held, self._held_first_turns = self._held_first_turns, None
        for connection in held or ():
            self.pool.queue(connection.first_turn)

    def _start_framed(self, connection: FramedConnection) -> None:
        if self._draining:
            connection.drain()
        self._connections.add(connection)
        connection.start()

    def _wait_first_byte(self, job: Job, target: Callable[[Any, Any], object]) -> None:
        """A classic connection waits here, holding no worker, until its
        client has sent its first byte and passed its stages (PROXY header,
        TLS handshake), all under the stages' deadline; then a worker runs it.
        (Stages always begin with the client's bytes, and a connection is
        handed on as soon as they are done, bytes behind them or not: a
        handler that speaks first greets a proxied or TLS client too.)"""
        sock: socket.socket = job.request
        stages, job.stages = job.stages, ()
        byte_stages, tls = split_tls(stages) if stages else ((), None)
        runner = StageRunner(byte_stages, job.client_address) if byte_stages else None
        handshake: ssl.SSLSocket | None = None
        timeout = sock.gettimeout()

        reactor = self.reactor
        assert reactor is not None
        fd = sock.fileno()
        timer: Timer | None = None

        def ready(events: int) -> None:
            nonlocal handshake
            if runner is not None and not runner.done and not self._run_stages(job, runner):
                if job.request in self._waiting:
                    reactor.arm(fd, READABLE)  # the stages want more
                return
            if tls is not None:
                try:
                    if handshake is None:
                        handshake = tls.start(job.request)
                        self._waiting[handshake] = self._waiting.pop(job.request)
                        job.replace_request(handshake)
                    wanted = tls.step(handshake)
                except OSError as exc:  # ssl.SSLError is one
                    tls.failed(exc, job.client_address)
                    self._close_waiting(job)
                    if timer is not None:
                        timer.cancel()
                    return
                if wanted:
                    reactor.arm(fd, wanted)
                    return
                handshake.settimeout(timeout)  # blocking again, as the handler expects
            if timer is not None:
                timer.cancel()
            reactor.unregister(fd)
            del self._waiting[job.request]
            self.pool.queue(job.run, target)

        def expired() -> None:
            if job.request not in self._waiting:
                return
            if tls is not None and (runner is None or runner.done):
                tls.failed(TimeoutError(), job.client_address)
            else:
                log_stage_failed(
                    StageFailed("the connection's stages did not finish in time", job.client_address),
                    job.client_address,
                )
            self._close_waiting(job)

        self._waiting[sock] = job
        try:
            reactor.register(fd, READABLE, ready)
        except (OSError, ValueError):  # closed meanwhile (a forced stop)
            del self._waiting[sock]
            self.pool.queue(job.run, target)
            return
        if stages:
            delay = stages_timeout(stages)
            ticket = job.ticket
            if ticket is not None and ticket.deadline is not None:
                delay = min(delay, ticket.deadline - time.monotonic())
            timer = reactor.call_later(delay, expired)

    def _run_stages(self, job: Job, runner: StageRunner) -> bool:
        """The stages of a classic connection, without blocking (the loop
        driver): True once they are done, the connection's handler due."""
        sock: socket.socket = job.request
        try:
            data = peek(sock)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            data = b""
        step = runner.feed(data)
        try:
            if step.send:
                sock.send(step.send, socket.MSG_DONTWAIT)
            consume(sock, step.consumed)
        except OSError:
            step.failed = step.failed or "the client went away during the stages"
        if step.failed is not None:
            log_stage_failed(runner.failure(step.failed), runner.prepared.client_address)
            self._close_waiting(job)
            return False
        if step.done:
            job.client_address = runner.prepared.client_address
            info = runner.prepared.info
            if "proxy" in info:
                self.server._proxied_connections().add(sock, info["peer_address"], info["proxy"])
        return step.done

    def _close_waiting(self, job: Job) -> None:
        """A classic connection that never reached its handler: closed, counted out."""
        sock: socket.socket = job.request
        if self.reactor is not None and sock.fileno() >= 0:
            self.reactor.unregister(sock.fileno())
        self._waiting.pop(sock, None)
        ticket = job.ticket
        if ticket is not None and ticket.closed_by is None:
            ticket.closed_by = "refused"  # its stages failed, or did not finish in time
        self.server.shutdown_request(sock)
        job.release()

    # -- stopping ------------------------------------------------------------------------

    def _drain(self) -> None:
        """A graceful stop began. Framed connections finish what they began.
        Classic connections still waiting for their first byte keep waiting:
        accepting one promised its client a handler, as a thread's handler
        would wait for it, and the grace period bounds the wait."""
        for connection in list(self._connections):
            connection.drain()

    def _abort_all(self) -> None:
        """The server closes: whatever is still in the reactor is cut."""
        for job in list(self._waiting.values()):
            self._close_waiting(job)
        for connection in list(self._connections):
            connection.abort(ConnectionAbortedError("the server was closed"))
