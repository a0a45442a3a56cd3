"""Every use sockserve makes of asyncio's private internals, in one place and
behind one switch. Each is a fast path on asyncio's own selector loop
(``_loop.loop_kind(loop) == "asyncio"``); without it the code takes asyncio's
public API, as it does on uvloop and any other loop, and is as correct.

- **The eager resume** (``Wakeup``): the future a stream handler's task waits
  on resumes the task inside the transport callback that completes it,
  instead of one turn of the loop later.
- **The ``_ready`` peek**: ``loop._ready`` is the queue of callbacks due in
  this turn of asyncio's loop; the eager resume is used only when it is
  empty (connections taking turns), see ``Wakeup``.
- **Capped reads** (``cap_reads``): a stream connection's transport reads at
  most ``READ_SIZE`` bytes at once, instead of its class's ``max_size``.

The switch: the environment variable ``SOCKSERVE_ASYNCIO_FAST_PATHS``, read
once, when this module is imported. ``0`` (or ``false``, ``no``, ``off``)
turns every fast path off; anything else, or unset, leaves them on.
``ENABLED`` says which (tests read it).
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import operator
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, cast

from ._loop import loop_kind

SWITCH = "SOCKSERVE_ASYNCIO_FAST_PATHS"


def switch_is_on(value: str | None) -> bool:
    """What a value of ``SOCKSERVE_ASYNCIO_FAST_PATHS`` means: on unless it says off."""
    return value is None or value.strip().lower() not in ("0", "false", "no", "off")


ENABLED = switch_is_on(os.environ.get(SWITCH))


def enabled_for(loop: asyncio.AbstractEventLoop) -> bool:
    """True if the fast paths are on and ``loop`` is asyncio's own selector loop."""
    return ENABLED and loop_kind(loop) == "asyncio"


WaiterMaker = Callable[[asyncio.AbstractEventLoop], "asyncio.Future[Any]"]


# The _ready peek, ``loop._ready``: the deque of callbacks due in this turn
# of asyncio's loop, an instance attribute that the loop sets once, in its
# constructor. Read once per request (new_waiter, Wakeup.set_result) through
# ``operator.attrgetter``, a C call, typed for mypy by the stub below: not
# through a Python helper or typing.cast(), both Python calls, and not as
# ``vars(loop)["_ready"]``: asking an object for its ``__dict__`` makes
# CPython (3.11+) give up the inline attribute storage of that object, and
# every later attribute access on the loop, asyncio's own included, gets
# slower (measured: +6,600 instructions per request of a stream handler
# ping-pong).
if TYPE_CHECKING:

    def callbacks_due(loop: asyncio.AbstractEventLoop) -> collections.deque[Any]:
        """``loop._ready``: asyncio's callbacks due in this turn."""
        ...

    class _CappedTransport(Protocol):
        max_size: int

else:
    callbacks_due = operator.attrgetter("_ready")


def new_waiter(loop: asyncio.AbstractEventLoop) -> asyncio.Future[Any]:
    """A ``Wakeup`` when connections take turns; else a plain future (other
    callbacks are due in this turn, so the wait will most likely end in a
    busy turn too, where a Wakeup would only defer like a plain future, at
    the cost of its Python methods)."""
    if callbacks_due(loop):  # the _ready peek (above)
        return loop.create_future()
    return Wakeup(loop=loop)


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
        if callbacks_due(self.get_loop()):  # the _ready peek
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


# The most a stream connection's transport reads at once, with the fast paths.
READ_SIZE = 64 * 1024


def cap_reads(transport: asyncio.BaseTransport) -> None:
    """Capped reads: asyncio's selector transport reads up to ``max_size``
    bytes per ``recv()`` (256 KiB, a class attribute of its private transport
    class), and CPython allocates that much for each read from ``mmap``,
    then shrinks and frees it: three system calls per read, more than the
    read itself. 64 KiB come from the heap. Set on the transport, the cap
    is that connection's only.

    (It replaces a buffer the connections of a loop shared through
    ``BufferedProtocol``, which avoided the same system calls at the cost of
    two more Python calls per read, ``get_buffer()`` and ``buffer_updated()``:
    about 2,000 instructions per request.)
    """
    cast("_CappedTransport", transport).max_size = READ_SIZE  # once per connection
