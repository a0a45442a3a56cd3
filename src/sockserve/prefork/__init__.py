"""Prefork: one supervisor process, several worker processes serving one address.

from sockserve.prefork import Prefork
Prefork(sockserve.ThreadPoolTCPServer, ("0.0.0.0", 8000), Handler, workers=4).run()
"""

from __future__ import annotations

from ._supervisor import Prefork as Prefork
from ._table import RestartPolicy as RestartPolicy
from ._worker import WORKER_BOOT_ERROR as WORKER_BOOT_ERROR
from ._worker import WORKER_CRASHED as WORKER_CRASHED
from ._worker import WORKER_OK as WORKER_OK
from ._worker import WORKER_RECYCLED as WORKER_RECYCLED

__all__ = [
    "WORKER_BOOT_ERROR",
    "WORKER_CRASHED",
    "WORKER_OK",
    "WORKER_RECYCLED",
    "Prefork",
    "RestartPolicy",
]
