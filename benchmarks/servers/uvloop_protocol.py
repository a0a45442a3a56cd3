"""The asyncio_protocol server on uvloop (skipped if uvloop is not importable)."""

import asyncio_protocol
from _common import run_asyncio

if __name__ == "__main__":
    run_asyncio(asyncio_protocol.serve, use_uvloop=True)
