"""A task per datagram for ``AsyncDatagramRequestHandler`` when no limit or
hook applies to it (no ``verify_request()``, ``max_requests`` or limits): no
admission ticket, only a set of the tasks in flight, for the drain (and
because the loop holds its tasks weakly). With a
limit, the server admits each datagram (``Datagram``) instead.

What a datagram costs here, every user of the task handler pays on every
request, so the code is written for the fewest Python frames: the receiver
(which also starts the task), the handler's constructor, one coroutine around
``handle()``, and a task given a name (asyncio formats "Task-<n>" for a task
without one, which costs more than the rest of its creation).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._datagram import DatagramEndpoint, DatagramReceiver
from ._handlers import AsyncDatagramRequestHandler

if TYPE_CHECKING:
    from ._datagram import DatagramServer

TASK_NAME = "sockserve-datagram"
Task = asyncio.Task
new = object.__new__
# Since 3.12 a task can run its first step at once, inside the task (so that
# current_task(), asyncio.timeout() and the like work): a handler that does
# not wait is then done without going through the loop's queue.
EAGER = {"eager_start": True} if sys.version_info >= (3, 12) else {}
current_task = asyncio.current_task


class TaskStarter:
    """The handler tasks of one server on one loop."""

    def __init__(self, server: DatagramServer, loop: asyncio.AbstractEventLoop) -> None:
        handler_class: type[AsyncDatagramRequestHandler] = server.RequestHandlerClass
        self.server = server
        self.handler_class = handler_class
        self.loop = loop
        self.tasks: set[asyncio.Task[None]] = set()
        self.aborted: BaseException | None = None  # why abort() cancelled them
        self.on_idle: Callable[[], None] | None = None  # a drain waits for the last one
        self.plain = _plain(handler_class)
        # A task factory set on the loop makes the tasks; without one, they are made here, named.
        self.own_tasks = loop.get_task_factory() is None

    def receiver(self, endpoint: DatagramEndpoint | None = None) -> DatagramReceiver:
        return TaskReceiver(self, endpoint)

    def abort(self, exc: BaseException) -> int:
        """Cancel every handler in flight; how many there were."""
        tasks = list(self.tasks)
        if tasks:
            self.aborted = exc
            for task in tasks:
                task.cancel()
        return len(tasks)


class TaskReceiver(DatagramReceiver):
    """The endpoint's protocol that starts the handler's task itself (one frame less)."""

    def __init__(self, starter: TaskStarter, endpoint: DatagramEndpoint | None) -> None:
        server = starter.server
        super().__init__(server, NO_TARGET, endpoint)
        self.starter = starter
        self.server = server
        self.handler_class = starter.handler_class
        self.loop = starter.loop
        self.plain_init = self.handler_class.__init__ is AsyncDatagramRequestHandler.__init__
        if not starter.own_tasks:
            self.datagram_received = self.start_with_factory  # type: ignore[method-assign]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if len(data) > self.max_packet_size:
            super().datagram_received(data, addr)  # dropped there, with its line
            return
        admission = self.admission  # (see DatagramReceiver.datagram_received)
        admission.datagrams += 1
        admission.datagram_bytes += len(data)
        if self.plain_init:
            # The constructor only stores these: store them here, one frame less.
            handler = new(self.handler_class)
            handler.packet = data
            handler.client_address = addr
            handler.server = self.server
            handler.socket = self.sock
        else:
            made = self.make_handler(data, addr)
            if made is None:
                return
            handler = made
        starter = self.starter
        task = Task(serve_datagram(starter, handler), loop=self.loop, name=TASK_NAME, **EAGER)
        if not task.done():  # (an eager task may be over already)
            starter.tasks.add(task)

    def make_handler(self, data: bytes, addr: Any) -> AsyncDatagramRequestHandler | None:
        """The handler for one datagram, by its class's constructor; None if
        the constructor raised (reported, the datagram dropped)."""
        try:
            return self.handler_class(data, addr, self.server, self.sock)
        except Exception:
            self.handle_error((data, self.sock), addr)
            return None

    def start_with_factory(self, data: bytes, addr: Any) -> None:
        if len(data) > self.max_packet_size:
            super().datagram_received(data, addr)
            return
        admission = self.admission  # (see DatagramReceiver.datagram_received)
        admission.datagrams += 1
        admission.datagram_bytes += len(data)
        handler = self.make_handler(data, addr)
        if handler is None:
            return
        starter = self.starter
        starter.tasks.add(self.loop.create_task(serve_datagram(starter, handler)))


class _NoTarget:
    def datagram_received(self, data: bytes, client_address: Any) -> None:
        raise AssertionError("TaskReceiver starts tasks itself")


NO_TARGET = _NoTarget()


def _plain(handler_class: type[AsyncDatagramRequestHandler]) -> bool:
    """No setup() or finish() of its own: handle() alone is awaited."""
    return (
        handler_class.setup is AsyncDatagramRequestHandler.setup
        and handler_class.finish is AsyncDatagramRequestHandler.finish
    )


async def serve_datagram(starter: TaskStarter, handler: AsyncDatagramRequestHandler) -> None:
    """One handler's task: its hooks (handle() alone when it has no setup()
    or finish() of its own: one coroutine fewer), an error reported, the
    task counted out."""
    try:
        if starter.plain:
            await handler.handle()
        else:
            await run_datagram_handler(handler)
    except asyncio.CancelledError:
        if starter.aborted is None:
            raise
    except Exception:
        starter.server._handler_error((handler.packet, handler.socket), handler.client_address)
    finally:
        tasks = starter.tasks
        tasks.discard(current_task())
        if not tasks and starter.on_idle is not None:
            starter.on_idle()


async def run_datagram_handler(handler: AsyncDatagramRequestHandler) -> None:
    """setup() and handle(), then finish() whatever happened in them."""
    try:
        await handler.setup()
        await handler.handle()
    finally:
        await handler.finish()
