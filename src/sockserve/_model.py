"""The contract between a synchronous server and its concurrency model.

A model is where handlers run (the serve loop's own thread, a thread per
request, a pool of workers, a child process per request) and how a graceful
stop waits for them and cuts them off. The server's core (accept, admission,
stages, release, drain) talks to a model through ``ConcurrencyModel`` and
nothing else; the stdlib's mixins keep their ``process_request`` override
points and hand each admitted ``Job`` to their model there.
"""

from __future__ import annotations

from ._admission import Admission, Ticket

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see sockserve/__init__.py)
if TYPE_CHECKING:
    from typing import Protocol
else:
    Protocol = object  # the protocol here is for type checkers; at run time, a plain class


class ConcurrencyModel(Protocol):
    """What a concurrency model provides to the server's core."""

    @property
    def runs_on_loop(self) -> bool:
        """True if handlers run on the serve loop's own thread (the sequential
        model): a graceful stop then cannot wait for the loop before draining."""
        ...

    @property
    def cuts_own_deadlines(self) -> bool:
        """True if the model enforces ``connection_timeout`` itself (a forked
        child cuts its own connection); otherwise the server's watchdog does."""
        ...

    def at_capacity(self) -> bool:
        """True while the model can take no more work: the loop stops accepting."""
        ...

    def in_flight(self) -> int:
        """Requests whose handlers have not finished."""
        ...

    def wait(self, timeout: float | None, ignore: Ticket | None = None) -> bool:
        """Block until every request but ``ignore`` has finished; False if
        ``timeout`` ran out or ``interrupt()`` was called first."""
        ...

    def force(self, reason: BaseException, ignore: Ticket | None = None) -> int:
        """Cut off the requests still running (but ``ignore``); how many were cut."""
        ...

    def interrupt(self) -> None:
        """Make a current or future ``wait()`` return at once (``force_stop()``).
        Safe from any thread and from a signal handler."""
        ...

    def close(self) -> None:
        """Release what the model holds (threads, children) once the server closes."""
        ...


class TicketModel:
    """A model whose requests are the admission's tickets: what is in flight
    is what was admitted and not yet released, and cutting a request shuts
    its socket down, which ends its handler's reads and writes. The
    sequential, thread and pool models are this, with a capacity and a
    clean-up of their own."""

    runs_on_loop = False
    cuts_own_deadlines = False

    def __init__(self, admission: Admission) -> None:
        self.admission = admission

    def at_capacity(self) -> bool:
        return False

    def in_flight(self) -> int:
        return len(self.admission)

    def wait(self, timeout: float | None, ignore: Ticket | None = None) -> bool:
        return self.admission.wait_idle(timeout, ignore)

    def force(self, reason: BaseException, ignore: Ticket | None = None) -> int:
        return sum(1 for ticket in self.admission.tickets() if ticket is not ignore and ticket.cut(reason))

    def interrupt(self) -> None:
        self.admission.interrupt()

    def close(self) -> None:
        """Nothing of its own to release."""


class InlineModel(TicketModel):
    """The sequential model: each handler runs on the serve loop's thread."""

    runs_on_loop = True
