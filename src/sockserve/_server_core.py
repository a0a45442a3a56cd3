"""What every sockserve server has, synchronous or async: its limits, the
admission step of each connection, ``max_requests``, and the shutdown
handshake. Written once here; ``BaseServer`` and ``AsyncBaseServer`` add the
loop that runs on them.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from ._admission import Admission, Refusal, Ticket
from ._limits import NO_LIMITS, Limits
from ._log import format_address, log_refused, logger
from ._shutdown import ShutdownHandshake

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see sockserve/__init__.py)
if TYPE_CHECKING:
    from typing import Any

    from ._stages import StageFactory


class ServerCore:
    """Limits, admission, max_requests and the shutdown handshake of one server."""

    # Connection caps and timeouts (none by default, as in the stdlib). Set on
    # a subclass or an instance before serving.
    limits: Limits = NO_LIMITS
    # Stop accepting after this many requests were admitted (a prefork worker
    # is recycled this way); the serve loop then returns as after shutdown().
    max_requests: int | None = None
    server_address: Any

    if TYPE_CHECKING:  # the stdlib hooks, supplied by the servers

        def verify_request(self, request: Any, client_address: Any) -> bool: ...
        def handle_error(self, request: Any, client_address: Any) -> None: ...

    def _start_core(self) -> None:
        """Called by the servers' constructors (which, like the stdlib's, call no super().__init__)."""
        self._handshake = ShutdownHandshake()
        self._admission_lock = threading.Lock()
        self._admission_book: Admission | None = None
        self._max_requests_done = False

    def _admission(self) -> Admission:
        """The connections admitted; made on first use, with the limits then in force."""
        admission = self._admission_book
        if admission is None:
            with self._admission_lock:
                if self._admission_book is None:
                    self._admission_book = Admission(self.limits, on_free=self._capacity_freed)
                admission = self._admission_book
        return admission

    def _capacity_freed(self) -> None:
        """Called (from any thread) when a release takes the server below
        max_connections: the loop wakes and accepts again."""

    def _admit(self, request: Any, client_address: Any) -> Ticket | None:
        """The admit step: the admission policy, then ``verify_request()``.

        A ticket, or None when the request must be dropped (the caller closes
        it). A refusal is logged (rate-limited) and counted; an exception in
        ``verify_request()`` goes to ``handle_error()`` instead of escaping
        the serve loop.
        """
        admission = self._admission_book
        if admission is None:
            admission = self._admission()
        verdict = admission.admit(client_address)
        if isinstance(verdict, Refusal):
            log_refused(verdict.error)
            return None
        try:
            verified = self.verify_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
            verified = False
        except BaseException:
            admission.release(verdict)
            raise
        if not verified:
            admission.release(verdict)
            return None
        # The ticket's own number: exact even while other threads admit (a datagram pool's workers).
        if self.max_requests is not None and verdict.number >= self.max_requests and not self._max_requests_done:
            self._max_requests_done = True
            logger.info(
                "%s: %d requests admitted (max_requests): no more accepted",
                format_address(self.server_address),
                verdict.number,
            )
            self._handshake.request()
        return verdict

    def _stage_factories(self) -> Sequence[StageFactory]:
        """The stages each connection goes through between admission and its
        handler (none yet: TLS and the PROXY protocol will add theirs)."""
        return ()

    @property
    def max_requests_reached(self) -> bool:
        """True once ``max_requests`` requests were admitted and the server stopped accepting."""
        return self._max_requests_done

    def _in_flight_count(self) -> int:
        admission = self._admission_book
        return 0 if admission is None else len(admission)
