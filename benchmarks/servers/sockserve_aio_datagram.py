"""sockserve.aio.AsyncUDPServer with an AsyncDatagramRequestHandler (a task per datagram)."""

from __future__ import annotations

import sys
from typing import Any

from sockserve_aio_streams import run


def make_datagram_server(aio: Any, address: Any) -> Any:
    class DatagramEcho(aio.AsyncDatagramRequestHandler):  # type: ignore[misc,name-defined]
        async def handle(self) -> None:
            await self.reply(self.packet)

    return aio.AsyncUDPServer(address, DatagramEcho)


if __name__ == "__main__":
    run(make_datagram_server, sys.argv[2] if len(sys.argv) > 2 else "asyncio")
