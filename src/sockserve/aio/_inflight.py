"""What an async server admits: one connection or datagram in flight, with
its admission ticket, from admission until it is finished and released.

The server hands each item the callback that releases a ticket
(``release``), so connections never reach into the server's private state;
a limit or a drain cuts an item through its ticket (``Ticket.cut`` calls
``abort``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .._admission import Ticket


class InFlight:
    """Base of the async servers' connections and datagrams."""

    __slots__ = ("_release", "aborted", "client_address", "task", "ticket", "timer")

    def __init__(self, client_address: Any, release: Callable[[Ticket], None]) -> None:
        self.client_address = client_address
        self._release = release
        self.ticket: Ticket | None = None
        self.task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None  # connection_timeout
        self.aborted: BaseException | None = None

    def admitted(self, ticket: Ticket) -> None:
        self.ticket = ticket
        # The item itself, which abort()s when called: a bound method kept
        # on the ticket would cost 64 bytes per connection held.
        ticket.abort = self

    def __call__(self, exc: BaseException) -> None:
        """What ``Ticket.cut`` calls: ``abort(exc)``."""
        self.abort(exc)

    def abort(self, exc: BaseException) -> None:
        """End it now: close its transport, cancel or fail its handler."""
        raise NotImplementedError

    def finish(self) -> None:
        """It is over: stop its deadline and count it out (only the first call counts)."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        ticket, self.ticket = self.ticket, None
        if ticket is not None:
            ticket.abort = None
            self._release(ticket)
