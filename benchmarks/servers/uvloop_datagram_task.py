"""The asyncio_datagram_task server on uvloop (skipped if uvloop is not importable)."""

import asyncio_datagram_task
from _common import run_asyncio

if __name__ == "__main__":
    run_asyncio(asyncio_datagram_task.serve, use_uvloop=True)
