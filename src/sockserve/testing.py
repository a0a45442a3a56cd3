"""Helpers for tests that run a real server: ours, and our users'.

``running_server(server)`` serves in a background thread for the duration of a
``with`` block, and always stops, joins and closes it afterwards::

    with running_server(TCPServer(("127.0.0.1", 0), Handler)) as server:
        sock = socket.create_connection(server.server_address)
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any, Protocol, TypeVar

__all__ = ["running_server"]


class _Servable(Protocol):
    """What running_server() needs: the sync servers and the async ones have it."""

    def serve_forever(self, poll_interval: float = ...) -> Any: ...
    def shutdown(self) -> None: ...
    def server_close(self) -> None: ...


_ServerT = TypeVar("_ServerT", bound=_Servable)


@contextlib.contextmanager
def running_server(server: _ServerT, *, poll_interval: float = 0.5, stop_timeout: float = 30.0) -> Iterator[_ServerT]:
    """Run ``server.serve_forever()`` in a thread while the block runs.

    The server is already bound and listening when it is passed in, so clients
    may connect at once (a connection made before the loop starts waits in the
    backlog). On exit: ``shutdown()``, join the thread (at most
    ``stop_timeout`` seconds), then ``server_close()``.

    Raises:
        RuntimeError: the serving thread did not stop within ``stop_timeout``.
    """
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": poll_interval},
        name=f"sockserve server {type(server).__name__}",
        daemon=True,  # a test that fails to stop it must not hang the interpreter
    )
    thread.start()
    try:
        yield server
    finally:
        try:
            server.shutdown()
            thread.join(stop_timeout)
        finally:
            server.server_close()
        if thread.is_alive():
            raise RuntimeError(f"{type(server).__name__}.serve_forever() did not stop within {stop_timeout}s")
