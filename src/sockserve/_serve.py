"""``serve()``: run a server until a signal, then stop it gracefully.

The conventions people know from gunicorn and nginx: the first SIGTERM or
SIGINT stops accepting and lets requests in flight finish (up to ``grace``
seconds); a second one, or SIGQUIT, closes what remains at once. On a
server with TLS, SIGHUP reloads its certificates for the connections that
follow. The signal
handlers only record the signal and wake the loop; all logging and waiting
happens back in the main flow. The handlers that were installed before are
restored on the way out.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterable
from types import FrameType
from typing import Protocol

from ._drain import DEFAULT_GRACE, DrainReport
from ._log import format_address, logger
from ._signal_wakeup import signals_interrupt_waits

GRACEFUL_SIGNALS = (signal.SIGTERM, signal.SIGINT)
IMMEDIATE_SIGNALS = (signal.SIGQUIT,)


class Stoppable(Protocol):
    """What serve() needs of a server (the sync and async servers have it)."""

    server_address: object

    def serve_forever(self, poll_interval: float = ...) -> object: ...
    def shutdown(self) -> None: ...
    def force_stop(self) -> None: ...
    def stop(self, grace: float | None = ...) -> DrainReport: ...


def serve(
    server: Stoppable,
    *,
    grace: float | None = DEFAULT_GRACE,
    poll_interval: float = 0.5,
    graceful_signals: Iterable[signal.Signals] = GRACEFUL_SIGNALS,
    immediate_signals: Iterable[signal.Signals] = IMMEDIATE_SIGNALS,
    unblock: Iterable[signal.Signals] = (),
) -> DrainReport:
    """Serve until a signal arrives, then stop gracefully; returns what the stop did.

    Must be called from the main thread (only it can receive signals).
    ``unblock``: signals the caller blocked so that none is lost before these
    handlers are installed; they are unblocked right after.

    Resource handling:
        The server is stopped and closed when this returns, however it returns.

    Error handling:
        An exception from ``serve_forever()`` still stops and closes the server
        (with the grace period) before it propagates.
    """
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("serve() installs signal handlers and must run in the main thread")
    received: list[signal.Signals] = []

    def graceful(signum: int, frame: FrameType | None) -> None:
        received.append(signal.Signals(signum))
        server.shutdown()  # on the serving thread this only sets a flag and wakes the loop
        if len(received) > 1:
            server.force_stop()

    def immediate(signum: int, frame: FrameType | None) -> None:
        received.append(signal.Signals(signum))
        server.force_stop()
        server.shutdown()

    # A sockserve server's (ServerCore): serve() also takes anything Stoppable.
    tls_source = getattr(server, "_tls_source", None) if getattr(server, "tls", None) is not None else None

    def reload_tls(signum: int, frame: FrameType | None) -> None:
        source = tls_source() if tls_source is not None else None
        if source is not None:
            source.request_reload()

    immediate_signals = tuple(immediate_signals)
    with signals_interrupt_waits():
        previous = {sig: signal.signal(sig, graceful) for sig in graceful_signals}
        previous.update({sig: signal.signal(sig, immediate) for sig in immediate_signals})
        if tls_source is not None:
            # SIGHUP reloads the certificates (a server without TLS keeps SIGHUP's default).
            tls_source()  # a bad configuration fails here, before serving
            previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, reload_tls)
        if unblock:
            # Signals the caller kept blocked until these handlers were in place:
            # one that arrived meanwhile is delivered now, to them.
            signal.pthread_sigmask(signal.SIG_UNBLOCK, unblock)
        try:
            try:
                server.serve_forever(poll_interval)
            finally:
                if received:
                    logger.info(
                        "%s: received %s, stopping %s",
                        format_address(server.server_address),
                        received[0].name,
                        "at once" if received[0] in immediate_signals else f"gracefully (grace {grace}s)",
                    )
                report = server.stop(grace)
            return report
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
