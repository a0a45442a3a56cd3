"""Wakeup: the future a stream handler's task waits on, which can resume the
task inside the transport callback that completes it."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from typing import Any


class Wakeup(asyncio.Future):  # type: ignore[type-arg]
    """The future a handler's task waits on, for bytes or for room to write.

    When a transport callback completes it (``set_result``) and nothing else
    is due in this turn of asyncio's loop, the waiting task resumes right
    there, inside that callback, instead of one turn later: that saves a turn
    of the loop per request (a ``call_soon``, an ``epoll_wait`` and the loop's
    bookkeeping in Python), which is most of what a task costs over a bare
    protocol when connections take turns. When other callbacks are due (busy
    connections), it resumes a turn later as a plain future does. Errors and
    cancellation resume the task the usual way, with ``call_soon``; and so
    does ``set_result`` if a task is running at that moment. Only used on
    asyncio's own loop: on uvloop a turn of the loop is cheap C, and a plain
    future is faster.
    """

    # A class default, so that making one runs no Python __init__ (one per wait).
    _eager_callbacks: list[tuple[Callable[[Any], object], contextvars.Context | None]] | None = None

    def add_done_callback(self, fn: Callable[[Any], object], *, context: contextvars.Context | None = None) -> None:
        if self.done():
            self.get_loop().call_soon(fn, self, context=context)
        elif self._eager_callbacks is None:
            self._eager_callbacks = [(fn, context)]
        else:
            self._eager_callbacks.append((fn, context))

    def remove_done_callback(self, fn: Callable[[Any], object]) -> int:
        callbacks = self._eager_callbacks or []
        kept = [(f, c) for f, c in callbacks if f != fn]
        self._eager_callbacks = kept
        return len(callbacks) - len(kept)

    def set_result(self, result: Any) -> None:
        super().set_result(result)
        if self.get_loop()._ready:  # type: ignore[attr-defined]
            # Other callbacks are due in this turn (other connections are
            # ready too): resume with them, in the next turn, as asyncio does.
            # Replies then leave together after the turn's reads, instead of
            # one per read, each waking the client anew (measured: the
            # kernel time per request doubled under 50 busy connections).
            self._schedule()
            return
        callbacks, self._eager_callbacks = self._eager_callbacks, None
        for fn, context in callbacks or ():
            try:
                if context is None:
                    fn(self)
                else:
                    context.run(fn, self)
            except RuntimeError:
                # Called from inside a running task, the waiting task could not
                # be entered (asyncio allows one at a time) and did not run:
                # resume it a turn later instead.
                self.get_loop().call_soon(fn, self, context=context)

    def set_exception(self, exception: type | BaseException) -> None:
        super().set_exception(exception)
        self.exception()  # retrieved: the task that waited may have been cancelled meanwhile
        self._schedule()

    def cancel(self, msg: Any | None = None) -> bool:
        if not super().cancel(msg):
            return False
        self._schedule()
        return True

    def _schedule(self) -> None:
        callbacks, self._eager_callbacks = self._eager_callbacks, None
        loop = self.get_loop()
        for fn, context in callbacks or ():
            loop.call_soon(fn, self, context=context)
