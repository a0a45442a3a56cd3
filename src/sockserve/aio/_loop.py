"""Which event loop a blocking ``serve_forever()`` creates: asyncio's, or
uvloop's when it is installed; which loop a running one is; and letting a
loop accept connections in its own code. The only module of sockserve that
imports uvloop, and only when asked to."""

from __future__ import annotations

import asyncio
import importlib.util
import socket
from asyncio.selector_events import BaseSelectorEventLoop
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar, cast

from .._accept import ACCEPT_BATCH

LoopChoice = Literal["auto", "asyncio", "uvloop"]
LoopKind = Literal["asyncio", "uvloop", "other"]

LOOP_CHOICES: tuple[LoopChoice, ...] = ("auto", "asyncio", "uvloop")

_T = TypeVar("_T")


def uvloop_available() -> bool:
    """True if ``import uvloop`` would find the package (it is not imported)."""
    return importlib.util.find_spec("uvloop") is not None


def resolve_loop(choice: LoopChoice) -> Literal["asyncio", "uvloop"]:
    """``"auto"`` is uvloop when installed, else asyncio; the others are themselves."""
    if choice not in LOOP_CHOICES:
        raise ValueError(f"loop must be one of {', '.join(LOOP_CHOICES)}; got {choice!r}")
    if choice == "auto":
        return "uvloop" if uvloop_available() else "asyncio"
    return choice


def new_event_loop(choice: LoopChoice = "auto") -> asyncio.AbstractEventLoop:
    """A new event loop of the chosen kind (not set as the thread's current loop).

    Raises:
        ImportError: ``"uvloop"`` was asked for and is not installed
            (``pip install 'sockserve[uvloop]'``).
    """
    if resolve_loop(choice) == "uvloop":
        try:
            import uvloop
        except ImportError as exc:
            raise ImportError(f"loop='uvloop' needs uvloop: pip install 'sockserve[uvloop]' ({exc})") from exc
        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def loop_kind(loop: asyncio.AbstractEventLoop) -> LoopKind:
    """Which loop this is; the one place sockserve tells loops apart.

    ``"asyncio"``: asyncio's own selector loop (what ``asyncio.new_event_loop()``
    makes on POSIX), whose pure-Python transports and ``signal.set_wakeup_fd``
    handling sockserve knows (see ``_fastpaths`` and ``_signals``).
    ``"uvloop"``: uvloop's. ``"other"``: anything else, which sockserve uses
    through asyncio's public API only.
    """
    if isinstance(loop, BaseSelectorEventLoop):
        return "asyncio"
    if type(loop).__module__.partition(".")[0] == "uvloop":  # without importing uvloop
        return "uvloop"
    return "other"


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """``"uvloop"`` or ``"asyncio"``, for log lines and reports."""
    return "uvloop" if loop_kind(loop) == "uvloop" else "asyncio"


def loop_accepts(loop: asyncio.AbstractEventLoop) -> bool:
    """True if ``accept_with_loop()`` may be used on ``loop``: asyncio's and
    uvloop's servers, whose ``create_server(sock=...)`` and
    ``start_serving()`` are known to do their work before they first wait."""
    return loop_kind(loop) != "other"


def accept_with_loop(
    loop: asyncio.AbstractEventLoop,
    protocol_factory: Callable[[], asyncio.BaseProtocol],
    sock: socket.socket,
    backlog: int,
) -> asyncio.Server:
    """Let ``loop`` accept the connections waiting on the listening ``sock``
    in its own code (uvloop's in C), from now until the returned server is
    closed; ``protocol_factory`` makes each connection's protocol.

    The loop's server gets a duplicate of ``sock``: closing it (to pause
    accepting) closes the duplicate only, so the listening socket and its
    backlog stay, and a later call serves again. Both loops call
    ``listen()`` again when they start serving, with their ``backlog``
    argument, which asyncio's also uses as the most connections it takes
    per wake-up: the server gets ``ACCEPT_BATCH`` for that, as sockserve's
    own accept takes, and ``backlog`` (the kernel's queue) is put back at
    once. (One per wake-up was tried, because asyncio's accept, out of
    descriptors, goes on trying for the rest of its batch and arms a retry
    timer per failure; but a turn of the loop per connection cost 102
    against 65 CPU µs per connection under connect_20, where the batch's
    extra failures cost a few system calls a second during an episode, and
    their lines and the retries' are the server's hook's business:
    ``AsyncTCPServer._loop_accept_error``.) libuv takes what waits whatever
    the argument.

    Called from plain code on the loop's thread (pausing and resuming
    happen in callbacks), so the two coroutines are stepped here: with a
    socket given, neither loop's ``create_server()`` waits for anything;
    ``start_serving()`` starts at once, and asyncio's then only yields one
    turn of the loop to other callbacks, which is not needed here.
    """
    listener = sock.dup()
    try:
        server = _step(loop.create_server(protocol_factory, sock=listener, backlog=ACCEPT_BATCH, start_serving=False))
    except BaseException:
        listener.close()
        raise
    if server is None:
        listener.close()
        raise RuntimeError(f"{loop_name(loop)}'s create_server() waited, with a socket given")
    _step(server.start_serving())
    sock.listen(backlog)
    return server  # (uvloop's quacks like an asyncio.Server)


def _step(coro: Coroutine[Any, Any, _T]) -> _T | None:
    """Run ``coro`` up to its first wait; its result if it finished there.
    (A coroutine still waiting is closed: what it would do next is not needed.)"""
    try:
        coro.send(None)
    except StopIteration as finished:
        return cast(_T, finished.value)
    coro.close()
    return None
