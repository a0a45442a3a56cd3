"""The asyncio_datagram server on uvloop (skipped if uvloop is not importable)."""

import asyncio_datagram
from _common import run_asyncio

if __name__ == "__main__":
    run_asyncio(asyncio_datagram.serve, use_uvloop=True)
