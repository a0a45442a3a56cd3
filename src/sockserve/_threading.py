"""ThreadingMixIn: a thread per request, with the stdlib's exact semantics."""

from __future__ import annotations

import threading
from typing import Any


def run_request(server: Any, request: Any, client_address: Any) -> None:
    """Handle one request off the serve loop's thread, as the stdlib's threads
    do: an Exception goes to handle_error(), anything else (SystemExit) ends
    the thread; the request is shut down either way."""
    try:
        server.finish_request(request, client_address)
    except Exception:
        server.handle_error(request, client_address)
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
            thread.join()

    def __len__(self) -> int:
        return len(self._threads)


class ThreadingMixIn:
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
        if self.block_on_close and "_threads" not in vars(self):
            self._threads = _Threads()
        thread = threading.Thread(target=self.process_request_thread, args=(request, client_address))
        thread.daemon = self.daemon_threads
        self._threads.append(thread)
        thread.start()

    def server_close(self) -> None:
        super().server_close()  # type: ignore[misc]
        self._threads.join()
