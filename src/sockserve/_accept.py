"""Accept policy: how many requests to take per wake-up, and what to do when
the process runs out of descriptors.

The stdlib swallows every ``OSError`` from ``get_request()`` and returns to
``select()``, which reports the listening socket readable again at once: out of
descriptors, it spins at 100% CPU. Here such errors are logged once per episode
and the loop backs off, keeping its listening socket, until accepting works
again; the connection that could not be accepted waits in the kernel backlog
and is served then.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable

from ._errors import SockserveError
from ._log import format_address, logger

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see sockserve/__init__.py)
if TYPE_CHECKING:
    from typing import Any

# Errors that mean "no resources to accept right now", not "this connection is
# bad": retrying immediately cannot succeed, retrying later will.
ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

# Long enough that a process out of descriptors uses no measurable CPU, short
# enough that service resumes quickly once a descriptor frees up (trio uses 0.1).
BACKOFF_SECONDS = 0.1

# Upper bound of requests taken per wake-up, so that service_actions() and a
# pending shutdown() still get their turn under a flood of connections.
ACCEPT_BATCH = 64


class AcceptBackoff:
    """Tracks one episode of accept failures and decides how loud to be.

    ``count(reason)``, if given, is called with ``"emfile"`` for each try
    that failed for want of resources (the server's refusal count: a
    connection that waits in the backlog meanwhile may be counted more than
    once, as each try is).
    """

    def __init__(self, count: Callable[[str], None] | None = None) -> None:
        self.failures = 0
        self._since = 0.0
        self._count = count

    def failed(self, exc: OSError, listen_address: Any) -> bool:
        """Record ``exc``; True if the caller should back off before retrying."""
        if isinstance(exc, SockserveError):
            return False  # our own, already reported (e.g. a datagram dropped for its size)
        if exc.errno not in ACCEPT_CAPACITY_ERRNOS:
            logger.debug("accept on %s failed: %s", format_address(listen_address), exc)
            return False
        if self.failures == 0:
            self._since = time.monotonic()
            logger.error(
                "cannot accept on %s: %s; backing off %.2fs between tries, pending connections wait in the backlog",
                format_address(listen_address),
                exc,
                BACKOFF_SECONDS,
            )
        else:
            logger.debug("accept on %s still failing: %s", format_address(listen_address), exc)
        self.failures += 1
        if self._count is not None:
            self._count("emfile")
        return True

    def succeeded(self, listen_address: Any) -> None:
        if self.failures:
            logger.warning(
                "accepting on %s again after %d failed tries in %.2fs",
                format_address(listen_address),
                self.failures,
                time.monotonic() - self._since,
            )
            self.failures = 0


def accept_batch(
    get_request: Callable[[], tuple[Any, Any]],
    dispatch: Callable[[Any, Any], None],
    go_on: Callable[[], bool],
    backoff: AcceptBackoff,
    listen_address: Any,
    back_off: Callable[[], None],
    limit: int = ACCEPT_BATCH,
) -> None:
    """Take up to ``limit`` waiting requests (connections, or datagrams) and
    ``dispatch`` each; shared by the synchronous and async servers.

    It stops early when nothing more is waiting (``BlockingIOError`` from a
    non-blocking socket), when ``go_on()`` says so after a request (the server
    is at capacity, or stopping), or when taking one failed: out of
    descriptors, ``back_off()`` is called first (see ``AcceptBackoff``).
    """
    for _ in range(limit):
        try:
            request, client_address = get_request()
        except (BlockingIOError, InterruptedError):
            return  # nothing (more) waiting, or another worker process took it
        except OSError as exc:
            if backoff.failed(exc, listen_address):
                back_off()
            return
        if backoff.failures:
            backoff.succeeded(listen_address)
        dispatch(request, client_address)
        if not go_on():
            return
