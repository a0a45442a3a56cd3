"""Admission: the step of a connection's life between accept and its handler
that decides whether it may be served, and the book of those that were.

``Admission.admit(peer)`` returns a ``Ticket`` or a ``Refusal`` (with the limit
that refused it); ``release(ticket)`` counts the connection out, exactly once
however often it is called. Both keep the server's ``Metrics`` (accepted,
active, refused; at release the requests, bytes and why it closed, which the
model wrote on the ticket, and the access log line: ``_access_log.settle``),
so that every model is counted in this one place. The servers' core admits and releases around the
dispatch of each request, never in a hook that a subclass may replace, so a
``close_request()`` override that does not call ``super()`` cannot leak a slot.

The same object serves the synchronous servers (thread-safe) and the async
ones (on their loop's thread). No I/O happens here: cutting a connection whose
deadline passed is the ticket's ``abort`` callback, which the concurrency
model that runs the connection supplies.
"""

from __future__ import annotations

import collections
import itertools
import threading
import time
from collections.abc import Callable, Hashable

from ._access_log import settle
from ._errors import ConnectionLimitReached, LimitExceeded
from ._limits import NO_LIMITS, Limits
from ._metrics import Metrics
from ._ticket import Ticket as Ticket  # re-exported: the models import it from here
from ._wakeup import Waker

# Ended connections are added to the metrics this many at a time (and
# before every snapshot, and on an idle turn of the serve loop): see fold().
FOLD_BATCH = 64
# And at least this often (seconds) while a serve loop runs, when another
# process reads the metrics (``Metrics.read_elsewhere``: a prefork worker's).
FOLD_INTERVAL = 0.5


def _take_sum(values: collections.deque[int]) -> int:
    """Take every value out of ``values`` (appended by any thread) and add them up."""
    total = 0
    while values:
        try:
            total += values.popleft()
        except IndexError:
            break  # another fold took the last one
    return total


def _consumed(counter: itertools.count[int]) -> int:
    """The next value an ``itertools.count`` will give, without taking it
    (its repr is ``count(N)``; pickling it is deprecated since 3.12)."""
    return int(repr(counter)[6:-1])


TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see sockserve/__init__.py)
if TYPE_CHECKING:
    from typing import Any, final
else:

    def final(cls: type) -> type:
        """typing.final, for type checkers only: it does nothing at run time."""
        return cls


# The key of a ticket admitted while no per-client cap was in force: nobody
# needs to know who its client is, so it is not counted per client.
UNCOUNTED: Hashable = object()
# The key of a ticket whose client is not known yet: a trusted proxy's
# connection, counted per client once its PROXY header names the client
# (``readdress``), never under the proxy's own address.
DEFERRED: Hashable = object()


def client_key(client_address: Any) -> Hashable:
    """What counts as "one client" for max_connections_per_ip: the host part."""
    if isinstance(client_address, tuple) and client_address:
        host: Hashable = client_address[0]
        return host
    return client_address if isinstance(client_address, Hashable) else repr(client_address)


@final
class Refusal:
    """A connection that may not be served: ``error`` says which limit refused it."""

    __slots__ = ("error",)

    def __init__(self, error: LimitExceeded) -> None:
        self.error = error

    def __repr__(self) -> str:
        return f"Refusal(error={self.error!r})"

    @property
    def reason(self) -> str:
        """A short name for counting refusals: the limit's name."""
        if isinstance(self.error, ConnectionLimitReached):
            return "max_connections_per_ip" if self.error.per_ip else "max_connections"
        return type(self.error).__name__


class Admission:
    """The admission policy of one server (its ``Limits``) and the connections it admitted.

    ``on_free`` is called, outside the lock, when a release takes the server
    from full (``max_connections``) to not full, so a paused accept loop can
    be woken.

    ``metrics``: where admissions, refusals and releases are counted (the
    server's; a private one if None; another with ``use_metrics()``).
    ``access_log``: a line per release on the ``sockserve.access`` logger.
    The server sets both when serving starts.

    Counting costs no lock, and next to no work, per connection: an
    admission is counted by the ticket numbers it gives anyway
    (``itertools.count``, whose ``next()`` is atomic), a release by one
    more such count; a connection is one request (``request_unit``: 0
    where the model counts them itself: the framed pool, a forking server's
    children) unless it ended before its handler (``_not_requests``).
    ``fold()`` turns the counts into the metrics' values, in one turn of
    their lock: every ``FOLD_BATCH`` releases, before every snapshot, at
    a drain's end, on an idle turn of the serve loop. Only a connection
    with something to say (a reason it ended, bytes, an access line) takes
    the slower path (``_settle``).
    """

    def __init__(
        self, limits: Limits = NO_LIMITS, on_free: Callable[[], None] | None = None, metrics: Metrics | None = None
    ) -> None:
        self.limits = limits
        self._on_free = on_free
        self.access_log = False
        # Every release takes the slower path (_settle): the access log, or
        # bytes to count (the server's count_bytes).
        self.settle_all = False
        # 0 where the server counts its datagrams as they come (the async
        # datagram servers): admitting one then only makes it active.
        self.accepted_unit = 1
        # Requests per released connection (see the class's docstring).
        self.request_unit = 1
        # Datagrams counted as they come by an async server's receivers (on
        # the loop's thread, the only writer: no lock), and the payload
        # sizes of a synchronous server's (appended by any thread).
        self.datagrams = 0
        self.datagram_bytes = 0
        self.datagram_sizes: collections.deque[int] = collections.deque()
        # Requests counted by a model itself (the framed pool's), appended by any thread.
        self.request_counts: collections.deque[int] = collections.deque()
        self._released_count = itertools.count(1)  # next() is atomic
        self._not_requests = itertools.count()  # released before their handler
        self._fold_lock = threading.Lock()
        self._folded = (0, 0, 0, 0, 0)  # admitted, released, not requests, datagrams, their bytes
        # Reentrant: interrupt() may run in a signal handler on a thread that
        # holds the lock at that moment.
        self._lock = threading.RLock()
        self._idle_wakers: set[Waker] = set()  # one per wait_idle() in progress
        self._interrupted = False
        self._open: dict[int, Ticket] = {}  # id(ticket) -> ticket
        self._per_client: dict[Hashable, int] = {}
        self._numbers = itertools.count(1)  # next() is atomic: the tickets' numbers
        self.metrics = Metrics() if metrics is None else metrics
        self.metrics.add_source(self.fold)

    def admit(self, peer: Any, now: float | None = None, *, per_client: bool = True) -> Ticket | Refusal:
        """A ticket for a new connection from ``peer``, or the limit that refuses it.

        ``per_client=False``: ``peer`` is a proxy, not the client, so the
        per-IP cap waits for ``readdress()``.

        ``max_connections`` is also checked here, although the accept loop stops
        accepting at that number: a request taken by ``handle_request()``, or
        by a loop that raced a release, must not go over it either.
        """
        limits = self.limits
        now = time.monotonic() if now is None else now
        per_ip = limits.max_connections_per_ip
        timeout = limits.connection_timeout
        deadline = None if timeout is None else now + timeout
        if per_ip is None and limits.max_connections is None:
            # Nothing to refuse, only to count: no lock, whose two turns cost
            # more than the rest of admit() and release(). Every step is one
            # atomic operation (a dict's item, next() on a counter), and a
            # drain looks at the open tickets after registering its waker
            # (see release()).
            ticket = Ticket(peer, UNCOUNTED, now, deadline, next(self._numbers))
            self._open[id(ticket)] = ticket
            return ticket
        key = UNCOUNTED if per_ip is None else client_key(peer) if per_client else DEFERRED
        with self._lock:
            total = limits.max_connections
            if total is not None and len(self._open) >= total:
                refusal = Refusal(ConnectionLimitReached(total, peer))
            else:
                count = 0 if per_ip is None or key is DEFERRED else self._per_client.get(key, 0)
                if per_ip is None or count < per_ip:
                    if per_ip is not None and key is not DEFERRED:
                        self._per_client[key] = count + 1
                    ticket = Ticket(peer, key, now, deadline, next(self._numbers))
                    self._open[id(ticket)] = ticket
                    return ticket
                refusal = Refusal(ConnectionLimitReached(per_ip, peer, per_ip=True))
            self.metrics.refuse(refusal.reason)
            return refusal

    def readdress(self, ticket: Ticket, peer: Any) -> Refusal | None:
        """The connection's real client is ``peer`` (a PROXY header said so):
        count it under that client from now on, or refuse it if that client
        is at ``max_connections_per_ip``. A refused ticket stays counted
        where it was, and is released as usual when its connection closes."""
        ticket.peer = peer
        if ticket.key is UNCOUNTED:
            return None
        key = client_key(peer)
        with self._lock:
            if key == ticket.key or ticket.released:
                return None
            per_ip = self.limits.max_connections_per_ip
            count = self._per_client.get(key, 0)
            if per_ip is not None and count >= per_ip:
                refusal = Refusal(ConnectionLimitReached(per_ip, peer, per_ip=True))
                self.metrics.refuse(refusal.reason)
                return refusal
            if ticket.key is not DEFERRED:
                remaining = self._per_client[ticket.key] - 1
                if remaining:
                    self._per_client[ticket.key] = remaining
                else:
                    del self._per_client[ticket.key]
            self._per_client[key] = count + 1
            ticket.key = key
        return None

    def release(self, ticket: Ticket) -> None:
        """Count a finished connection out; only the first call for a ticket counts."""
        if ticket.key is UNCOUNTED and self.limits.max_connections is None:
            # Admitted without the lock (see admit()): whichever call pops
            # the ticket is the one that counts it out.
            if self._open.pop(id(ticket), None) is None:
                return
            ticket.released = True
            if ticket.closed_by is not None or self.settle_all:  # (a cut sets closed_by too)
                self._settle(ticket)
            if not next(self._released_count) % FOLD_BATCH:
                self.fold()
            if self._idle_wakers and len(self._open) <= 1:
                for waker in list(self._idle_wakers):
                    waker.wake()
            return
        with self._lock:
            if ticket.released:
                return
            ticket.released = True
            del self._open[id(ticket)]
            key = ticket.key
            if key is not UNCOUNTED and key is not DEFERRED:
                remaining = self._per_client[key] - 1
                if remaining:
                    self._per_client[key] = remaining
                else:
                    del self._per_client[key]
            still_open = len(self._open)
            limit = self.limits.max_connections
            freed = limit is not None and still_open == limit - 1
            # A drain may wait for none, or for none but its caller's own.
            wakers = list(self._idle_wakers) if still_open <= 1 and self._idle_wakers else ()
        # Counted before a drain waiting for idleness wakes: what it then
        # reads of the metrics includes this connection.
        if ticket.closed_by is not None or self.settle_all:
            self._settle(ticket)
        if not next(self._released_count) % FOLD_BATCH:
            self.fold()
        for waker in wakers:
            waker.wake()
        if freed and self._on_free is not None:
            self._on_free()

    def use_metrics(self, metrics: Metrics) -> None:
        """Count in ``metrics`` from now on (what was counted stays where it was)."""
        if metrics is self.metrics:
            return
        self.fold()
        self.metrics = metrics
        metrics.add_source(self.fold)

    def _settle(self, ticket: Ticket) -> None:
        """The slower path of a release: why it ended (a timeout counted, the
        access line), whether it was a request at all, and its bytes."""
        why = settle(ticket, self.metrics, self.access_log, self.request_unit)
        if (why == "refused" or why == "verify_request") and self.request_unit:
            next(self._not_requests)  # it ended before its handler
        if ticket.received or ticket.sent:
            self.metrics.add_many(received=ticket.received or 0, sent=ticket.sent or 0)

    def fold(self) -> None:
        """Count the connections admitted and released since the last fold
        in the metrics (thread-safe; any thread)."""
        size_sum = _take_sum(self.datagram_sizes)
        counted_requests = _take_sum(self.request_counts)
        with self._fold_lock:
            admitted = _consumed(self._numbers) - 1
            released = _consumed(self._released_count) - 1
            not_requests = _consumed(self._not_requests)
            datagrams, datagram_bytes = self.datagrams, self.datagram_bytes
            was = self._folded
            self._folded = (admitted, released, not_requests, datagrams, datagram_bytes)
            new_admitted, new_released = admitted - was[0], released - was[1]
            new_datagrams = datagrams - was[3]
            if new_admitted or new_released or new_datagrams or size_sum or counted_requests:
                self.metrics.add_many(
                    accepted=new_admitted * self.accepted_unit + new_datagrams,
                    active=new_admitted - new_released,
                    requests=new_released * self.request_unit
                    - (not_requests - was[2])
                    + new_datagrams
                    + counted_requests,
                    received=size_sum + datagram_bytes - was[4],
                )

    @property
    def refused(self) -> collections.Counter[str]:
        """The refusals so far, by reason (those that happened): a copy, from the metrics."""
        return collections.Counter({name: n for name, n in self.metrics.snapshot().refused.items() if n})

    def at_capacity(self) -> bool:
        """True while ``max_connections`` are open: the accept loop should pause."""
        limit = self.limits.max_connections
        return limit is not None and len(self._open) >= limit

    def __len__(self) -> int:
        return len(self._open)

    def tickets(self) -> list[Ticket]:
        """The connections in flight now."""
        with self._lock:
            return list(self._open.values())

    def next_deadline(self) -> float | None:
        """The earliest connection deadline of those that can be cut, or None."""
        # Over a copy: tickets come and go without the lock (see admit()).
        with self._lock:
            deadlines = [
                t.deadline for t in list(self._open.values()) if t.deadline is not None and t.abort is not None
            ]
        return min(deadlines, default=None)

    def overdue(self, now: float | None = None) -> list[Ticket]:
        """The connections that can be cut and whose deadline has passed."""
        now = time.monotonic() if now is None else now
        with self._lock:
            return [
                t
                for t in list(self._open.values())  # a copy: see next_deadline()
                if t.deadline is not None and t.deadline <= now and t.abort is not None
            ]

    def interrupt(self) -> None:
        """Make a current or future ``wait_idle()`` return False at once."""
        with self._lock:
            self._interrupted = True
            wakers = list(self._idle_wakers)
        for waker in wakers:
            waker.wake()

    def wait_idle(self, timeout: float | None, ignore: Ticket | None = None) -> bool:
        """Block until no connection is in flight but ``ignore`` (the caller's
        own); False if ``timeout`` ran out first or ``interrupt()`` was called.

        It waits on a self-pipe, not a condition variable: ``interrupt()``
        comes from ``force_stop()`` in a signal handler, which runs on the main
        thread, possibly the waiting one, between its look at the state and
        its wait. A condition's notify would then find no waiter yet and be
        lost, and the wait would last the whole grace period; a byte in the
        pipe is still there when the wait begins.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        waker = Waker()
        with self._lock:
            self._idle_wakers.add(waker)
        try:
            while True:
                with self._lock:
                    if len(self._open) <= (1 if ignore is not None and id(ignore) in self._open else 0):
                        return True
                    if self._interrupted:
                        return False
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                waker.wait(remaining)
                waker.drain()
        finally:
            with self._lock:
                self._idle_wakers.discard(waker)
            waker.close()
