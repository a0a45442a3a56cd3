"""The idle timeout of an async stream reader: a wait for the client's bytes
that lasts longer than ``idle_timeout`` fails with ``IdleTimeoutExpired``.

Policy only: the reader says when a wait starts and when it ends; this arms
and cancels the timer, and fails the wait when it fires.
"""

from __future__ import annotations

import asyncio
from typing import Any

from .._errors import IdleTimeoutExpired


class IdleTimeout:
    """Fails each wait given to ``arm()`` that has not ended ``seconds`` later."""

    __slots__ = ("_handle", "_loop", "client_address", "seconds")

    def __init__(self, loop: asyncio.AbstractEventLoop, seconds: float, client_address: Any = None) -> None:
        self._loop = loop
        self.seconds = seconds
        self.client_address = client_address
        self._handle: asyncio.TimerHandle | None = None

    def arm(self, waiter: asyncio.Future[Any]) -> None:
        """A wait starts: fail ``waiter`` unless ``disarm()`` comes first."""
        if self._handle is not None:
            self._handle.cancel()
        self._handle = self._loop.call_later(self.seconds, self._expire, waiter)

    def disarm(self) -> None:
        """The wait has ended (bytes came, or it failed otherwise)."""
        handle = self._handle
        if handle is not None:
            self._handle = None
            handle.cancel()

    def _expire(self, waiter: asyncio.Future[Any]) -> None:
        self._handle = None
        if not waiter.done():
            waiter.set_exception(IdleTimeoutExpired(self.seconds, self.client_address))
