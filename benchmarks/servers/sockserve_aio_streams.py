"""sockserve.aio.AsyncTCPServer with an AsyncStreamRequestHandler: a task per
connection, ``async for`` over lines and ``await writer.write()``. Run on
asyncio's loop here; ``*_uvloop.py`` runs the same on uvloop.

Also the shared runner of the sockserve_aio_* servers: ``run(make_server, loop)``.
"""

from __future__ import annotations

import signal
import sys
from typing import Any

from _common import listen_address, ready, report_exit, skip


def run(make_server: Any, loop: str) -> None:
    """Serve until SIGTERM/SIGINT as a prefork worker would: the signal
    handler calls shutdown(), then stop() drains what is in flight."""
    try:
        from sockserve import aio
    except ImportError as exc:
        skip(f"sockserve.aio is not importable: {exc}")
    if loop == "uvloop" and not aio.uvloop_available():
        skip("uvloop is not importable; pip install uvloop to include it")
    _, address = listen_address()
    server = make_server(aio, address)

    def on_signal(signum: int, frame: object) -> None:
        server.shutdown()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    ready(server.server_address[1])
    server.serve_forever(loop=loop)
    report = server.stop(grace=5)
    report_exit(loop=loop, drain={"in_flight": report.in_flight, "forced": report.forced})


def make_stream_server(aio: Any, address: Any) -> Any:
    class LineEcho(aio.AsyncStreamRequestHandler):  # type: ignore[misc,name-defined]
        async def handle(self) -> None:
            readline = self.reader.readline
            write = self.writer.write
            while line := await readline():
                await write(line)

    return aio.AsyncTCPServer(address, LineEcho)


if __name__ == "__main__":
    run(make_stream_server, sys.argv[2] if len(sys.argv) > 2 else "asyncio")
