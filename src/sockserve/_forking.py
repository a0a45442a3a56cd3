"""ForkingMixIn: a child process per request, with the stdlib's semantics.

Children are reaped in ``service_actions()`` (every turn of the serve loop),
in ``handle_timeout()`` and in ``server_close()``, as the stdlib does. Two
things differ, both invisible to working code:

* at ``max_children`` the parent waits for one of *its own* children to exit
  (through pidfds where the OS has them), where the stdlib's ``waitpid(-1)``
  could reap, and lose the status of, a child the program forked itself;
* the cap is also checked before forking, so taking several requests per
  wake-up can never push the number of children over ``max_children``.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import time
from typing import Any

from ._wakeup import Waker


def _wait_for_any(pids: set[int], timeout: float | None = None, waker: Waker | None = None) -> None:
    """Block until one of ``pids`` has exited (it is not reaped here), ``timeout``
    seconds have passed, or ``waker`` was woken."""
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is None:  # pragma: no cover - not Linux: block on the oldest child
        os.waitpid(min(pids), 0)
        return
    fds = []
    try:
        for pid in pids:
            try:
                fds.append(pidfd_open(pid))
            except ProcessLookupError:
                return  # already reaped elsewhere: a slot is free
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)
        if waker is not None:
            poller.register(waker.fileno(), select.POLLIN)
        poller.poll(None if timeout is None else max(0.0, timeout) * 1000.0)
    finally:
        for fd in fds:
            os.close(fd)


class ForkingMixIn:
    """Mix-in class to handle each request in a new process.

    Class variables:

    - timeout: handle_request()'s timeout, so that children get reaped (300 s)
    - max_children: at most this many children at once (40)
    - block_on_close: server_close() waits for all children to exit
    """

    timeout: float | None = 300
    active_children: set[int] | None = None
    max_children: int = 40
    block_on_close: bool = True

    def collect_children(self, *, blocking: bool = False) -> None:
        """Reap the children that have exited; wait while at max_children."""
        if self.active_children is None:
            return
        while len(self.active_children) >= self.max_children:
            _wait_for_any(self.active_children)
            before = len(self.active_children)
            self._reap(blocking=False)
            if len(self.active_children) == before:
                break  # nothing could be reaped (not our children any more)
        self._reap(blocking=blocking)

    def _reap(self, *, blocking: bool) -> None:
        assert self.active_children is not None
        flags = 0 if blocking else os.WNOHANG
        for pid in self.active_children.copy():
            try:
                reaped, _ = os.waitpid(pid, flags)
            except ChildProcessError:
                self.active_children.discard(pid)  # reaped by someone else
                self._forget_child(pid)
                continue
            except OSError:
                continue
            if reaped:
                self.active_children.discard(pid)
                self._forget_child(pid)

    # A pidfd per child, watched by serve_forever(): a child's exit wakes the
    # loop, whose service_actions() then reaps it at once, instead of up to
    # poll_interval later. So no zombie outlives its request.
    _child_fds: dict[int, int] | None = None

    def _watch_child(self, pid: int) -> None:
        pidfd_open = getattr(os, "pidfd_open", None)
        if pidfd_open is None:
            return  # pragma: no cover - not Linux: reaped on the poll_interval, as in the stdlib
        try:
            fd = pidfd_open(pid)
        except OSError:
            return  # e.g. out of descriptors: the poll_interval still reaps it
        if not self._watch(fd):  # type: ignore[attr-defined]
            os.close(fd)
            return
        if self._child_fds is None:
            self._child_fds = {}
        self._child_fds[pid] = fd

    def _forget_child(self, pid: int) -> None:
        fd = self._child_fds.pop(pid, None) if self._child_fds else None
        if fd is not None:
            self._unwatch(fd)  # type: ignore[attr-defined]
            os.close(fd)

    def handle_timeout(self) -> None:
        """Reap children when handle_request() times out."""
        self.collect_children()

    def service_actions(self) -> None:
        """Reap children once per turn of the serve_forever() loop."""
        self.collect_children()

    def process_request(self, request: Any, client_address: Any) -> None:
        """Fork a child that handles the request and exits."""
        if self.active_children is not None and len(self.active_children) >= self.max_children:
            self.collect_children()
        pid = os.fork()
        if pid:
            if self.active_children is None:
                self.active_children = set()
            self.active_children.add(pid)
            self._watch_child(pid)
            self.close_request(request)  # type: ignore[attr-defined]
            return
        # The child: handle the request, then exit without returning into the
        # parent's loop. os._exit skips atexit handlers that belong to the parent.
        status = 1
        try:
            self._close_inherited_listener()
            self.finish_request(request, client_address)  # type: ignore[attr-defined]
            status = 0
        except Exception:
            self.handle_error(request, client_address)  # type: ignore[attr-defined]
        finally:
            try:
                self.shutdown_request(request)  # type: ignore[attr-defined]
            finally:
                os._exit(status)

    def _close_inherited_listener(self) -> None:
        """In a child, close our copy of a stream server's listening socket.

        Otherwise a child busy with a long request keeps the port open after
        the parent has stopped, and new connections queue for nobody instead
        of being refused. (A datagram child replies through that socket, so
        it keeps it.)
        """
        sock = getattr(self, "socket", None)
        if sock is not None and sock.type == socket.SOCK_STREAM:
            sock.close()

    def server_close(self) -> None:
        super().server_close()  # type: ignore[misc]
        self.collect_children(blocking=self.block_on_close)
        for pid in list(self._child_fds or ()):
            self._forget_child(pid)  # children left running (block_on_close False) are not watched any more

    # Graceful stop: each connection in flight is a child process.
    _drain_waker: Waker | None = None

    def _in_flight(self) -> int:
        self.collect_children()
        return len(self.active_children or ())

    def _wait_in_flight(self, timeout: float | None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        self._drain_waker = waker = Waker()
        try:
            while True:
                if self.active_children:
                    self._reap(blocking=False)
                if not self.active_children:
                    return True
                remaining = None if deadline is None else deadline - time.monotonic()
                if self.forced or (remaining is not None and remaining <= 0):  # type: ignore[attr-defined]
                    return False
                _wait_for_any(self.active_children, remaining, waker)
        finally:
            self._drain_waker = None
            waker.close()

    def _force_in_flight(self) -> int:
        """The grace period is over: kill the children still handling requests."""
        forced = 0
        for pid in list(self.active_children or ()):
            try:
                os.kill(pid, signal.SIGKILL)
                forced += 1
            except ProcessLookupError:
                pass  # it exited just now: server_close() reaps it
        return forced

    def _interrupt_drain(self) -> None:
        super()._interrupt_drain()  # type: ignore[misc]
        waker = self._drain_waker
        if waker is not None:
            waker.wake()
