"""ForkingMixIn: a child process per request, with the stdlib's semantics.

Children are reaped in ``service_actions()`` (every turn of the serve loop),
in ``handle_timeout()`` and in ``server_close()``, as the stdlib does. What
differs, all invisible to working code:

* each child is an admitted connection until the parent reaps it, so
  ``Limits`` hold under forking: ``max_connections`` and
  ``max_connections_per_ip`` count children, and the child enforces its own
  ``connection_timeout`` (the parent's threads do not survive a fork);
* a child's exit wakes the serve loop (through its pidfd), so no zombie
  outlives its request by ``poll_interval``;
* at ``max_children`` the loop stops accepting until a child exits, and a
  wait for a child only ever waits for one of *its own* (pidfds), where the
  stdlib's ``waitpid(-1)`` could reap, and lose the status of, a child the
  program forked itself;
* a child's counts (its request, bytes, errors, why it closed) reach the
  parent's ``server.metrics``: each child writes them into a row of its own
  in a shared anonymous ``mmap`` the parent made before forking, which the
  parent's snapshots add up (``ChildRows``); the child writes the access
  log line. The parent counts the connection in and out (active).
"""

from __future__ import annotations

import mmap
import os
import select
import socket
import time

from ._access_log import hold, let_go, settle_here
from ._metrics import Metrics
from ._wakeup import Waker

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see sockserve/__init__.py)
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any, Protocol

    from ._admission import Admission, Ticket
    from ._base_server import BaseServer as _ServerBase
    from ._model import ConcurrencyModel
    from ._pipeline import Job
else:
    _ServerBase = object  # a stand-alone mixin at run time, as the stdlib's is
    Protocol = object  # the protocol here is for type checkers; at run time, a plain class

_pidfd_open = getattr(os, "pidfd_open", None)  # Linux 5.3+ and Python 3.9+
# How often a drain looks for exited children where it cannot wait on pidfds.
_NO_PIDFD_POLL = 0.05


def _wait_for_any(pids: set[int], timeout: float | None = None, waker: Waker | None = None) -> None:
    """Block until one of ``pids`` has exited (it is not reaped here), ``timeout``
    seconds have passed, or ``waker`` was woken."""
    fds: list[int] = []
    try:
        if _pidfd_open is not None:
            for pid in pids:
                try:
                    fds.append(_pidfd_open(pid))
                except ProcessLookupError:
                    return  # already reaped elsewhere: a slot is free
                except OSError:
                    break  # ENOSYS (a seccomp filter, valgrind) or EMFILE: wait without pidfds
            else:
                poller = select.poll()
                for fd in fds:
                    poller.register(fd, select.POLLIN)
                if waker is not None:
                    poller.register(waker.fileno(), select.POLLIN)
                poller.poll(None if timeout is None else max(0.0, timeout) * 1000.0)
                return
        _wait_without_pidfds(pids, timeout, waker)
    finally:
        for fd in fds:
            os.close(fd)


def _wait_without_pidfds(pids: set[int], timeout: float | None, waker: Waker | None) -> None:
    """``_wait_for_any()`` where no pidfd can be had (not Linux, or denied).

    With nothing else to wait for, block on the oldest child (this reaps it:
    ``reap()`` then finds it gone, as the stdlib's ``waitpid(-1)`` would have).
    A wait with a deadline or a waker (a drain) cannot block in ``waitpid()``
    without losing both, so it looks again every ``_NO_PIDFD_POLL`` seconds.
    """
    if timeout is None and waker is None:
        try:
            os.waitpid(min(pids), 0)
        except ChildProcessError:
            pass  # reaped elsewhere: a slot is free
        return
    step = _NO_PIDFD_POLL if timeout is None else max(0.0, min(timeout, _NO_PIDFD_POLL))
    if waker is not None:
        waker.wait(step)
    else:
        time.sleep(step)


class ForkingHost(Protocol):
    """What the forking model needs of its server: the stdlib's settings, and
    a way to have the serve loop wake when a descriptor becomes readable."""

    max_children: int
    block_on_close: bool

    def _watch_fd(self, fd: int) -> bool: ...
    def _unwatch_fd(self, fd: Any) -> None: ...


# A child whose stages refused its connection exits with the reason's status,
# for the parent to count (in server.refused).
_STATUS_OF_REFUSAL = {"tls_handshake": 65, "proxy_header": 66, "access_list": 67, "max_connections_per_ip": 68}
_REFUSAL_OF_STATUS = {status: reason for reason, status in _STATUS_OF_REFUSAL.items()}


def _refusal_status(before: Mapping[str, int], after: Mapping[str, int]) -> int:
    """The exit status that tells the parent why the stages refused (0 if no count moved)."""
    for reason, status in _STATUS_OF_REFUSAL.items():
        if after.get(reason, 0) > before.get(reason, 0):
            return status
    return 0


class ChildRows:
    """One ``Metrics`` buffer per child in flight, in a shared anonymous
    mmap made before the first fork: a child writes only its own row (no
    lock is shared across processes), and the parent's metrics add every
    row to their snapshots. A row is reused once its child is reaped: its
    values stay, and the next child's add to them."""

    def __init__(self, metrics: Metrics, rows: int) -> None:
        self._map = mmap.mmap(-1, rows * Metrics.SIZE)  # MAP_SHARED | MAP_ANONYMOUS: the children's writes show here
        view = memoryview(self._map)
        self._views = [view[i * Metrics.SIZE : (i + 1) * Metrics.SIZE] for i in range(rows)]
        self._free = list(range(rows - 1, -1, -1))
        for row in self._views:
            metrics.add_part(row)

    def take(self) -> int | None:
        """A free row for the next child (None if every row is in use)."""
        return self._free.pop() if self._free else None

    def give_back(self, row: int) -> None:
        self._free.append(row)

    def metrics(self, row: int | None) -> Metrics:
        """In the child: the metrics it writes (a private one without a row:
        its counts are lost, rather than written where another process writes)."""
        return Metrics() if row is None else Metrics(self._views[row])


class ForkModel:
    """The children in flight, each with the admission ticket it holds until reaped."""

    runs_on_loop = False
    cuts_own_deadlines = True  # a child cuts its own connection (see Job.start_deadline_in_child)

    def __init__(self, admission: Admission, host: ForkingHost) -> None:
        self.admission = admission
        admission.request_unit = 0  # each child counts its request, in its row
        self.host = host
        self.pids: set[int] = set()  # the stdlib's ``active_children``, the same set object
        self._tickets: dict[int, Ticket] = {}
        self._pidfds: dict[int, int] = {}
        # The pidfds the serve loop watches. It unwatches one itself when the
        # child exits (see ForkingMixIn._unwatch_fd), before the reap, which
        # then has nothing to undo.
        self.watched: set[int] = set()
        self._drain_waker: Waker | None = None
        self._interrupted = False
        self._rows: ChildRows | None = None
        self._row_of: dict[int, int] = {}

    def take_row(self) -> int | None:
        """Before a fork: the metrics row the child will write."""
        rows = self._rows
        if rows is None:
            rows = self._rows = ChildRows(self.admission.metrics, max(self.host.max_children, 1))
        return rows.take()

    def give_back_row(self, row: int | None) -> None:
        if row is not None and self._rows is not None:
            self._rows.give_back(row)

    def child_metrics(self, row: int | None) -> Metrics:
        return Metrics() if self._rows is None else self._rows.metrics(row)

    def started(self, pid: int, ticket: Ticket | None, row: int | None = None) -> None:
        self.pids.add(pid)
        if row is not None:
            self._row_of[pid] = row
        if ticket is not None:
            # The parent's copy of the socket is closed: only the child can
            # cut this connection, and it does (deadline), or the drain kills it.
            ticket.abort = None
            ticket.report = False  # the child settles it (counts, access log); here it is only counted out
            self._tickets[pid] = ticket
        self._watch_exit(pid)

    def _watch_exit(self, pid: int) -> None:
        if _pidfd_open is None:
            return  # pragma: no cover - not Linux: reaped on the poll_interval, as in the stdlib
        try:
            fd = _pidfd_open(pid)
        except OSError:
            return  # e.g. out of descriptors: the poll_interval still reaps it
        if not self.host._watch_fd(fd):
            os.close(fd)
            return
        self.watched.add(fd)
        self._pidfds[pid] = fd

    def _forget_pidfd(self, fd: int) -> None:
        if fd in self.watched:
            self.host._unwatch_fd(fd)
        os.close(fd)

    def _finished(self, pid: int, status: int = 0) -> None:
        self.pids.discard(pid)
        self.give_back_row(self._row_of.pop(pid, None))  # the child is gone: nobody writes its row any more
        ticket = self._tickets.pop(pid, None)
        if ticket is not None:
            if os.WIFSIGNALED(status):
                # Killed (a drain's grace period ran out) before it could
                # settle its connection: settled here instead.
                ticket.report = True
                if ticket.aborted is None and ticket.closed_by is None:
                    ticket.closed_by = "drain" if os.WTERMSIG(status) == 9 else "error"
            self.admission.release(ticket)
        fd = self._pidfds.pop(pid, None)
        if fd is not None:
            self._forget_pidfd(fd)

    def reap(self, *, blocking: bool = False) -> None:
        """Reap the children that have exited (all of them, waiting, if ``blocking``)."""
        if not self.pids:
            return  # every turn of the serve loop asks: most find nothing to do
        flags = 0 if blocking else os.WNOHANG
        for pid in self.pids.copy():
            status = 0
            try:
                reaped, status = os.waitpid(pid, flags)
            except ChildProcessError:
                reaped = pid  # reaped by someone else: it is gone all the same
            except OSError:
                continue
            if reaped:
                counted = pid in self._row_of  # a child with a row counted its refusal there
                self._finished(pid, status)
                reason = _REFUSAL_OF_STATUS.get(os.waitstatus_to_exitcode(status)) if status else None
                if reason is not None and not counted:
                    self.admission.metrics.refuse(reason)

    def collect(self, *, blocking: bool = False) -> None:
        """The stdlib's collect_children(): wait while at max_children, then reap."""
        while len(self.pids) >= self.host.max_children:
            _wait_for_any(self.pids)
            before = len(self.pids)
            self.reap()
            if len(self.pids) == before:
                break  # nothing could be reaped (not our children any more)
        self.reap(blocking=blocking)

    # -- ConcurrencyModel --------------------------------------------------------------

    def at_capacity(self) -> bool:
        return len(self.pids) >= self.host.max_children

    def in_flight(self) -> int:
        self.reap()
        return len(self.pids)

    def wait(self, timeout: float | None, ignore: Ticket | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        self._drain_waker = waker = Waker()
        try:
            while True:
                self.reap()
                if not self.pids:
                    return True
                remaining = None if deadline is None else deadline - time.monotonic()
                if self._interrupted or (remaining is not None and remaining <= 0):
                    return False
                _wait_for_any(self.pids, remaining, waker)
        finally:
            self._drain_waker = None
            waker.close()

    def force(self, reason: BaseException, ignore: Ticket | None = None) -> int:
        """The grace period is over: kill the children still handling requests."""
        import signal  # here: only a drain that runs out of time needs it

        forced = 0
        for pid in list(self.pids):
            try:
                os.kill(pid, signal.SIGKILL)
                forced += 1
            except ProcessLookupError:
                pass  # it exited just now: it is reaped with the others
        return forced

    def interrupt(self) -> None:
        self._interrupted = True
        waker = self._drain_waker
        if waker is not None:
            waker.wake()

    def close(self) -> None:
        self.reap(blocking=self.host.block_on_close)
        for pid in list(self._pidfds):
            # A child left running (block_on_close False) is not watched any more.
            self._forget_pidfd(self._pidfds.pop(pid))


class ForkingMixIn(_ServerBase):
    """Mix-in class to handle each request in a new process.

    Class variables:

    - timeout: handle_request()'s timeout, so that children get reaped (300 s)
    - max_children: at most this many children at once (40)
    - block_on_close: server_close() waits for all children to exit
    """

    timeout: float | None = 300
    active_children: set[int] | None = None
    max_children: int = 40
    block_on_close: bool = True
    _fork_model: ForkModel | None = None
    # Connections whose stages wait for bytes in the serve loop: fd -> (job, deadline)
    _waiting_stages: dict[int, tuple[Job, float]] | None = None

    def _make_model(self, admission: Admission) -> ConcurrencyModel:
        model = self._fork_model = ForkModel(admission, self)
        return model

    def _forks(self) -> ForkModel:
        forks = self._fork_model
        if forks is None:
            self._concurrency_model()  # made on first use, with the server's admission
            forks = self._fork_model
            assert forks is not None
        return forks

    def collect_children(self, *, blocking: bool = False) -> None:
        """Reap the children that have exited; wait while at max_children."""
        forks = self._fork_model
        if self.active_children is None or forks is None or not forks.pids:
            return  # nothing was forked, or nothing is left to reap (most turns of the loop)
        forks.collect(blocking=blocking)

    def handle_timeout(self) -> None:
        """Reap children when handle_request() times out."""
        self.collect_children()

    def service_actions(self) -> None:
        """Reap children once per turn of the serve_forever() loop."""
        self.collect_children()
        self._stages_deadlines()

    def process_request(self, request: Any, client_address: Any) -> None:
        """Fork a child that handles the request and exits."""
        job = self._take_job(request, client_address)
        forks = self._fork_model
        if forks is None:
            forks = self._forks()
        if len(forks.pids) >= self.max_children:
            forks.collect()  # handle_request() has no capacity check of its own
        if job.stages and not self._stages_ready(job):
            return
        self._fork(job, forks)

    def _stages_ready(self, job: Job, deadline: float | None = None) -> bool:
        """Run the connection's byte stages (a PROXY header) here in the
        parent, where the per-IP limit can count the client they name. One
        whose bytes have not all come waits in the serve loop's poll, holding
        no process, until they have or its ``deadline`` passes (set on its
        first wait; see ``_stages_deadlines``). True if it is to be forked now."""
        ready = job.prepare_if_ready()
        if ready is None:
            fd = job.request.fileno()
            if not self._watch_fd(fd):
                return True  # no serve loop to wait in (handle_request()): the child reads them
            if deadline is None:
                from ._stages import stages_timeout

                deadline = time.monotonic() + stages_timeout(job.stages)
                if job.ticket is not None and job.ticket.deadline is not None:
                    deadline = min(deadline, job.ticket.deadline)
            if self._waiting_stages is None:
                self._waiting_stages = {}
            self._waiting_stages[fd] = (job, deadline)
            return False
        if ready is False:
            job.release()  # a stage refused it, with a log line
            return False
        return True

    def _unwatch_fd(self, fd: Any) -> None:
        super()._unwatch_fd(fd)
        forks = self._fork_model
        if forks is not None:
            forks.watched.discard(fd)
        waiting = self._waiting_stages
        if waiting and fd in waiting:
            job, deadline = waiting.pop(fd)  # back in the table if it must wait more
            if self._stages_ready(job, deadline):
                self._fork(job, self._forks())

    def _stages_deadlines(self) -> None:
        """Close the connections whose stages ran out of time (each turn of the loop)."""
        waiting = self._waiting_stages
        if not waiting:
            return
        now = time.monotonic()
        for fd, (job, deadline) in list(waiting.items()):
            if deadline <= now:
                del waiting[fd]
                super()._unwatch_fd(fd)
                self._close_waiting(job, "the connection's stages did not finish in time")

    def _close_waiting(self, job: Job, reason: str) -> None:
        from ._log import log_stage_failed
        from ._stages import StageFailed

        log_stage_failed(StageFailed(reason, job.client_address), job.client_address)
        self.shutdown_request(job.request)
        job.release()

    def _fork(self, job: Job, forks: ForkModel) -> None:
        request = job.request
        row = forks.take_row()
        try:
            pid = os.fork()
        except BaseException:
            forks.give_back_row(row)
            raise
        if pid:
            if self.active_children is None:
                self.active_children = forks.pids
            forks.started(pid, job.ticket, row)
            if self._proxied is not None:
                self._proxied.discard(job.request)  # the child has its copy; this one would never be released
            self.close_request(request)
            return
        # The child: handle the request, then exit without returning into the
        # parent's loop. os._exit skips atexit handlers that belong to the parent.
        _unblock_signals()
        self._run_on_this_thread(job)  # for handle_error(); cheaper than the thread-local
        status = 1
        try:
            self._close_inherited_listener()
            # This child's counts go to its own row, which the parent's
            # snapshots read (the copy of the parent's metrics is nobody's).
            admission = job.admission
            metrics = self.metrics = forks.child_metrics(row)
            if admission is not None:
                admission.metrics = metrics
            ticket = job.ticket
            if ticket is not None and ticket.deadline is not None:
                job.start_deadline_in_child()
            # Read only when stages run: a snapshot per fork otherwise for nothing.
            refused_before = self.refused if job.stages else {}
            if not job.stages or job.prepare():
                held = None
                if ticket is not None:
                    ticket.requests = 1
                    if self._stream_end and isinstance(job.request, socket.socket):
                        held = hold(job.request)  # how it ended is read after shutdown_request() closed it
                try:
                    self.finish_request(job.request, job.client_address)
                    status = 0
                except Exception:
                    self._handler_error(job.request, job.client_address, ticket)
                finally:
                    self.shutdown_request(job.request)
                    if held is not None and ticket is not None:
                        let_go(held, ticket, self._tcp_bytes)
            else:
                # The stages closed it, with a log line. Why, the parent
                # learns from the exit status too, and counts it in its
                # own server.refused if this child had no row to count it in.
                status = _refusal_status(refused_before, self.refused)
            if ticket is not None and admission is not None:
                ticket.report = True
                settle_here(ticket, metrics, admission.access_log)
        finally:
            os._exit(status)

    def _close_inherited_listener(self) -> None:
        """In a child, close our copy of a stream server's listening socket.

        Otherwise a child busy with a long request keeps the port open after
        the parent has stopped, and new connections queue for nobody instead
        of being refused. (A datagram child replies through that socket, so
        it keeps it.)
        """
        # The class's socket_type, not sock.type: that builds an enum member
        # on each call, in every child.
        sock = getattr(self, "socket", None)
        if sock is not None and getattr(self, "socket_type", None) == socket.SOCK_STREAM:
            sock.close()

    def server_close(self) -> None:
        waiting, self._waiting_stages = self._waiting_stages or {}, None
        for job, _ in waiting.values():
            self._close_waiting(job, "the server closed before the connection's stages finished")
        super().server_close()
        self.collect_children(blocking=self.block_on_close)


def _unblock_signals() -> None:
    """In a forked child, let every signal through again.

    A thread's signal mask is inherited by the processes it forks: a serve
    loop on a thread that blocks SIGTERM, SIGINT and SIGHUP (``serve_all()``
    runs each server's loop on such a thread, so that the main thread gets
    the signals) would make every child deaf to them, and a service
    manager's SIGTERM to the cgroup would leave the children running. The
    child is a new single-threaded process: it takes the signals itself,
    as a child forked by the main thread of a plain program does."""
    import signal  # here: a program that imports the class does not pay for it

    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_SETMASK, ())
