"""ThreadPoolMixIn: the stdlib's mixin contract on a bounded pool of reused
threads (``_worker_pool``), with a reactor (``_reactor``) where connections
wait without a thread (``_pool_model``).

It overrides ``process_request`` (and the model it runs on), as
``ThreadingMixIn`` does, so any classic handler runs unchanged; a
``FramedRequestHandler`` puts the pool in framed mode (``_framed``). A
datagram pool's workers receive its datagrams themselves while
``serve_forever()`` runs (``_pool_model.DatagramReceivers``): that is what
``serve_forever()`` and ``_capacity_freed()`` are extended for.
"""

from __future__ import annotations

import socket
import threading
from typing import TYPE_CHECKING, Any

from ._log import format_address, logger
from ._model import ConcurrencyModel
from ._pool_model import DatagramReceivers, PoolModel
from ._reactor import Reactor
from ._threading import run_request

if TYPE_CHECKING:
    from ._admission import Admission
    from ._base_server import BaseServer as _ServerBase
    from ._worker_pool import WorkerPool
else:
    _ServerBase = object  # a stand-alone mixin at run time, as ThreadingMixIn is


class ThreadPoolMixIn(_ServerBase):
    """Mix-in class to handle each request on a bounded pool of reused threads.

    Class variables:

    - pool_max_workers: the most requests handled at once (128). At that
      number the server stops accepting until one finishes; new connections
      wait in the listen backlog.
    - pool_min_workers: threads kept even when idle (4)
    - pool_idle_timeout: seconds an idle thread above the minimum lives (30)
    - request_queue_size: the listen backlog, deeper than the stdlib's 5
      because it is where connections wait when the pool is busy (1024)

    A stream connection holds its worker until its handler returns: with
    persistent connections, ``pool_max_workers`` is the number of clients
    served at once.
    """

    pool_max_workers: int = 128
    pool_min_workers: int = 4
    pool_idle_timeout: float | None = 30.0
    request_queue_size: int = 1024
    _serves_framed_handlers = True  # FramedRequestHandler runs on the pool only
    _receivers: DatagramReceivers | None = None  # a datagram pool's, once its model is made

    def _make_model(self, admission: Admission) -> ConcurrencyModel:
        from ._worker_pool import WorkerPool  # here: a program that makes no pool does not load it

        pool = WorkerPool(
            self.pool_max_workers,
            self.pool_min_workers,
            self.pool_idle_timeout,
            on_idle=self._capacity_freed,
            name=f"{type(self).__name__}-worker",
        )
        streams = getattr(self, "socket_type", socket.SOCK_STREAM) == socket.SOCK_STREAM
        reactor = Reactor(f"{type(self).__name__}-reactor") if streams else None
        model = PoolModel(admission, pool, reactor, self)
        self._receivers = model.receivers
        return model

    def _pool_model(self) -> PoolModel:
        model = self._concurrency_model()
        assert isinstance(model, PoolModel)
        return model

    def _worker_pool(self) -> WorkerPool:
        return self._pool_model().pool

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """What a worker runs for one request: the same as a ThreadingMixIn thread."""
        run_request(self, request, client_address)

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """As ``BaseServer.serve_forever()``; a datagram pool's workers stop
        receiving when it returns."""
        try:
            super().serve_forever(poll_interval)
        finally:
            if self._receivers is not None:
                self._receivers.stop(threading.get_ident())  # the loop this thread ran, not another's

    def _serve_pending(self, pending: Any) -> None:
        """As ``BaseServer._serve_pending()``; a framed pool's workers are
        handed the first turns of the connections it took at its end (see
        ``PoolModel.hold_first_turns``)."""
        model = self._pool_model()
        if not model.framed:
            super()._serve_pending(pending)
            return
        model.hold_first_turns()
        try:
            super()._serve_pending(pending)
        finally:
            model.release_first_turns()

    def _capacity_freed(self) -> None:
        super()._capacity_freed()
        if self._receivers is not None:
            self._receivers.capacity_freed()

    def process_request(self, request: Any, client_address: Any) -> None:
        """Hand the request to the pool: a framed handler's connection to the
        reactor, a stream connection to a worker once it has sent its first
        byte, a datagram to a free worker, or, on the worker that received
        it, to that worker itself."""
        job = self._take_job(request, client_address)
        receivers = self._receivers
        if receivers is not None and receivers.holder == threading.get_ident():
            receivers.hand_on()  # the next datagram is another worker's
            job.run(self.process_request_thread)
            return
        model = self._pool_model()
        if model.reactor is not None and isinstance(request, socket.socket):
            model.adopt(job, self.process_request_thread)
            return
        pool = model.pool
        if not pool.try_submit(job.run, self.process_request_thread):
            # Only handle_request(), which has no capacity check, gets here.
            logger.debug("worker pool busy: %s waits for a free worker", format_address(client_address))
            pool.submit(job.run, self.process_request_thread)
