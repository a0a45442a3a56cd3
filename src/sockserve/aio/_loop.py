"""Which event loop a blocking ``serve_forever()`` creates: asyncio's, or
uvloop's when it is installed; and which loop a running one is. The only
module of sockserve that imports uvloop, and only when asked to."""

from __future__ import annotations

import asyncio
import importlib.util
from asyncio.selector_events import BaseSelectorEventLoop
from typing import Literal

LoopChoice = Literal["auto", "asyncio", "uvloop"]
LoopKind = Literal["asyncio", "uvloop", "other"]

LOOP_CHOICES: tuple[LoopChoice, ...] = ("auto", "asyncio", "uvloop")


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
