"""ThreadingMixIn: a thread per request, with the stdlib's exact semantics.

Each request's thread runs its ``Job`` (stages, then the stdlib's
``process_request_thread``, then the release of its admission ticket), so
overriding ``process_request_thread``, ``shutdown_request`` or
``close_request`` cannot leak a slot. Graceful stop waits for the admitted
requests (``TicketModel``).
"""

from __future__ import annotations

import threading

from ._model import ConcurrencyModel, TicketModel
from ._thread_signals import signals_as_the_program_set_them

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see sockserve/__init__.py)
if TYPE_CHECKING:
    from typing import Any

    from ._admission import Admission
    from ._base_server import BaseServer as _ServerBase
else:
    # At run time the mixins stand alone, as the stdlib's do, so that their
    # place in a user's class hierarchy is the same; to the type checker they
    # are servers, whose hooks they call.
    _ServerBase = object


def run_request(server: Any, request: Any, client_address: Any) -> None:
    """Handle one request off the serve loop's thread, as the stdlib's threads
    do: an Exception goes to handle_error(), anything else (SystemExit) ends
    the thread; the request is shut down either way."""
    try:
        server.finish_request(request, client_address)
    except Exception:
        server._handler_error(request, client_address)  # handle_error(), counted
    finally:
        server.shutdown_request(request)


class _NoThreads:
    """Stands in for the registry when ``block_on_close`` is False: nothing is kept."""

    def append(self, thread: threading.Thread) -> None:
        pass

    def join(self) -> None:
        pass

    def __len__(self) -> int:
        return 0


class _Threads:
    """The live request threads, so that server_close() can join them.

    Finished threads are dropped whenever one is added, so a long-running
    server does not accumulate them (CPython bpo-37193).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def append(self, thread: threading.Thread) -> None:
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)

    def join(self) -> None:
        with self._lock:
            threads, self._threads = self._threads, []
        for thread in threads:
            if thread is not threading.current_thread():  # server_close() from a request's own handler
                thread.join()

    def __len__(self) -> int:
        return len(self._threads)


class ThreadingMixIn(_ServerBase):
    """Mix-in class to handle each request in a new thread.

    Class variables:

    - daemon_threads: request threads are daemons (do not keep the process alive)
    - block_on_close: server_close() waits for the request threads to finish
    """

    daemon_threads = False
    block_on_close = True
    # The stdlib's internal name, read by its test suite; a class-level default
    # that keeps nothing, replaced per instance when threads must be joined.
    _threads: _Threads | _NoThreads = _NoThreads()

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """What a request thread runs: the handler, then closing the request."""
        run_request(self, request, client_address)

    def process_request(self, request: Any, client_address: Any) -> None:
        """Start a new thread to process the request."""
        job = self._take_job(request, client_address)
        # Not vars(self): asking for the server's __dict__ would cost it
        # CPython's inline attribute storage, and every later attribute access.
        if self.block_on_close and isinstance(self._threads, _NoThreads):
            self._threads = _Threads()
        target = self.process_request_thread

        def process_request_thread() -> None:  # named as the stdlib's thread target, so threads are named alike
            signals_as_the_program_set_them()  # not blocked: the handler's programs inherit it
            job.run(target)

        thread = threading.Thread(target=process_request_thread)
        thread.daemon = self.daemon_threads
        self._threads.append(thread)
        thread.start()

    def _make_model(self, admission: Admission) -> ConcurrencyModel:
        return TicketModel(admission)

    def server_close(self) -> None:
        super().server_close()
        self._threads.join()
