"""asyncio.Protocol on loop.create_server, echoing complete lines."""

from __future__ import annotations

import asyncio
import socket
from typing import cast

from _common import ready, run_asyncio, wait_for_stop_signal


class LineEcho(asyncio.Protocol):
    transport: asyncio.Transport
    pending = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.pending:
            data = self.pending + data
        end = data.rfind(b"\n") + 1
        if end:
            self.transport.write(data[:end] if end < len(data) else data)
        self.pending = data[end:]


async def serve(family: socket.AddressFamily, address: tuple[str, int]) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(LineEcho, address[0], address[1], family=family)
    ready(server.sockets[0].getsockname()[1])
    await wait_for_stop_signal()
    server.close()
    await server.wait_closed()


if __name__ == "__main__":
    run_asyncio(serve)
