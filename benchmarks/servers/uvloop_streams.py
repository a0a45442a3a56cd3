"""The asyncio_streams server on uvloop (skipped if uvloop is not importable)."""

import asyncio_streams
from _common import run_asyncio

if __name__ == "__main__":
    run_asyncio(asyncio_streams.serve, use_uvloop=True)
